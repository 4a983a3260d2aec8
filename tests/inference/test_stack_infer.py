"""A `stack` spec at inference: the level-2 model stored by ensemble.py is applied to the classifiers'
probabilities and the segmenters' features of the test images as it was to the OOF rows (features computed
at the seg run's OOF resolution), through EnsemblePredictor and the phase-1 pipeline alike."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from strokekit.ensembling.classifiers import build_classifier_spec, read_runs
from strokekit.ensembling.spec import write_spec
from strokekit.inference.modelfolder import ModelFolderError, export_model
from strokekit.inference.pipeline import Pipeline
from strokekit.inference.predict import EnsemblePredictor
from helpers import write_png
from test_predict import save_checkpoint

N_FOLDS, OOF_SIZE, N_OOF = 2, 16, 60


def fake_run(root, name, task, seed, rng, y, **overrides):
    """A run folder of real tiny checkpoints and a random OOF (what the level-2 model is fitted on)."""
    folds = np.arange(len(y)) % N_FOLDS
    for k in range(N_FOLDS):
        d = root / "runs" / name / f"fold{k}"
        d.mkdir(parents=True)
        save_checkpoint(d / "best.pt", seed + k, task=task, img_size=32, **overrides)
        (d / "config.yaml").write_text(yaml.safe_dump({"task": task, "model": overrides["model"]}))
        (d / "done").write_text("")
        rows = folds == k
        if task == "seg":
            probs = rng.dirichlet([4, 1, 1], size=(rows.sum(), OOF_SIZE, OOF_SIZE)).transpose(0, 3, 1, 2)
            probs[y[rows] == 1, 1] *= 1.5  # the stroke images: more ischemic probability, the maps unnormalised
            np.savez(d / "oof.npz", image_id=np.flatnonzero(rows), probs=probs.astype(np.float16),
                     fold=np.full(rows.sum(), k))
        else:
            prob = np.clip(y[rows] * 0.4 + rng.random(rows.sum()) * 0.6, 0, 1)
            pd.DataFrame({"image_id": np.flatnonzero(rows), "fold": k, "target": y[rows], "prob": prob}).to_csv(
                d / "oof.csv", index=False)
    return root / "runs" / name


@pytest.fixture()
def stack_spec(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, N_OOF)
    clf = [fake_run(tmp_path, "clf_a", "stroke", 0, rng, y, model="tiny_cnn"),
           fake_run(tmp_path, "clf_b", "stroke", 10, rng, y, model="tiny_cnn")]
    seg = [fake_run(tmp_path, "seg_a", "seg", 20, rng, y, model="tiny_unet")]
    path = tmp_path / "ensembles" / "stack.yaml"
    spec, _ = build_classifier_spec(read_runs(clf, "stroke"), "stroke", path, blend="stack", keep_blend=True,
                                    stack_seg_runs=read_runs(seg, "seg"), stack_models=["logistic"], n_boot=20)
    return write_spec(spec, path), spec


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(1)
    rows = [{"image_id": 100 + i, "png": str(write_png(tmp_path / "PNG" / f"{100 + i}.png",
                                                       rng.integers(0, 256, (h, w), dtype=np.uint8)))}
            for i, (h, w) in enumerate([(40, 40), (48, 40), (40, 56), (64, 64), (40, 40)])]
    return pd.DataFrame(rows)


def test_the_stack_applies_to_test_images_as_to_the_oof(stack_spec, images, tmp_path):
    path, spec = stack_spec
    predictor = EnsemblePredictor(path, device="cpu", batch_size=2)
    got = predictor.predict_classifier(images)
    # reference: the classifier members' probabilities (members=...), the seg run's probabilities from a plain
    # seg spec over its folds, features computed here by hand at the OOF resolution, the stored coefficients
    seg_entry = dict(spec["stack"]["seg_members"][0])
    seg_spec = write_spec({"task": "seg", "blend": "mean", "tta": spec["tta"], "postprocess": {},
                           "members": [seg_entry]}, path.parent / "seg.yaml")
    seg_probs = dict(EnsemblePredictor(seg_spec, device="cpu").iter_seg(images))
    features = {f"p:{m['name']}": got["members"][i] for i, m in enumerate(spec["members"])}
    small = [F.interpolate(torch.from_numpy(seg_probs[i])[None], size=(OOF_SIZE, OOF_SIZE), mode="bilinear",
                           align_corners=False)[0].numpy() for i in got["image_id"]]
    for c, name in ((1, "ischemic"), (2, "hemorrhagic")):
        features[f"area_{name}:seg_a"] = np.array([(p.argmax(0) == c).mean() for p in small])
        features[f"peak_{name}:seg_a"] = np.array([p[c].max() for p in small])
    model = spec["stack"]["model"]
    x = np.column_stack([features[f] for f in spec["stack"]["features"]])
    z = ((x - model["mean"]) / np.asarray(model["scale"])) @ np.asarray(model["coef"]) + model["intercept"]
    np.testing.assert_allclose(got["prob"], 1 / (1 + np.exp(-z)), rtol=1e-5, atol=1e-6)
    assert len(set(np.round(got["prob"], 6))) > 1  # the images get different stacked probabilities
    decided = Pipeline({"stroke": predictor}).decide_phase1(images)
    np.testing.assert_allclose([d.stroke_prob for d in decided], got["prob"])
    assert [d.stroke for d in decided] == (got["prob"] >= spec["threshold"]["value"]).tolist()


def test_a_stack_with_segmenters_is_not_exported_to_a_model_folder(stack_spec, tmp_path):
    path, _ = stack_spec
    with pytest.raises(ModelFolderError, match="--stack-seg-runs"):
        export_model([path], tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_a_stack_of_classifiers_travels_in_a_model_folder(tmp_path, images):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, N_OOF)
    clf = [fake_run(tmp_path, "clf_a", "stroke", 0, rng, y, model="tiny_cnn"),
           fake_run(tmp_path, "clf_b", "stroke", 10, rng, y, model="tiny_cnn")]
    path = tmp_path / "ensembles" / "stack.yaml"
    spec, _ = build_classifier_spec(read_runs(clf, "stroke"), "stroke", path, blend="stack", keep_blend=True,
                                    stack_models=["gbm"], n_boot=20)
    write_spec(spec, path)
    expected = EnsemblePredictor(path, device="cpu").predict_classifier(images)["prob"]
    folder = export_model([path], tmp_path / "models")
    got = EnsemblePredictor(str(folder), device="cpu").predict_classifier(images)["prob"]
    assert spec["stack"]["model"]["kind"] == "gbm"
    np.testing.assert_allclose(got, expected, rtol=1e-6)
