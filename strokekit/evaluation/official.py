"""The organisers' tolerant phase-2 pixel counting (Bilgi Notu, sheet "Aşama2 Değerlendirme"), vectorised.

Per image, from the true class map GT1 (0 background, 1 ischemic, 2 hemorrhagic):
  GT2 = GT1 dilated per class (square structuring element, `se_size`, one step). Where the dilated
        regions of both classes overlap, GT2 accepts either class.
  GT3 = GT1 eroded per class with the same element. Pixels outside the image count as inside the lesion
        (border_value=1, as OpenCV's and scikit-image's erosion do), so a lesion is not eroded away at the
        image edge.
  FN  = a non-zero GT3 pixel whose result class differs (background or the other class).
  TP  = a non-zero result pixel whose class GT2 accepts, and not FN.
  FP  = a non-zero result pixel that is neither TP nor FN.      TN = a zero result pixel that is not FN.
Region rule (on by default; the stated rules omit it, the notes to the workbook's examples 2 and 3 apply
it, and example 2's counts need it): an 8-connected region of result class c that shares no pixel with
GT1 class c is misclassified, and all its pixels are FP (those already FN stay FN), even inside GT2 of the
other class or the overlap zone. Merely bordering a true lesion is not enough: in example 2 a region
8-adjacent to the true ischemia is all FP.
So TP + FP + FN + TN = number of pixels.

Scores per image: IoU = TP/(TP+FP+FN), Dice = 2TP/(2TP+FP+FN), precision = TP/(TP+FP),
recall = TP/(TP+FN). Empty rule: an image with TP+FP+FN = 0 (nothing to find, nothing wrongly marked —
including a lesion too thin to leave any GT3 pixel, left unmarked) scores `empty` in every ratio (1.0 by
default: the workbook calls an answer without FP and FN "100% correct"); any other zero denominator
gives 0.0 (e.g. precision of an empty answer to a real lesion).

The workbook's examples 1, 2, 3 and 5 agree with this counting pixel for pixel and in their counts.
Example 4 contradicts itself (its answer is drawn ischemic, its note and evaluation grid treat it as a
correct hemorrhage, its TP cell says 12 where the grid has 16 TP cells); read as hemorrhage it agrees with
the grid pixel for pixel. tests/evaluation/test_official.py pins all of this.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage
from strokekit.errors import SettingError
from strokekit.vocabulary import EIGHT_CONNECTED, HEMORRHAGIC, ISCHEMIC, LESION_CLASSES

# codes of the per-pixel outcome map
TN, TP, FP, FN = 0, 1, 2, 3
OUTCOME_NAMES = {TN: "TN", TP: "TP", FP: "FP", FN: "FN"}


class ToleranceBands(NamedTuple):
    """GT2 as one boolean map per lesion class (both true = overlap zone) and GT3 as a class map."""
    gt2: dict[int, np.ndarray]
    gt3: np.ndarray


class OfficialCounts(NamedTuple):
    """TP, FP, FN, TN per image: scalars for one image, (N,) int64 arrays for a stack."""
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray


def _square(se_size: int) -> np.ndarray:
    if int(se_size) != se_size or se_size < 1 or se_size % 2 == 0:
        raise SettingError(f"se_size must be an odd positive integer (3 = the workbook's 3x3), got {se_size}")
    return np.ones((int(se_size), int(se_size)), dtype=bool)


def tolerance_bands(true: np.ndarray, se_size: int = 3) -> ToleranceBands:
    """GT2 (dilated, per class) and GT3 (eroded, per class) of one true class map."""
    se = _square(se_size)
    true = np.asarray(true)
    gt2 = {c: ndimage.binary_dilation(true == c, structure=se) for c in LESION_CLASSES}
    gt3 = np.zeros(true.shape, dtype=np.uint8)
    for c in LESION_CLASSES:
        # eroded classes cannot overlap: an eroded pixel's whole neighbourhood is class c
        gt3[ndimage.binary_erosion(true == c, structure=se, border_value=1)] = c
    return ToleranceBands(gt2, gt3)


def misclassified_regions(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pixels of 8-connected result regions of class c that share no pixel with true class c."""
    pred, true = np.asarray(pred), np.asarray(true)
    wrong = np.zeros(pred.shape, dtype=bool)
    for c in LESION_CLASSES:
        labels, n = ndimage.label(pred == c, structure=EIGHT_CONNECTED)
        if n == 0:
            continue
        touched = np.zeros(n + 1, dtype=bool)
        touched[labels[true == c]] = True
        touched[0] = True  # label 0 is background, never a region
        wrong |= ~touched[labels]
    return wrong


def outcome_map(pred: np.ndarray, true: np.ndarray, se_size: int = 3, region_rule: bool = True) -> np.ndarray:
    """Per-pixel official outcome of one image: uint8 map of TN=0, TP=1, FP=2, FN=3."""
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(f"need two HxW class maps of one shape, got {pred.shape} and {true.shape}")
    bands = tolerance_bands(true, se_size)
    fn = (bands.gt3 > 0) & (pred != bands.gt3)
    # the overlap zone needs no special case: both classes' GT2 maps are true there
    accepted = ((pred == ISCHEMIC) & bands.gt2[ISCHEMIC]) | ((pred == HEMORRHAGIC) & bands.gt2[HEMORRHAGIC])
    if region_rule:
        accepted &= ~misclassified_regions(pred, true)
    out = np.full(pred.shape, TN, dtype=np.uint8)
    out[pred > 0] = FP
    out[accepted] = TP
    out[fn] = FN  # FN wins: "those already FN stay FN"
    return out


def tolerant_counts(pred: np.ndarray, true: np.ndarray, se_size: int = 3,
                    region_rule: bool = True) -> OfficialCounts:
    """Official TP/FP/FN/TN for one image (H, W) -> ints, or a stack (N, H, W) -> (N,) arrays."""
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.ndim == 2:
        hist = np.bincount(outcome_map(pred, true, se_size, region_rule).ravel(), minlength=4)
        return OfficialCounts(int(hist[TP]), int(hist[FP]), int(hist[FN]), int(hist[TN]))
    per_image = [tolerant_counts(p, t, se_size, region_rule) for p, t in zip(pred, true)]
    return OfficialCounts(*(np.array(col, dtype=np.int64) for col in zip(*per_image)))


def tolerant_scores(tp, fp, fn, tn=None, empty: float = 1.0) -> dict[str, np.ndarray | float]:
    """IoU, Dice, precision, recall from official counts (scalars or arrays); empty rule in module doc."""
    tp, fp, fn = (np.asarray(a, dtype=float) for a in (tp, fp, fn))
    nothing = (tp + fp + fn) == 0
    out = {}
    for name, num, den in (("iou", tp, tp + fp + fn), ("dice", 2 * tp, 2 * tp + fp + fn),
                           ("precision", tp, tp + fp), ("recall", tp, tp + fn)):
        score = np.where(nothing, empty, 0.0)
        np.divide(num, den, out=score, where=den > 0)
        out[name] = float(score) if score.ndim == 0 else score
    return out


def official_scores(pred: np.ndarray, true: np.ndarray, se_size: int = 3, region_rule: bool = True,
                    empty: float = 1.0) -> dict:
    """Counts and scores of one image or a stack, as one dict (tp, fp, fn, tn, iou, dice, precision, recall)."""
    counts = tolerant_counts(pred, true, se_size, region_rule)
    return {**counts._asdict(), **tolerant_scores(*counts, empty=empty)}
