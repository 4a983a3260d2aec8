"""2.5D inference parity: a fold's OOF prediction of an image equals what the Predictor (an ensemble spec, and
the exported model folder) predicts for it from the same images, neighbours looked up among the images given
(index rows for a PNG classifier, bare DICOM paths for a DICOM U-Net); model.json records the neighbours;
a single HU array is refused. One epoch of tiny models on a 64-px phantom: slow."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strokekit.config import load_config
from strokekit.data.folds import make_folds
from strokekit.data.index import build_index
from strokekit.data.neighbours import NeighbourError
from strokekit.ensembling.spec import checkpoint_ref, write_spec
from strokekit.inference.modelfolder import MODEL_JSON, export_model
from strokekit.inference.predictor import Predictor
from strokekit.phantom.dataset import make_phantom
from strokekit.training.engine import train_fold

pytestmark = pytest.mark.slow
BASE = ["neighbours=1", "img_size=64", "epochs=1", "num_workers=0", "batch_size=8", "aug.shift_scale_rotate=0"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = make_phantom(tmp_path_factory.mktemp("nb") / "data", n=48, size=64, n_test1=2, n_test2=2, workers=1)
    index, _ = build_index(root)
    return root, index, make_folds(index, n_folds=2, seed=0)


def trained_spec(root, index, folds, tmp: Path, task: str, overrides: list[str]) -> tuple[Path, Path]:
    cfg = load_config(None, [*BASE, f"task={task}", f"data={root}", *overrides])
    train_fold(cfg, index, folds, 0, tmp / "run", progress=False, log=lambda *a: None)
    path = tmp / "spec.yaml"
    decision = {"postprocess": {}} if task == "seg" else {"threshold": {"value": 0.5}}
    write_spec({"task": task, "blend": "mean", "tta": cfg["oof_tta"], "members": [
        {"name": "m", "checkpoints": [checkpoint_ref(tmp / "run" / "best.pt", path)], "weight": 1.0,
         "threshold": 0.5}], **decision}, path)
    return path, tmp / "run"


def test_classifier_oof_equals_predictor(phantom, tmp_path, one_thread):
    root, index, folds = phantom
    spec, run = trained_spec(root, index, folds, tmp_path, "stroke", ["model=tiny_cnn"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["neighbours"]["offsets"] == 2 * summary["n_train"] + 2 * summary["n_val"]
    assert summary["neighbours"]["replaced"] == summary["neighbours"]["edge"] > 0  # the phantom's series ends
    oof = pd.read_csv(run / "oof.csv").set_index("image_id")["prob"]
    train = index[index["split"] == "train"].reset_index(drop=True)
    for source in (spec, export_model([spec], tmp_path / "model")):
        got = pd.Series([p.stroke_prob for p in Predictor(source, device="cpu").predict(train)],
                        index=train["image_id"])
        assert np.allclose(got.loc[oof.index], oof, atol=1e-5), (got.loc[oof.index] - oof).abs().max()
    members = json.loads((tmp_path / "model" / MODEL_JSON).read_text())["ensembles"]["stroke"]["members"]
    assert members[0]["input"]["neighbours"] == 1 and members[0]["input"]["in_chans"] == 3
    with pytest.raises(NeighbourError, match="single HU array"):
        Predictor(spec, device="cpu").predict(np.zeros((64, 64), np.float32))


def test_unet_oof_equals_predictor_on_dicom_paths(phantom, tmp_path, one_thread):
    """A DICOM U-Net (2 windows x 3 slices = 6 channels): the Predictor given bare paths reads the order tags
    from the headers itself; its probabilities equal the fold's OOF ones (float16 there)."""
    root, index, folds = phantom
    spec, run = trained_spec(root, index, folds, tmp_path, "seg",
                             ["model=tiny_unet", "image_source=dicom", "windows=[[40,80],[80,200]]", "in_chans=6",
                              "oof_size=64"])
    oof = np.load(run / "oof.npz")
    rows = index[index["split"] == "train"].reset_index(drop=True)
    predictions = Predictor(spec, device="cpu").predict(list(rows["dicom"]), probs=True)
    by_id = dict(zip(rows["image_id"], predictions))
    for image_id, probs in zip(oof["image_id"], oof["probs"]):
        assert np.abs(by_id[int(image_id)].probs - probs.astype(np.float32)).max() < 2e-3
