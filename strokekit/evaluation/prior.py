"""Prior shift: tune a decision threshold for a test set whose positive share differs from the OOF's.

Phase 1's test mix (192 images) need not match the training prior. If the model's scores keep their
meaning within each class (label shift: p(x | y) unchanged), a test set with positive share pi_t looks like
the OOF images reweighted: each positive counts pi_t / pi_s, each negative (1 - pi_t) / (1 - pi_s), with
pi_s the OOF's share. Recall, specificity, balanced accuracy and Youden's J do not move; precision, F1 and
accuracy do, so the F1-best threshold does. `shift_probs` is the matching correction of the probabilities
themselves (Saerens et al., Neural Computation 2002).
"""
from __future__ import annotations

import numpy as np

from strokekit.errors import SettingError


def _check_prior(prior: float, name: str) -> float:
    prior = float(prior)
    if not 0.0 < prior < 1.0:
        raise SettingError(f"{name} must be a share strictly between 0 and 1, got {prior}")
    return prior


def prior_weights(y_true, test_prior: float) -> np.ndarray:
    """Per-image weights that turn the OOF's positive share into `test_prior` (they sum to N)."""
    y = np.asarray(y_true).astype(int).ravel()
    train_prior = _check_prior(y.mean() if y.size else np.nan, "the OOF's positive share")
    test_prior = _check_prior(test_prior, "test prior")
    return np.where(y == 1, test_prior / train_prior, (1 - test_prior) / (1 - train_prior))


def shift_probs(probs, train_prior: float, test_prior: float) -> np.ndarray:
    """P(positive | x) under the test prior from P under the training prior (odds times the prior ratio)."""
    p = np.clip(np.asarray(probs, dtype=float), 1e-12, 1 - 1e-12)
    a = _check_prior(test_prior, "test prior") / _check_prior(train_prior, "train prior")
    b = (1 - test_prior) / (1 - train_prior)
    return a * p / (a * p + b * (1 - p))


def threshold_table(y_true, y_score, weights=None) -> dict[str, np.ndarray]:
    """metrics.threshold_table with weighted counts (weights None: every image counts 1)."""
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(y_score, dtype=float).ravel()
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=float).ravel()
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted, w_sorted = p[order], y[order], w[order]
    last = np.r_[np.nonzero(np.diff(p_sorted))[0], p.size - 1]
    tp = np.cumsum(w_sorted * y_sorted)[last]
    fp = np.cumsum(w_sorted * (1 - y_sorted))[last]
    pos, neg = (w * y).sum(), (w * (1 - y)).sum()
    fn, tn = pos - tp, neg - fp
    ratio = lambda a, b: np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)
    rec, spec = ratio(tp, tp + fn), ratio(tn, tn + fp)
    return {"threshold": p_sorted[last], "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": ratio(tp, tp + fp), "recall": rec, "specificity": spec,
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "balanced_accuracy": 0.5 * (rec + spec),
            "youden": rec + spec - 1, "accuracy": ratio(tp + tn, tp + tn + fp + fn)}


def metrics_at(table: dict, threshold: float) -> dict[str, float]:
    """The row of a threshold table at `threshold` (p >= threshold is positive) as plain floats."""
    at = np.flatnonzero(table["threshold"] >= threshold)
    i = int(at[-1]) if at.size else None
    keys = ("precision", "recall", "specificity", "f1", "balanced_accuracy", "accuracy")
    if i is None:   # nothing called positive
        tn, fn = table["tn"][0] + table["fp"][0], table["fn"][0] + table["tp"][0]
        return {k: 0.0 for k in keys} | {"specificity": 1.0 if tn else 0.0,
                                         "balanced_accuracy": 0.5, "accuracy": tn / max(tn + fn, 1e-12)}
    return {k: float(table[k][i]) for k in keys}
