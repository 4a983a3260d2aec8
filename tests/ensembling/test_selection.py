"""Selection on OOF: reading fold files, fold scores, blends, greedy ensembles, thresholds with plateaus."""
import numpy as np
import pandas as pd
import pytest
import yaml

from strokekit.evaluation import metrics
from strokekit.ensembling.selection import (align_members, blend, classifier_score, fold_scores,
                                         greedy_select, load_oof, plateau, recall_at_precision,
                                         top_k_folds, tune_classifier_threshold)


def noisy_scores(y: np.ndarray, noise: float, rng) -> np.ndarray:
    """Probabilities that separate the classes, blurred by independent noise (a member's errors)."""
    return 1 / (1 + np.exp(-(2.0 * (y - 0.5) * 2 + rng.normal(0, noise, y.size))))


@pytest.fixture
def labels():
    rng = np.random.default_rng(1)
    return (rng.random(400) < 0.3).astype(int), rng


# --------------------------------------------------------------------------- OOF files


def write_classifier_run(run_dir, n_folds=3, n=30, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(1000, 1000 + n))
    for k in range(n_folds):
        part = ids[k::n_folds]
        fold_dir = run_dir / f"fold{k}"
        fold_dir.mkdir(parents=True)
        pd.DataFrame({"image_id": part, "fold": k, "target": part % 2, "prob": rng.random(part.size)}
                     ).to_csv(fold_dir / "oof.csv", index=False)
    return ids


def test_load_classifier_oof_joins_folds_sorted(tmp_path):
    ids = write_classifier_run(tmp_path / "cfgA")
    oof = load_oof(tmp_path / "cfgA")
    assert list(oof.columns) == ["image_id", "fold", "target", "prob"]
    assert oof["image_id"].tolist() == sorted(ids.tolist())
    assert sorted(oof["fold"].unique()) == [0, 1, 2]
    assert (oof["target"] == oof["image_id"] % 2).all()


def test_load_oof_refuses_overlapping_folds_and_missing_runs(tmp_path):
    write_classifier_run(tmp_path / "cfgA")
    extra = pd.read_csv(tmp_path / "cfgA" / "fold0" / "oof.csv").assign(fold=1)
    extra.to_csv(tmp_path / "cfgA" / "fold1" / "oof.csv", index=False)
    with pytest.raises(ValueError, match="more than one OOF file"):
        load_oof(tmp_path / "cfgA")
    with pytest.raises(FileNotFoundError, match="train.py"):
        load_oof(tmp_path / "nothing")


def test_load_seg_oof(tmp_path):
    for k, ids in enumerate(([5, 1], [3])):
        (tmp_path / f"fold{k}").mkdir()
        probs = np.full((len(ids), 3, 4, 4), k, np.float16)
        np.savez(tmp_path / f"fold{k}" / "oof.npz", image_id=np.array(ids, np.int64), probs=probs, fold=k,
                 orig_hw=np.array([[512, 500 + i] for i in ids]))
    oof = load_oof(tmp_path)
    assert oof["image_id"].tolist() == [1, 3, 5]
    assert oof["orig_hw"][:, 1].tolist() == [501, 503, 505]
    assert oof["fold"].tolist() == [0, 1, 0]
    assert oof["probs"].shape == (3, 3, 4, 4) and oof["probs"][1].max() == 1


# --------------------------------------------------------------------------- scores and folds


def test_fold_scores_and_top_k():
    oof = pd.DataFrame({"image_id": range(12), "fold": [0] * 4 + [1] * 4 + [2] * 4,
                        "target": [0, 0, 1, 1] * 3,
                        "prob": [0.1, 0.2, 0.8, 0.9,  0.9, 0.8, 0.2, 0.1,  0.1, 0.6, 0.5, 0.9]})
    scores = fold_scores(oof, "auc")
    assert scores["score"].round(3).tolist() == [1.0, 0.0, 0.75]
    assert top_k_folds(scores, 2) == [0, 2]
    assert top_k_folds(scores, None) == [0, 1, 2]
    with pytest.raises(KeyError, match="auc"):
        classifier_score([0, 1], [0.2, 0.8], "accuracy_at_best")


def test_recall_at_precision_by_hand():
    y = [1, 1, 0, 1, 0, 0]
    p = [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]
    # thresholds 0.9, 0.8 keep precision 1 (recall 2/3); 0.6 gives precision 3/4, recall 1
    assert recall_at_precision(y, p, 1.0) == pytest.approx(2 / 3)
    assert recall_at_precision(y, p, 0.75) == pytest.approx(1.0)


# --------------------------------------------------------------------------- blends


def test_majority_vote_by_hand():
    probs = np.array([[0.6, 0.4, 0.9, 0.2],    # member thresholds 0.5, 0.3, 0.7
                      [0.2, 0.35, 0.9, 0.31],
                      [0.8, 0.1, 0.6, 0.75]])
    # votes: image0 1,0,1 -> 2/3; image1 0,1,0 -> 1/3; image2 1,1,0 -> 2/3; image3 0,1,1 -> 2/3
    share = blend(probs, "vote", thresholds=[0.5, 0.3, 0.7])
    np.testing.assert_allclose(share, [2 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert (share >= 0.5).astype(int).tolist() == [1, 0, 1, 1]


def test_mean_weighted_rank_blends():
    probs = np.array([[0.1, 0.5, 0.9], [0.3, 0.2, 0.4]])
    np.testing.assert_allclose(blend(probs, "mean"), [0.2, 0.35, 0.65])
    np.testing.assert_allclose(blend(probs, "weighted", weights=[3, 1]), [0.15, 0.425, 0.775])
    # ranks member0: 1,2,3; member1: 2,1,3 -> scaled by 1/3 and averaged
    np.testing.assert_allclose(blend(probs, "rank"), [0.5, 0.5, 1.0])
    with pytest.raises(KeyError, match="rank"):
        blend(probs, "median")


def test_align_members_inner_join_and_target_check():
    a = pd.DataFrame({"image_id": [3, 1, 2], "target": [1, 0, 1], "prob": [0.9, 0.1, 0.8], "fold": 0})
    b = pd.DataFrame({"image_id": [1, 2, 4], "target": [0, 1, 0], "prob": [0.2, 0.7, 0.3], "fold": 0})
    wide = align_members({"a": a, "b": b})
    assert wide.columns.tolist() == ["image_id", "target", "a", "b"]
    assert wide["image_id"].tolist() == [1, 2] and wide["b"].tolist() == [0.2, 0.7]
    with pytest.raises(ValueError, match="disagree"):
        align_members({"a": a, "b": b.assign(target=[1, 1, 0])})


# --------------------------------------------------------------------------- greedy ensembles


def test_greedy_ensemble_at_least_best_member_and_gains_from_diversity(labels):
    y, rng = labels
    members = {f"m{i}": noisy_scores(y, noise, rng) for i, noise in enumerate([2.0, 2.2, 2.4, 6.0])}
    score = lambda p: metrics.roc_auc(y, p)
    result = greedy_select(members, score)
    best_single = max(result["single_scores"].values())
    assert result["score"] >= best_single
    assert result["score"] > best_single + 0.005   # independent errors average out
    assert len(result["members"]) >= 2 and sum(result["weights"]) == pytest.approx(1.0)
    weights = dict(zip(result["members"], result["weights"]))
    blended = blend(np.stack([members[m] for m in weights]), "weighted", weights=list(weights.values()))
    assert score(blended) == pytest.approx(result["score"])


def test_greedy_without_replacement_and_a_useless_member(labels):
    y, rng = labels
    members = {"good": noisy_scores(y, 1.0, rng), "noise": rng.random(y.size)}
    result = greedy_select(members, lambda p: metrics.roc_auc(y, p), replacement=False)
    assert result["members"] == ["good"] and result["weights"] == [1.0]
    assert len(result["history"]) == 1


# --------------------------------------------------------------------------- thresholds


def test_plateau_takes_the_middle_not_the_argmax():
    values = np.arange(11) / 10
    scores = np.array([0.5, 0.6, 0.7, 0.901, 0.9, 0.9, 0.9, 0.9, 0.7, 0.6, 0.5])
    flat = plateau(values, scores, tolerance=0.005)
    assert flat["best_value"] == pytest.approx(0.3)
    assert flat["plateau"] == pytest.approx([0.3, 0.7]) and flat["value"] == pytest.approx(0.5)
    spike = plateau(values, np.where(values == 0.8, 0.95, scores), tolerance=0.005)
    assert spike["value"] == pytest.approx(0.8) and spike["width"] == 0  # a lone spike has no plateau


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99])
def test_tuned_threshold_meets_recall_on_oof(labels, target):
    y, rng = labels
    p = noisy_scores(y, 2.0, rng)
    tuned = tune_classifier_threshold(y, p, objective="recall", target_recall=target)
    assert metrics.recall(y, p, tuned["threshold"]) >= target
    assert tuned["oof"]["recall"] >= target
    assert tuned["plateau"][0] <= tuned["threshold"] <= tuned["plateau"][1]
    assert yaml.safe_load(yaml.safe_dump(tuned)) == tuned     # plain types for the ensemble spec


def test_f1_threshold_is_near_best_and_inside_its_plateau(labels):
    y, rng = labels
    p = noisy_scores(y, 2.0, rng)
    tuned = tune_classifier_threshold(y, p, objective="f1", tolerance=0.02)
    best = metrics.threshold_table(y, p)["f1"].max()
    assert tuned["oof"]["f1"] >= best * (1 - 0.02)
    assert tuned["plateau_width"] > 0
    assert metrics.f1_score(y, p, tuned["threshold"]) == pytest.approx(tuned["oof"]["f1"])


def test_ensemble_py_tunes_for_a_test_prior_and_prints_intervals(tmp_path, capsys):
    import importlib

    import yaml

    rng = np.random.default_rng(5)
    y = (rng.random(300) < 0.5).astype(int)
    fold = tmp_path / "runs" / "clf" / "fold0"
    fold.mkdir(parents=True)
    (fold / "config.yaml").write_text(yaml.safe_dump({"task": "stroke", "model": "tiny_cnn"}))
    (fold / "best.pt").write_bytes(b"")
    (fold / "done").write_text("")
    prob = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
    pd.DataFrame({"image_id": np.arange(300), "fold": 0, "target": y, "prob": prob}).to_csv(fold / "oof.csv",
                                                                                           index=False)
    ensemble = importlib.import_module("ensemble")
    outs = {}
    for name, extra in (("plain", []), ("rare", ["--test-prior", "0.1"])):
        out = tmp_path / f"{name}.yaml"
        assert ensemble.main(["--task", "stroke", str(fold.parent), "--objective", "f1", "--n-boot", "200",
                              "--out", str(out), *extra]) == 0
        outs[name] = yaml.safe_load(out.read_text())
    printed = capsys.readouterr().out
    assert "95 % intervals on resamples of 192 images" in printed and "test positive share of 0.100" in printed
    plain, rare = outs["plain"], outs["rare"]
    assert rare["threshold"]["value"] > plain["threshold"]["value"] and rare["threshold"]["test_prior"] == 0.1
    for spec in (plain, rare):
        for value in spec["oof"]["intervals"].values():
            assert value["low"] <= value["estimate"] <= value["high"] and value["size"] == 192
    for spec in (plain, rare):     # the intervals' estimates are the (reweighted) OOF figures at the threshold
        for name in ("precision", "recall", "f1"):
            assert spec["oof"]["intervals"][name]["estimate"] == pytest.approx(spec["threshold"]["oof"][name])
    with pytest.raises(SystemExit) as refused:
        ensemble.main(["--task", "stroke", str(fold.parent), "--test-prior", "1.5"])
    assert refused.value.code == 2 and "--test-prior" in capsys.readouterr().err


def test_robust_threshold_meets_the_recall_target_and_tracks_the_bootstrap():
    rng = np.random.default_rng(7)
    y = (rng.random(400) < 0.4).astype(int)
    p = np.clip(rng.normal(0.3 + 0.35 * y, 0.15), 0, 1)
    tuned = tune_classifier_threshold(y, p, "recall", 0.9, robust="p10", test_size=192, n_boot=300)
    assert metrics.recall(y, p, tuned["threshold"]) >= 0.9 and tuned["robust"] == "p10"
    f1 = tune_classifier_threshold(y, p, "f1", robust="p10", test_size=192, n_boot=300, tolerance=0.0)
    from strokekit.evaluation import bootstrap

    thresholds, draws = bootstrap.threshold_curve_draws(y, p, "f1", 192, 300)
    p10 = bootstrap.robust_scores(draws, "p10")
    assert f1["threshold"] == thresholds[np.nanargmax(p10)] and f1["robust_score"] == pytest.approx(np.nanmax(p10))
    assert np.nanmax(p10) < metrics.threshold_table(y, p)["f1"].max()    # a 10th percentile sits below the OOF
