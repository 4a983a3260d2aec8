"""Classification metrics, ROC AUC, threshold search and strict segmentation scores on hand-counted data."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from strokekit.evaluation import metrics

# 4 positives, 6 negatives; at threshold 0.5: tp 3, fn 1, fp 2, tn 4
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.55, 0.4, 0.2, 0.1, 0.05])


def test_confusion_counts_and_threshold_metrics_by_hand():
    assert metrics.confusion_counts(Y, P, 0.5) == {"tp": 3, "fp": 2, "fn": 1, "tn": 4}
    assert metrics.accuracy(Y, P) == pytest.approx(0.7)
    assert metrics.precision(Y, P) == pytest.approx(0.6)
    assert metrics.recall(Y, P) == metrics.sensitivity(Y, P) == pytest.approx(0.75)
    assert metrics.specificity(Y, P) == pytest.approx(4 / 6)
    assert metrics.f1_score(Y, P) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert metrics.balanced_accuracy(Y, P) == pytest.approx(0.5 * (0.75 + 4 / 6))


def test_threshold_is_inclusive():
    assert metrics.confusion_counts([1, 0], [0.5, 0.5], threshold=0.5) == {"tp": 1, "fp": 1, "fn": 0, "tn": 0}


def test_metrics_match_sklearn_on_hard_labels():
    rng = np.random.default_rng(3)
    y, pred = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    assert metrics.balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred))
    assert metrics.f1_score(y, pred) == pytest.approx(f1_score(y, pred))


def test_zero_denominators_give_zero():
    assert metrics.precision([1, 0], [0.0, 0.0]) == 0.0  # nothing called positive
    assert metrics.recall([0, 0], [0.9, 0.1]) == 0.0  # nothing to find


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="0/1"):
        metrics.confusion_counts([0, 2], [0.1, 0.9])
    with pytest.raises(ValueError, match="length"):
        metrics.confusion_counts([0, 1], [0.1])


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    p = rng.random(200) + 0.3 * y
    assert metrics.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    coarse = np.round(p, 1)  # many ties
    assert metrics.roc_auc(y, coarse) == pytest.approx(roc_auc_score(y, coarse), abs=1e-12)


def test_auc_by_hand_and_with_one_class():
    assert metrics.roc_auc([0, 1], [0.2, 0.8]) == 1.0
    assert metrics.roc_auc([0, 1], [0.8, 0.2]) == 0.0
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(metrics.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))


def test_threshold_table_counts_every_distinct_score():
    table = metrics.threshold_table(Y, P)
    assert table["threshold"].tolist() == sorted(P.tolist(), reverse=True)
    for row, t in enumerate(table["threshold"]):
        c = metrics.confusion_counts(Y, P, t)
        assert (table["tp"][row], table["fp"][row], table["fn"][row], table["tn"][row]) == \
               (c["tp"], c["fp"], c["fn"], c["tn"])
    assert np.all(np.diff(table["recall"]) >= 0)


def test_threshold_table_groups_tied_scores():
    table = metrics.threshold_table([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1])
    assert table["threshold"].tolist() == [0.9, 0.5, 0.1]
    assert table["tp"].tolist() == [1, 2, 2] and table["fp"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("target", [0.5, 0.75, 0.97, 1.0])
def test_tune_threshold_recall_meets_target_at_the_highest_threshold(target):
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 400)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    best = metrics.tune_threshold(y, p, objective="recall", target_recall=target)
    assert metrics.recall(y, p, best["threshold"]) >= target
    assert best["recall"] == best["score"] >= target
    higher = np.unique(p[p > best["threshold"]])
    if higher.size:  # the next distinct score up no longer reaches the target
        assert metrics.recall(y, p, higher.min()) < target


@pytest.mark.parametrize("objective", ["f1", "youden"])
def test_tune_threshold_maximises_the_objective(objective):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 150)
    p = rng.random(150) * 0.6 + 0.4 * y
    best = metrics.tune_threshold(y, p, objective=objective)

    def value(t):
        m = metrics.classification_metrics(y, p, t)
        return m["f1"] if objective == "f1" else m["recall"] + m["specificity"] - 1

    brute = max(value(t) for t in np.unique(p))
    assert best["score"] == pytest.approx(brute)
    assert value(best["threshold"]) == pytest.approx(brute)


def test_tune_threshold_refuses_unknown_objective():
    with pytest.raises(KeyError, match="youden"):
        metrics.tune_threshold(Y, P, objective="accuracy")


# --------------------------------------------------------------------------- segmentation


def _maps():
    true = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros_like(true)
    true[0, :2, :2] = 1          # image 0: ischemia 4 px, predicted 2 px of it plus 2 px hemorrhage
    pred[0, 0, :2] = 1
    pred[0, 1, :2] = 2
    true[1, 2:, 2:] = 2          # image 1: hemorrhage 4 px, predicted exactly; no ischemia anywhere
    pred[1] = true[1]
    return pred, true


def test_seg_stats_by_hand():
    stats = metrics.seg_stats(*_maps())
    assert stats.tp.tolist() == [[12, 2, 0], [12, 0, 4]]
    assert stats.fp.tolist() == [[0, 0, 2], [0, 0, 0]]
    assert stats.fn.tolist() == [[0, 2, 0], [0, 0, 0]]
    assert (stats.tp + stats.fp + stats.fn + stats.tn == 16).all()


def test_seg_stats_single_image_matches_stack():
    pred, true = _maps()
    single = metrics.seg_stats(pred[0], true[0])
    assert single.tp.shape == (1, 3)
    assert single.tp.tolist() == [metrics.seg_stats(pred, true).tp[0].tolist()]


def test_micro_and_macro_imagewise_differ_and_empty_rule():
    stats = metrics.seg_stats(*_maps())
    micro = metrics.iou_score(*stats, reduction="micro")
    assert micro[1] == pytest.approx(2 / 4) and micro[2] == pytest.approx(4 / 6)
    macro = metrics.iou_score(*stats, reduction="macro-imagewise")
    # ischemia: image 1 has none in truth and prediction -> NaN, left out; hemorrhage: mean(0, 1)
    assert macro[1] == pytest.approx(0.5) and macro[2] == pytest.approx(0.5)
    macro_one = metrics.iou_score(*stats, reduction="macro-imagewise", empty=1.0)
    assert macro_one[1] == pytest.approx(0.75)
    per_image = metrics.iou_score(*stats, reduction="none")
    assert per_image.shape == (2, 3) and np.isnan(per_image[1, 1])


def test_dice_and_named_scores():
    stats = metrics.seg_stats(*_maps())
    dice = metrics.dice_score(*stats, reduction="micro")
    assert dice[1] == pytest.approx(4 / 6) and dice[2] == pytest.approx(8 / 10)
    named = metrics.seg_scores(stats)
    assert named["dice_micro_ischemic"] == pytest.approx(4 / 6)
    assert named["iou_macro_imagewise_hemorrhagic"] == pytest.approx(0.5)
    assert named["iou_micro_lesion_mean"] == pytest.approx((0.5 + 4 / 6) / 2)


def test_unknown_reduction_is_refused():
    with pytest.raises(KeyError, match="micro"):
        metrics.iou_score([1], [0], [0], reduction="mean")
