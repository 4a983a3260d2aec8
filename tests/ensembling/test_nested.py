"""Nested OOF estimates (ensembling/nested.py): each fold's images scored with the post-processing setting, or
cut at the threshold, chosen on the other folds only."""
import numpy as np
import pandas as pd
import pytest
from helpers import random_seg_oof

from strokekit.ensembling.nested import SubsetSearch, nested_estimate, nested_threshold_figures
from strokekit.ensembling.seg_search import choose_postprocess, evaluate_objectives, run_search, setting_columns
from strokekit.evaluation.bootstrap import Patients

GRID = {"threshold": [None, 0.3, 0.5], "min_area": [0, 8, 40], "closing": [0, 1]}


def subset(oof, keep):
    return {k: np.asarray(v)[keep] for k, v in oof.items()}


@pytest.fixture(scope="module")
def searched():
    oof, masks = random_seg_oof(n=18, seed=5)
    oof["fold"] = np.arange(18) % 3
    return oof, masks, run_search(oof, masks, GRID, "official_iou", never_empty=True)


def test_a_subset_view_scores_as_a_search_of_those_images(searched):
    oof, masks, search = searched
    keep = oof["fold"] != 1
    view = SubsetSearch(search, keep)
    fresh = run_search(subset(oof, keep), masks, GRID, "official_iou", never_empty=True).table
    cols = setting_columns(fresh)
    joined = view.table.merge(fresh, on=cols, suffixes=("", "_fresh"))
    assert len(joined) == len(fresh) == len(view.table) and view.n_images == keep.sum()
    assert np.allclose(joined["score"], joined["score_fresh"], equal_nan=True)
    assert view.table["score"].is_monotonic_decreasing  # best first, as choose_postprocess expects


def test_each_fold_is_scored_with_the_setting_chosen_on_the_others(searched):
    oof, masks, search = searched
    nested = nested_estimate(search, oof["fold"], robust=None, size=None, n_boot=200,
                             objectives=("official_iou", "dice"))
    pooled = []
    for fold in range(3):
        chosen = choose_postprocess(run_search(subset(oof, oof["fold"] != fold), masks, GRID, "official_iou",
                                               never_empty=True).table)
        assert nested["settings"][fold] == chosen["spec"]  # chosen without the fold's images
        mine = subset(oof, oof["fold"] == fold)
        pooled.append(evaluate_objectives(mine, masks, chosen["spec"], phase2=True)["official_iou"]
                      * len(mine["image_id"]))
    assert nested["estimate"] == pytest.approx(sum(pooled) / len(oof["image_id"]), abs=1e-6)
    assert nested["low"] <= nested["estimate"] <= nested["high"] and nested["folds"] == 3
    assert nested["objectives"]["official_iou"]["estimate"] == nested["estimate"]  # the search's own objective
    assert 0 <= nested["objectives"]["dice"]["estimate"] <= 1
    # in-sample, the best setting scores at least as high as any setting chosen elsewhere
    assert search.table["score"].max() >= nested["estimate"] - 1e-9
    by_patient = nested_estimate(search, oof["fold"], robust="p10", size=None, n_boot=200,
                                 patients=Patients(np.asarray(oof["image_id"]) // 2, 5))
    assert by_patient["patients"] == 5 and set(by_patient["settings"]) == {0, 1, 2}
    with pytest.raises(ValueError, match="two folds"):
        nested_estimate(search, np.zeros(18, int), robust=None, size=None)


def test_nested_thresholds_come_from_the_other_folds():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 300), 0, 1)
    folds = np.arange(300) % 3
    tuned_on = []

    def median_of(inner):
        tuned_on.append(inner.copy())
        return float(np.median(p[inner]))

    nested = nested_threshold_figures(y, p, folds, median_of, size=None, n_boot=200)
    for fold, inner in zip(range(3), tuned_on):
        assert np.array_equal(inner, folds != fold)
        assert nested["thresholds"][fold] == pytest.approx(np.median(p[folds != fold]))
    decided = np.concatenate([p[folds == k] >= nested["thresholds"][k] for k in range(3)])
    truth = np.concatenate([y[folds == k] for k in range(3)])
    assert nested["figures"]["recall"]["estimate"] == pytest.approx(decided[truth == 1].mean())
    assert "auc" not in nested["figures"]
