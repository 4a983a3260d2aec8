"""Decisions made on out-of-fold predictions: folds, blends, ensemble members and thresholds.

Reads the OOF files train.py writes (`runs/<config>/fold<k>/oof.csv | oof.npz`), scores folds and models,
blends members on aligned image ids, picks members greedily (Caruana et al. 2004) and tunes classifier
thresholds. Every threshold is taken from the middle of its near-best plateau, not the argmax, because
an argmax on a few hundred OOF images over-fits (PITFALLS.md); the plateau's width is reported with it.
Segmentation post-processing search lives in seg_search.py.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from strokekit.errors import InputFileError, UnknownNameError, UserError
from strokekit.evaluation import metrics
from strokekit.progress import bar

OOF_CSV, OOF_NPZ = "oof.csv", "oof.npz"
OOF_COLUMNS = ("image_id", "fold", "target", "prob")


# --------------------------------------------------------------------------- reading OOF files


class RunsError(UserError, ValueError):
    """Run folders (runs/<config>/fold<k>) whose files or OOF predictions cannot be used as asked."""


def fold_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """The fold directories of a run (`fold<k>/` holding an OOF file, by k); else the directory itself if it
    holds an OOF file (a fold folder, or a run's merged `oof.*` (merged_oof.py) without its fold folders:
    the per-fold files win, so a stale merged file never hides a re-trained fold)."""
    run_dir = Path(run_dir)
    dirs = [d for d in run_dir.glob("fold*") if d.is_dir() and d.name[4:].isdigit()]
    dirs = [d for d in sorted(dirs, key=lambda d: int(d.name[4:]))
            if (d / OOF_CSV).exists() or (d / OOF_NPZ).exists()]
    if not dirs and ((run_dir / OOF_CSV).exists() or (run_dir / OOF_NPZ).exists()):
        return [run_dir]
    if not dirs:
        raise InputFileError(f"{run_dir}: no fold<k>/{OOF_CSV} or fold<k>/{OOF_NPZ}; run train.py for it first")
    return dirs


def load_oof(run_dir: str | os.PathLike) -> pd.DataFrame | dict[str, np.ndarray]:
    """All folds' OOF of a run: a DataFrame (image_id, fold, target, prob) for a classifier, or for a
    segmenter a dict {image_id (N,), probs (N, 3, S, S) float16, fold (N,), and any other per-image array
    such as orig_hw (N, 2)}; both sorted by image_id."""
    dirs = fold_dirs(run_dir)
    kinds = {(d / OOF_CSV).exists() for d in dirs}
    if len(kinds) > 1:
        raise RunsError(f"{run_dir}: some folds hold {OOF_CSV}, others {OOF_NPZ}; one run is one task")
    if kinds.pop():
        return _load_classifier_oof(dirs)
    return _load_seg_oof(dirs)


def _load_classifier_oof(dirs: list[Path]) -> pd.DataFrame:
    frames = []
    for d in dirs:
        try:
            frame = pd.read_csv(d / OOF_CSV)
        except (OSError, ValueError) as err:  # pandas' ParserError / EmptyDataError and UnicodeDecodeError too
            raise RunsError(f"{d / OOF_CSV}: not a readable CSV ({type(err).__name__}: {err})") from None
        missing = [c for c in OOF_COLUMNS if c not in frame.columns]
        if missing:
            raise RunsError(f"{d / OOF_CSV}: missing columns {missing}; expected {list(OOF_COLUMNS)}")
        frames.append(frame[list(OOF_COLUMNS)])
    oof = pd.concat(frames, ignore_index=True)
    _check_unique(oof["image_id"].to_numpy(), dirs)
    return oof.sort_values("image_id", kind="stable").reset_index(drop=True)


def _load_seg_oof(dirs: list[Path]) -> dict[str, np.ndarray]:
    parts = []
    for d in dirs:
        part = _read_npz(d / OOF_NPZ)
        n = len(part["image_id"])
        fold = part.get("fold", np.int64(d.name[4:] or -1))
        part["fold"] = np.broadcast_to(fold, (n,)).astype(np.int64)   # a scalar fold is allowed
        parts.append(part)
    keys = set(parts[0])
    if any(set(part) != keys for part in parts):
        raise RunsError(f"{dirs[0].parent}: the folds' {OOF_NPZ} files hold different arrays")
    oof = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}   # orig_hw etc. come along
    oof["image_id"] = oof["image_id"].astype(np.int64)
    _check_unique(oof["image_id"], dirs)
    order = np.argsort(oof["image_id"], kind="stable")
    return {k: v[order] for k, v in oof.items()}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            part = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # damaged, truncated, object arrays
        raise RunsError(f"{path}: not a readable .npz ({type(err).__name__}: {err})") from None
    missing = [k for k in ("image_id", "probs") if k not in part]
    if missing:
        raise RunsError(f"{path}: missing arrays {missing}; expected image_id, probs, fold")
    return part


def _check_unique(image_ids: np.ndarray, dirs: list[Path]) -> None:
    ids, counts = np.unique(image_ids, return_counts=True)
    if (counts > 1).any():
        raise RunsError(f"image ids {ids[counts > 1][:5].tolist()} appear in more than one OOF file under "
                         f"{dirs[0].parent}: folds overlap or a fold was written twice")


# --------------------------------------------------------------------------- scoring classifiers


def recall_at_precision(y_true, y_score, min_precision: float = 0.9) -> float:
    """Best recall among thresholds whose precision >= min_precision (0 if none reaches it)."""
    table = metrics.threshold_table(y_true, y_score)
    ok = table["precision"] >= min_precision
    return float(table["recall"][ok].max()) if ok.any() else 0.0


def best_f1(y_true, y_score) -> float:
    """F1 at its best threshold (optimistic: the threshold is chosen on the same data)."""
    return float(metrics.threshold_table(y_true, y_score)["f1"].max())


CLASSIFIER_METRICS: dict[str, Callable[..., float]] = {
    "auc": metrics.roc_auc,
    "f1": metrics.f1_score,                      # at `threshold` (default 0.5)
    "best_f1": best_f1,
    "recall_at_precision": recall_at_precision,  # `min_precision` (default 0.9)
    "balanced_accuracy": metrics.balanced_accuracy,
}


def classifier_score(y_true, y_score, metric: str = "auc", **options) -> float:
    """One classifier metric by name (see CLASSIFIER_METRICS); options go to it (threshold, min_precision)."""
    if metric not in CLASSIFIER_METRICS:
        raise UnknownNameError(f"unknown classifier metric {metric!r}; valid: {sorted(CLASSIFIER_METRICS)}")
    return float(CLASSIFIER_METRICS[metric](y_true, y_score, **options))


def fold_scores(oof: pd.DataFrame, metric: str = "auc", **options) -> pd.DataFrame:
    """Score of each fold of a classifier OOF table: columns fold, n, positives, score."""
    rows = [{"fold": int(fold), "n": len(part), "positives": int(part["target"].sum()),
             "score": classifier_score(part["target"], part["prob"], metric, **options)}
            for fold, part in oof.groupby("fold", sort=True)]
    return pd.DataFrame(rows)


def top_k_folds(scores: pd.DataFrame, k: int | None) -> list[int]:
    """The k best folds by `score` (ties: lower fold first); k=None or k >= folds keeps all, in fold order."""
    ranked = scores.sort_values(["score", "fold"], ascending=[False, True], kind="stable")
    chosen = ranked["fold"].tolist() if k is None else ranked["fold"].tolist()[:k]
    if not chosen:
        raise ValueError("top_k_folds: no folds to choose from (k must be >= 1)")
    return sorted(int(f) for f in chosen)


# --------------------------------------------------------------------------- blends


def align_members(members: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Classifier OOF tables of several models joined on image_id: columns image_id, target, <member> ...

    Only images every member predicted are kept; members must agree on each image's target.
    """
    if not members:
        raise ValueError("align_members: no members given")
    merged = None
    for name, oof in members.items():
        part = oof[["image_id", "target", "prob"]].rename(columns={"prob": name, "target": f"target:{name}"})
        merged = part if merged is None else merged.merge(part, on="image_id", how="inner")
    targets = merged[[f"target:{name}" for name in members]].to_numpy()
    if (targets != targets[:, :1]).any():
        bad = merged["image_id"][(targets != targets[:, :1]).any(1)].head(5).tolist()
        raise RunsError(f"members disagree on the target of images {bad}: they were trained on different labels")
    merged["target"] = targets[:, 0]
    return merged[["image_id", "target", *members]].sort_values("image_id").reset_index(drop=True)


def _mean(probs: np.ndarray, weights=None, thresholds=None) -> np.ndarray:
    return probs.mean(axis=0)


def _weighted(probs: np.ndarray, weights=None, thresholds=None) -> np.ndarray:
    if weights is None or len(weights) != len(probs):
        raise ValueError(f"weighted blend needs one weight per member ({len(probs)})")
    w = np.asarray(weights, dtype=np.float64)
    w = w.reshape((-1,) + (1,) * (probs.ndim - 1)) / w.sum()
    return (probs * w).sum(axis=0)


def _vote(probs: np.ndarray, weights=None, thresholds=None) -> np.ndarray:
    """Share of members voting positive (p >= own threshold). Thresholding the share at 0.5 is the
    majority rule; with an even number of members a tie counts positive (the recall-friendly side)."""
    t = np.full(len(probs), 0.5) if thresholds is None else np.asarray(thresholds, dtype=float)
    if t.shape != (len(probs),):
        raise ValueError(f"vote blend needs one threshold per member ({len(probs)})")
    return (probs >= t.reshape((-1,) + (1,) * (probs.ndim - 1))).mean(axis=0)


def _rank(probs: np.ndarray, weights=None, thresholds=None) -> np.ndarray:
    """Mean of each member's ranks scaled to (0, 1]. Ranks are relative to the images blended together,
    so a threshold on them is a quantile: it transfers to a test set only if its positive share is alike."""
    if probs.ndim != 2:
        raise ValueError("rank blend is for image-level probabilities (members x images)")
    return (rankdata(probs, axis=1) / probs.shape[1]).mean(axis=0)


BLENDS: dict[str, Callable[..., np.ndarray]] = {"mean": _mean, "weighted": _weighted, "vote": _vote, "rank": _rank}


def blend(probs, method: str = "mean", weights=None, thresholds=None) -> np.ndarray:
    """Blend members' probabilities stacked on axis 0: (M, N) for classifiers, (M, N, 3, H, W) for masks."""
    if method not in BLENDS:
        raise UnknownNameError(f"unknown blend {method!r}; valid: {sorted(BLENDS)}")
    return BLENDS[method](np.asarray(probs, dtype=np.float64 if np.ndim(probs) <= 2 else np.float32),
                          weights=weights, thresholds=thresholds)


# --------------------------------------------------------------------------- greedy ensembles


def greedy_select(members: Mapping[str, np.ndarray], score_fn: Callable[[np.ndarray], float],
                  replacement: bool = True, max_steps: int = 25, min_gain: float = 0.0) -> dict:
    """Caruana-style forward selection on OOF: start from the best single member, repeatedly add the
    member whose inclusion in the running mean scores best, stop when no addition gains > min_gain.

    With replacement a member may be added again, which is how weights arise (weight = times chosen /
    steps). Higher score_fn is better. The result is never worse on OOF than the best single member.
    """
    names = list(members)
    if not names:
        raise ValueError("greedy_select: no members")
    singles = {name: float(score_fn(np.asarray(members[name]))) for name in names}
    first = max(names, key=lambda n: singles[n])
    chosen, best = [first], singles[first]
    total = np.asarray(members[first], dtype=np.float64 if np.ndim(members[first]) <= 2 else np.float32).copy()
    history = [{"step": 1, "added": first, "score": best}]
    while len(chosen) < max_steps:
        pool = names if replacement else [n for n in names if n not in chosen]
        if not pool:
            break
        trial = {n: float(score_fn((total + members[n]) / (len(chosen) + 1)))
                 for n in bar(pool, desc=f"greedy step {len(chosen) + 1}", unit="member")}
        pick = max(pool, key=lambda n: trial[n])
        if not trial[pick] > best + min_gain:
            break
        chosen.append(pick)
        total += members[pick]
        best = trial[pick]
        history.append({"step": len(chosen), "added": pick, "score": best})
    weights = {n: chosen.count(n) / len(chosen) for n in dict.fromkeys(chosen)}
    return {"members": list(weights), "weights": list(weights.values()), "score": best,
            "single_scores": singles, "history": history}


# --------------------------------------------------------------------------- thresholds


def plateau(values, scores, tolerance: float = 0.005) -> dict:
    """Where a score is within `tolerance` (relative) of its best, and the value in the middle of it.

    Near-best = score >= best - tolerance * |best|. The plateau runs from the lowest to the highest
    near-best value; the choice is the near-best value closest to its middle (so it is near-best itself,
    even when the near-best set has gaps). NaN scores never qualify.
    """
    values, scores = np.asarray(values, dtype=float), np.asarray(scores, dtype=float)
    valid = np.isfinite(scores)
    if not valid.any():
        raise ValueError("plateau: no finite score")
    best_index = int(np.nanargmax(np.where(valid, scores, -np.inf)))
    best = scores[best_index]
    near = valid & (scores >= best - tolerance * abs(best))
    lo, hi = values[near].min(), values[near].max()
    candidates = np.flatnonzero(near)
    choice = candidates[np.argmin(np.abs(values[candidates] - (lo + hi) / 2))]
    return {"value": float(values[choice]), "score": float(scores[choice]), "best_value": float(values[best_index]),
            "best_score": float(best), "plateau": [float(lo), float(hi)], "width": float(hi - lo),
            "near_best_points": int(near.sum()), "tolerance": tolerance}


def tune_classifier_threshold(y_true, y_score, objective: str = "f1", target_recall: float = 0.97,
                              tolerance: float = 0.005, test_prior: float | None = None,
                              robust: str | None = None, test_size: int | None = None, n_boot: int = 1000,
                              seed: int = 0, patients=None, bounds: tuple[float, float] | None = None) -> dict:
    """A decision threshold from the middle of the near-best plateau, with its OOF metrics.

    objective "f1" / "youden": plateau of F1 / Youden's J over every OOF score used as threshold.
    objective "recall": among thresholds whose recall >= target_recall, the plateau of precision, so the
    choice always meets the recall target on OOF. `argmax` holds metrics.tune_threshold's own choice.
    test_prior: the positive share expected in the test set; the OOF images are reweighted to it
    (prior.py), so precision / F1 and the F1-best threshold are those of that mix (`oof` then holds the
    reweighted figures, `oof_unweighted` the plain ones). robust (p10, median ...): the plateau is taken on
    that statistic of the objective over bootstrap resamples of test_size images (bootstrap.py), not on the
    OOF curve itself (whole patients per resample with `patients`, bootstrap.Patients); the recall target is
    still met on OOF. bounds (lo, hi): only thresholds in [lo, hi] are candidates (the multi-task paper's
    recall-tuned threshold "between 0.45 and 0.6"); with objective recall, where no threshold in the range
    meets the target, the range's lowest candidate (its highest recall) is taken and `bounds_note` says so.
    bounds (p, p): the threshold is pinned at p, nothing searched (a published fixed cut: a 2-unit softmax's
    argmax at 0.5, a majority of votes). Returns plain floats, ready for the spec.
    """
    from strokekit.evaluation import prior

    argmax = metrics.tune_threshold(y_true, y_score, objective=objective, target_recall=target_recall)
    weights = None if test_prior is None else prior.prior_weights(y_true, test_prior)
    table = metrics.threshold_table(y_true, y_score) if weights is None else prior.threshold_table(
        y_true, y_score, weights)
    if objective == "recall":
        curve = np.where(table["recall"] >= target_recall, table["precision"], np.nan)
    else:
        curve = table[objective]
    pinned = bounds is not None and bounds[0] == bounds[1]   # --threshold-range P P: nothing to search
    if robust and not pinned:
        from strokekit.evaluation import bootstrap

        _, draws = bootstrap.threshold_curve_draws(y_true, y_score, objective, test_size, n_boot, seed,
                                                   test_prior, target_recall, patients)
        curve = bootstrap.robust_scores(draws, robust)
    note = None
    if bounds is not None and not pinned:
        inside = (table["threshold"] >= bounds[0]) & (table["threshold"] <= bounds[1])
        if not inside.any():
            raise ValueError(f"threshold range [{bounds[0]}, {bounds[1]}] holds no OOF score: widen it")
        if objective == "recall" and not np.isfinite(np.where(inside, curve, np.nan)).any():
            lowest = np.flatnonzero(inside)[np.argmin(table["threshold"][inside])]
            curve = np.where(np.arange(len(curve)) == lowest, 1.0, np.nan)
            note = (f"no threshold in [{bounds[0]}, {bounds[1]}] reaches recall {target_recall} on OOF: the "
                    f"range's lowest, {float(table['threshold'][lowest]):.4f}, recall {table['recall'][lowest]:.3f}")
        curve = np.where(inside, curve, np.nan)
    flat = ({"value": float(bounds[0]), "plateau": [float(bounds[0])] * 2, "width": 0.0, "score": None} if pinned
            else plateau(table["threshold"], curve, tolerance))
    chosen = metrics.classification_metrics(y_true, y_score, flat["value"])
    out = {"threshold": flat["value"], "objective": objective, "plateau": flat["plateau"],
           "plateau_width": flat["width"], "tolerance": tolerance, "argmax": float(argmax["threshold"]),
           "oof": {k: float(v) for k, v in chosen.items() if k != "threshold"}}
    if objective == "recall":
        out["target_recall"] = float(target_recall)
    if bounds is not None:
        out["bounds"] = [float(b) for b in bounds]
        if note:
            out["bounds_note"] = note
    if robust and not pinned:
        out.update(robust=robust, robust_score=flat["score"], test_size=test_size, n_boot=n_boot)
        if patients is not None:
            out["test_patients"] = patients.count
    if weights is not None:
        out["oof_unweighted"] = out["oof"]
        out["oof"] = {**out["oof"], **prior.metrics_at(table, flat["value"])}
        out.update(test_prior=float(test_prior), oof_prior=float(np.mean(np.asarray(y_true) == 1)),
                   argmax=float(table["threshold"][int(np.nanargmax(np.where(np.isfinite(curve), curve, -np.inf)))]))
    return out
