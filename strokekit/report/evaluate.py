"""What the report shows, computed from files: a run's or an ensemble's out-of-fold predictions, per-image
records, per-fold tables, lesion-size bins, and false positives on no-stroke slices.

A source is a run folder (`runs/<config>` with `fold<k>/`) or an ensemble spec (`ensembles/<name>.yaml`): a
spec's OOF is its members' OOF blended with the spec's blend and weights, decided with its threshold /
post-processing; a run's classifier threshold is tuned on its pooled OOF (best F1, middle of the plateau)
and its masks are the plain argmax, as train.py validates. Lesion size is the share of the slice a class
covers in the true mask (bins `small` / `medium` / `large` at SIZE_BINS).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from strokekit.errors import UserError
from strokekit.evaluation import metrics

from strokekit.ensembling import selection
from strokekit.ensembling.spec import combine
from strokekit.postprocess.steps import apply_postprocess, resize_probs
from strokekit.report.html import is_count
from strokekit.training.runlog import EpochLog
from strokekit.vocabulary import IMAGE_TYPES, LESION_NAMES, image_type

SIZE_BINS = (0.005, 0.02)  # share of the slice: small < 0.5 %, medium < 2 %, large >= 2 %


class ReportError(UserError, ValueError):
    """A path the report cannot read as a run, a set of runs or an ensemble spec."""


@dataclass
class Source:
    """One run or ensemble: its name, task, run folders (members), the spec if any, and the data root."""
    name: str
    kind: str
    task: str
    runs: list[Path]
    cfg: dict
    spec: dict | None = None
    spec_path: Path | None = None
    extra: dict = field(default_factory=dict)


def run_config(run_dir: Path) -> dict:
    for fold_dir in selection.fold_dirs(run_dir):
        if (fold_dir / "config.yaml").is_file():
            return yaml.safe_load((fold_dir / "config.yaml").read_text(encoding="utf-8"))
    raise ReportError(f"{run_dir}: no fold<k>/config.yaml (written by train.py)")


def is_run(path: Path) -> bool:
    return path.is_dir() and (any(d.is_dir() and d.name[4:].isdigit() for d in path.glob("fold*"))
                              or (path / "oof.csv").exists() or (path / "oof.npz").exists())


def find_sources(paths: list[str | os.PathLike]) -> list[Source]:
    """Sources named by the paths: run folders, spec YAMLs, or folders holding either (runs/, ensembles/)."""
    sources = []
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            sources.append(spec_source(path))
        elif is_run(path):
            cfg = run_config(path)
            sources.append(Source(path.name, "run", cfg["task"], [path], cfg))
        elif path.is_dir():
            found = []
            for inner in sorted(path.iterdir()):
                if is_run(inner) or inner.suffix in (".yaml", ".yml"):
                    try:
                        found += find_sources([inner])
                    except (ReportError, FileNotFoundError) as err:  # an unfinished run, a grid YAML ...
                        print(f"skipped {inner}: {err}", file=sys.stderr)
            if not found:
                raise ReportError(f"{path}: neither a run folder (fold<k>/) nor a folder of runs or ensemble specs")
            sources += found
        else:
            raise ReportError(f"{path}: no such run folder or ensemble spec")
    return sources


def spec_source(path: Path) -> Source:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ReportError(f"{path}: unreadable ({err})") from None
    if (not isinstance(spec, dict) or "task" not in spec or not isinstance(spec.get("members"), list)
            or not all(isinstance(m, dict) and "run" in m for m in spec["members"])):
        raise ReportError(f"{path}: not an ensemble spec (written by ensemble.py)")
    runs = [(path.parent / m["run"]).resolve() if not Path(m["run"]).is_absolute() else Path(m["run"])
            for m in spec["members"]]
    missing = [str(r) for r in runs if not r.is_dir()]
    if missing:
        raise ReportError(f"{path}: member run folders not found: {missing}")
    return Source(path.stem, "ensemble", spec["task"], runs, run_config(runs[0]), spec, path)


def data_root(source: Source, data: str | os.PathLike | None) -> Path:
    root = Path(data or source.cfg.get("data") or "")
    if not root.is_dir():
        raise ReportError(f"{source.name}: data set {str(root)!r} not found; pass --data (the folder it trained on)")
    return root


def fold_logs(source: Source) -> dict[str, list[dict]]:
    """log.csv rows per fold (per member and fold for an ensemble)."""
    logs = {}
    for run in source.runs:
        for fold_dir in selection.fold_dirs(run):
            prefix = f"{run.name}/" if len(source.runs) > 1 else ""
            logs[f"{prefix}{fold_dir.name}"] = EpochLog(fold_dir / "log.csv").load().rows
    return logs


def mean_std_rows(table: pd.DataFrame, key: str = "fold") -> pd.DataFrame:
    """The per-fold table with a `mean ± std` (ddof = 1) row appended."""
    numeric = [c for c in table.columns if c != key and pd.api.types.is_numeric_dtype(table[c])]
    summary = {key: "mean ± std"}
    for c in numeric:
        values = table[c].astype(float).dropna()
        digits = 1 if is_count(c) else 4  # counts: 40.5 ± 0.7 or 42 ± 0, not 40.5000 ± 0.7071
        show = (lambda v: f"{v:.1f}".removesuffix(".0")) if is_count(c) else (lambda v: f"{v:.{digits}f}")
        summary[c] = ("–" if values.empty else f"{show(values.mean())} ± {show(values.std(ddof=1))}"
                      if len(values) > 1 else show(values.mean()))
    return pd.concat([table.astype(object), pd.DataFrame([summary])], ignore_index=True)


def size_bin(fraction: float, bins=SIZE_BINS) -> str:
    return "small" if fraction < bins[0] else "medium" if fraction < bins[1] else "large"


def bin_labels(bins=SIZE_BINS) -> list[str]:
    return [f"small (<{bins[0]:.1%})", f"medium ({bins[0]:.1%}-{bins[1]:.1%})", f"large (>={bins[1]:.1%})"]


# --------------------------------------------------------------------------- classifiers


def classifier_oof(source: Source) -> tuple[pd.DataFrame, dict]:
    """(OOF table image_id, fold, target, prob; the decision threshold with how it was chosen)."""
    if source.kind == "run":
        oof = selection.load_oof(source.runs[0])
        tuned = selection.tune_classifier_threshold(oof["target"], oof["prob"], "f1")
        return oof, {"value": tuned["threshold"], "plateau": tuned["plateau"],
                     "how": "best F1 on the pooled OOF (middle of the near-best plateau)"}
    members = {m["name"]: selection.load_oof(run) for m, run in zip(source.spec["members"], source.runs)}
    aligned = selection.align_members(members)
    names = list(members)
    probs = np.stack([aligned[n].to_numpy(dtype=np.float64) for n in names])
    weights = [m["weight"] for m in source.spec["members"]]
    thresholds = [m.get("threshold", 0.5) for m in source.spec["members"]]
    prob = combine(probs, source.spec["blend"], weights, thresholds)
    folds = members[names[0]].set_index("image_id").loc[aligned["image_id"], "fold"].to_numpy()
    oof = pd.DataFrame({"image_id": aligned["image_id"], "fold": folds, "target": aligned["target"], "prob": prob})
    t = source.spec["threshold"]
    return oof, {"value": float(t["value"]), "plateau": t.get("plateau"),
                 "how": f"the spec's threshold ({t.get('objective', '?')} on OOF)"}


def classifier_fold_table(oof: pd.DataFrame, threshold: float) -> pd.DataFrame:
    rows = []
    for fold, part in oof.groupby("fold", sort=True):
        y, p = part["target"].to_numpy(), part["prob"].to_numpy()
        at = metrics.classification_metrics(y, p, threshold)
        rows.append({"fold": int(fold), "n": len(part), "positives": int(y.sum()), "auc": metrics.roc_auc(y, p),
                     **{k: float(at[k]) for k in ("recall", "precision", "specificity", "f1", "balanced_accuracy")}})
    return pd.DataFrame(rows)


def classifier_size_bins(oof: pd.DataFrame, threshold: float, masks: dict[int, np.ndarray], bins=SIZE_BINS) -> pd.DataFrame:
    """Share of stroke slices classified right, per lesion class and size bin of that class in the true mask."""
    pred = (oof["prob"].to_numpy() >= threshold).astype(int)
    right = dict(zip(oof["image_id"].astype(int), pred == oof["target"].to_numpy()))
    rows = []
    for name, cls in LESION_NAMES.items():
        for label, edge in zip(bin_labels(bins), ("small", "medium", "large")):
            hits = [right[i] for i, m in masks.items() if i in right and (m == cls).any()
                    and size_bin((m == cls).mean(), bins) == edge]
            rows.append({"class": name, "size_bin": label, "n": len(hits),
                         "correct": float(np.mean(hits)) if hits else np.nan})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- segmentation


def seg_oof(source: Source) -> tuple[dict, dict | None]:
    """(OOF dict image_id, probs (N, 3, S, S), fold; post-processing spec or None = argmax)."""
    if source.kind == "run":
        return selection.load_oof(source.runs[0]), None
    from strokekit.ensembling.segmenters import aligned_seg_oof

    raw = {m["name"]: selection.load_oof(run) for m, run in zip(source.spec["members"], source.runs)}
    ids, aligned = aligned_seg_oof(raw)
    names = list(aligned)
    probs = combine(np.stack([aligned[n]["probs"] for n in names]), source.spec["blend"],
                    [m["weight"] for m in source.spec["members"]])
    return {"image_id": ids, "probs": probs, "fold": aligned[names[0]]["fold"]}, source.spec.get("postprocess")


def predicted_map(probs: np.ndarray, shape: tuple[int, int], post: dict | None) -> np.ndarray:
    up = resize_probs(probs, shape)
    return up.argmax(0).astype(np.uint8) if post is None else apply_postprocess(up, post)


def seg_records(oof: dict, masks: dict[int, np.ndarray], post: dict | None, negatives: set[int]) -> pd.DataFrame:
    """One row per OOF image: strict per-class counts, Dice, lesion areas, image types, negative flag."""
    rows = []
    for i, image_id in enumerate(oof["image_id"]):
        true = masks[int(image_id)]
        pred = predicted_map(oof["probs"][i], true.shape, post)
        stats = metrics.seg_stats(pred, true)
        row = {"image_id": int(image_id), "fold": int(oof["fold"][i]), "negative": int(image_id) in negatives,
               "type_true": image_type(true), "type_pred": image_type(pred), "pixels": true.size,
               "pred_lesion_pixels": int((pred > 0).sum())}
        for name, cls in LESION_NAMES.items():
            tp, fp, fn = (int(getattr(stats, k)[0, cls]) for k in ("tp", "fp", "fn"))
            row.update({f"tp_{name}": tp, f"fp_{name}": fp, f"fn_{name}": fn,
                        f"area_{name}": int((true == cls).sum()),
                        f"dice_{name}": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan})
        row["dice_lesion_mean"] = float(np.nanmean([row["dice_ischemic"], row["dice_hemorrhagic"]])) \
            if np.isfinite([row["dice_ischemic"], row["dice_hemorrhagic"]]).any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def seg_fold_table(records: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for fold, part in records.groupby("fold", sort=True):
        lesion = part[~part["negative"]]
        row = {"fold": int(fold), "n_lesion": len(lesion), "n_negative": int(part["negative"].sum())}
        for name in LESION_NAMES:
            row[f"dice_{name}"] = float(lesion[f"dice_{name}"].mean())
        row["dice_lesion_mean"] = float(np.nanmean([row["dice_ischemic"], row["dice_hemorrhagic"]]))
        tp, fp, fn = (sum(lesion[f"{k}_{n}"].sum() for n in LESION_NAMES) for k in ("tp", "fp", "fn"))
        row["iou_micro_lesion"] = tp / (tp + fp + fn) if tp + fp + fn else np.nan
        negatives = part[part["negative"]]
        row["fp_rate_negatives"] = float((negatives["pred_lesion_pixels"] > 0).mean()) if len(negatives) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def seg_size_bins(records: pd.DataFrame, bins=SIZE_BINS) -> pd.DataFrame:
    """Per lesion class and size bin: mean per-image Dice and the share of lesions touched by the prediction."""
    rows = []
    for name in LESION_NAMES:
        has = records[records[f"area_{name}"] > 0]
        which = (has[f"area_{name}"] / has["pixels"]).map(lambda f: size_bin(f, bins))
        for label, edge in zip(bin_labels(bins), ("small", "medium", "large")):
            part = has[which == edge]
            rows.append({"class": name, "size_bin": label, "n": len(part),
                         "dice": float(part[f"dice_{name}"].mean()) if len(part) else np.nan,
                         "detected": float((part[f"tp_{name}"] > 0).mean()) if len(part) else np.nan})
    return pd.DataFrame(rows)


def type_confusion(records: pd.DataFrame) -> np.ndarray:
    matrix = np.zeros((4, 4), dtype=int)
    for t, p in zip(records["type_true"], records["type_pred"]):
        matrix[IMAGE_TYPES.index(t), IMAGE_TYPES.index(p)] += 1
    return matrix
