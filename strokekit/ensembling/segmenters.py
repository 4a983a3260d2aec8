"""What ensemble.py decides on OOF for segmentation: folds, members, blend weights, post-processing, and an
optional segmentation-based classifier (stroke or type) read off the blended probabilities.

Members and folds are ranked by strict per-class Dice or IoU at the true masks' resolution, averaged per
image and over the two lesion classes, with the neutral post-processing (plain argmax decoding, as the
engine validates). The post-processing grid is then searched jointly on the blend (seg_search.py) under
the chosen objective — strict Dice / IoU or the organisers' tolerant counting (official_iou = score.py's
DEIoU, official_dice) — the whole table saved as CSV beside the spec. Phase 2 (the default): every test
image holds a lesion, so the search scores the never-empty rule (decide.fill_region) and runs on the
lesion-bearing OOF slices only. The setting is the middle of the near-best plateau of a bootstrap
statistic (the 10th percentile by default) at the test set's size (bootstrap.py), and every headline
figure is given with its 95 % interval at that size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from strokekit.errors import UnknownNameError
from strokekit.atomic import to_plain
from strokekit.evaluation import bootstrap

from strokekit.ensembling.nested import nested_estimate
from strokekit.ensembling.robust import chosen_interval, robust_choice

from strokekit.ensembling import selection
from strokekit.ensembling.selection import RunsError
from strokekit.data.index import build_index
from strokekit.data.readers import load_class_map
from strokekit.ensembling.classifiers import (Run, choose_blend, keep_or_guard, keep_top_runs,
                                              member_entry)
from strokekit.ensembling.spec import SEG_BLENDS
from strokekit.postprocess.steps import resize_probs
from strokekit.ensembling.seg_classifier import seg_image_features, targets_from_masks, tune_seg_classifier
from strokekit.ensembling.seg_objectives import OBJECTIVES
from strokekit.ensembling.seg_search import choose_postprocess, run_search, seg_fold_scores, seg_scorer, setting_columns

DEFAULT_GRID = {  # min_area in pixels at the masks' own resolution (512 x 512 for the competition)
    "threshold": [None, 0.3, 0.4, 0.5, 0.6, 0.7],     # None: argmax over the three classes
    "closing": [0, 2],
    "min_area": [0, 16, 64, 256],
    "keep_largest": [False, True],
    "overlap": ["argmax"],
}


def load_masks(data: str | Path, image_ids) -> dict[int, np.ndarray]:
    """True class maps (MASK, else decoded OVERLAY) of the OOF images, from the data set they were trained on."""
    index, _ = build_index(data)
    rows = index.set_index("image_id")
    missing = [int(i) for i in image_ids if int(i) not in rows.index]
    if missing:
        raise RunsError(f"{data}: OOF images {missing[:5]} ({len(missing)} in all) are not in this data set; "
                         "pass --data the folder the runs were trained on")
    masks = {}
    for image_id in image_ids:
        row = rows.loc[int(image_id)].to_dict()
        class_map = load_class_map(row)
        masks[int(image_id)] = class_map if class_map is not None else _empty_like(row)
    return masks


def _empty_like(row: dict) -> np.ndarray:
    """A no-stroke slice validated as a negative: an all-background map of the image's size."""
    from strokekit.data.readers import image_size
    if row.get("class_name") != "no_stroke":
        raise RunsError(f"image {row.get('image_id')}: a stroke slice without MASK or OVERLAY in the OOF")
    return np.zeros(image_size(row["png"]) if row.get("png") else (512, 512), dtype=np.uint8)


def aligned_seg_oof(oofs: dict[str, dict]) -> tuple[np.ndarray, dict[str, dict]]:
    """Every run's seg OOF on the images all of them predicted, at one common (largest) OOF size."""
    if any(not isinstance(o, dict) for o in oofs.values()):
        raise RunsError("a seg ensemble needs oof.npz files (segmentation runs)")
    ids = sorted(set.intersection(*(set(o["image_id"].tolist()) for o in oofs.values())))
    if not ids:
        raise RunsError("the runs share no OOF image: were they trained on the same data set?")
    size = max(o["probs"].shape[-1] for o in oofs.values())
    aligned = {}
    for name, oof in oofs.items():
        pick = np.searchsorted(oof["image_id"], ids)
        probs = oof["probs"][pick]
        if probs.shape[-1] != size:
            probs = np.stack([resize_probs(p, size) for p in probs])
        aligned[name] = {"image_id": np.asarray(ids), "probs": probs.astype(np.float32),
                         "fold": oof["fold"][pick]}
    return np.asarray(ids), aligned


def _finite(score_fn):
    """NaN (no lesion of either class anywhere) scores as 0, so comparisons stay defined."""
    return lambda probs: float(np.nan_to_num(score_fn(probs), nan=0.0))


def build_seg_spec(runs: list[Run], spec_path, data, metric: str = "dice", top_k: int | None = None,
                   blend: str = "mean", greedy: bool = False, grid: dict | None = None, tolerance: float = 0.005,
                   tta=("none",), tta_scales=(1.0,), absolute: bool = False, seg_classifier: str | None = None,
                   seg_feature: str = "area", objective: str = "f1", target_recall: float = 0.97,
                   phase2: bool = True, lesion_only: bool | None = None, robust: str | None = "p10",
                   test_size: int | None = bootstrap.PHASE_TEST_SIZES[2], n_boot: int = 1000,
                   seed: int = 0, test_prior: float | None = None,
                   gate_runs: list | None = None, top_runs: int | None = None,
                   group_of: dict | None = None, test_patients: int | None = None,
                   keep_blend: bool = False) -> tuple[dict, dict]:
    """(spec, report) for a segmentation ensemble; report["grid"] is the full post-processing table.

    metric: the post-processing objective (seg_objectives.OBJECTIVES); folds and members are ranked by its
    strict kind. phase2: score the never-empty rule; lesion_only (default: phase2): search on the OOF
    slices that hold a lesion. robust: bootstrap statistic that picks the setting (None: the point score).
    gate_runs: classifier run folders whose mean OOF probability gates the lesion classes (gate_probs: P(stroke)
    of stroke runs, or per class P(type) of type runs); the grid then searches `gate` too, and infer.py needs
    a spec of that task (--gate-ensemble). test_patients: resamples draw that many whole patients (their
    images from `group_of`, image_id -> patient) instead of test_size images. keep_blend: the blend is kept
    even when one member alone scores higher on OOF (the DPN-U-Net's average of its best runs).
    """
    if metric not in OBJECTIVES:
        raise UnknownNameError(f"unknown seg metric {metric!r}; valid: {list(OBJECTIVES)}")
    rank_metric = "dice" if metric.endswith("dice") else "iou"
    lesion_only = phase2 if lesion_only is None else lesion_only
    raw = {run.name: selection.load_oof(run.path) for run in runs}
    ids, oofs = aligned_seg_oof(raw)
    masks = load_masks(data, sorted(set().union(*(o["image_id"].tolist() for o in raw.values()))))
    folds, tables = {}, []
    for run in runs:
        scores = seg_fold_scores(raw[run.name], masks, metric=rank_metric)
        scores["score"] = scores["score"].fillna(0.0)
        folds[run.name] = selection.top_k_folds(scores, top_k)
        tables.append(scores.assign(member=run.name, chosen=scores["fold"].isin(folds[run.name])))
    score_fn = _finite(seg_scorer(ids, masks, metric=rank_metric))
    members = {name: oof["probs"] for name, oof in oofs.items()}
    singles = {name: score_fn(p) for name, p in members.items()}
    members = keep_top_runs(members, singles, top_runs)
    blends = SEG_BLENDS if blend == "auto" else (blend,)
    tried = {b: choose_blend(members, b, score_fn, greedy) for b in blends}
    choice = keep_or_guard(max(tried.values(), key=lambda c: c["score"]), members, singles, keep_blend)
    blended = {"image_id": ids, "probs": choice["blended"].astype(np.float32)}
    searched = lesion_subset(blended, masks) if lesion_only else blended
    grid = dict(grid or DEFAULT_GRID)
    image_probs, gate_kind = None, None
    if gate_runs:
        gate_kind, image_probs = gate_probs(gate_runs)
        # per class, so the grid grows by the square: type gates need few (0.5: the type chosen; 0.3: both
        # where the classifier hesitates)
        grid.setdefault("gate", [None, 0.3, 0.5] if gate_kind == "type" else [None, 0.3, 0.5, 0.7])
    search = run_search(searched, masks, grid, metric, image_probs=image_probs, never_empty=phase2)
    table = search.table
    size = test_size or bootstrap.PHASE_TEST_SIZES[2]
    patients = bootstrap.Patients.of(group_of, searched["image_id"], test_patients) if test_patients else None
    if robust:
        post = robust_choice(search, robust, size, n_boot, tolerance, seed=seed, patients=patients)
    else:
        post = choose_postprocess(table, tolerance)
        post["interval"] = chosen_interval(search, post["row"], size, n_boot, seed, patients=patients)
    best_by = best_settings(search, size, n_boot, seed, patients=patients)
    chosen_by = {name: chosen_interval(search, post["row"], size, n_boot, seed, objective=name, patients=patients)
                 for name in OBJECTIVES}  # the submitted setting under every rule
    searched_folds = oofs[next(iter(oofs))]["fold"][np.isin(ids, searched["image_id"])]
    nested = (nested_estimate(search, searched_folds, robust, size, n_boot, tolerance, seed, patients=patients,
                              objectives=OBJECTIVES) if len(np.unique(searched_folds)) > 1 else None)
    spec = {"task": "seg", "blend": choice["blend"], "tta": list(tta), "tta_scales": list(tta_scales),
            "members": [member_entry(run, folds[run.name], choice["weights"].get(run.name, 0), spec_path, absolute,
                                     oof={rank_metric: singles[run.name], "n_images": len(ids)})
                        for run in runs if choice["weights"].get(run.name, 0) > 0],
            "postprocess": post["spec"],
            "oof": {"metric": f"{metric} ({_describe(metric)})", "n_images": len(ids),
                    "n_images_searched": len(searched["image_id"]),
                    "ensemble_neutral_postprocess": choice["score"], "best_member": max(singles.values()),
                    "members": singles, "members_metric": f"{rank_metric} (strict, per image, lesion mean)",
                    "postprocessed": post["score"], "postprocessed_best": float(table["score"].max()),
                    "postprocessed_interval": post["interval"], "objectives": post["objectives"],
                    "objective_intervals": chosen_by,
                    "nested": nested,
                    "per_class": post["scores"], "best_by_objective": {k: v["summary"] for k, v in best_by.items()},
                    "blends_tried": {b: c["score"] for b, c in tried.items()}},
            "postprocess_search": {"grid": grid, "rows": int(len(table)), "objective": metric,
                                   "gate_source": [str(r) for r in gate_runs] if gate_runs else None,
                                   "gate_kind": gate_kind,
                                   "phase2": phase2, "lesion_only": lesion_only, "robust": robust or "off",
                                   "test_size": post["interval"]["size"], "test_patients": test_patients,
                                   "n_boot": n_boot,
                                   "tolerance": tolerance, "stability": post["stability"]},
            "selection": {"top_k": top_k, "top_runs": top_runs, "runs_kept": sorted(members), "greedy": greedy,
                          "history": choice["history"],
                          "note": choice.get("note", "")}}
    if seg_classifier:
        spec["seg_classifier"] = tune_seg_classifier_on_oof(blended, masks, post["spec"], seg_classifier,
                                                            seg_feature, objective, target_recall, tolerance,
                                                            test_prior)
    report = {"folds": pd.concat(tables, ignore_index=True)[["member", "fold", "n", "score", "chosen"]],
              "members": singles, "weights": choice["weights"], "ensemble": choice["score"],
              "metric": rank_metric, "objective": metric,
              "grid": table.drop(columns=[c for c in table if c.startswith("_")]),
              "postprocess": post, "note": choice.get("note", ""), "best_by": best_by, "nested": nested,
              "n_searched": len(searched["image_id"]), "n_images": len(ids),
              "seg_classifier": spec.get("seg_classifier"), "blends_tried": spec["oof"]["blends_tried"]}
    return spec, report


def gate_probs(run_dirs) -> tuple[str, pd.Series | dict]:
    """(gate kind, image-level probabilities) from classifier runs' mean OOF probability.

    Stroke runs give P(stroke), one gate probability for both lesion classes ("stroke"); type runs give
    P(hemorrhagic), so the gate of each class is its own type probability, (1 - p, p) ("type": the
    type-conditioned segmentation of Samak 2024 / Uygun & Demirhan 2025 — the classifier decides the type,
    the U-Net draws the mask; a gate below 0.5 keeps both classes where the classifier hesitates).
    """
    frames = [selection.load_oof(run) for run in run_dirs]
    if any(not isinstance(f, pd.DataFrame) for f in frames):
        raise RunsError("--gate-runs must be classifier runs (oof.csv), not segmentation runs")
    tasks = {run_task(run) for run in run_dirs}
    if len(tasks) != 1 or not tasks <= {"stroke", "type"}:
        raise RunsError(f"--gate-runs must all be stroke runs or all type runs; got tasks {sorted(tasks)}")
    mean = pd.concat([f.set_index("image_id")["prob"] for f in frames], axis=1).mean(axis=1)
    kind = tasks.pop()
    if kind == "stroke":
        return kind, mean
    return kind, {int(i): (1.0 - float(p), float(p)) for i, p in mean.items()}


def run_task(run_dir) -> str:
    """The task a run folder trained (its folds' resolved config.yaml)."""
    for fold in selection.fold_dirs(run_dir):
        config = fold / "config.yaml"
        if config.is_file():
            return str((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("task"))
    raise RunsError(f"{run_dir}: no fold holds a config.yaml")


def _describe(metric: str) -> str:
    if metric.startswith("official"):
        return "organisers' tolerant counting, 3x3 element, region rule, mean over images"
    return "strict, per image, mean of the lesion classes"


def lesion_subset(oof: dict, masks: dict) -> dict:
    """The OOF images whose true mask holds a lesion (phase 2's test images all do)."""
    keep = np.array([bool(np.asarray(masks[int(i)]).any()) for i in oof["image_id"]])
    if not keep.any():
        raise RunsError("no OOF image holds a lesion: nothing to tune phase-2 post-processing on")
    return {k: np.asarray(v)[keep] for k, v in oof.items()}


def best_settings(search, size: int, n_boot: int, seed: int,
                  objectives=("official_iou", "dice"), patients=None) -> dict[str, dict]:
    """The best setting under each objective (the official and the strict rule pick differently), with
    every objective's score there and its own interval, for the report."""
    out = {}
    for name in objectives:
        row = search.table.loc[search.table[f"score.{name}"].idxmax()]
        out[name] = {"row": row, "summary": {
            "setting": {c: to_plain(row[c]) for c in setting_columns(search.table)},
            "scores": {o: float(row[f"score.{o}"]) for o in OBJECTIVES},
            "interval": chosen_interval(search, row, size, n_boot, seed, objective=name, patients=patients)}}
    return out


def tune_seg_classifier_on_oof(blended: dict, masks: dict, post_spec: dict, target: str, feature: str,
                               objective: str, target_recall: float, tolerance: float,
                               test_prior: float | None = None) -> dict:
    """Thresholds of a segmentation-based classifier on the blended OOF, features at the masks' size."""
    ids = blended["image_id"]
    targets = targets_from_masks(masks, ids, target).dropna()
    if targets.nunique() < 2:
        hint = (" (seg OOF holds lesion slices only: train with seg_val_negatives: true to tune a stroke "
                "classifier)" if target == "stroke" else "")
        raise RunsError(f"segmentation classifier {target}: OOF targets hold one class only{hint}")
    size = masks[int(ids[0])].shape
    features = seg_image_features(blended, post_spec, size=size)
    tuned = tune_seg_classifier(features, targets, target, feature, spec=post_spec, objective=objective,
                                target_recall=target_recall, tolerance=tolerance, test_prior=test_prior)
    tuned["n_images"] = int(len(targets))
    return tuned


def format_seg_report(report: dict, top: int = 8) -> str:
    """The tables ensemble.py prints for a seg ensemble."""
    from strokekit.ensembling.classifiers import format_report

    lines = [format_report({**report, "threshold": None})]
    post, grid = report["postprocess"], report["grid"]
    shown = [c for c in grid.columns if c in ("score.official_iou", "score.dice") or not c.startswith("score.")]
    lines.append(f"\npost-processing grid ({len(grid)} settings on {report['n_searched']} of {report['n_images']} "
                 f"OOF images; threshold NaN = argmax), best {top} by OOF {report['objective']}:")
    lines.append(grid.head(top)[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    at = f"{post['patients']} patients" if post.get("patients") else f"n = {post.get('size')}"
    how = f"bootstrap {post['statistic']} at {at}" if "statistic" in post else "point score"
    lines.append(f"chosen (middle of the near-best plateau of the {how}): OOF {report['objective']} "
                 f"{bootstrap.format_interval(post['interval'])}; best row {grid['score'].max():.4f}")
    lines.append("  " + ", ".join(f"{k} {v:.4f}" for k, v in post["objectives"].items()))
    if report.get("nested"):
        lines.append(f"nested OOF {report['objective']} (each fold's images with the setting chosen on the other "
                     f"folds: the forecast of the test figure): {bootstrap.format_interval(report['nested'])}")
    lines.append("\nbest setting by each rule (the tolerant counting forgives inside the lesion, not outside):")
    for name, best in report.get("best_by", {}).items():
        summary = best["summary"]
        scores = ", ".join(f"{k} {v:.4f}" for k, v in summary["scores"].items())
        lines.append(f"  best by {name}: {bootstrap.format_interval(summary['interval'])}; {scores}")
        lines.append("    " + ", ".join(f"{k}={v}" for k, v in summary["setting"].items()))
    clf = report.get("seg_classifier")
    if clf:
        t = clf["threshold"]
        lines.append(f"segmentation classifier {clf['target']} by {clf['feature']}: threshold {t['threshold']:.4f}, "
                     f"OOF recall {t['oof']['recall']:.4f}, specificity {t['oof']['specificity']:.4f}, "
                     f"balanced accuracy {t['oof']['balanced_accuracy']:.4f}")
    return "\n".join(lines)
