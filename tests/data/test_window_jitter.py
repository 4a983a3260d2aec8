"""HU-window jitter (aug.window_shift / window_scale, data/window_jitter.py): without a shift the HU path gives the
plain input bit for bit; training samples move by a few grey levels, repeat for the same seed and epoch, and
read the cache's HU entries; validation never jitters; PNG configs are refused; hu_range keys the cache."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strokekit.config import ConfigError, load_config
from strokekit.data.cache import PreprocessCache
from strokekit.data.dataset import SliceDataset
from strokekit.data.index import build_index
from strokekit.data.neighbours import load_input
from strokekit.data.window_jitter import hu_to_channels, jittered_windows, load_hu
from strokekit.phantom.dataset import make_phantom

DICOM_3 = ["image_source=dicom", "windows=[[40,80],[80,200],[35,20]]", "in_chans=3"]
JITTER = ["aug.window_shift=10", "aug.window_scale=0.1"]
NO_AUG = ["aug.hflip=0", "aug.shift_scale_rotate=0", "aug.brightness_contrast=0"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return make_phantom(tmp_path_factory.mktemp("jitter") / "data", n=16, size=96, n_test1=2, n_test2=2, workers=1)


def rows_of(root: Path) -> pd.DataFrame:
    index, _ = build_index(root)
    return index[index["split"] == "train"].reset_index(drop=True)


def config(root: Path, cache_dir, *sets) -> dict:
    cfg = load_config(None, ["task=seg", "img_size=64", "num_workers=0", f"data={root}", *DICOM_3, *NO_AUG, *sets])
    cfg.update(cache=cache_dir is not None, cache_dir=str(cache_dir) if cache_dir else None)
    return cfg


@pytest.mark.parametrize("windows", [DICOM_3, ["image_source=dicom", "windows=[[40,80]]", "in_chans=3"]],
                         ids=["3 windows", "1 window repeated"])
def test_hu_path_without_jitter_is_the_plain_input(phantom, windows):
    cfg = load_config(None, ["task=stroke", *windows])
    for row in rows_of(phantom).head(4).to_dict("records"):
        hu = load_hu(row, cfg)
        assert hu.dtype == np.float32 and hu.shape[-1] == 1
        assert np.array_equal(hu_to_channels(hu, cfg["windows"], cfg["in_chans"]), load_input(row, cfg))


def test_jittered_windows_stay_in_their_ranges():
    rng = np.random.default_rng(0)
    for _ in range(200):
        (c1, w1), (c2, w2) = jittered_windows([[40, 80], [80, 200]], 10, 0.1, rng)
        assert 30 <= c1 <= 50 and 72 <= w1 <= 88 and 70 <= c2 <= 90 and 180 <= w2 <= 220
    assert jittered_windows([[40, 80]], 0, 0, rng) == [[40.0, 80.0]]


@pytest.mark.parametrize("cached", [False, True], ids=["decoded", "cached"])
def test_training_samples_jitter_validation_does_not(phantom, tmp_path, cached):
    rows = rows_of(phantom)
    cache_dir = tmp_path / "cache" if cached else None
    plain = SliceDataset(rows, config(phantom, cache_dir), train=True, masks=True)
    jittered = SliceDataset(rows, config(phantom, cache_dir, *JITTER), train=True, masks=True)
    again = SliceDataset(rows, config(phantom, cache_dir, *JITTER), train=True, masks=True)
    changed = []
    for i in range(len(rows)):
        for dataset in (plain, jittered, again):
            dataset.reseed(3)
        a, b, c = plain[i]["image"].numpy(), jittered[i]["image"].numpy(), again[i]["image"].numpy()
        assert np.array_equal(b, c)  # the same seed and epoch draw the same windows
        assert np.array_equal(plain[i]["mask"], jittered[i]["mask"])  # masks do not move
        changed.append(np.abs(a - b).max())
        # a window moved by <= 10 HU and scaled by <= 10 %: brain pixels move by a share of the grey range
        assert np.median(np.abs(a - b)) < 0.35 * (a.max() - a.min() + 1e-6)
    assert min(changed) > 0  # every sample was jittered
    if cached:
        assert list((tmp_path / "cache").rglob("*.npz"))
    validation = SliceDataset(rows, config(phantom, None, *JITTER), train=False)
    reference = SliceDataset(rows, config(phantom, None), train=False)
    for i in range(3):
        assert np.array_equal(validation[i]["image"].numpy(), reference[i]["image"].numpy())


def test_cached_hu_holds_the_area_resized_units(phantom, tmp_path):
    cfg = config(phantom, tmp_path, *JITTER)
    cache = PreprocessCache(tmp_path, cfg)
    row = rows_of(phantom).iloc[0].to_dict()
    hu, hw = cache.hu(row)
    assert hu.shape == (64, 64, 1) and hw == (96, 96)
    import cv2
    want = cv2.resize(load_hu(row, cfg), (64, 64), interpolation=cv2.INTER_AREA)
    brain = np.abs(want) < 200
    assert np.allclose(hu[..., 0][brain], want[brain], atol=0.07)  # float16 keeps brain HU to < 1/16 HU
    again, _ = cache.hu(row)
    assert np.array_equal(hu, again) and len(list(tmp_path.rglob("*.npz"))) == 1


def test_hu_range_is_part_of_the_image_key(phantom, tmp_path):
    row = rows_of(phantom).iloc[0].to_dict()
    keys = {PreprocessCache(tmp_path, config(phantom, tmp_path, f"hu_range={r}")).key(
        "image", [row["dicom"]], PreprocessCache(tmp_path, config(phantom, tmp_path, f"hu_range={r}")).image_params)
        for r in ("[-1024,3071]", "[-100,200]")}
    assert len(keys) == 2  # a changed hu_range clips other HU: the cached windows are not reused


def test_png_configs_refuse_window_jitter():
    with pytest.raises(ConfigError, match="aug.window_shift: HU-window jitter .* needs image_source: dicom"):
        load_config(None, ["aug.window_shift=10"])
    with pytest.raises(ConfigError, match="aug.window_scale"):
        load_config(None, ["aug.window_scale=0.1"])
    assert load_config(None, ["image_source=dicom", "aug.window_shift=10"])["aug"]["window_shift"] == 10.0
