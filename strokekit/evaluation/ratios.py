"""Figures that are ratios of sums over images, and their means: the form of every segmentation objective.

A resample of images is then a weight vector over them, so a bootstrap scores every resample (and every
post-processing setting) with two matrix products.
"""
from __future__ import annotations

import numpy as np


def ratio_term(tp, fp, fn, kind: str, reduction: str, empty: float) -> tuple[np.ndarray, np.ndarray]:
    """(num, den) per image of a strict Dice / IoU: the counts themselves (`micro`) or the per-image score over
    a 0/1 weight (`macro-imagewise`, images with 0/0 weigh 0 unless `empty` is finite)."""
    num, den = (2 * tp, 2 * tp + fp + fn) if kind == "dice" else (tp, tp + fp + fn)
    if reduction == "micro":
        return num, den
    score = np.full(num.shape, empty, dtype=np.float64)
    np.divide(num, den, out=score, where=den > 0)
    valid = np.isfinite(score)
    return np.where(valid, score, 0.0), valid.astype(np.float64)


def ratio(num: np.ndarray, den: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """sum(num) / sum(den) over images (axis 0), or per row of `weights` (B, N) -> (B, S); 0/0 = NaN."""
    top, bottom = (num.sum(0), den.sum(0)) if weights is None else (weights @ num, weights @ den)
    out = np.full(np.shape(top), np.nan)
    np.divide(top, bottom, out=out, where=bottom > 0)
    return out


def combine(terms: list[tuple], weights: np.ndarray | None = None) -> np.ndarray:
    """The objective from its terms: the mean of the terms' ratios, NaN terms skipped."""
    ratios = np.stack([ratio(num, den, weights) for num, den in terms])
    count = np.isfinite(ratios).sum(0)
    total = np.nansum(ratios, axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
