"""predict.py: batched inference equals image-by-image inference (PNG and DICOM members), costs one forward
pass per batch and checkpoint, and gives seg probabilities at each image's own size; the spec's blend and
paths behave."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from strokekit.models.checkpoint import build_checkpoint, save_atomic
from strokekit.config import load_config
from strokekit.ensembling.spec import SpecError, checkpoint_ref, combine, read_spec, write_spec
from strokekit.models.registry import build_model
from strokekit.inference.predict import EnsemblePredictor
from strokekit.ensembling.selection import blend
from helpers import write_dicom, write_png

SIZES = [(40, 40), (48, 40), (40, 56), (40, 40), (64, 64)]  # (H, W): odd batch sizes, mixed shapes


def save_checkpoint(path, seed: int, **overrides) -> str:
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    torch.manual_seed(seed)
    model = build_model(cfg)
    for module in model.modules():  # non-trivial BatchNorm statistics, so eval mode matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    save_atomic(build_checkpoint(model, cfg, 3 if cfg["task"] == "seg" else 2, epoch=1), path)
    return str(path)


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, (h, w) in enumerate(SIZES):
        grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
        stored = rng.integers(900, 1200, (h, w)).astype(np.int16)  # HU -124 .. 176 with intercept -1024
        rows.append({"image_id": 100 + i, "png": str(write_png(tmp_path / "PNG" / f"{100 + i}.png", grey)),
                     "dicom": str(write_dicom(tmp_path / "DICOM" / f"{100 + i}.dcm", stored))})
    return pd.DataFrame(rows)


def make_spec(tmp_path, task: str, members: list[list[str]], blend_name: str = "mean", **extra) -> str:
    path = tmp_path / "spec.yaml"
    entries = [{"name": f"m{i}", "checkpoints": [checkpoint_ref(c, path) for c in ckpts], "weight": 1.0 + i,
                "threshold": 0.5} for i, ckpts in enumerate(members)]
    decision = {"postprocess": {}} if task == "seg" else {"threshold": {"value": 0.5}}
    spec = {"task": task, "blend": blend_name, "tta": ["none", "hflip"], "members": entries, **decision, **extra}
    return str(write_spec(spec, path))


def classifier_spec(tmp_path, blend_name="mean"):
    a0 = save_checkpoint(tmp_path / "a0.pt", 0, task="stroke", model="tiny_cnn", img_size=32)
    a1 = save_checkpoint(tmp_path / "a1.pt", 1, task="stroke", model="tiny_cnn", img_size=32)
    b0 = save_checkpoint(tmp_path / "b0.pt", 2, task="stroke", model="tiny_cnn", img_size=48, mean=0.4,
                         image_source="dicom", windows="[[40,80],[36,16]]", in_chans=2)
    return make_spec(tmp_path, "stroke", [[a0, a1], [b0]], blend_name)


class ForwardCounter:
    def __init__(self, predictor):
        self.calls = 0
        for member in predictor.members:
            for model in member.models:
                model.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.calls += 1


@pytest.mark.parametrize("blend_name", ["mean", "rank", "vote"])
def test_classifier_batched_equals_one_by_one(tmp_path, images, blend_name):
    spec = classifier_spec(tmp_path, blend_name)
    batched = EnsemblePredictor(spec, device="cpu", batch_size=4)
    counter = ForwardCounter(batched)
    many = batched.predict_classifier(images)
    assert counter.calls == batched.cost(len(images))["forward_passes"] == 2 * 3  # 2 batches x 3 checkpoints
    single = EnsemblePredictor(spec, device="cpu", batch_size=1)
    one = single.predict_classifier(images)
    assert many["image_id"].tolist() == images["image_id"].tolist()
    np.testing.assert_allclose(many["members"], one["members"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(many["prob"], one["prob"], rtol=0, atol=1e-5)
    assert many["members"].shape == (2, len(images))
    assert not np.allclose(many["members"][0], many["members"][1])  # two different members really ran


def test_tta_changes_a_flip_sensitive_model(tmp_path, images):
    spec = classifier_spec(tmp_path)
    plain = EnsemblePredictor(spec, device="cpu", flips=["none"]).predict_classifier(images)["prob"]
    tta = EnsemblePredictor(spec, device="cpu").predict_classifier(images)["prob"]
    flipped = EnsemblePredictor(spec, device="cpu", flips=["hflip"]).predict_classifier(images)["prob"]
    assert not np.allclose(plain, flipped)
    np.testing.assert_allclose(tta, (plain + flipped) / 2, atol=1e-5)  # mean blend of linear averages


def test_seg_batched_equals_one_by_one_at_original_size(tmp_path, images):
    c0 = save_checkpoint(tmp_path / "s0.pt", 0, task="seg", model="tiny_unet", img_size=32)
    c1 = save_checkpoint(tmp_path / "s1.pt", 1, task="seg", model="tiny_unet", img_size=64)
    spec = make_spec(tmp_path, "seg", [[c0], [c1]], "weighted")
    batched = list(EnsemblePredictor(spec, device="cpu", batch_size=3).iter_seg(images))
    single = list(EnsemblePredictor(spec, device="cpu", batch_size=1).iter_seg(images))
    assert [i for i, _ in batched] == images["image_id"].tolist()
    for (_, many), (_, one), size in zip(batched, single, SIZES):
        assert many.shape == (3, *size) and many.dtype == np.float32
        np.testing.assert_allclose(many, one, rtol=0, atol=1e-5)
        np.testing.assert_allclose(many.sum(0), 1.0, atol=1e-4)  # still softmax probabilities


def test_member_of_another_task_is_refused(tmp_path, images):
    seg = save_checkpoint(tmp_path / "s.pt", 0, task="seg", model="tiny_unet", img_size=32)
    spec = make_spec(tmp_path, "stroke", [[seg]])
    with pytest.raises(SpecError, match="seg checkpoint in a stroke ensemble"):
        EnsemblePredictor(spec, device="cpu")


@pytest.mark.parametrize("method", ["mean", "rank", "vote"])
def test_combine_with_equal_weights_is_selections_blend(method):
    probs = np.random.default_rng(1).random((3, 20))
    thresholds = [0.3, 0.5, 0.7]
    np.testing.assert_allclose(combine(probs, method, None, thresholds),
                               blend(probs, method, thresholds=thresholds), atol=1e-12)


def test_spec_paths_are_relative_and_travel_with_the_spec(tmp_path):
    (tmp_path / "a").mkdir()
    spec_path = classifier_spec(tmp_path / "a")
    text = open(spec_path, encoding="utf-8").read()
    assert str(tmp_path) not in text  # relative to the spec's folder
    moved = shutil.copytree(tmp_path / "a", tmp_path / "b")
    spec = read_spec(moved / "spec.yaml")
    assert all(p.startswith(str(moved)) for m in spec["members"] for p in m["checkpoint_paths"])
    (moved / "b0.pt").unlink()
    with pytest.raises(SpecError, match="b0.pt not found"):
        read_spec(moved / "spec.yaml")


def test_spec_validation_lists_problems(tmp_path):
    with pytest.raises(SpecError, match="blend 'vote' must be one of"):
        write_spec({"task": "seg", "blend": "vote", "tta": ["none"], "members": [
            {"name": "x", "checkpoints": ["x.pt"], "weight": 1.0}], "postprocess": {}}, tmp_path / "s.yaml")
    with pytest.raises(SpecError, match="needs threshold.value"):
        write_spec({"task": "stroke", "blend": "mean", "tta": ["none"], "members": [
            {"name": "x", "checkpoints": ["x.pt"], "weight": 1.0}]}, tmp_path / "s.yaml")
