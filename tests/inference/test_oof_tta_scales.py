"""The OOF pass predicts as infer.py does with multi-scale TTA too (issue 17's principle): a fold trained with
oof_tta_scales records them, ensemble.py passes them on to the spec, and infer's path on the fold's own
validation images gives its OOF probabilities; without the scales the figures differ, so the check can tell."""
import json

import numpy as np
import pytest
import yaml

from conftest import small_phantom
from strokekit.cli import ensemble, train
from strokekit.data.index import build_index
from strokekit.ensembling.classifiers import read_runs
from strokekit.ensembling.spec import write_spec
from strokekit.inference.predict import EnsemblePredictor

pytestmark = pytest.mark.slow  # trains a fold (one epoch, seconds)
SCALES = [0.5, 1.0, 1.5]


def test_multiscale_oof_pass_equals_infers_prediction(tmp_path, one_thread):
    data = small_phantom(tmp_path, n=24, seed=4, size=64, n_test1=0, n_test2=0, cache=False)
    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump({"task": "seg", "model": "tiny_unet", "img_size": 64, "oof_size": 64,
                                      "epochs": 1, "batch_size": 8, "num_workers": 0, "loss": "ce",
                                      "oof_tta": ["none"], "oof_tta_scales": SCALES}))
    assert train.main(["--config", str(config), "--fold", "0", "--data", str(data), "--out", str(tmp_path / "runs"),
                       "--no-progress"]) == 0
    fold = tmp_path / "runs" / "seg" / "fold0"
    assert json.loads((fold / "summary.json").read_text())["oof_tta_scales"] == SCALES
    assert ensemble.submission_scales(read_runs([fold.parent], "seg"), None) == SCALES
    with np.load(fold / "oof.npz") as oof:
        ids, expected = oof["image_id"], oof["probs"].astype(np.float32)
    rows = build_index(data, cache=False)[0].set_index("image_id").loc[ids].reset_index()
    spec = write_spec({"task": "seg", "blend": "mean", "tta": ["none"], "tta_scales": SCALES,
                       "postprocess": {}, "members": [{"name": "seg", "checkpoints": [str(fold / "best.pt")],
                                                       "weight": 1.0}]}, tmp_path / "seg_spec.yaml")
    got = dict(EnsemblePredictor(spec, device="cpu", batch_size=5).iter_seg(rows))
    np.testing.assert_allclose(np.stack([got[i] for i in ids]), expected, atol=2e-3)  # OOF is float16
    plain = dict(EnsemblePredictor(spec, device="cpu", batch_size=5, scales=[1.0]).iter_seg(rows))
    assert np.abs(np.stack([plain[i] for i in ids]) - expected).max() > 1e-2
