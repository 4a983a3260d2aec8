"""A classifier read off a segmenter: an image is stroke / ischemic / hemorrhagic when its predicted lesion
area, or its max / mean lesion probability, passes a threshold tuned on OOF (one published system did this).

Scores are in [0, 1] so they blend with a classifier's probability (selection.blend): probabilities are
used as they are; an area a (pixels at full resolution) becomes a / (a + area_scale), which is monotone,
so a threshold t on it is an area of t * area_scale / (1 - t) pixels (`area_threshold`).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from strokekit.config.postprocess import normalise_spec

from strokekit.errors import UnknownNameError
from strokekit.postprocess.steps import apply_postprocess, resize_probs
from strokekit.ensembling.selection import tune_classifier_threshold

FEATURES = ("area", "max", "mean")
TARGETS = ("stroke", "ischemic", "hemorrhagic", "type")  # type = P(hemorrhagic), as the type classifier's prob
PARTS = {"ischemic": (1,), "hemorrhagic": (2,), "lesion": (1, 2)}


def image_features(probs: np.ndarray, spec: dict | None = None) -> dict[str, float]:
    """area / max / mean per part (ischemic, hemorrhagic, lesion = either) of one (3, H, W) image.

    area: pixels of the part in the post-processed class map; max: highest probability of the part
    (lesion: p_ischemic + p_hemorrhagic) anywhere; mean: mean of that probability over the area (0 if none).
    """
    class_map = apply_postprocess(probs, spec)
    out = {}
    for part, classes in PARTS.items():
        prob = probs[list(classes)].sum(axis=0)
        region = np.isin(class_map, classes)
        area = int(np.count_nonzero(region))
        out[f"area_{part}"] = float(area)
        out[f"max_{part}"] = float(prob.max())
        out[f"mean_{part}"] = float(prob[region].mean()) if area else 0.0
    return out


def seg_image_features(oof: dict, spec: dict | None = None, size: int | tuple[int, int] = 512) -> pd.DataFrame:
    """image_features of every OOF image after upsampling to `size` (the competition's 512 x 512)."""
    rows = [{"image_id": int(image_id), **image_features(resize_probs(oof["probs"][i], size), spec)}
            for i, image_id in enumerate(oof["image_id"])]
    table = pd.DataFrame(rows)
    if "fold" in oof:
        table.insert(1, "fold", np.asarray(oof["fold"]).astype(int))
    return table


def _squash(values: np.ndarray, feature: str, area_scale: float) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values / (values + area_scale) if feature == "area" else values


def seg_classifier_scores(features: pd.DataFrame, target: str = "stroke", feature: str = "area",
                          area_scale: float = 100.0) -> np.ndarray:
    """Image-level scores in [0, 1] for `target` from a features table (or one image's features dict)."""
    if target not in TARGETS:
        raise UnknownNameError(f"unknown segmentation-classifier target {target!r}; valid: {list(TARGETS)}")
    if feature not in FEATURES:
        raise UnknownNameError(f"unknown segmentation-classifier feature {feature!r}; valid: {list(FEATURES)}")
    part = lambda name: _squash(np.atleast_1d(features[f"{feature}_{name}"]), feature, area_scale)
    if target == "stroke":
        return part("lesion")
    if target in ("ischemic", "hemorrhagic"):
        return part(target)
    isc, hem = part("ischemic"), part("hemorrhagic")
    total = isc + hem
    return np.where(total > 0, hem / np.where(total > 0, total, 1), 0.5)  # no lesion: no opinion on type


def area_threshold(threshold: float, area_scale: float = 100.0) -> float:
    """The lesion area (pixels) that a threshold on an area score stands for."""
    return float("inf") if threshold >= 1 else threshold * area_scale / (1 - threshold)


def targets_from_masks(masks: Mapping, image_ids, target: str = "stroke") -> pd.Series:
    """0/1 image targets by id from true class maps; for `type` (hemorrhage present) images without any
    lesion get NaN, as the type classifier is trained and scored on stroke images only."""
    values = {}
    for image_id in image_ids:
        present = set(np.unique(np.asarray(masks[int(image_id)])).tolist())
        has = {"ischemic": 1 in present, "hemorrhagic": 2 in present}
        if target == "stroke":
            values[int(image_id)] = float(has["ischemic"] or has["hemorrhagic"])
        elif target in has:
            values[int(image_id)] = float(has[target])
        else:
            values[int(image_id)] = float(has["hemorrhagic"]) if any(has.values()) else np.nan
    return pd.Series(values, name="target")


def seg_classifier_oof(features: pd.DataFrame, targets, target: str = "stroke", feature: str = "area",
                       area_scale: float = 100.0) -> pd.DataFrame:
    """A classifier OOF table (image_id, fold, target, prob) from segmentation features, so thresholds,
    fold scores and blends with real classifiers use the same tools. Images without a target are dropped."""
    targets = pd.Series(targets) if isinstance(targets, Mapping) else targets
    table = pd.DataFrame({"image_id": features["image_id"].astype(int),
                          "fold": features["fold"] if "fold" in features else -1,
                          "prob": seg_classifier_scores(features, target, feature, area_scale)})
    table["target"] = table["image_id"].map(targets)
    table = table.dropna(subset=["target"]).astype({"target": int})
    return table[["image_id", "fold", "target", "prob"]].reset_index(drop=True)


def tune_seg_classifier(features: pd.DataFrame, targets, target: str = "stroke", feature: str = "area",
                        area_scale: float = 100.0, spec: dict | None = None, **threshold_options) -> dict:
    """The segmentation classifier's spec (plain types, for the ensemble spec) with its OOF threshold.

    `spec` is the post-processing the features were computed with (seg_image_features), stored so that
    inference reproduces them; threshold_options go to selection.tune_classifier_threshold.
    """
    oof = seg_classifier_oof(features, targets, target, feature, area_scale)
    tuned = tune_classifier_threshold(oof["target"], oof["prob"], **threshold_options)
    out = {"target": target, "feature": feature, "area_scale": float(area_scale),
           "postprocess": normalise_spec(spec), "threshold": tuned}
    if feature == "area":
        out["area_threshold_px"] = area_threshold(tuned["threshold"], area_scale)
    return out


def seg_classifier_prob(probs: np.ndarray, classifier: dict) -> float:
    """Apply a tuned segmentation classifier to one image's full-resolution (3, H, W) probabilities."""
    features = image_features(probs, classifier["postprocess"])
    return float(seg_classifier_scores(features, classifier["target"], classifier["feature"],
                                       classifier["area_scale"])[0])
