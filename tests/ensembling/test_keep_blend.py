"""ensemble.py --keep-blend: a published system's majority vote survives even when one member is better."""
import numpy as np

from strokekit.ensembling.classifiers import build_classifier_spec, read_runs
from helpers import write_classifier_run


def test_vote_is_kept_only_when_asked(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    dirs = [write_classifier_run(tmp_path, "good", y, np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)),
            write_classifier_run(tmp_path, "noise1", y, rng.random(200)),
            write_classifier_run(tmp_path, "noise2", y, rng.random(200))]
    runs = read_runs(dirs, "stroke")
    guarded, _ = build_classifier_spec(runs, "stroke", tmp_path / "e.yaml", blend="vote")
    assert [m["name"] for m in guarded["members"]] == ["good"]  # the vote lost to its best member
    kept, _ = build_classifier_spec(runs, "stroke", tmp_path / "e.yaml", blend="vote", keep_blend=True)
    assert kept["blend"] == "vote" and len(kept["members"]) == 3
    assert "--keep-blend" in kept["selection"]["note"]
    assert kept["oof"]["ensemble"] < kept["oof"]["best_member"]


def test_vote_threshold_makes_every_member_vote_at_that_probability(tmp_path):
    """--vote-threshold 0.5: each member's vote is its argmax (a fastai model's), not its tuned threshold."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    probs = {f"m{k}": np.clip(y * 0.25 + rng.random(300) * 0.6, 0, 1) for k in range(3)}  # tuned cuts sit low
    runs = read_runs([write_classifier_run(tmp_path, name, y, p) for name, p in probs.items()], "stroke")
    tuned, _ = build_classifier_spec(runs, "stroke", tmp_path / "t.yaml", blend="vote", keep_blend=True)
    at_half, _ = build_classifier_spec(runs, "stroke", tmp_path / "h.yaml", blend="vote", keep_blend=True,
                                       vote_threshold=0.5)
    assert [m["threshold"] for m in at_half["members"]] == [0.5, 0.5, 0.5]
    assert all(m["threshold"] != 0.5 for m in tuned["members"])
    from strokekit.ensembling.spec import combine

    votes = combine(np.stack(list(probs.values())), "vote", thresholds=[0.5] * 3)
    assert np.allclose(votes, np.mean([p >= 0.5 for p in probs.values()], axis=0))
    from strokekit.evaluation.metrics import roc_auc

    assert at_half["oof"]["ensemble"] == roc_auc(y, votes)  # the spec scored the argmax votes


def test_keep_or_guard_is_the_rule_both_ensemblers_apply():
    """Classifier and seg specs (the DPN-U-Net's average of its best runs) share it: by default a blend below
    its best member gives way to that member; with keep_blend it stays, with a note saying what it costs."""
    import numpy as np

    from strokekit.ensembling.classifiers import keep_or_guard

    members = {"a": np.array([0.1, 0.9]), "b": np.array([0.4, 0.6])}
    blend = lambda: {"blend": "mean", "score": 0.70, "blended": np.array([0.25, 0.75]), "history": []}
    guarded = keep_or_guard(blend(), members, {"a": 0.80, "b": 0.60}, keep_blend=False)
    assert guarded["weights"] == {"a": 1.0, "b": 0.0} and np.array_equal(guarded["blended"], members["a"])
    kept = keep_or_guard(blend(), members, {"a": 0.80, "b": 0.60}, keep_blend=True)
    assert np.array_equal(kept["blended"], [0.25, 0.75]) and "--keep-blend" in kept["note"]
    assert keep_or_guard(blend(), members, {"a": 0.65, "b": 0.60}, keep_blend=False)["blend"] == "mean"
