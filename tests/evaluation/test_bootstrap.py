"""bootstrap.py: intervals cover the estimate and narrow as images are added; resampled scores of searched
settings agree with the search; the robust choice maximises its statistic; classifier intervals."""
import numpy as np
import pytest

from strokekit.evaluation import bootstrap, metrics

from strokekit.ensembling import robust
from strokekit.evaluation.ratios import combine
from strokekit.ensembling.seg_search import run_search
from helpers import random_seg_oof


def test_interval_covers_the_estimate_and_narrows_with_more_images():
    rng = np.random.default_rng(0)
    values = rng.beta(2, 3, 600)
    values[::50] = np.nan                                        # NaN images are left out, as in the means
    widths = []
    for size in (25, 97, 400):
        result = bootstrap.interval(values, size=size, n_boot=800, seed=1)
        assert result["low"] <= result["estimate"] <= result["high"]
        assert result["estimate"] == pytest.approx(np.nanmean(values))
        assert result["size"] == size and result["n"] == 600
        widths.append(result["high"] - result["low"])
    assert widths[0] > widths[1] > widths[2]
    # the interval of a mean at size n is about +-1.96 standard errors
    assert widths[1] == pytest.approx(2 * 1.96 * np.nanstd(values) / np.sqrt(97), rel=0.15)
    assert "95 % at n = 97" in bootstrap.format_interval(bootstrap.interval(values, size=97, n_boot=50))


def test_interval_of_a_statistic_of_several_arrays():
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.4).astype(int)
    pred = np.where(rng.random(300) < 0.8, y, 1 - y)
    result = bootstrap.interval((y, pred), statistic=metrics.balanced_accuracy, size=192, n_boot=300)
    assert result["estimate"] == pytest.approx(metrics.balanced_accuracy(y, pred))
    assert result["low"] < result["estimate"] < result["high"] and result["high"] - result["low"] < 0.25
    with pytest.raises(ValueError, match="one length"):
        bootstrap.interval((y, pred[:10]), statistic=metrics.balanced_accuracy)
    with pytest.raises(ValueError):
        bootstrap.interval(y, level=1.5)


def test_classifier_intervals_follow_the_counts():
    rng = np.random.default_rng(2)
    y = (rng.random(500) < 0.3).astype(int)
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    out = bootstrap.classifier_intervals(y, p, 0.5, size=192, n_boot=300)
    assert out["recall"]["estimate"] == pytest.approx(metrics.recall(y, p, 0.5))
    assert out["f1"]["estimate"] == pytest.approx(metrics.f1_score(y, p, 0.5))
    assert out["auc"]["estimate"] == pytest.approx(metrics.roc_auc(y, p))
    for value in out.values():
        assert value["low"] <= value["estimate"] <= value["high"] and value["size"] == 192
    shifted = bootstrap.classifier_intervals(y, p, 0.5, size=192, n_boot=300, test_prior=0.6)
    assert shifted["precision"]["estimate"] > out["precision"]["estimate"]    # more positives in the mix
    assert shifted["recall"]["estimate"] == pytest.approx(out["recall"]["estimate"])


def test_resampled_settings_agree_with_the_search_and_the_robust_choice_maximises_its_statistic():
    oof, masks = random_seg_oof(n=12)
    grid = {"threshold": [None, 0.3, 0.6], "min_area": [0, 10], "closing": [0, 1]}
    search = run_search(oof, masks, grid, "official_dice", never_empty=True)
    every = np.ones((1, 12))                                    # one "resample": every image once
    np.testing.assert_allclose(combine(search.terms(), every)[0], search.table["score"], rtol=1e-5)
    draws = robust.setting_distribution(search, search.table, size=97, n_boot=400)
    assert np.nanmean(draws, axis=0) == pytest.approx(search.table["score"].to_numpy(), abs=0.02)
    chosen = robust.robust_choice(search, "p10", size=97, n_boot=400, tolerance=0.0)
    assert chosen["robust_score"] == pytest.approx(search.table["score.robust"].max())
    assert chosen["interval"]["low"] <= chosen["score"] <= chosen["interval"]["high"]
    small = robust.robust_choice(search, "p10", size=20, n_boot=400, tolerance=0.0)["interval"]
    assert small["high"] - small["low"] > chosen["interval"]["high"] - chosen["interval"]["low"]
    with pytest.raises(KeyError, match="robust statistic"):
        bootstrap.robust_scores(draws, "p99")


def test_score_py_intervals_match_its_figures():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 3, (40, 12, 12)) * (rng.random((40, 12, 12)) < 0.3)
    true = rng.integers(0, 3, (40, 12, 12)) * (rng.random((40, 12, 12)) < 0.3)
    true[:5, :, :] = np.where(true[:5] == 1, 0, true[:5])          # some images without ischemia
    strict = metrics.seg_stats(pred, true)
    official = rng.random(40)
    out = bootstrap.phase2_intervals(official, official / 2, strict, n_boot=300)
    named = metrics.seg_scores(strict)
    for name in ("dice_macro_imagewise_lesion_mean", "iou_micro_lesion_mean"):
        assert out[name]["estimate"] == pytest.approx(named[name])
        assert out[name]["low"] <= out[name]["estimate"] <= out[name]["high"]
    assert out["official_iou"]["estimate"] == pytest.approx(official.mean()) and out["official_iou"]["size"] == 40
    y = (rng.random(192) < 0.5).astype(int)
    labels = np.where(rng.random(192) < 0.85, y, 1 - y)
    p1 = bootstrap.phase1_intervals(y, labels, probs=np.where(labels, 0.7, 0.3) + rng.normal(0, 0.1, 192))
    assert p1["balanced_accuracy"]["estimate"] == pytest.approx(metrics.balanced_accuracy(y, labels))
    assert p1["auc"]["low"] < p1["auc"]["estimate"] < p1["auc"]["high"]
