"""ensemble.py --threshold-range LO HI: every tuned classifier threshold searched in [LO, HI] only (the multi-task
paper's recall-tuned threshold fell "between 0.45 and 0.6")."""
import numpy as np
import pytest

from strokekit.cli.ensemble import parse_args
from strokekit.ensembling.classifiers import build_classifier_spec, decision_lines, read_runs
from strokekit.ensembling.selection import tune_classifier_threshold
from helpers import write_classifier_run


def scores(n=400, seed=0):
    """Positives around 0.3, negatives around 0.1: the F1-best threshold sits near 0.2, far below 0.45."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(np.where(y == 1, 0.3, 0.1) + rng.normal(0, 0.08, n), 0, 1)


def test_bounds_keep_the_threshold_inside_the_range():
    y, p = scores()
    free = tune_classifier_threshold(y, p, "f1")
    bound = tune_classifier_threshold(y, p, "f1", bounds=(0.45, 0.6))
    assert free["threshold"] < 0.45 <= bound["threshold"] <= 0.6
    assert bound["bounds"] == [0.45, 0.6] and "bounds_note" not in bound


def test_recall_target_out_of_reach_in_the_range_takes_its_lowest_and_says_so():
    y, p = scores()
    inside = np.sort(p[(p >= 0.45) & (p <= 0.6)])
    got = tune_classifier_threshold(y, p, "recall", target_recall=0.9, bounds=(0.45, 0.6))
    assert got["threshold"] == pytest.approx(inside[0])
    assert "reaches recall 0.9" in got["bounds_note"]
    reachable = tune_classifier_threshold(y, p, "recall", target_recall=0.9, bounds=(0.0, 0.6))
    assert reachable["oof"]["recall"] >= 0.9 and "bounds_note" not in reachable


def test_every_threshold_of_the_spec_is_searched_in_the_range(tmp_path):
    y, p = scores()
    folds = np.arange(len(y)) % 3
    q = np.clip(p + np.random.default_rng(1).normal(0, 0.05, len(p)), 0, 1)
    runs = read_runs([write_classifier_run(tmp_path, "a", y, p, folds), write_classifier_run(tmp_path, "b", y, q, folds)], "stroke")
    spec, report = build_classifier_spec(runs, "stroke", tmp_path / "e.yaml", blend="vote", keep_blend=True,
                                         threshold_range=(0.45, 0.6), n_boot=20)
    assert 0.45 <= spec["threshold"]["value"] <= 0.6
    assert all(0.45 <= m["threshold"] <= 0.6 for m in spec["members"])
    assert all(0.45 <= t <= 0.6 for t in report["nested"]["thresholds"].values())


def test_the_flag_is_for_classifiers_and_a_range_inside_0_1():
    assert parse_args(["--task", "stroke", "runs/x", "--threshold-range", "0.45", "0.6"]).threshold_range == [0.45, 0.6]
    for bad in (["--task", "seg", "runs/x", "--threshold-range", "0.4", "0.6"],
                ["--task", "stroke", "runs/x", "--threshold-range", "0.6", "0.4"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_lo_equal_hi_pins_the_threshold(tmp_path):
    """--threshold-range 0.5 0.5: nothing searched, even where no OOF score is 0.5 -- a majority of three votes
    (shares 0, 1/3, 2/3, 1) is a share >= 0.5; the members vote at their argmax (--vote-threshold 0.5)."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    dirs = [write_classifier_run(tmp_path, n, y, np.clip(y * 0.4 + rng.random(300) * 0.6, 0, 1)) for n in "abc"]
    spec, _ = build_classifier_spec(read_runs(dirs, "stroke"), "stroke", tmp_path / "e.yaml", blend="vote",
                                    keep_blend=True, vote_threshold=0.5, threshold_range=(0.5, 0.5), n_boot=20)
    assert spec["threshold"]["value"] == 0.5 and spec["threshold"]["plateau"] == [0.5, 0.5]
    assert decision_lines({"threshold": {**spec["threshold"]}})[0].startswith("threshold 0.5000 (pinned")
    free, _ = build_classifier_spec(read_runs(dirs, "stroke"), "stroke", tmp_path / "f.yaml", blend="vote",
                                    keep_blend=True, vote_threshold=0.5, n_boot=20)
    assert free["threshold"]["value"] != 0.5                   # a searched threshold is one of the OOF shares
    assert parse_args(["--task", "stroke", "runs/x", "--threshold-range", "0.5", "0.5"]).threshold_range == [0.5, 0.5]
