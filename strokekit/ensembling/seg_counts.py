"""Per-image counts behind the post-processing search, from one labelling of components per setting base.

For every image and every base setting (overlap rule, threshold and closing per class) each lesion class's
mask is labelled once; a component table then holds, per 8-connected component: its area, its strict
true positives, and the four sums the organisers' tolerant counting needs (official.py): pixels whose
GT3 is this class (never FN), whose GT3 is the other class (FN whatever is drawn), pixels in GT2 of this
class with no GT3 (TP only if the region rule accepts the component), and whether the component touches
a true pixel of its class (the region rule). Every count of a (min_area, keep_largest) choice is a sum
over kept components, so one matrix product gives all of them:

  strict    tp = sum hits, fp = sum area - tp, fn = true pixels - tp                   (per class)
  official  TP = sum g3 + touch * a2, FP = sum area - g3 - o3 - touch * a2,
            FN = GT3 pixels - sum g3                                       (summed over both classes)

The phase-2 rule "never empty" (decide.fill_region) replaces an image's counts by those of its fill region
wherever a setting leaves the image empty; that region depends on the base only, so it is counted here too.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strokekit.evaluation import official
from strokekit.progress import bar
from strokekit.postprocess.decide import fallback_region, fill_region
from strokekit.postprocess.steps import (bounding_box, close_mask, components, more_likely_class, pass_mask,
                                         resize_probs, resolve_overlap)

CLASSES = (1, 2)
FIELDS = ("tp", "fp", "area", "otp", "ofp", "og3")   # per class and setting; see the module docstring
TP, FP, AREA, OTP, OFP, OG3 = range(len(FIELDS))


@dataclass
class Truth:
    """One image's truth as the counts need it: class masks, GT2 per class, GT3 class map."""
    masks: dict[int, np.ndarray]
    gt2: dict[int, np.ndarray]
    gt3: np.ndarray
    n_true: np.ndarray          # (2,) true pixels per lesion class
    n_gt3: int                  # pixels of GT3 (official FN when nothing is drawn there)


def image_truth(true: np.ndarray, se_size: int = 3) -> Truth:
    bands = official.tolerance_bands(true, se_size)
    masks = {c: true == c for c in CLASSES}
    return Truth(masks, bands.gt2, bands.gt3, np.array([masks[c].sum() for c in CLASSES], np.int64),
                 int(np.count_nonzero(bands.gt3)))


def component_table(mask: np.ndarray, prob: np.ndarray, truth: Truth, cls: int,
                    region_rule: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(stats (n, 6): area, hits, g3, o3, a2, touch; peak probability (n,)) of class `cls`'s components."""
    if not mask.any():
        return np.zeros((0, 6)), np.zeros(0)
    box = bounding_box(mask)
    labels, areas = components(mask[box])
    n = len(areas)
    gt3 = truth.gt3[box]
    count = lambda where: np.bincount(labels.ravel(), weights=where.ravel(), minlength=n)[1:]
    hits = count(truth.masks[cls][box])
    stats = np.stack([areas[1:], hits, count(gt3 == cls), count((gt3 > 0) & (gt3 != cls)),
                      count(truth.gt2[cls][box] & (gt3 == 0)),
                      (hits > 0) if region_rule else np.ones(n - 1)], axis=1).astype(np.float64)
    peaks = ndimage.maximum(prob[box], labels, np.arange(1, n))
    return stats, np.asarray(peaks, dtype=np.float64).reshape(-1)


def counts_from_stats(stats: np.ndarray) -> np.ndarray:
    """The six FIELDS of a set of kept components (stats rows summed) -> (..., 6)."""
    area, hits, g3, o3, a2, touch = np.moveaxis(stats, -1, 0)
    accepted = touch * a2
    return np.stack([hits, area - hits, area, g3 + accepted, area - g3 - o3 - accepted, g3], axis=-1)


def setting_counts(stats: np.ndarray, min_areas, keep_largest) -> np.ndarray:
    """FIELDS for every (min_area, keep_largest): (n_min_area, n_keep, 6)."""
    min_areas = np.asarray(min_areas)
    out = np.zeros((len(min_areas), len(keep_largest), len(FIELDS)))
    if not len(stats):
        return out
    per_component = counts_from_stats(stats)                       # additive, so sums of rows are sums
    kept = stats[None, :, 0] >= min_areas[:, None]
    largest = np.arange(len(stats)) == np.argmax(stats[:, 0])      # first of equal largest, as postprocess
    for k, only_largest in enumerate(keep_largest):
        out[:, k] = (kept & largest[None] if only_largest else kept).astype(np.float64) @ per_component
    return out


@dataclass
class GridCounts:
    """Counts of every image under every setting of a grid (what search_postprocess scores)."""
    counts: dict[int, np.ndarray]    # class -> (N, base, n_min_area, n_keep, 6)
    high_counts: dict[int, np.ndarray]   # class -> (N, n_high) pixels >= each triplet `high`
    n_true: np.ndarray               # (N, 2)
    n_gt3: np.ndarray                # (N,)
    fill: np.ndarray                 # (N, base, 6): the never-empty region's counts (its class only)
    fill_class: np.ndarray           # (N,) class of the fill region


def gather_counts(oof: dict, get_mask, axes: dict, bases: list, highs: dict[int, list],
                  se_size: int = 3, region_rule: bool = True, fraction: float = 0.5,
                  max_area: float = 0.02) -> GridCounts:
    """Label and count every OOF image once per base; min_area / keep_largest come out as sums."""
    ids = np.asarray(oof["image_id"])
    n, n_base = len(ids), len(bases)
    shape = lambda c: (n, n_base, len(axes["min_area"][c]), len(axes["keep_largest"][c]), len(FIELDS))
    counts = {c: np.zeros(shape(c), np.float32) for c in CLASSES}        # exact below 2**24 pixels
    high_counts = {c: np.zeros((n, len(highs[c])), np.int64) for c in CLASSES}
    fill, fill_class = np.zeros((n, n_base, len(FIELDS))), np.zeros(n, np.int64)
    n_true, n_gt3 = np.zeros((n, 2), np.int64), np.zeros(n, np.int64)
    for i, image_id in enumerate(bar(ids, desc="post-processing search", unit="image")):
        true = np.asarray(get_mask(image_id))
        probs = resize_probs(oof["probs"][i], true.shape)
        truth = image_truth(true, se_size)
        n_true[i], n_gt3[i] = truth.n_true, truth.n_gt3
        fill_class[i] = more_likely_class(probs)
        for c in CLASSES:
            high_counts[c][i] = [np.count_nonzero(probs[c] >= h) for h in highs[c]]
        _image_counts(i, probs, truth, axes, bases, counts, fill, int(fill_class[i]),
                      (region_rule, fraction, max_area))
    return GridCounts(counts, high_counts, n_true, n_gt3, fill, fill_class)


def _image_counts(i: int, probs: np.ndarray, truth: Truth, axes: dict, bases: list, counts: dict,
                  fill: np.ndarray, fill_cls: int, options: tuple) -> None:
    """Fill counts[c][i] and fill[i] for every base. Class c's mask depends on the other class only where
    both pass; elsewhere its component table is computed once per (class, threshold, closing)."""
    region_rule, fraction, max_area = options
    needs_argmax = any(t is None for c in CLASSES for t in axes["threshold"][c])
    argmax = probs.argmax(axis=0) if needs_argmax else None
    passed, tables, capped, peak_fill = {}, {}, {}, None
    for b, (rule, t1, r1, t2, r2) in enumerate(bases):
        keys = {1: (1, t1, r1), 2: (2, t2, r2)}
        for cls, t, r in keys.values():
            if (cls, t, r) not in passed:
                passed[cls, t, r] = close_mask(pass_mask(probs, cls, t, argmax), r)
        masks = {c: passed[key] for c, key in keys.items()}
        shared = not (masks[1].any() and masks[2].any() and (masks[1] & masks[2]).any())
        if not shared:
            masks = {c: m.copy() for c, m in masks.items()}
            resolve_overlap(masks, probs, rule)          # these masks belong to this pair of settings only
        base_tables = {}
        for c, key in keys.items():
            table = tables.get(key) if shared else None
            if table is None:
                stats, peaks = component_table(masks[c], probs[c], truth, c, region_rule)
                table = (stats, peaks, setting_counts(stats, axes["min_area"][c], axes["keep_largest"][c]))
                if shared:
                    tables[key] = table
            counts[c][i, b] = table[2]
            base_tables[c] = table[:2]
        stats, peaks = base_tables[fill_cls]
        best = int(np.argmax(peaks)) if len(stats) else -1
        if best >= 0 and stats[best, 0] <= max(1, int(max_area * probs[0].size)):
            fill[i, b] = counts_from_stats(stats[best])  # decide.fill_region: the most probable component
        elif best >= 0:                                  # ... cut to max_area: drawn as infer draws it
            key = keys[fill_cls] if shared else None     # overlap-free: the fill depends on its class only
            if key is None or key not in capped:
                spec = {"overlap": rule, "threshold": {"ischemic": t1, "hemorrhagic": t2},
                        "closing": {"ischemic": r1, "hemorrhagic": r2}}
                region = fill_region(probs, spec, fill_cls, fraction, max_area) == fill_cls
                stats = component_table(region, probs[fill_cls], truth, fill_cls, region_rule)[0]
                capped[key] = counts_from_stats(stats).sum(axis=0)
            fill[i, b] = capped[key]
        else:
            if peak_fill is None:
                region = fallback_region(probs, fraction, fill_cls, max_area) == fill_cls
                table = component_table(region, probs[fill_cls], truth, fill_cls, region_rule)[0]
                peak_fill = counts_from_stats(table).sum(axis=0)
            fill[i, b] = peak_fill


def base_settings(axes: dict) -> list[tuple]:
    """(overlap, threshold, closing per class) combinations: each one labelling per image and class."""
    return list(itertools.product(axes["overlap"], axes["threshold"][1], axes["closing"][1],
                                  axes["threshold"][2], axes["closing"][2]))
