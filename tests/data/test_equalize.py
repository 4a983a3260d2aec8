"""equalize: a fixed contrast equalisation of every input channel, the same at training (through the cache),
in the HU-jitter path, OOF and inference; part of the cache's and the ensemble members' preprocessing keys."""
import numpy as np
import pytest

from strokekit.config import ConfigError, load_config
from strokekit.data.cache import PreprocessCache
from strokekit.data.equalize import equalize_channels
from strokekit.data.index import build_index
from strokekit.data.readers import load_image
from strokekit.data.window_jitter import jittered_input, load_hu
from strokekit.data.dicom import read_dicom_hu
from strokekit.inference.predict import preprocess_key, read_input
from strokekit.phantom.dataset import make_phantom


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    data = make_phantom(tmp_path_factory.mktemp("eq") / "data", n=12, seed=1, size=64, n_test1=2, n_test2=2)
    index, _ = build_index(data)
    return index[index["split"] == "train"].head(3).to_dict("records")


def test_hist_spreads_each_channel_over_the_full_range():
    image = (np.random.default_rng(0).beta(2, 5, (64, 64, 2)) * 120).astype(np.uint8)
    image[..., 1] //= 2
    out = equalize_channels(image, "hist")
    for c in range(2):
        assert image[..., c].max() < 130 and out[..., c].max() == 255
        cdf = np.cumsum(np.bincount(out[..., c].ravel(), minlength=256)) / out[..., c].size
        assert np.abs(cdf[63::64] - [0.25, 0.5, 0.75, 1.0]).max() < 0.08  # about uniform
        order = np.argsort(image[..., c].ravel(), kind="stable")
        assert np.all(np.diff(out[..., c].ravel()[order].astype(int)) >= 0)  # monotone: contrast, not content
    assert equalize_channels(image, None) is image


@pytest.mark.parametrize("source", ["png", "dicom"])
def test_every_path_equalises_alike(rows, tmp_path, source):
    sets = [f"image_source={source}", "img_size=64", f"cache_dir={tmp_path}"]
    if source == "dicom":
        sets.append("windows=[[40,80],[80,200],[35,20]]")
    plain, equal = load_config(None, sets), load_config(None, [*sets, "equalize=hist"])
    for row in rows:
        raw = load_image(row, plain)
        assert np.array_equal(load_image(row, equal), equalize_channels(raw, "hist"))
        # the cache (training and OOF) keeps the two apart and holds what load_image gives
        for cfg in (plain, equal, plain):
            cached, _ = PreprocessCache(tmp_path, cfg).image(row)
            assert np.array_equal(cached, PreprocessCache(tmp_path / "fresh", cfg).image(row)[0])
        assert not np.array_equal(PreprocessCache(tmp_path, plain).image(row)[0],
                                  PreprocessCache(tmp_path, equal).image(row)[0])
    if source == "dicom":  # HU-window jitter with no jitter drawn, and an HU array given to the Predictor
        still = dict(equal, aug={**equal["aug"], "window_shift": 0.0, "window_scale": 0.0})
        jittered = jittered_input(load_hu(rows[0], still), still, np.random.default_rng(0))
        assert np.array_equal(jittered, load_image(rows[0], equal))
        hu_row = {"hu": read_dicom_hu(rows[0]["dicom"]), "source": "array"}
        assert np.array_equal(read_input(hu_row, equal), load_image(rows[0], equal))
    assert preprocess_key(plain) != preprocess_key(equal)  # members that equalise differently read apart
    old = {k: v for k, v in plain.items() if k != "equalize"}  # a checkpoint's config from before the key
    assert preprocess_key(old) == preprocess_key(plain)


def test_unknown_methods_are_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="equalize"):
        load_config(None, ["equalize=histogram"])
