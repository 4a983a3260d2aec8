"""Segmentation post-processing search and the segmentation-based classifier, on constructed OOF data."""
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import random_seg_oof
from scipy import ndimage

from strokekit.evaluation import metrics
from strokekit.ensembling.seg_classifier import (area_threshold, seg_classifier_oof, seg_classifier_prob,
                                              seg_classifier_scores, seg_image_features, targets_from_masks,
                                              tune_seg_classifier)
from strokekit.ensembling.seg_search import (choose_postprocess, evaluate_postprocess, row_to_spec, search_postprocess,
                                             seg_fold_scores, seg_score)


def constructed_oof(n=12, size=48, seed=0):
    """Lesions with probability 0.52-0.58 inside a halo of 0.40-0.48 and 3-px specks of 0.9 far away:
    threshold 0.5 with a min area between 4 and the smallest lesion is the only perfect setting."""
    rng = np.random.default_rng(seed)
    masks, probs = {}, np.zeros((n, 3, size, size), np.float32)
    for i in range(n):
        cls = 1 + i % 2
        true = np.zeros((size, size), np.uint8)
        y, x = rng.integers(8, size - 20, 2)
        true[y:y + rng.integers(6, 12), x:x + rng.integers(6, 12)] = cls
        lesion = true == cls
        halo = ndimage.binary_dilation(lesion, iterations=3) & ~lesion
        p = np.full((size, size), 0.05, np.float32)
        p[halo] = rng.uniform(0.40, 0.48, halo.sum())
        p[lesion] = rng.uniform(0.52, 0.58, lesion.sum())
        speck_row = 2 if y > size // 2 else size - 3
        p[speck_row, 2:5] = 0.9
        probs[i, cls], probs[i, 3 - cls] = p, 0.01
        probs[i, 0] = 1 - probs[i, 1:].sum(0)
        masks[1000 + i] = true
    return {"image_id": np.arange(1000, 1000 + n), "probs": probs, "fold": np.arange(n) % 3}, masks


def test_grid_search_finds_the_constructed_best_setting():
    oof, masks = constructed_oof()
    grid = {"threshold": [0.3, 0.4, 0.5, 0.6, 0.7], "min_area": [0, 5, 20, 10_000], "closing": [0, 1]}
    table = search_postprocess(oof, masks, grid)
    assert len(table) == 5 * 5 * 4 * 4 * 2 * 2
    assert table["score"].iloc[0] == pytest.approx(1.0)
    chosen = choose_postprocess(table)
    assert chosen["spec"]["threshold"] == {"ischemic": 0.5, "hemorrhagic": 0.5}
    assert all(a in (5, 20) for a in chosen["spec"]["min_area"].values())
    assert chosen["score"] == pytest.approx(1.0)
    exact = seg_score(evaluate_postprocess(oof, masks, chosen["spec"]))
    assert exact["score"] == pytest.approx(1.0)
    assert yaml.safe_load(yaml.safe_dump(chosen["spec"])) == chosen["spec"]
    # without min area the specks cost Dice; a higher threshold loses the lesions
    no_area = table[(table["min_area.ischemic"] == 0) & (table["threshold.ischemic"] == 0.5)]
    assert no_area["score.ischemic"].max() < 0.99
    assert table[table["threshold.ischemic"] == 0.6]["score.ischemic"].max() == 0


@pytest.mark.parametrize("reduction", ["macro-imagewise", "micro"])
def test_fast_grid_equals_exact_evaluation(reduction):
    oof, masks = random_seg_oof()
    image_probs = np.linspace(0.1, 0.9, len(oof["image_id"]))
    grid = {"threshold": [None, 0.2, 0.5], "overlap": ["argmax", "ischemic"], "closing": [0, 1],
            "min_area": [0, 6], "keep_largest": [False, True], "gate": [None, 0.5],
            "triplet": [None, {"high": 0.7, "min_pixels": 5}]}
    table = search_postprocess(oof, masks, grid, metric="iou", reduction=reduction, image_probs=image_probs)
    rows = pd.concat([table.head(3), table.sample(25, random_state=0),
                      table[table["threshold.ischemic"].isna()].head(2)])            # argmax decoding
    for _, row in rows.iterrows():
        spec = row_to_spec(row)
        exact = seg_score(evaluate_postprocess(oof, masks, spec, image_probs), "iou", reduction)
        assert row["score"] == pytest.approx(exact["score"], nan_ok=True), spec
        assert row["score.ischemic"] == pytest.approx(exact["ischemic"], nan_ok=True), spec
    chosen = choose_postprocess(table, tolerance=0.02)         # the choice reproduces its reported score
    exact = seg_score(evaluate_postprocess(oof, masks, chosen["spec"], image_probs), "iou", reduction)
    assert chosen["score"] == pytest.approx(exact["score"])
    assert chosen["score"] >= chosen["best_score"] * (1 - 0.02) ** len(chosen["stability"])


def test_seg_fold_scores_group_by_fold():
    oof, masks = random_seg_oof()
    scores = seg_fold_scores(oof, masks)
    assert scores["fold"].tolist() == [0, 1] and scores["n"].tolist() == [5, 5]
    odd = {k: v[oof["fold"] == 1] for k, v in oof.items()}
    assert scores["score"][1] == pytest.approx(seg_score(evaluate_postprocess(odd, masks))["score"])


def test_gate_in_search_needs_image_probs():
    oof, masks = random_seg_oof(n=2)
    with pytest.raises(ValueError, match="image_probs"):
        search_postprocess(oof, masks, {"gate": [None, 0.5]})


# --------------------------------------------------------------------------- segmentation-based classifier


def test_seg_classifier_features_and_scores():
    oof, masks = constructed_oof(n=4)
    oof = {**oof, "probs": oof["probs"][:, :, ::2, ::2]}          # OOF at half size, features at full size
    features = seg_image_features(oof, {"min_area": 5}, size=48)
    true_area = np.array([np.count_nonzero(masks[i]) for i in oof["image_id"]])
    assert np.abs(features["area_lesion"] - true_area).max() <= 0.35 * true_area.max()
    assert (features["area_ischemic"][1::2] == 0).all() and (features["area_hemorrhagic"][0::2] == 0).all()
    stroke = seg_classifier_scores(features, "stroke", "area", area_scale=10)
    np.testing.assert_allclose(stroke, features["area_lesion"] / (features["area_lesion"] + 10))
    kind = seg_classifier_scores(features, "type", "max")
    assert (kind[0::2] < 0.5).all() and (kind[1::2] > 0.5).all()
    assert area_threshold(0.5, 100) == pytest.approx(100)


def test_seg_classifier_tuned_for_recall_and_blendable():
    rng = np.random.default_rng(0)
    n = 200
    target = (rng.random(n) < 0.4).astype(int)
    area = np.where(target == 1, rng.gamma(4, 60, n), rng.gamma(1, 15, n))   # lesions: larger areas
    features = pd.DataFrame({"image_id": np.arange(n), "fold": np.arange(n) % 5, "area_lesion": area})
    targets = pd.Series(target, index=np.arange(n))
    clf = tune_seg_classifier(features, targets, "stroke", "area", objective="recall", target_recall=0.95)
    oof = seg_classifier_oof(features, targets, "stroke", "area")
    assert metrics.recall(oof["target"], oof["prob"], clf["threshold"]["threshold"]) >= 0.95
    assert clf["area_threshold_px"] == pytest.approx(area_threshold(clf["threshold"]["threshold"]))
    assert list(oof.columns) == ["image_id", "fold", "target", "prob"] and oof["prob"].between(0, 1).all()


def test_targets_from_masks_and_one_image_prob():
    oof, masks = constructed_oof(n=2)
    empty = {**masks, 5: np.zeros((48, 48), np.uint8)}
    ids = [1000, 1001, 5]
    assert targets_from_masks(empty, ids, "stroke").tolist() == [1, 1, 0]
    assert targets_from_masks(empty, ids, "hemorrhagic").tolist() == [0, 1, 0]
    assert np.isnan(targets_from_masks(empty, ids, "type")[5])
    clf = {"target": "stroke", "feature": "max", "area_scale": 100.0, "postprocess": {}}
    assert seg_classifier_prob(oof["probs"][0], clf) == pytest.approx(oof["probs"][0, 1:].sum(0).max())
