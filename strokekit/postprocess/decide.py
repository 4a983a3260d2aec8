"""From blended probabilities to what is submitted: phase-1 labels, phase-2 class maps, stroke types.

Pure numpy/scipy. Every phase-2 test image holds a lesion (FORMATS.md; the organisers' paper), so an
empty mask always scores zero there: when post-processing leaves nothing, `phase2_class_map` keeps the
most probable component of the more likely class (`fill_region`; post-processing step 8, on when the
spec's `never_empty` is, the default; infer.py `--no-fallback` turns it off). The OOF search
(seg_search.py) scores exactly this rule, so its figures are what infer.py's masks earn.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from strokekit.vocabulary import BACKGROUND, EIGHT_CONNECTED, HEMORRHAGIC, ISCHEMIC
from strokekit.config.postprocess import normalise_spec
from strokekit.postprocess.steps import apply_postprocess, more_likely_class, most_probable_component



def phase1_labels(probs, threshold: float) -> np.ndarray:
    """1 = stroke where the blended probability reaches the OOF-tuned threshold."""
    return (np.asarray(probs, dtype=float) >= float(threshold)).astype(np.int64)


def fallback_region(probs: np.ndarray, fraction: float = 0.5, lesion_class: int | None = None,
                    max_area: float = 0.02) -> np.ndarray:
    """A class map holding one region: the 8-connected pixels around the most probable lesion pixel whose
    lesion probability (p_ischemic + p_hemorrhagic) is >= fraction x that peak, cut to at most
    max_area x the image's pixels (the most probable ones), since a flat, unsure map would otherwise
    paint half the slice.

    Its class is `lesion_class` when given (e.g. a type classifier's decision), else the class with the
    larger summed probability over the region (ties: hemorrhagic).
    """
    if not 0.0 < fraction <= 1.0 or not 0.0 < max_area <= 1.0:
        raise ValueError(f"fallback fraction and max_area must be in (0, 1], got {fraction}, {max_area}")
    lesion = probs[ISCHEMIC] + probs[HEMORRHAGIC]
    peak = np.unravel_index(int(np.argmax(lesion)), lesion.shape)
    region = cap_region(_component_at(lesion >= fraction * lesion[peak], peak), lesion, max_area, peak)
    if lesion_class is None:
        lesion_class = ISCHEMIC if probs[ISCHEMIC][region].sum() > probs[HEMORRHAGIC][region].sum() else HEMORRHAGIC
    class_map = np.full(lesion.shape, BACKGROUND, dtype=np.uint8)
    class_map[region] = lesion_class
    return class_map


def cap_region(region: np.ndarray, prob: np.ndarray, max_area: float, peak: tuple | None = None) -> np.ndarray:
    """`region` cut to at most max_area x the image's pixels: its most probable pixels (ties broken by
    nearness to the peak), as the 8-connected part holding the peak (default: its most probable pixel)."""
    cap = max(1, int(max_area * region.size))
    if region.sum() <= cap:
        return region
    rows, cols = np.nonzero(region)
    if peak is None:
        first = int(np.argmax(prob[rows, cols]))
        peak = (rows[first], cols[first])
    order = np.lexsort((np.hypot(rows - peak[0], cols - peak[1]), -prob[rows, cols]))[:cap]
    kept = np.zeros_like(region)
    kept[rows[order], cols[order]] = True
    return _component_at(kept, peak)


def _component_at(mask: np.ndarray, pixel: tuple) -> np.ndarray:
    labels, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
    return labels == labels[pixel]


def fill_region(probs: np.ndarray, spec: dict, lesion_class: int | None = None, fraction: float = 0.5,
                max_area: float = 0.02) -> np.ndarray:
    """Step 8's class map for an image post-processing left empty: the most probable component of the
    more likely class (`lesion_class` when given, e.g. a type classifier's decision) in that class's
    mask after threshold, closing and overlap, cut to max_area of the image (`cap_region`: a low
    threshold must not paint the slice); when that mask is empty too, `fallback_region`."""
    cls = more_likely_class(probs) if lesion_class is None else int(lesion_class)
    region = most_probable_component(probs, spec, cls)
    if region is None:
        return fallback_region(probs, fraction, cls, max_area)
    region = cap_region(region, probs[cls], max_area)
    class_map = np.full(region.shape, BACKGROUND, dtype=np.uint8)
    class_map[region] = cls
    return class_map


def phase2_class_map(probs: np.ndarray, spec: dict, fallback: bool = True, fraction: float = 0.5,
                     lesion_class: int | None = None, max_area: float = 0.02,
                     image_prob=None) -> tuple[np.ndarray, bool]:
    """(class map, whether step 8 drew it) for one image's (3, H, W) blended probabilities; step 8 runs
    when `fallback` (infer.py's default) and the spec's `never_empty` (its default) are both on."""
    spec = normalise_spec(spec)
    class_map = apply_postprocess(probs, spec, image_prob)
    if fallback and spec["never_empty"] and not class_map.any():
        return fill_region(probs, spec, lesion_class, fraction, max_area), True
    return class_map, False


def type_decision(class_map: np.ndarray, p_hemorrhagic: float | None = None,
                  threshold: float | None = None) -> str:
    """One stroke type per image: from an image-level P(hemorrhagic) and its threshold when given,
    else the lesion class covering more pixels of the mask ('none' for an empty mask)."""
    if p_hemorrhagic is not None and threshold is not None:
        return "hemorrhagic" if p_hemorrhagic >= threshold else "ischemic"
    isc, hem = int((class_map == ISCHEMIC).sum()), int((class_map == HEMORRHAGIC).sum())
    if isc == hem == 0:
        return "none"
    return "ischemic" if isc > hem else "hemorrhagic"


def type_class(p_hemorrhagic: float | None, threshold: float | None) -> int | None:
    """The class a type classifier picks (for the fallback region), or None without one."""
    if p_hemorrhagic is None or threshold is None:
        return None
    return HEMORRHAGIC if p_hemorrhagic >= threshold else ISCHEMIC
