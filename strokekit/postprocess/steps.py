"""Segmentation post-processing: class probabilities (3, H, W) -> class map, pure numpy/scipy.

A post-processing spec is a plain dict (it goes into the ensemble spec YAML). Steps, in this order:
  1. threshold   a pixel passes class c when p_c >= threshold[c]; threshold None = plain argmax over
                 the three classes (the engine's validation rule, and the default)
  2. closing     per-class binary closing with a digital disk of that radius (0 = off)
  3. overlap     a pixel passing both lesion classes goes to the more probable one ("argmax")
                 or always to one class ("ischemic" / "hemorrhagic")
  4. min_area    drop 8-connected components of class c smaller than min_area[c] pixels
  5. keep_largest  keep only the largest component of class c
  6. triplet     class c is kept only if >= min_pixels[c] pixels have p_c >= high[c] (SIIM-ACR winners'
                 rule: decide presence with a high threshold, draw with the lower one of step 1)
  7. gate        class c is kept only if the image-level probability for it is >= gate[c]
  8. never_empty phase 2 only (decide.phase2_class_map, not apply_postprocess): when steps 1-7 leave the
                 map empty, keep the most probable component of the more likely class
                 (decide.fill_region; the peak region when that class's mask is empty)
Steps 6-7 decide presence per class and only ever remove a whole class, so a grid search can apply
them to precomputed counts (see seg_search.py). Per-class values may be given as one number for both.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from strokekit.config.postprocess import normalise_spec, per_class
from strokekit.vocabulary import BACKGROUND, EIGHT_CONNECTED, HEMORRHAGIC, ISCHEMIC, LESION_NAMES

@functools.lru_cache(maxsize=16)
def disk(radius: int) -> np.ndarray:
    """Digital disk x^2 + y^2 <= (r + 0.5)^2: radius 1 is the 3x3 square, 2 a 5x5 without corners."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (yy ** 2 + xx ** 2) <= (radius + 0.5) ** 2


def bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """Row and column slices of the smallest box holding every True pixel (the mask must not be empty)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def close_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing that never erodes at the image border (the mask is padded, not clipped).

    Works on the mask's bounding box only: a closing never reaches outside it, so this is exact and fast
    for the small lesions of a 512x512 slice.
    """
    if radius <= 0 or not mask.any():
        return mask
    box = bounding_box(mask)
    window = np.pad(mask[box], radius)
    closed = ndimage.binary_closing(window, structure=disk(radius))[radius:-radius, radius:-radius]
    out = mask.copy()
    out[box] |= closed
    return out


def pass_mask(probs: np.ndarray, cls: int, threshold: float | None, argmax: np.ndarray | None = None) -> np.ndarray:
    """Step 1 for one class: p_cls >= threshold, or argmax == cls when threshold is None (pass a
    precomputed argmax map to avoid recomputing it)."""
    if threshold is None:
        return (probs.argmax(axis=0) if argmax is None else argmax) == cls
    return probs[cls] >= threshold


def lesion_masks(probs: np.ndarray, spec: dict) -> dict[int, np.ndarray]:
    """Steps 1-3: per-class boolean masks after threshold, closing and the overlap rule (disjoint)."""
    spec = normalise_spec(spec)
    masks = {}
    for name, cls in LESION_NAMES.items():
        passed = pass_mask(probs, cls, spec["threshold"][name])
        masks[cls] = close_mask(passed, spec["closing"][name])
    resolve_overlap(masks, probs, spec["overlap"])
    return masks


def resolve_overlap(masks: dict[int, np.ndarray], probs: np.ndarray, rule: str) -> None:
    """In place: a pixel in both lesion masks keeps one class (ties under argmax go to hemorrhagic)."""
    both = masks[ISCHEMIC] & masks[HEMORRHAGIC]
    if not both.any():
        return
    if rule == "argmax":
        to_isc = both & (probs[ISCHEMIC] > probs[HEMORRHAGIC])
    else:
        to_isc = both if rule == "ischemic" else np.zeros_like(both)
    masks[HEMORRHAGIC] &= ~to_isc
    masks[ISCHEMIC] &= ~(both & ~to_isc)


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels (0 = background) and areas indexed by label (areas[0] = background pixels)."""
    labels, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
    return labels, np.bincount(labels.ravel())


def kept_components(areas: np.ndarray, min_area: int, keep_largest: bool) -> np.ndarray:
    """Boolean per label: which components survive min_area / keep_largest (label 0 never)."""
    keep = areas >= min_area
    keep[0] = False
    if keep_largest and keep.any():
        largest = np.argmax(np.where(keep, areas, -1))
        keep[:] = False
        keep[largest] = True
    return keep


def class_present(probs: np.ndarray, spec: dict, image_prob=None) -> dict[int, bool]:
    """Steps 6-7: whether each lesion class survives the triplet rule and the image gate."""
    spec = normalise_spec(spec)
    image_probs = _image_probs(image_prob) if spec["gate"] is not None else None
    present = {}
    for name, cls in LESION_NAMES.items():
        keep = True
        if spec["triplet"] is not None:
            high, need = spec["triplet"]["high"][name], spec["triplet"]["min_pixels"][name]
            keep = int(np.count_nonzero(probs[cls] >= high)) >= need
        if image_probs is not None:
            keep = keep and image_probs[name] >= spec["gate"][name]
        present[cls] = keep
    return present


def _image_probs(image_prob) -> dict[str, float]:
    """P(stroke) for both classes, or per-class probabilities (dict by name, or [ischemic, hemorrhagic])."""
    if image_prob is None:
        raise ValueError("the post-processing spec has a gate but no image-level probability was given")
    if isinstance(image_prob, dict):
        return {k: float(v) for k, v in per_class(image_prob, "image_prob").items()}
    values = np.atleast_1d(np.asarray(image_prob, dtype=float))
    if values.size == 1:
        return {name: float(values[0]) for name in LESION_NAMES}
    if values.size == 2:
        return dict(zip(LESION_NAMES, map(float, values)))
    raise ValueError(f"image_prob must be one number or [ischemic, hemorrhagic]; got {values.size} values")


def apply_postprocess(probs: np.ndarray, spec: dict | None = None, image_prob=None) -> np.ndarray:
    """(3, H, W) class probabilities -> (H, W) uint8 class map (0 bg, 1 ischemic, 2 hemorrhagic)."""
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] != 3:
        raise ValueError(f"probs must be (3, H, W) = background, ischemic, hemorrhagic; got {probs.shape}")
    spec = normalise_spec(spec)
    present = class_present(probs, spec, image_prob)
    masks = lesion_masks(probs, spec)
    class_map = np.full(probs.shape[1:], BACKGROUND, dtype=np.uint8)
    for name, cls in LESION_NAMES.items():
        if not present[cls] or not masks[cls].any():
            continue
        box = bounding_box(masks[cls])  # label the lesion's box only: a 512x512 slice is mostly empty
        labels, areas = components(masks[cls][box])
        keep = kept_components(areas, spec["min_area"][name], spec["keep_largest"][name])
        class_map[box][keep[labels]] = cls
    return class_map


def more_likely_class(probs: np.ndarray) -> int:
    """The lesion class with the higher peak pixel probability (ties: hemorrhagic)."""
    return ISCHEMIC if float(probs[ISCHEMIC].max()) > float(probs[HEMORRHAGIC].max()) else HEMORRHAGIC


def most_probable_component(probs: np.ndarray, spec: dict, cls: int) -> np.ndarray | None:
    """Step 8's region: of class `cls`'s mask after steps 1-3, the 8-connected component holding the
    highest p_cls (ties: the first in raster order); None when that mask is empty."""
    mask = lesion_masks(probs, spec)[cls]
    if not mask.any():
        return None
    box = bounding_box(mask)           # label the lesion's box only, as apply_postprocess does
    labels, areas = components(mask[box])
    peaks = ndimage.maximum(probs[cls][box], labels, np.arange(1, len(areas)))
    region = np.zeros(mask.shape, dtype=bool)
    region[box] = labels == 1 + int(np.argmax(peaks))
    return region


@functools.lru_cache(maxsize=32)
def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices lo, hi and weight of hi for half-pixel bilinear resampling (align_corners=False)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_probs(probs: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (..., H, W) probabilities to `size` as float32 (OOF at 128 px -> 512 px).

    Same values as torch.nn.functional.interpolate(mode="bilinear", align_corners=False); the weights sum
    to 1, so softmax outputs still sum to 1 per pixel. Two taps per axis (gather + lerp), not a matmul.
    """
    height, width = (size, size) if np.isscalar(size) else size
    probs = np.asarray(probs, dtype=np.float32)
    lo, hi, frac = _bilinear_taps(probs.shape[-2], int(height))
    rows = np.take(probs, lo, axis=-2) * (1 - frac)[:, None]
    rows += np.take(probs, hi, axis=-2) * frac[:, None]
    lo, hi, frac = _bilinear_taps(probs.shape[-1], int(width))
    out = np.take(rows, lo, axis=-1) * (1 - frac)
    out += np.take(rows, hi, axis=-1) * frac
    return out
