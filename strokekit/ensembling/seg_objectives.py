"""Scores of post-processing settings from per-image counts (seg_counts.py), as sums over images.

Every objective is the mean over one or two terms of (sum over images of num) / (sum over images of den):
  dice / iou                 strict, per lesion class (two terms), reduced `macro-imagewise` (per-image
                             score, NaN where the class is absent from truth and prediction, averaged) or
                             `micro` (summed counts), then the mean of the two classes (NaN skipped)
  official_iou / _dice       the organisers' tolerant counting (score.py's DEIoU and its Dice): both classes
                             counted together per image; `macro-imagewise` = mean over images (an image with
                             nothing to find and nothing drawn scores `official_empty`, 1.0 as score.py),
                             `micro` = summed counts
Because each term is a ratio of sums over images, a bootstrap resample is a weight vector over images and
its scores are two matrix products (bootstrap.py), for every setting at once.
"""
from __future__ import annotations

import numpy as np

from strokekit.errors import UnknownNameError
from strokekit.evaluation.ratios import ratio, ratio_term
from strokekit.ensembling.seg_counts import AREA, FP, OFP, OG3, OTP, TP, GridCounts

OBJECTIVES = ("dice", "iou", "official_iou", "official_dice")
REDUCTIONS = ("macro-imagewise", "micro")


def check_objective(objective: str, reduction: str = "macro-imagewise") -> None:
    if objective not in OBJECTIVES:
        raise UnknownNameError(f"unknown segmentation objective {objective!r}; valid: {list(OBJECTIVES)}")
    if reduction not in REDUCTIONS:
        raise UnknownNameError(f"search reduction {reduction!r}; valid: {list(REDUCTIONS)}")


def presence(options: list, cls: int, image_probs, high_counts: np.ndarray, highs: list) -> np.ndarray:
    """(N, n_options) whether class `cls` survives each (gate, triplet) option, per image."""
    out = np.ones((high_counts.shape[0], len(options)), dtype=bool)
    for j, (gate, triplet) in enumerate(options):
        if gate is not None:
            if image_probs is None:
                raise ValueError("the grid searches an image gate but no image_probs were given")
            out[:, j] &= image_probs[:, cls - 1] >= gate
        if triplet is not None:
            out[:, j] &= high_counts[:, highs.index(float(triplet["high"]))] >= int(triplet["min_pixels"])
    return out


def class_counts(grid: GridCounts, present: np.ndarray, cls: int, b, a) -> np.ndarray:
    """(N, S, 6) counts of one class under settings (base b, class setting a), a indexing (min_area,
    keep_largest, presence option) flattened in that order; a class the triplet rule or the gate removes
    counts nothing. Presence is applied here, so the counts are never stored once per presence option."""
    counts = grid.counts[cls]                                        # (N, base, m, k, 6)
    n_keep, n_options = counts.shape[3], present.shape[1]
    m, rest = np.divmod(np.asarray(a), n_keep * n_options)
    k, j = np.divmod(rest, n_options)
    return counts[:, b, m, k].astype(np.float32) * present[:, j, None]


class SettingCounts:
    """Both classes' counts of a grid, and their per-image terms for any list of settings (b, a1, a2)."""

    def __init__(self, grid: GridCounts, presence_by_class: dict[int, np.ndarray], never_empty: bool,
                 official_empty: float = 1.0):
        self.grid, self.never_empty, self.official_empty = grid, never_empty, official_empty
        self.present = presence_by_class
        size = lambda c: int(np.prod(grid.counts[c].shape[2:4])) * presence_by_class[c].shape[1]
        self.shape = (grid.counts[1].shape[1], size(1), size(2))

    def gather(self, b, a1, a2) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, 6) counts of each class under settings S, the never-empty fill applied."""
        x1, x2 = (class_counts(self.grid, self.present[c], c, b, a) for c, a in ((1, a1), (2, a2)))
        if self.never_empty:
            empty = (x1[..., AREA] == 0) & (x2[..., AREA] == 0)
            fill = self.grid.fill[:, b].astype(np.float32)
            cls = self.grid.fill_class[:, None]
            x1 = x1 + ((empty & (cls == 1))[..., None] * fill)
            x2 = x2 + ((empty & (cls == 2))[..., None] * fill)
        return x1, x2

    def terms(self, b, a1, a2, objective: str, reduction: str = "macro-imagewise") -> list[tuple]:
        """[(num (N, S), den (N, S)), ...]: the objective is the mean over terms of sum(num) / sum(den)."""
        check_objective(objective, reduction)
        x1, x2 = self.gather(b, a1, a2)
        kind = "dice" if objective.endswith("dice") else "iou"
        if objective.startswith("official"):
            tp = x1[..., OTP] + x2[..., OTP]
            fp = x1[..., OFP] + x2[..., OFP]
            fn = self.grid.n_gt3[:, None] - x1[..., OG3] - x2[..., OG3]
            return [ratio_term(tp, fp, fn, kind, reduction, self.official_empty)]
        out = []
        for c, x in ((1, x1), (2, x2)):
            fn = self.grid.n_true[:, c - 1, None] - x[..., TP]
            out.append(ratio_term(x[..., TP], x[..., FP], fn, kind, reduction, np.nan))
        return out

    def per_class(self, b, a1, a2, objective: str, reduction: str) -> np.ndarray:
        """(2, S) strict per-class scores of the objective's kind (dice / iou)."""
        kind = "dice" if objective.endswith("dice") else "iou"
        return np.stack([ratio(*t) for t in self.terms(b, a1, a2, kind, reduction)])
