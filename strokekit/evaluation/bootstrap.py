"""Bootstrap over images: how far a figure can move on a test set of a given size, and choices that survive it.

A resample draws `size` images with replacement (the test set's size: 97 for phase 2, 192 for phase 1 —
not the OOF's size, so the spread is the one a leaderboard of that size shows). Each resample is a weight
vector over the images (how often each was drawn), so statistics that are ratios of sums over images
(every segmentation objective, seg_objectives.py) are scored for all resamples and all settings with two
matrix products. With `Patients` a resample draws whole patients instead (a test set of 97 slices from 21
patients varies as 21 patients do, more than 97 independent images would). `interval` serves any per-image
statistic (score.py, ensemble.py); `robust_choice` picks a post-processing setting by the median or 10th
percentile of its bootstrap distribution and then walks to the middle of that statistic's plateau
(seg_search.choose_postprocess).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from strokekit.errors import UnknownNameError
from strokekit.evaluation.ratios import combine, ratio_term

PHASE_TEST_SIZES = {1: 192, 2: 97}          # images in the official test sets (Koç et al. 2022)
ROBUST_STATISTICS = {"median": 50.0, "p10": 10.0, "p25": 25.0, "mean": None}


@dataclass(frozen=True)
class Patients:
    """Resample whole patients, not images: the slices of one patient are not independent, so a test set's
    figure moves as its patients do. groups: (N,) each image's patient, in the order of the images
    resampled; count: patients drawn per resample (the test set's patient count)."""
    groups: np.ndarray
    count: int

    @classmethod
    def of(cls, group_of: Mapping, image_ids, count: int) -> "Patients":
        """The patients of `image_ids` from an image_id -> patient mapping (folds.csv's `group`)."""
        missing = [int(i) for i in image_ids if int(i) not in group_of]
        if missing:
            raise ValueError(f"no patient known for {len(missing)} image(s), e.g. {missing[:5]}")
        return cls(np.asarray([group_of[int(i)] for i in image_ids]), int(count))

    def weights(self, n_boot: int, rng: np.random.Generator) -> np.ndarray:
        """(n_boot, N) how often each image is drawn: its patient's count among `count` patients drawn."""
        if self.count < 1:
            raise ValueError(f"bootstrap needs at least one patient per resample, got {self.count}")
        names, member = np.unique(self.groups, return_inverse=True)
        drawn = rng.multinomial(self.count, np.full(len(names), 1.0 / len(names)), size=n_boot)
        return drawn[:, member].astype(np.float64)

    def images(self) -> int:
        """Images in a resample on average (count x images per patient)."""
        return round(self.count * len(self.groups) / len(np.unique(self.groups)))


def resample_weights(n: int, size: int | None = None, n_boot: int = 1000, seed: int = 0,
                     probabilities=None, patients: Patients | None = None) -> np.ndarray:
    """(n_boot, n) how many times each of n images is drawn in each resample of `size` (default n);
    `probabilities` (N,) draws images unevenly (e.g. prior.prior_weights for another test mix).
    With `patients`, whole patients are drawn (`size` is then theirs: count x images per patient), and
    `probabilities` reweights each drawn image (mean weight 1)."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"bootstrap needs at least one image and one resample (n={n}, n_boot={n_boot})")
    if patients is not None:
        if len(patients.groups) != n:
            raise ValueError(f"patients hold {len(patients.groups)} images, the resampled figure {n}")
        weights = patients.weights(n_boot, np.random.default_rng(seed))
        if probabilities is not None:
            weights *= np.asarray(probabilities, float) * n / np.sum(probabilities)
        return weights
    size = n if size is None else int(size)
    if size < 1:
        raise ValueError(f"bootstrap resample size must be >= 1, got {size}")
    p = np.full(n, 1.0 / n) if probabilities is None else np.asarray(probabilities, float) / np.sum(probabilities)
    return np.random.default_rng(seed).multinomial(size, p, size=n_boot).astype(np.float64)


def resample_facts(n: int, size: int | None, n_boot: int, patients: Patients | None = None) -> dict:
    """What an interval's resamples were: {size (images), n, n_boot} and, by patient, `patients`."""
    if patients is None:
        return {"size": int(size or n), "n": int(n), "n_boot": int(n_boot)}
    return {"size": patients.images(), "n": int(n), "n_boot": int(n_boot), "patients": patients.count,
            "n_patients": int(len(np.unique(patients.groups)))}


def interval(values, statistic: Callable | None = None, size: int | None = None, n_boot: int = 1000,
             level: float = 0.95, seed: int = 0, patients: Patients | None = None) -> dict:
    """Point estimate and percentile interval of a statistic over images.

    values: (N,) per-image values (statistic default: their mean, NaN skipped), or a tuple of arrays of
    length N resampled together and passed to `statistic(*arrays)` (e.g. (y_true, y_pred) and
    balanced accuracy). size: images per resample (default N; a test set's size to see its spread);
    patients: draw whole patients instead. Returns {estimate, low, high, level, size, n, n_boot, std} with
    plain floats (and `patients`, `n_patients` with patients).
    """
    if not 0 < level < 1:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    arrays = tuple(np.asarray(v) for v in (values if isinstance(values, tuple) else (values,)))
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("interval: the arrays resampled together must have one length")
    if statistic is None:
        if len(arrays) != 1:
            raise ValueError("interval: several arrays need a statistic")
        x = arrays[0].astype(np.float64)
        valid = np.isfinite(x)
        weights = resample_weights(n, size, n_boot, seed, patients=patients)
        with np.errstate(invalid="ignore", divide="ignore"):
            draws = (weights @ np.where(valid, x, 0.0)) / (weights @ valid)
        estimate = float(np.nanmean(x)) if valid.any() else np.nan
    else:
        if patients is None:
            draws_idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n if size is None else int(size)))
        else:  # each resample's images, a patient's as often as it was drawn
            weights = resample_weights(n, n_boot=n_boot, seed=seed, patients=patients).astype(int)
            draws_idx = [np.repeat(np.arange(n), w) for w in weights]
        draws = np.array([statistic(*(a[idx] for a in arrays)) for idx in draws_idx], dtype=np.float64)
        estimate = float(statistic(*arrays))
    return summarise(draws, estimate, level) | resample_facts(n, size, n_boot, patients)


def summarise(draws: np.ndarray, estimate: float, level: float = 0.95) -> dict:
    """{estimate, low, high, level, std} of a bootstrap distribution (NaN draws left out)."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if not draws.size:
        return {"estimate": estimate, "low": np.nan, "high": np.nan, "level": level, "std": np.nan}
    tail = 50 * (1 - level)
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {"estimate": float(estimate), "low": float(low), "high": float(high), "level": float(level),
            "std": float(draws.std())}


def format_interval(result: dict, digits: int = 4) -> str:
    """'0.6123 [0.5512, 0.6690]' (95 % interval at n = 97), or '(95 % at 21 patients)'."""
    at = f"{result['patients']} patients" if result.get("patients") else f"n = {result['size']}"
    return (f"{result['estimate']:.{digits}f} [{result['low']:.{digits}f}, {result['high']:.{digits}f}]"
            f" ({100 * result['level']:.0f} % at {at})")


def classifier_intervals(y_true, y_score, threshold: float, size: int | None = PHASE_TEST_SIZES[1],
                         n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                         test_prior: float | None = None, with_auc: bool = True,
                         patients: Patients | None = None) -> dict[str, dict]:
    """Intervals of a classifier's headline figures at its threshold on resamples of `size` images
    (AUC, recall, precision, specificity, F1, balanced accuracy, accuracy); with `test_prior` images are
    drawn so that resamples hold that positive share on average; with `patients`, whole patients are
    drawn. Estimates are the (reweighted) OOF's."""
    from strokekit.evaluation import metrics, prior

    y = np.asarray(y_true).astype(int)
    p = np.asarray(y_score, dtype=float)
    draw = None if test_prior is None else prior.prior_weights(y, test_prior)
    weights = resample_weights(len(y), size, n_boot, seed, draw, patients)
    pred = p >= threshold
    count = lambda mask: weights @ mask.astype(np.float64)
    tp, fp, fn, tn = count(pred & (y == 1)), count(pred & (y == 0)), count(~pred & (y == 1)), count(~pred & (y == 0))
    full = lambda mask: float(np.sum(mask * (1.0 if draw is None else draw)))
    point = [full(pred & (y == 1)), full(pred & (y == 0)), full(~pred & (y == 1)), full(~pred & (y == 0))]
    out = {}
    for name, fn_ in _COUNT_METRICS.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = summarise(fn_(tp, fp, fn, tn), float(fn_(*(np.float64(v) for v in point))), level)
    if with_auc:
        rng = np.random.default_rng(seed + 1)
        probs = None if draw is None else draw / draw.sum()
        aucs = []
        for _ in range(n_boot):
            idx = (rng.choice(len(y), size=size or len(y), p=probs) if patients is None else  # AUC: prior-free
                   np.repeat(np.arange(len(y)), patients.weights(1, rng)[0].astype(int)))
            aucs.append(metrics.roc_auc(y[idx], p[idx]) if 0 < y[idx].sum() < len(idx) else np.nan)
        out["auc"] = summarise(np.array(aucs), float(metrics.roc_auc(y, p)), level)
    facts = resample_facts(len(y), size, n_boot, patients)
    return {k: v | facts for k, v in out.items()}


def threshold_curve_draws(y_true, y_score, objective: str = "f1", size: int | None = PHASE_TEST_SIZES[1],
                          n_boot: int = 1000, seed: int = 0, test_prior: float | None = None,
                          target_recall: float | None = None,
                          patients: Patients | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds (T,), draws (n_boot, T)): a threshold objective (f1, youden, balanced_accuracy, or for
    `recall` the precision where the OOF recall meets target_recall, NaN elsewhere) at every distinct score,
    on resamples of `size` images (drawn at `test_prior`'s positive share when given; whole patients with
    `patients`)."""
    from strokekit.evaluation import metrics, prior

    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(y_score, dtype=float).ravel()
    draw = None if test_prior is None else prior.prior_weights(y, test_prior)
    weights = resample_weights(len(y), size, n_boot, seed, draw, patients)
    order = np.argsort(-p, kind="mergesort")
    last = np.r_[np.nonzero(np.diff(p[order]))[0], p.size - 1]
    tp = np.cumsum(weights[:, order] * y[order], axis=1)[:, last]
    fp = np.cumsum(weights[:, order] * (1 - y[order]), axis=1)[:, last]
    fn, tn = (weights @ y)[:, None] - tp, (weights @ (1 - y))[:, None] - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = {"f1": lambda: _safe(2 * tp, 2 * tp + fp + fn),
                 "youden": lambda: _safe(tp, tp + fn) + _safe(tn, tn + fp) - 1,
                 "balanced_accuracy": lambda: 0.5 * (_safe(tp, tp + fn) + _safe(tn, tn + fp)),
                 "recall": lambda: _safe(tp, tp + fp)}[objective]()
    if objective == "recall":
        meets = metrics.threshold_table(y, p)["recall"] >= (0.97 if target_recall is None else target_recall)
        curve = np.where(meets[None, :], curve, np.nan)
    return p[order][last], curve


def phase1_intervals(y_true, labels, probs=None, size: int | None = None, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95, patients: Patients | None = None) -> dict[str, dict]:
    """score.py phase 1: intervals of recall, precision, specificity, F1, balanced accuracy, accuracy of
    submitted 0/1 labels (and AUC when probabilities are given), resampling the scored images."""
    out = classifier_intervals(y_true, labels, 0.5, size, n_boot, seed, level, with_auc=False, patients=patients)
    if probs is not None:
        from strokekit.evaluation import metrics

        y = np.asarray(y_true).astype(int)
        auc = lambda yy, pp: metrics.roc_auc(yy, pp) if 0 < yy.sum() < len(yy) else np.nan
        out["auc"] = interval((y, np.asarray(probs, float)), auc, size=size, n_boot=n_boot, level=level, seed=seed,
                              patients=patients)
    return out


def phase2_intervals(official_iou, official_dice, strict=None, size: int | None = None, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95, patients: Patients | None = None) -> dict[str, dict]:
    """score.py phase 2: intervals of the official per-image IoU / Dice means and, given strict per-image
    counts (metrics.SegStats, (N, 3) each), of the strict lesion-mean Dice / IoU (macro-imagewise and
    micro), all from the same resamples of the scored images."""
    parts = {"official_iou": [(np.nan_to_num(np.asarray(official_iou, float)),
                               np.isfinite(np.asarray(official_iou, float)).astype(float))],
             "official_dice": [(np.nan_to_num(np.asarray(official_dice, float)),
                                np.isfinite(np.asarray(official_dice, float)).astype(float))]}
    if strict is not None:
        def counts(c):
            return [np.asarray(getattr(strict, k))[:, c].astype(float) for k in ("tp", "fp", "fn")]

        for kind in ("dice", "iou"):
            for reduction in ("macro-imagewise", "micro"):
                name = f"{kind}_{reduction.replace('-', '_')}_lesion_mean"
                parts[name] = [ratio_term(*counts(c), kind, reduction, np.nan) for c in (1, 2)]
    n = len(parts["official_iou"][0][0])
    weights = resample_weights(n, size, n_boot, seed, patients=patients)
    facts = resample_facts(n, size, n_boot, patients)
    out = {}
    for name, terms in parts.items():
        estimate = float(combine([(num[:, None], den[:, None]) for num, den in terms])[0])
        draws = combine([(num[:, None], den[:, None]) for num, den in terms], weights)[:, 0]
        out[name] = summarise(draws, estimate, level) | facts
    return out


def _safe(num, den):
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


_COUNT_METRICS = {
    "recall": lambda tp, fp, fn, tn: _safe(tp, tp + fn),
    "precision": lambda tp, fp, fn, tn: _safe(tp, tp + fp),
    "specificity": lambda tp, fp, fn, tn: _safe(tn, tn + fp),
    "f1": lambda tp, fp, fn, tn: _safe(2 * tp, 2 * tp + fp + fn),
    "balanced_accuracy": lambda tp, fp, fn, tn: 0.5 * (_safe(tp, tp + fn) + _safe(tn, tn + fp)),
    "accuracy": lambda tp, fp, fn, tn: _safe(tp + tn, tp + fp + fn + tn),
}


def robust_scores(draws: np.ndarray, statistic: str = "p10") -> np.ndarray:
    """One robust figure per setting from its bootstrap draws (n_boot, S)."""
    if statistic not in ROBUST_STATISTICS:
        raise UnknownNameError(f"unknown robust statistic {statistic!r}; valid: {list(ROBUST_STATISTICS)}")
    q = ROBUST_STATISTICS[statistic]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)          # all-NaN settings stay NaN
        return np.nanmean(draws, axis=0) if q is None else np.nanpercentile(draws, q, axis=0)
