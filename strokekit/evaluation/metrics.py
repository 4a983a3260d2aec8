"""Classification and strict segmentation metrics: stateless numpy functions on labels, probabilities or counts.

Classification: a probability p is called positive when p >= threshold (the same rule everywhere, so a
threshold found by `tune_threshold` reproduces its counts exactly). A ratio whose denominator is zero is
0.0 (sklearn's zero_division=0), except ROC AUC, which is NaN when only one class is present.

Segmentation (strict, pixel-exact, no tolerance band; the organisers' tolerant counting is in
`strokekit.evaluation.official`): `seg_stats` gives per-image, per-class tp/fp/fn/tn; `iou_score` / `dice_score`
reduce them by a named reduction:
  "micro"            dataset-wise: sum each class's counts over images, then one score per class;
  "macro-imagewise"  one score per image and class, then the mean over images (NaN entries skipped);
  "none"             the (N, C) per-image scores.
Empty-mask rule: where truth and prediction are both empty for a class (tp + fp + fn == 0) the score is
`empty` — NaN by default, so that image does not count in means (nnU-Net's rule); pass empty=1.0 to score
it as perfect.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata
from strokekit.errors import UnknownNameError
from strokekit.vocabulary import LESION_CLASSES

REDUCTIONS = ("micro", "macro-imagewise", "none")
OBJECTIVES = ("f1", "youden", "recall")


# --------------------------------------------------------------------------- classification


def _as_binary(y_true, y_score, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(y_score, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.size}) and scores ({p.size}) differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got {sorted(set(np.unique(y).tolist()) - {0, 1})}")
    return y, (p >= threshold).astype(int)


def _ratio(num, den, zero_division: float = 0.0):
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1), zero_division)
    return float(out) if out.ndim == 0 else out


def confusion_counts(y_true, y_score, threshold: float = 0.5) -> dict[str, int]:
    """tp, fp, fn, tn of binary labels against scores (hard 0/1 predictions work with threshold 0.5)."""
    y, pred = _as_binary(y_true, y_score, threshold)
    return {"tp": int(((pred == 1) & (y == 1)).sum()), "fp": int(((pred == 1) & (y == 0)).sum()),
            "fn": int(((pred == 0) & (y == 1)).sum()), "tn": int(((pred == 0) & (y == 0)).sum())}


def accuracy(y_true, y_score, threshold: float = 0.5) -> float:
    c = confusion_counts(y_true, y_score, threshold)
    return _ratio(c["tp"] + c["tn"], sum(c.values()))


def precision(y_true, y_score, threshold: float = 0.5) -> float:
    c = confusion_counts(y_true, y_score, threshold)
    return _ratio(c["tp"], c["tp"] + c["fp"])


def recall(y_true, y_score, threshold: float = 0.5) -> float:
    """Recall = sensitivity = true-positive rate."""
    c = confusion_counts(y_true, y_score, threshold)
    return _ratio(c["tp"], c["tp"] + c["fn"])


sensitivity = recall


def specificity(y_true, y_score, threshold: float = 0.5) -> float:
    c = confusion_counts(y_true, y_score, threshold)
    return _ratio(c["tn"], c["tn"] + c["fp"])


def f1_score(y_true, y_score, threshold: float = 0.5) -> float:
    c = confusion_counts(y_true, y_score, threshold)
    return _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])


def balanced_accuracy(y_true, y_score, threshold: float = 0.5) -> float:
    """Mean of sensitivity and specificity: the specification's phase-1 metric (0.75 needed to qualify)."""
    return 0.5 * (recall(y_true, y_score, threshold) + specificity(y_true, y_score, threshold))


def metrics_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """All threshold metrics from one confusion matrix (zero denominators give 0.0)."""
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {"accuracy": _ratio(tp + tn, tp + fp + fn + tn), "precision": _ratio(tp, tp + fp),
            "recall": sens, "specificity": spec, "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "balanced_accuracy": 0.5 * (sens + spec)}


def classification_metrics(y_true, y_score, threshold: float = 0.5) -> dict[str, float]:
    """Counts, accuracy, precision, recall, specificity, F1, balanced accuracy and ROC AUC in one dict.

    AUC uses the scores themselves, so it is only meaningful when they are probabilities, not 0/1 labels.
    """
    counts = confusion_counts(y_true, y_score, threshold)
    return {**counts, **metrics_from_counts(**counts), "auc": roc_auc(y_true, y_score),
            "threshold": float(threshold)}


def roc_auc(y_true, y_score) -> float:
    """ROC AUC as the Mann-Whitney statistic: the chance a random positive outscores a random negative.

    Tied scores get their average rank, which counts a positive-negative tie as one half (the same as
    the trapezoidal ROC area). NaN when only one class is present.
    """
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(y_score, dtype=float).ravel()
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)  # average ranks for ties
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def threshold_table(y_true, y_score) -> dict[str, np.ndarray]:
    """Counts and metrics at every distinct score used as threshold (p >= t is positive), highest first.

    Columns (equal-length arrays, ready for pandas.DataFrame): threshold, tp, fp, fn, tn, precision,
    recall, specificity, f1, balanced_accuracy, youden (= recall + specificity - 1).
    """
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(y_score, dtype=float).ravel()
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    # the last index of each run of equal scores: everything up to it is called positive at that score
    last = np.r_[np.nonzero(np.diff(p_sorted))[0], p.size - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    fn, tn = y.sum() - tp, (y.size - y.sum()) - fp
    rec, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {"threshold": p_sorted[last], "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": _ratio(tp, tp + fp), "recall": rec, "specificity": spec,
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "balanced_accuracy": 0.5 * (rec + spec),
            "youden": rec + spec - 1}


def tune_threshold(y_true, y_score, objective: str = "f1", target_recall: float = 0.97) -> dict:
    """Pick a threshold on (out-of-fold) scores; predictions are positive when p >= threshold.

    objective="f1" / "youden": the threshold maximising F1 / Youden's J (ties: the highest threshold).
    objective="recall": the highest threshold whose recall >= target_recall (the best precision that still
    meets the recall target). Returns {"threshold", "objective", "score", **metrics at that threshold}.
    """
    if objective not in OBJECTIVES:
        raise UnknownNameError(f"unknown threshold objective {objective!r}; choose from {list(OBJECTIVES)}")
    table = threshold_table(y_true, y_score)
    if objective == "recall":
        # recall never falls as the threshold falls, and the lowest score gives recall 1, so one qualifies
        index = int(np.argmax(table["recall"] >= target_recall))
        score = float(table["recall"][index])
    else:
        index = int(np.argmax(table[objective]))  # first maximum = highest threshold
        score = float(table[objective][index])
    threshold = float(table["threshold"][index])
    return {"threshold": threshold, "objective": objective, "score": score,
            **classification_metrics(y_true, y_score, threshold)}


# --------------------------------------------------------------------------- segmentation (strict)


class SegStats(NamedTuple):
    """Per-image, per-class pixel counts, each an (N, C) int64 array (C = n_classes, background included)."""
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray


def seg_stats(pred, true, n_classes: int = 3) -> SegStats:
    """One-vs-rest pixel counts for each class from class maps of shape (H, W) or (N, H, W)."""
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    if pred.ndim == 2:
        pred, true = pred[None], true[None]
    n = pred.shape[0]
    pred, true = pred.reshape(n, -1).astype(np.int64), true.reshape(n, -1).astype(np.int64)
    # joint histogram of (true, pred) per image: one bincount instead of a loop over classes
    joint = true * n_classes + pred + (np.arange(n)[:, None] * n_classes * n_classes)
    conf = np.bincount(joint.ravel(), minlength=n * n_classes ** 2).reshape(n, n_classes, n_classes)
    tp = np.diagonal(conf, axis1=1, axis2=2).copy()
    fp = conf.sum(axis=1) - tp  # predicted c, true something else
    fn = conf.sum(axis=2) - tp  # true c, predicted something else
    tn = pred.shape[1] - tp - fp - fn
    return SegStats(tp, fp, fn, tn)


def _reduce(numerator, denominator, reduction: str, empty: float) -> np.ndarray:
    if reduction not in REDUCTIONS:
        raise UnknownNameError(f"unknown reduction {reduction!r}; choose from {list(REDUCTIONS)}")
    if reduction == "micro":
        numerator, denominator = numerator.sum(axis=0), denominator.sum(axis=0)
    scores = np.full(np.shape(denominator), empty, dtype=float)
    np.divide(numerator, denominator, out=scores, where=denominator > 0)
    if reduction == "macro-imagewise":
        return nanmean(scores, axis=0)
    return scores


def iou_score(tp, fp, fn, tn=None, reduction: str = "micro", empty: float = np.nan) -> np.ndarray:
    """IoU = tp / (tp + fp + fn) per class, reduced as named (see module docstring); tn is unused."""
    tp, fp, fn = (np.asarray(a) for a in (tp, fp, fn))
    return _reduce(tp, tp + fp + fn, reduction, empty)


def dice_score(tp, fp, fn, tn=None, reduction: str = "micro", empty: float = np.nan) -> np.ndarray:
    """Dice = 2 tp / (2 tp + fp + fn) per class, reduced as named (see module docstring); tn is unused."""
    tp, fp, fn = (np.asarray(a) for a in (tp, fp, fn))
    return _reduce(2 * tp, 2 * tp + fp + fn, reduction, empty)


def lesion_mean(per_class_scores, classes=LESION_CLASSES) -> float:
    """Mean over the lesion classes (ischemic, hemorrhagic) of per-class scores, NaN classes skipped."""
    return float(nanmean(np.asarray(per_class_scores, dtype=float)[..., list(classes)], axis=-1))


def seg_scores(stats: SegStats, empty: float = np.nan,
               class_names: dict[int, str] | None = None) -> dict[str, float]:
    """Named strict scores: `{iou|dice}_{micro|macro_imagewise}_{class name|lesion_mean}`."""
    names = class_names or {1: "ischemic", 2: "hemorrhagic"}
    out: dict[str, float] = {}
    for metric, fn in (("iou", iou_score), ("dice", dice_score)):
        for reduction in ("micro", "macro-imagewise"):
            per_class = fn(*stats, reduction=reduction, empty=empty)
            key = f"{metric}_{reduction.replace('-', '_')}"
            out.update({f"{key}_{names[c]}": float(per_class[c]) for c in names})
            out[f"{key}_lesion_mean"] = lesion_mean(per_class, tuple(names))
    return out


def pooled_by_group(stats: SegStats, groups) -> SegStats:
    """Counts summed over each group's images (a patient's slices): one row per group, in order of first
    appearance. A group's IoU is then its pooled (volume) IoU; reduced macro-imagewise, the mean over patients
    (the DPN-U-Net paper's "mean IoU per patient")."""
    groups = np.asarray(groups)
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # group number -> rank of its first appearance
    pooled = []
    for counts in stats:
        out = np.zeros((len(first), counts.shape[1]), dtype=np.int64)
        np.add.at(out, order[inverse], counts)
        pooled.append(out)
    return SegStats(*pooled)


def nanmean(values: np.ndarray, axis: int):
    """Mean skipping NaN; NaN (without numpy's warning) where every entry is NaN."""
    values = np.asarray(values, dtype=float)
    count = (~np.isnan(values)).sum(axis=axis)
    total = np.nansum(values, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)
