"""Stacking (ensemble.py --blend stack): nested CV never scores a row with a model that saw it, the stored
level-2 models (no pickle: plain numbers in the spec YAML) predict what scikit-learn predicts, segmenter
features come from the seg runs' OOF, and the stack block is applied to the OOF as it is at inference."""
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from strokekit.cli import ensemble
from strokekit.ensembling.classifiers import build_classifier_spec, read_runs
from strokekit.ensembling.selection import RunsError
from strokekit.ensembling.spec import SpecError, read_spec, write_spec
from strokekit.ensembling.stacking import (CANDIDATES, apply_model, candidates_of, fit_model, nested_stack,
                                           seg_features, stack_probs)
from strokekit.errors import SettingError
from helpers import write_classifier_run

N_FOLDS = 5


def leaky_table(n=500, seed=0):
    """y, folds, and features: an honest weak one, and one that equals the label on fold 0's rows only."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    folds = np.arange(n) % N_FOLDS
    honest = y + rng.normal(0, 1.5, n)
    leak = np.where(folds == 0, y, rng.integers(0, 2, n)).astype(float)
    return np.column_stack([honest, leak]), y, folds


@pytest.mark.parametrize("candidates", [{k: CANDIDATES[k]} for k in ("logistic_C10", "gbm_d3_n50")])
def test_a_feature_leaking_one_folds_labels_cannot_help_that_fold(candidates):
    x, y, folds = leaky_table()
    fitted = nested_stack(x, y, folds, roc_auc_score, candidates=candidates)
    held = folds == 0
    nested_auc = roc_auc_score(y[held], fitted["oof"][held])
    honest_auc = roc_auc_score(y[held], x[held, 0])
    assert nested_auc < honest_auc + 0.08  # the leak did not reach fold 0's predictions
    # the leak is real: a level-2 model that saw fold 0's rows scores them almost perfectly
    seen = fit_model(CANDIDATES[fitted["chosen"]], x, y)
    assert roc_auc_score(y[held], apply_model(seen, x[held])) > nested_auc + 0.1


def test_every_outer_fold_is_predicted_by_a_model_fitted_without_its_rows():
    x, y, folds = leaky_table(200, seed=1)
    fitted = nested_stack(x, y, folds, roc_auc_score, candidates={k: CANDIDATES[k] for k in ("logistic_C1",)})
    assert np.isfinite(fitted["oof"]).all()
    for k, info in fitted["per_fold"].items():
        assert not set(info["train_rows"].tolist()) & set(np.flatnonzero(folds == k).tolist())
        assert len(info["train_rows"]) == (folds != k).sum()


@pytest.mark.parametrize("name", ["logistic_C0.1", "gbm_d2_n50", "gbm_d3_n50"])
def test_stored_models_predict_what_scikit_learn_predicts_after_a_yaml_round_trip(name):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4)) * [1, 10, 0.1, 3] + [0, 5, 0, -2]
    y = (x[:, 0] + x[:, 2] * 10 + rng.normal(size=300) > 0).astype(int)
    stored = yaml.safe_load(yaml.safe_dump(fit_model(CANDIDATES[name], x, y)))
    candidate = CANDIDATES[name]
    if candidate["kind"] == "logistic":
        mean, std = x.mean(0), x.std(0)
        reference = LogisticRegression(C=candidate["C"], max_iter=1000).fit((x - mean) / std, y)
        expected = reference.predict_proba((x - mean) / std)[:, 1]
    else:
        params = {k: candidate[k] for k in ("max_depth", "n_estimators", "learning_rate")}
        expected = GradientBoostingClassifier(random_state=0, **params).fit(x, y).predict_proba(x)[:, 1]
    np.testing.assert_allclose(apply_model(stored, x), expected, rtol=1e-6, atol=1e-9)


def test_seg_features_area_share_and_peak_per_class():
    probs = np.zeros((3, 4, 4), np.float32)
    probs[0] = 1.0
    probs[:, 0, :2] = [[0.2, 0.3], [0.7, 0.1], [0.1, 0.6]]  # pixel (0, 0) ischemic, (0, 1) hemorrhagic
    got = seg_features(probs)
    assert got["area_ischemic"] == pytest.approx(1 / 16) and got["area_hemorrhagic"] == pytest.approx(1 / 16)
    assert got["peak_ischemic"] == pytest.approx(0.7) and got["peak_hemorrhagic"] == pytest.approx(0.6)
    batch = seg_features(np.stack([probs, probs]))
    assert batch["peak_ischemic"].shape == (2,)


# --------------------------------------------------------------------------- through ensemble.py's builder


def fake_runs(root, n=150, seed=0):
    """Two stroke runs and one seg run (OOF of every image) over N_FOLDS folds."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    folds = np.arange(n) % N_FOLDS
    dirs = []
    for name, noise in (("clf_a", 0.8), ("clf_b", 1.2)):
        prob = np.zeros(n)
        for k in range(N_FOLDS):  # drawn fold by fold, as before, so the same seed gives the same OOF
            rows = folds == k
            prob[rows] = 1 / (1 + np.exp(-(y[rows] * 2 - 1 + rng.normal(0, noise, rows.sum()))))
        dirs.append(write_classifier_run(root, name, y, prob, folds))
    probs = np.zeros((n, 3, 16, 16), np.float32)
    probs[:, 0] = 1.0
    lesion = y.astype(bool) & (rng.random(n) < 0.7)  # the segmenter finds 70 % of the strokes
    probs[lesion, 0, 4:8, 4:8], probs[lesion, 1, 4:8, 4:8] = 0.2, 0.8
    for k in range(N_FOLDS):
        d = root / "seg_a" / f"fold{k}"
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump({"task": "seg", "model": "seg_a", "data": str(root)}))
        (d / "best.pt").write_bytes(b"")
        (d / "done").write_text("")
        rows = folds == k
        np.savez(d / "oof.npz", image_id=np.flatnonzero(rows), probs=probs[rows].astype(np.float16),
                 fold=np.full(rows.sum(), k))
    return dirs, root / "seg_a", y


def test_stack_spec_round_trips_and_applies_to_the_oof_as_at_inference(tmp_path):
    dirs, seg_dir, y = fake_runs(tmp_path)
    runs, seg = read_runs(dirs, "stroke"), read_runs([seg_dir], "seg")
    spec, report = build_classifier_spec(runs, "stroke", tmp_path / "e.yaml", blend="stack", stack_seg_runs=seg,
                                         keep_blend=True, n_boot=50, stack_models=["logistic"])
    stack = spec["stack"]
    assert spec["blend"] == "stack" and stack["features"][:2] == ["p:clf_a", "p:clf_b"]
    assert "area_ischemic:seg_a" in stack["features"] and stack["seg_members"][0]["oof_size"] == 16
    assert set(stack["outer_folds"]) == set(range(N_FOLDS)) and stack["chosen"].startswith("logistic")
    assert spec["oof"]["ensemble"] == pytest.approx(stack["nested_oof"])
    read = read_spec(write_spec(spec, tmp_path / "e.yaml"))
    assert len(read["stack"]["seg_members"][0]["checkpoint_paths"]) == N_FOLDS
    # the stored model on the OOF features (as inference builds them) = the fitted level-2 model on them
    oof = {name: pd.concat([pd.read_csv(tmp_path / name / f"fold{k}" / "oof.csv") for k in range(N_FOLDS)])
           .sort_values("image_id") for name in ("clf_a", "clf_b")}
    npz = [np.load(seg_dir / f"fold{k}" / "oof.npz") for k in range(N_FOLDS)]
    ids = np.concatenate([part["image_id"] for part in npz])
    seg_probs = np.concatenate([part["probs"] for part in npz])[np.argsort(ids)].astype(np.float32)
    features = {f"p:{name}": table["prob"].to_numpy() for name, table in oof.items()}
    features.update({f"{k}:seg_a": v for k, v in seg_features(seg_probs).items()})
    x = np.column_stack([features[f] for f in stack["features"]])
    np.testing.assert_allclose(stack_probs(read["stack"], features), apply_model(stack["model"], x))
    # ... and the model was fitted on exactly these named columns (its standardisation is theirs, name by name)
    np.testing.assert_allclose(stack["model"]["mean"], x.mean(axis=0), rtol=1e-6, atol=1e-12)
    std = x.std(axis=0)
    np.testing.assert_allclose(stack["model"]["scale"], np.where(std > 0, std, 1.0), rtol=1e-6, atol=1e-12)
    assert "stack: level-2" in ensemble.format_report(report)


def test_a_stroke_stack_needs_the_seg_runs_oof_of_every_image(tmp_path):
    dirs, seg_dir, _ = fake_runs(tmp_path)
    for k in range(N_FOLDS):  # the seg OOF of lesion-bearing slices only
        d = np.load(seg_dir / f"fold{k}" / "oof.npz")
        keep = d["image_id"] % 2 == 0
        np.savez(seg_dir / f"fold{k}" / "oof.npz", image_id=d["image_id"][keep], probs=d["probs"][keep],
                 fold=d["fold"][keep])
    with pytest.raises(RunsError, match="seg_val_negatives: true"):
        build_classifier_spec(read_runs(dirs, "stroke"), "stroke", tmp_path / "e.yaml", blend="stack",
                              stack_seg_runs=read_runs([seg_dir], "seg"), n_boot=20)
    with pytest.raises(SettingError, match="stack models"):
        candidates_of(["logistic", "xgboost"])


def test_a_spec_with_a_broken_stack_block_is_refused(tmp_path):
    spec = {"task": "stroke", "blend": "stack", "tta": ["none"], "threshold": {"value": 0.5},
            "members": [{"name": "m", "weight": 1.0, "checkpoints": ["x.pt"]}],
            "stack": {"features": ["p:m"], "model": {"kind": "pickle", "blob": "..."}}}
    with pytest.raises(SpecError, match="stack.model must be a mapping with kind"):
        write_spec(spec, tmp_path / "s.yaml")
    del spec["stack"]
    with pytest.raises(SpecError, match="blend stack needs a `stack` mapping"):
        write_spec(spec, tmp_path / "s.yaml")


def test_stack_flags_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ensemble.parse_args(["--task", "stroke", str(tmp_path), "--stack-seg-runs", str(tmp_path)])
    assert "--stack-seg-runs goes with --blend stack" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ensemble.parse_args(["--task", "seg", str(tmp_path), "--blend", "stack"])
