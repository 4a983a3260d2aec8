"""strokekit.Predictor: the same class maps, types and probabilities as infer.py's submissions (it runs the
same EnsemblePredictor path), from a model folder or spec files; paths, HU arrays and batches as input,
HU windowed as each member's config says (DICOM members: their windows; PNG members: the PNG export's)."""
import numpy as np
import pandas as pd
import pytest
import torch

from strokekit import Prediction, Predictor
from strokekit.models.checkpoint import build_checkpoint, save_atomic
from strokekit.config import load_config
from strokekit.data.badinput import BadInputError
from strokekit.data.dicom import read_dicom_hu
from strokekit.ensembling.spec import write_spec
from strokekit.models.registry import build_model
from strokekit.data.submission import read_labels, read_phase2_mask
from strokekit.inference.submit import find_test_rows


@pytest.fixture(scope="module")
def predictor(shipped) -> Predictor:
    return Predictor(shipped.model, device="cpu", batch_size=8)


def test_predictor_gives_infer_masks_types_and_probabilities(shipped, loop, predictor):
    rows, _ = find_test_rows(loop.data / "YARISMA_2", None, 2)
    results = predictor.predict(rows, probs=True)
    types = pd.read_csv(shipped.subs[("model", 2)] / "types.csv").set_index("image_id")
    with np.load(shipped.subs[("model", 2)] / "probs.npz") as saved:
        for image_id, result in zip(rows["image_id"], results):
            for name in ("spec", "model"):
                written = read_phase2_mask(shipped.subs[(name, 2)] / f"{image_id}.png")
                assert np.array_equal(result.class_map, written)
            assert result.type == types.at[image_id, "type"]
            assert result.fallback == bool(types.at[image_id, "fallback"])
            assert result.type_probs["hemorrhagic"] == pytest.approx(types.at[image_id, "p_hemorrhagic"], abs=1e-12)
            np.testing.assert_allclose(result.probs, saved[str(image_id)].astype(np.float32), atol=1e-3)  # float16 file
    rows, _ = find_test_rows(loop.data / "YARISMA_1", None, 1)
    rows = rows.head(16)  # infer.py's first two batches of 8
    results = predictor.predict(list(rows["png"]))  # phase 1 from PNG paths
    probs = pd.read_csv(shipped.subs[("model", 1)] / "probs.csv")
    labels = read_labels(shipped.subs[("model", 1)] / "asama1.txt")
    np.testing.assert_allclose([r.stroke_prob for r in results], probs["prob"].head(16), rtol=1e-12)
    assert [int(r.stroke) for r in results] == [labels[i] for i in rows["image_id"]]


def test_spec_files_give_what_the_folder_gives(shipped, loop, predictor, stroke_spec, seg_spec, type_spec):
    rows, _ = find_test_rows(loop.data / "YARISMA_2", None, 2)
    rows = rows.head(5)
    from_specs = Predictor([stroke_spec[0], seg_spec[0], type_spec], device="cpu", batch_size=8).predict(rows)
    from_folder = predictor.predict(rows)
    for a, b in zip(from_specs, from_folder):
        assert np.array_equal(a.class_map, b.class_map) and a.stroke_prob == b.stroke_prob
        assert a.type_probs == b.type_probs and a.type == b.type
    only_stroke = Predictor(stroke_spec[0], device="cpu").predict(rows["png"].iloc[0])
    assert isinstance(only_stroke, Prediction) and 0 <= only_stroke.stroke_prob <= 1
    assert only_stroke.class_map is None and only_stroke.type is None and only_stroke.type_probs is None


def test_hu_arrays_are_seen_as_the_png_export_saw_them(shipped, loop, predictor):
    """The phantom's PNGs are its DICOMs' HU in the brain window, so for these PNG-trained members an HU
    array, the DICOM path and the PNG path give one answer; png_window=None refuses HU input."""
    rows, _ = find_test_rows(loop.data / "YARISMA_2", None, 2)
    rows = rows.head(3)
    hu = np.stack([read_dicom_hu(path) for path in rows["dicom"]])
    from_arrays, from_dicom, from_png = predictor.predict(hu), predictor.predict(list(rows["dicom"])), \
        predictor.predict(list(rows["png"]))
    single = predictor.predict(hu[0])
    assert isinstance(from_arrays, list) and len(from_arrays) == 3 and isinstance(single, Prediction)
    for a, b, c in zip(from_arrays, from_dicom, from_png):
        assert a.stroke_prob == b.stroke_prob == c.stroke_prob and a.type_probs == c.type_probs
        assert np.array_equal(a.class_map, c.class_map) and np.array_equal(b.class_map, c.class_map)
    assert single.stroke_prob == from_png[0].stroke_prob
    strict = Predictor(shipped.model, device="cpu", png_window=None)
    with pytest.raises(BadInputError, match="png_window"):
        strict.predict(hu[0])
    with pytest.raises(BadInputError, match="2-D array"):
        predictor.predict([np.zeros((2, 3, 4))])


def test_dicom_members_window_hu_arrays_with_their_own_windows(loop, tmp_path):
    cfg = load_config(None, ["task=stroke", "model=tiny_cnn", "img_size=32", "image_source=dicom",
                             "windows=[[40,80],[80,200],[32,8]]", "in_chans=3"])
    torch.manual_seed(0)
    save_atomic(build_checkpoint(build_model(cfg), cfg, 2, epoch=1), tmp_path / "dicom.pt")
    spec = write_spec({"task": "stroke", "blend": "mean", "tta": ["none", "hflip"], "threshold": {"value": 0.5},
                       "members": [{"name": "dicom", "checkpoints": ["dicom.pt"], "weight": 1.0}]},
                      tmp_path / "dicom.yaml")
    rows, _ = find_test_rows(loop.data / "YARISMA_1", None, 1)
    paths = list(rows["dicom"].head(4))
    predictor = Predictor(spec, device="cpu", tta="none")
    from_files = predictor.predict(paths)
    from_arrays = predictor.predict([read_dicom_hu(p) for p in paths])
    assert [r.stroke_prob for r in from_files] == [r.stroke_prob for r in from_arrays]
    assert len({round(r.stroke_prob, 6) for r in from_files}) > 1  # the images differ, so do the answers
    with pytest.raises(BadInputError, match="no DICOM"):
        predictor.predict(rows["png"].iloc[0])
