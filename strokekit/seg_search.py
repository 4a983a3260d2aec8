"""Segmentation post-processing chosen on OOF: exact evaluation, and a fast grid search reported as a table.

Every score is strict per-class IoU or Dice at the true masks' resolution (OOF probabilities are
upsampled bilinearly first), reduced by metrics.py with a named reduction, then averaged over the two
lesion classes (metrics.lesion_mean). The grid search gives the same numbers as `evaluate_postprocess`
on every setting (a test pins this) but labels connected components once per (class, threshold,
closing) and image: min-area and keep-largest are then sums over the component table, and the triplet
rule and image gate are per-image switches on the counts. The organisers' tolerant counting
(official.py) is additive over components too (each pixel is TP, FP or FN by GT2/GT3, and the region rule
is one flag per component), so it can join as a second per-component counter.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from strokekit import metrics
from strokekit.postprocess import (LESION_CLASSES, OVERLAP_RULES, apply_postprocess, bounding_box, close_mask,
                                   components, normalise_spec, pass_mask, resize_probs, resolve_overlap)
from strokekit.selection import plateau

SCORES = {"iou": metrics.iou_score, "dice": metrics.dice_score}
CLASS_NAME = {cls: name for name, cls in LESION_CLASSES.items()}
# axes searched per class, in the order choose_postprocess walks their plateaus
NUMERIC_AXES = ("threshold", "min_area", "closing", "gate", "triplet_high", "triplet_min_pixels")


def mask_getter(masks) -> Callable[[int], np.ndarray]:
    """True class maps by image id, from a Mapping {id: (H, W) uint8} or a callable id -> class map."""
    if isinstance(masks, Mapping):
        return lambda image_id: np.asarray(masks[int(image_id)])
    if callable(masks):
        return masks
    raise TypeError("masks must be a Mapping {image_id: class map} or a callable image_id -> class map")


def aligned_image_probs(image_probs, image_ids) -> np.ndarray | None:
    """Image-level probabilities as an (N, 2) array [ischemic, hemorrhagic] in the order of image_ids.

    Accepts an (N,) / (N, 2) array already in that order, or a Mapping / pandas Series by image id whose
    values are P(stroke) (used for both classes) or [p_ischemic, p_hemorrhagic].
    """
    if image_probs is None:
        return None
    if isinstance(image_probs, (Mapping, pd.Series)):
        missing = [int(i) for i in image_ids if int(i) not in image_probs]
        if missing:
            raise KeyError(f"no image-level probability for images {missing[:5]} ({len(missing)} in all)")
        values = [np.broadcast_to(np.asarray(image_probs[int(i)], float), (2,)) for i in image_ids]
        return np.stack(values)
    values = np.asarray(image_probs, dtype=float)
    values = np.repeat(values[:, None], 2, axis=1) if values.ndim == 1 else values
    if values.shape != (len(image_ids), 2):
        raise ValueError(f"image_probs must be (N,) or (N, 2) with N = {len(image_ids)}; got {values.shape}")
    return values


# --------------------------------------------------------------------------- exact evaluation


def evaluate_postprocess(oof: dict, masks, spec: dict | None = None, image_probs=None) -> metrics.SegStats:
    """Per-image strict counts (N, 3) of `spec` applied to every OOF image at its true mask's size."""
    get_mask, spec = mask_getter(masks), normalise_spec(spec)
    probs_by_image = aligned_image_probs(image_probs, oof["image_id"])
    stats = []
    for i, image_id in enumerate(oof["image_id"]):
        true = get_mask(image_id)
        probs = resize_probs(oof["probs"][i], true.shape)
        image_prob = None if probs_by_image is None else probs_by_image[i]
        stats.append(metrics.seg_stats(apply_postprocess(probs, spec, image_prob), true))
    return metrics.SegStats(*(np.concatenate(parts) for parts in zip(*stats)))


def seg_score(stats: metrics.SegStats, metric: str = "dice", reduction: str = "macro-imagewise",
              empty: float = np.nan) -> dict[str, float]:
    """{score: lesion mean, ischemic, hemorrhagic} of strict IoU or Dice under a named reduction."""
    if metric not in SCORES:
        raise KeyError(f"unknown segmentation metric {metric!r}; valid: {sorted(SCORES)}")
    per_class = SCORES[metric](stats.tp, stats.fp, stats.fn, reduction=reduction, empty=empty)
    return {"score": metrics.lesion_mean(per_class),
            **{name: float(per_class[cls]) for name, cls in LESION_CLASSES.items()}}


def seg_scorer(image_ids, masks, spec: dict | None = None, metric: str = "dice",
               reduction: str = "macro-imagewise") -> Callable[[np.ndarray], float]:
    """score_fn(probs (N, 3, S, S)) -> lesion-mean score, for greedy_select over segmentation members."""
    ids = np.asarray(image_ids)
    return lambda probs: seg_score(evaluate_postprocess({"image_id": ids, "probs": probs}, masks, spec),
                                   metric, reduction)["score"]


def seg_fold_scores(oof: dict, masks, spec: dict | None = None, metric: str = "dice",
                    reduction: str = "macro-imagewise") -> pd.DataFrame:
    """Score of each fold of a segmentation OOF (columns fold, n, score), for selection.top_k_folds."""
    stats = evaluate_postprocess(oof, masks, spec)
    rows = []
    for fold in np.unique(oof["fold"]):
        rows_of = oof["fold"] == fold
        part = metrics.SegStats(*(a[rows_of] for a in stats))
        rows.append({"fold": int(fold), "n": int(rows_of.sum()), "score": seg_score(part, metric, reduction)["score"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- grid search


def _candidates(value, key: str) -> dict[int, list]:
    """Per-class candidate lists: a list (searched for each class independently) or {class name: list}."""
    if isinstance(value, Mapping) and set(value) == set(LESION_CLASSES):
        per_class = dict(value)
    else:
        per_class = {name: value for name in LESION_CLASSES}
    out = {cls: list(per_class[name]) if isinstance(per_class[name], (list, tuple)) else [per_class[name]]
           for name, cls in LESION_CLASSES.items()}
    if any(not values for values in out.values()):
        raise ValueError(f"grid {key!r} has an empty candidate list")
    return out


def normalise_grid(grid: dict) -> dict:
    """Validated grid: overlap rules, and per class the candidates of every other post-processing key.

    A list is searched for each lesion class independently (thresholds [0.3, 0.5] -> 4 pairs); give
    {ischemic: [...], hemorrhagic: [...]} for different lists. `triplet` candidates are None or
    {high, min_pixels}; `gate` candidates are None or a probability; a threshold None is argmax decoding.
    """
    unknown = sorted(set(grid) - set(normalise_spec(None)))
    if unknown:
        raise KeyError(f"unknown grid key(s) {unknown}; valid keys: {sorted(normalise_spec(None))}")
    rules = grid.get("overlap", "argmax")
    rules = [rules] if isinstance(rules, str) else list(rules)
    if set(rules) - set(OVERLAP_RULES):
        raise ValueError(f"overlap rules {rules}; valid: {list(OVERLAP_RULES)}")
    out = {"overlap": rules}
    threshold = lambda v: None if v is None else float(v)          # None: argmax decoding
    for key, default, cast in (("threshold", None, threshold), ("closing", 0, int), ("min_area", 0, int),
                               ("keep_largest", False, bool)):
        out[key] = {c: [cast(v) for v in vals] for c, vals in _candidates(grid.get(key, default), key).items()}
    gates = _candidates(grid.get("gate", None), "gate")
    triplets = _candidates(grid.get("triplet", None), "triplet")
    out["presence"] = {c: [(g, t) for g in gates[c] for t in triplets[c]] for c in LESION_CLASSES.values()}
    for options in out["presence"].values():
        for _, triplet in options:
            if triplet is not None and set(triplet) != {"high", "min_pixels"}:
                raise KeyError(f"grid triplet candidates need keys ['high', 'min_pixels']; got {sorted(triplet)}")
    return out


def _component_counts(mask: np.ndarray, truth: np.ndarray, min_areas: np.ndarray,
                      keep_largest: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """tp, fp of one class mask for every (min_area, keep_largest): arrays (n_min_area, n_keep)."""
    tp = np.zeros((len(min_areas), len(keep_largest)), np.int64)
    fp = tp.copy()
    if not mask.any():
        return tp, fp
    box = bounding_box(mask)
    labels, areas = components(mask[box])
    hits = np.bincount(labels.ravel(), weights=truth[box].ravel(), minlength=len(areas)).astype(np.int64)
    areas, hits = areas[1:], hits[1:]
    kept = areas[None, :] >= min_areas[:, None]                     # (n_min_area, n_components)
    largest = np.arange(len(areas)) == np.argmax(areas)              # first of equal largest, as postprocess
    for k, only_largest in enumerate(keep_largest):
        keep = kept & largest[None, :] if only_largest else kept
        tp[:, k] = keep @ hits
        fp[:, k] = keep @ areas - tp[:, k]
    return tp, fp


def _image_counts(probs: np.ndarray, true: np.ndarray, axes: dict, bases: list) -> tuple[dict, dict]:
    """tp, fp per class for every base setting (overlap, t1, r1, t2, r2) x min_area x keep_largest.

    Class c's mask depends on the other class only where both pass; elsewhere its component counts are
    computed once per (class, threshold, closing) and reused for every base that shares them.
    """
    truth = {c: true == c for c in CLASS_NAME}
    shape = {c: (len(bases), len(axes["min_area"][c]), len(axes["keep_largest"][c])) for c in CLASS_NAME}
    tp = {c: np.zeros(shape[c], np.int64) for c in CLASS_NAME}
    fp = {c: np.zeros(shape[c], np.int64) for c in CLASS_NAME}
    min_areas = {c: np.asarray(axes["min_area"][c]) for c in CLASS_NAME}
    count = lambda c, mask: _component_counts(mask, truth[c], min_areas[c], axes["keep_largest"][c])
    needs_argmax = any(t is None for c in CLASS_NAME for t in axes["threshold"][c])
    passed, cached, argmax = {}, {}, probs.argmax(axis=0) if needs_argmax else None
    for b, (rule, t1, r1, t2, r2) in enumerate(bases):
        keys = {1: (1, t1, r1), 2: (2, t2, r2)}
        for cls, t, r in keys.values():
            if (cls, t, r) not in passed:
                passed[cls, t, r] = close_mask(pass_mask(probs, cls, t, argmax), r)
        masks = {c: passed[key] for c, key in keys.items()}
        if masks[1].any() and masks[2].any() and (masks[1] & masks[2]).any():
            masks = {c: m.copy() for c, m in masks.items()}
            resolve_overlap(masks, probs, rule)          # these masks belong to this pair of settings only
            for c in keys:
                tp[c][b], fp[c][b] = count(c, masks[c])
            continue
        for c, key in keys.items():
            if key not in cached:
                cached[key] = count(c, masks[c])
            tp[c][b], fp[c][b] = cached[key]
    return tp, fp


def _presence(options: list, cls: int, image_probs, high_counts: np.ndarray, highs: list) -> np.ndarray:
    """(N, n_options) whether class `cls` survives each (gate, triplet) option, per image."""
    n = high_counts.shape[0]
    out = np.ones((n, len(options)), dtype=bool)
    for j, (gate, triplet) in enumerate(options):
        if gate is not None:
            if image_probs is None:
                raise ValueError("the grid searches an image gate but no image_probs were given")
            out[:, j] &= image_probs[:, cls - 1] >= gate
        if triplet is not None:
            out[:, j] &= high_counts[:, highs.index(float(triplet["high"]))] >= int(triplet["min_pixels"])
    return out


def search_postprocess(oof: dict, masks, grid: dict, metric: str = "dice", reduction: str = "macro-imagewise",
                       empty: float = np.nan, image_probs=None) -> pd.DataFrame:
    """Score every post-processing setting of `grid` on segmentation OOF; one table row per setting.

    oof: {image_id (N,), probs (N, 3, S, S)} as selection.load_oof gives; masks: true class maps by id
    (their size sets the resolution scored). Columns: overlap, threshold/closing/min_area/keep_largest
    per class (`threshold.ischemic` ...), gate.* (0 = off) and triplet_high/min_pixels.* when searched,
    score (lesion mean), score.ischemic, score.hemorrhagic; sorted best first.
    """
    if reduction not in ("micro", "macro-imagewise"):
        raise KeyError(f"grid search reduction {reduction!r}; valid: ['micro', 'macro-imagewise']")
    axes, get_mask = normalise_grid(grid), mask_getter(masks)
    ids = np.asarray(oof["image_id"])
    probs_by_image = aligned_image_probs(image_probs, ids)
    bases = list(itertools.product(axes["overlap"], axes["threshold"][1], axes["closing"][1],
                                   axes["threshold"][2], axes["closing"][2]))
    highs = {c: sorted({float(t["high"]) for _, t in axes["presence"][c] if t is not None}) for c in CLASS_NAME}
    tp = {c: [] for c in CLASS_NAME}
    fp = {c: [] for c in CLASS_NAME}
    n_true = {c: np.zeros(len(ids), np.int64) for c in CLASS_NAME}
    high_counts = {c: np.zeros((len(ids), len(highs[c])), np.int64) for c in CLASS_NAME}
    for i, image_id in enumerate(ids):
        true = get_mask(image_id)
        probs = resize_probs(oof["probs"][i], true.shape)
        image_tp, image_fp = _image_counts(probs, true, axes, bases)
        for c in CLASS_NAME:
            tp[c].append(image_tp[c])
            fp[c].append(image_fp[c])
            n_true[c][i] = np.count_nonzero(true == c)
            high_counts[c][i] = [np.count_nonzero(probs[c] >= h) for h in highs[c]]
    scores = {}
    for c in CLASS_NAME:
        present = _presence(axes["presence"][c], c, probs_by_image, high_counts[c], highs[c])
        class_tp = np.stack(tp[c])[..., None] * present[:, None, None, None, :]   # (N, base, m, k, j)
        class_fp = np.stack(fp[c])[..., None] * present[:, None, None, None, :]
        class_fn = n_true[c][:, None, None, None, None] - class_tp
        scores[c] = SCORES[metric](class_tp, class_fp, class_fn, reduction=reduction, empty=empty)
    return _grid_table(axes, bases, scores, probs_by_image is not None or any(highs.values()))


def _class_settings(axes: dict, cls: int) -> list[dict]:
    """Column values of each (min_area, keep_largest, presence) combination of one class, in score order."""
    name, rows = CLASS_NAME[cls], []
    for m, k, (gate, triplet) in itertools.product(axes["min_area"][cls], axes["keep_largest"][cls],
                                                   axes["presence"][cls]):
        rows.append({f"min_area.{name}": m, f"keep_largest.{name}": k,
                     f"gate.{name}": 0.0 if gate is None else float(gate),
                     f"triplet_high.{name}": np.nan if triplet is None else float(triplet["high"]),
                     f"triplet_min_pixels.{name}": 0 if triplet is None else int(triplet["min_pixels"])})
    return rows


def _grid_table(axes: dict, bases: list, scores: dict, presence_searched: bool) -> pd.DataFrame:
    n_base = len(bases)
    s1, s2 = (scores[c].reshape(n_base, -1) for c in CLASS_NAME)
    pair = np.stack(np.broadcast_arrays(s1[:, :, None], s2[:, None, :]))      # (2, base, A1, A2)
    mean = metrics.nanmean(pair, axis=0)                                       # the lesion mean, NaN skipped
    b, a1, a2 = (index.ravel() for index in np.indices(mean.shape))
    base = pd.DataFrame(bases, columns=["overlap", "threshold.ischemic", "closing.ischemic",
                                        "threshold.hemorrhagic", "closing.hemorrhagic"])
    base = base.astype({"threshold.ischemic": float, "threshold.hemorrhagic": float}).iloc[b]   # NaN = argmax
    first = pd.DataFrame(_class_settings(axes, 1)).iloc[a1]
    second = pd.DataFrame(_class_settings(axes, 2)).iloc[a2]
    table = pd.concat([frame.reset_index(drop=True) for frame in (base, first, second)], axis=1)
    if not presence_searched:
        table = table.drop(columns=[c for c in table.columns if c.startswith(("gate.", "triplet_"))])
    table["score"] = mean.ravel()
    table["score.ischemic"], table["score.hemorrhagic"] = pair[0].ravel(), pair[1].ravel()
    return table.sort_values("score", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def row_to_spec(row: Mapping) -> dict:
    """The post-processing spec (postprocess.normalise_spec form) of one row of the search table."""
    per = lambda key, cast: {name: cast(row[f"{key}.{name}"]) for name in LESION_CLASSES}
    threshold = lambda v: None if pd.isna(v) else float(v)
    spec = {"overlap": row["overlap"], "threshold": per("threshold", threshold), "closing": per("closing", int),
            "min_area": per("min_area", int), "keep_largest": per("keep_largest", bool)}
    if any(f"gate.{name}" in row and row[f"gate.{name}"] > 0 for name in LESION_CLASSES):
        spec["gate"] = per("gate", float)
    if any(f"triplet_min_pixels.{name}" in row and row[f"triplet_min_pixels.{name}"] > 0 for name in LESION_CLASSES):
        high = {n: 1.0 if pd.isna(row[f"triplet_high.{n}"]) else float(row[f"triplet_high.{n}"]) for n in LESION_CLASSES}
        spec["triplet"] = {"high": high, "min_pixels": per("triplet_min_pixels", int)}
    return normalise_spec(spec)


def _matches(table: pd.DataFrame, chosen: dict, skip: str | None = None) -> pd.Series:
    """Rows equal to `chosen` on every setting column but `skip` (NaN equals NaN)."""
    ok = pd.Series(True, index=table.index)
    for col, value in chosen.items():
        if col != skip:
            ok &= (table[col] == value) | (table[col].isna() & pd.isna(value))
    return ok


def choose_postprocess(table: pd.DataFrame, tolerance: float = 0.005) -> dict:
    """The setting to submit: start at the best row, then move each numeric axis in turn to the middle
    of its near-best plateau (others held), as PITFALLS.md asks. Returns spec, scores and per-axis stability."""
    settings = [c for c in table.columns if not c.startswith("score")]
    best = table.loc[table["score"].idxmax()]
    chosen = {c: best[c] for c in settings}
    stability = {}
    for axis in NUMERIC_AXES:
        for name in LESION_CLASSES:
            col = f"{axis}.{name}"
            if col not in table or table[col].nunique() < 2 or pd.isna(chosen[col]):
                continue                                 # NaN: argmax decoding / triplet off, not an axis
            line = table[_matches(table, chosen, skip=col) & table[col].notna()]
            if line[col].nunique() < 2 or not np.isfinite(line["score"]).any():
                continue
            flat = plateau(line[col], line["score"], tolerance)
            chosen[col] = type(chosen[col])(flat["value"])
            stability[col] = {k: flat[k] for k in ("value", "best_value", "plateau", "width")}
    row = table[_matches(table, chosen)].iloc[0]
    return {"spec": row_to_spec(row), "score": float(row["score"]), "best_score": float(best["score"]),
            "scores": {name: float(row[f"score.{name}"]) for name in LESION_CLASSES},
            "stability": stability, "tolerance": tolerance}
