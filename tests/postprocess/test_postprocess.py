"""Post-processing: thresholds, overlap rule, closing, min area, keep-largest, triplet, gate, resizing."""
import numpy as np
import pytest
import torch
import yaml

from strokekit.config.postprocess import normalise_spec

from strokekit.postprocess.steps import apply_postprocess, close_mask, resize_probs


def probs_from_maps(isc: np.ndarray, hem: np.ndarray) -> np.ndarray:
    """(3, H, W) probabilities from two lesion probability maps (background takes the rest)."""
    isc, hem = np.asarray(isc, np.float32), np.asarray(hem, np.float32)
    return np.stack([np.clip(1 - isc - hem, 0, 1), isc, hem])


def blob(shape, box, value=0.9):
    out = np.zeros(shape, np.float32)
    out[box] = value
    return out


def test_thresholds_per_class():
    isc = blob((10, 10), np.s_[1:4, 1:4], 0.4)
    hem = blob((10, 10), np.s_[6:9, 6:9], 0.4)
    probs = probs_from_maps(isc, hem)
    out = apply_postprocess(probs, {"threshold": {"ischemic": 0.3, "hemorrhagic": 0.5}})
    assert out.dtype == np.uint8
    assert (out[1:4, 1:4] == 1).all() and (out == 1).sum() == 9
    assert (out == 2).sum() == 0


def test_default_is_argmax_decoding():
    # pixel 0: background most probable; pixel 1: ischemic most probable though below 0.5
    probs = np.array([[[0.4, 0.3]], [[0.35, 0.45]], [[0.25, 0.25]]], np.float32)
    assert apply_postprocess(probs)[0].tolist() == [0, 1]
    assert apply_postprocess(probs, {"threshold": 0.5})[0].tolist() == [0, 0]
    assert normalise_spec(None)["threshold"] == {"ischemic": None, "hemorrhagic": None}


@pytest.mark.parametrize("rule,expected", [("argmax", [1, 2]), ("ischemic", [1, 1]), ("hemorrhagic", [2, 2])])
def test_overlap_rule(rule, expected):
    # pixel 0: ischemic more probable; pixel 1: hemorrhagic more probable; both pass 0.3 everywhere
    probs = np.array([[[0.1, 0.1]], [[0.5, 0.35]], [[0.4, 0.55]]], np.float32)
    out = apply_postprocess(probs, {"threshold": 0.3, "overlap": rule})
    assert out[0].tolist() == expected


def test_min_area_removes_only_small_components():
    isc = np.zeros((20, 20), np.float32)
    isc[1:3, 1:3] = 0.9            # 4 px
    isc[10:15, 10:15] = 0.9        # 25 px
    isc[5, 15] = isc[6, 16] = 0.9  # 2 px, diagonal neighbours: one 8-connected component
    out = apply_postprocess(probs_from_maps(isc, np.zeros_like(isc)), {"min_area": 4})
    assert (out[1:3, 1:3] == 1).all() and (out[10:15, 10:15] == 1).all()
    assert out[5, 15] == 0 and out[6, 16] == 0
    assert (out == 1).sum() == 29
    out = apply_postprocess(probs_from_maps(isc, np.zeros_like(isc)), {"min_area": 5})
    assert (out == 1).sum() == 25


def test_min_area_is_per_class():
    isc = blob((12, 12), np.s_[0:2, 0:2])      # 4 px
    hem = blob((12, 12), np.s_[6:8, 6:8])      # 4 px
    out = apply_postprocess(probs_from_maps(isc, hem), {"min_area": {"ischemic": 5, "hemorrhagic": 1}})
    assert (out == 1).sum() == 0 and (out == 2).sum() == 4


def test_closing_fills_one_pixel_gap():
    isc = np.zeros((12, 14), np.float32)
    isc[3:9, 2:6] = 0.9
    isc[3:9, 7:11] = 0.9          # column 6 is a 1-pixel gap
    probs = probs_from_maps(isc, np.zeros_like(isc))
    assert (apply_postprocess(probs)[3:9, 6] == 0).all()
    closed = apply_postprocess(probs, {"closing": 1})
    assert (closed[3:9, 6] == 1).all()
    assert (closed == 1).sum() == 6 * 9  # nothing else grew


def test_closing_keeps_lesions_touching_the_border():
    mask = np.zeros((8, 8), bool)
    mask[0:3, 0:3] = True
    assert close_mask(mask, 2)[0:3, 0:3].all()


def test_keep_largest_component():
    isc = blob((20, 20), np.s_[0:3, 0:3]) + blob((20, 20), np.s_[10:16, 10:16])
    out = apply_postprocess(probs_from_maps(isc, np.zeros_like(isc)), {"keep_largest": True})
    assert (out == 1).sum() == 36 and out[0, 0] == 0


def test_triplet_rule_decides_presence_then_draws_low():
    isc = blob((10, 10), np.s_[0:5, 0:5], 0.4)
    isc[2, 2] = 0.95                                       # one confident pixel
    probs = probs_from_maps(isc, np.zeros_like(isc))
    spec = {"threshold": 0.3, "triplet": {"high": 0.9, "min_pixels": 1}}
    assert (apply_postprocess(probs, spec) == 1).sum() == 25   # drawn with the lower threshold
    spec["triplet"]["min_pixels"] = 2
    assert (apply_postprocess(probs, spec) == 1).sum() == 0


def test_image_gate():
    isc = blob((6, 6), np.s_[0:2, 0:2])
    hem = blob((6, 6), np.s_[4:6, 4:6])
    probs = probs_from_maps(isc, hem)
    assert (apply_postprocess(probs, {"gate": 0.5}, image_prob=0.3) == 0).all()
    assert (apply_postprocess(probs, {"gate": 0.5}, image_prob=0.7) > 0).sum() == 8
    per_class = apply_postprocess(probs, {"gate": 0.5}, image_prob={"ischemic": 0.2, "hemorrhagic": 0.9})
    assert (per_class == 1).sum() == 0 and (per_class == 2).sum() == 4
    with pytest.raises(ValueError, match="image-level"):
        apply_postprocess(probs, {"gate": 0.5})


def test_spec_is_plain_yaml_and_rejects_unknown_keys():
    spec = normalise_spec({"threshold": {"ischemic": 0.4, "hemorrhagic": 0.6}, "min_area": 10,
                           "triplet": {"high": 0.8, "min_pixels": 20}})
    assert yaml.safe_load(yaml.safe_dump(spec)) == spec
    assert spec["min_area"] == {"ischemic": 10, "hemorrhagic": 10}
    assert normalise_spec(spec) == spec
    with pytest.raises(KeyError, match="min_area"):
        normalise_spec({"min_size": 10})
    with pytest.raises(ValueError, match="overlap"):
        normalise_spec({"overlap": "max"})


def test_resize_probs_matches_torch_bilinear():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 8, 6)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    out = resize_probs(probs, (32, 24))
    expected = torch.nn.functional.interpolate(torch.from_numpy(probs), size=(32, 24), mode="bilinear",
                                               align_corners=False).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
    assert resize_probs(probs[0], 16).shape == (3, 16, 16)
