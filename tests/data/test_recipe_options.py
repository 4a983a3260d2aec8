"""Data options the published recipes need: the ROI crop (aug.roi_crop), the DPN-U-Net's sampling (lesion_rest:
all; epoch_steps), masks from the multi-task paper's HSV rule (overlay_method: hsv) and per-channel mean / std."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from strokekit.config import ConfigError, load_config
from strokekit.data.dataset import BalancedSampler, LesionBatchSampler, SliceDataset, normalise
from strokekit.data.encodings import decode_overlay, encode_overlay
from strokekit.data.roi import head_box, roi_crop

SIZE = 96


def head_slice() -> tuple[np.ndarray, np.ndarray]:
    """A 'head' (grey disc, radius 24) in the middle of a black slice, with a 6x6 lesion inside it."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = np.where((yy - 48) ** 2 + (xx - 48) ** 2 <= 24 ** 2, 120, 0).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[45:51, 45:51] = 2
    image[mask > 0] = 200
    return np.repeat(image[..., None], 3, axis=-1), mask


def test_roi_crop_fills_the_frame_with_the_head_and_keeps_the_mask_aligned():
    image, mask = head_slice()
    assert head_box(image) == (24, 73, 24, 73)
    out, out_mask = roi_crop(image, mask, np.random.default_rng(0), margin=(0.0, 0.0))
    assert out.shape == image.shape and out_mask.shape == mask.shape
    y0, y1, x0, x1 = head_box(out)
    assert y0 <= 1 and x0 <= 1 and y1 >= SIZE - 1 and x1 >= SIZE - 1   # the head now spans the slice
    assert set(np.unique(out_mask)) == {0, 2}
    assert (out_mask > 0).sum() > 3 * (mask > 0).sum()                # the lesion grew with the zoom
    assert (out[..., 0][out_mask > 0] >= 150).mean() > 0.9             # and still sits on its bright pixels


def test_roi_crop_runs_inside_the_dataset_only_when_asked(tmp_path):
    image, mask = head_slice()
    Image.fromarray(image[..., 0]).save(tmp_path / "1.png")
    rows = pd.DataFrame([{"image_id": 1, "split": "train", "class_name": "no_stroke", "png": str(tmp_path / "1.png"),
                          "dicom": "", "mask": "", "overlay": "", "has_ischemic": 0, "has_hemorrhagic": 0}])
    sets = ["task=stroke", f"img_size={SIZE}", "cache=false", "aug.hflip=0", "aug.shift_scale_rotate=0",
            "aug.brightness_contrast=0", "mean=0", "std=1"]
    plain = SliceDataset(rows, load_config(None, sets), train=True)[0]["image"].numpy()
    cropped = SliceDataset(rows, load_config(None, [*sets, "aug.roi_crop=1.0"]), train=True)[0]["image"].numpy()
    assert head_box((plain[0] * 255).astype(np.uint8)) == (24, 73, 24, 73)
    assert (cropped[0] > 0.1).mean() > 2 * (plain[0] > 0.1).mean()


def test_lesion_sampler_rest_from_all_slices():
    has_lesion = np.array([True] * 10 + [False] * 30)
    clear = [i for batch in LesionBatchSampler(has_lesion, 8, 0.5, seed=1) for i in batch]
    mixed = [i for batch in LesionBatchSampler(has_lesion, 8, 0.5, seed=1, rest="all", num_batches=200)
             for i in batch]
    assert np.mean(has_lesion[clear]) == 0.5                        # half lesion, half clear
    assert 0.55 < np.mean(has_lesion[mixed]) < 0.70                 # 0.5 + 0.5 * 10/40 = 0.625


def test_epoch_steps_sets_the_epoch_length():
    assert len(LesionBatchSampler(np.array([True, False] * 20), 4, 0.5, num_batches=7)) == 7
    assert len(list(LesionBatchSampler(np.array([True, False] * 20), 4, 0.5, num_batches=7))) == 7
    sampler = BalancedSampler(np.array([0, 1] * 10), num_samples=48)
    assert len(sampler) == len(list(sampler)) == 48
    with pytest.raises(ConfigError, match="epoch_steps"):
        load_config(None, ["epoch_steps=500"])                     # no sampler: plain shuffling has no draws


def test_overlay_method_hsv_reads_the_red_fill_with_the_folder_class(tmp_path):
    class_map = np.zeros((64, 64), np.uint8)
    class_map[20:40, 20:40] = 1
    grey = np.full((64, 64), 60, np.uint8)
    Image.fromarray(grey).save(tmp_path / "1.png")
    Image.fromarray(encode_overlay(grey, class_map)).save(tmp_path / "1_ov.png")
    rows = pd.DataFrame([{"image_id": 1, "split": "train", "class_name": "hemorrhagic", "png": str(tmp_path / "1.png"),
                          "dicom": "", "mask": "", "overlay": str(tmp_path / "1_ov.png"), "has_ischemic": 1,
                          "has_hemorrhagic": 0}])
    sets = ["task=seg", "img_size=64", "cache=false"]
    exact = SliceDataset(rows, load_config(None, sets), train=False, masks=True).class_map(0, (64, 64))
    hsv = SliceDataset(rows, load_config(None, [*sets, "overlay_method=hsv"]), train=False,
                       masks=True).class_map(0, (64, 64))
    assert np.array_equal(exact, class_map)                     # contour colours: the true class
    ov = np.asarray(Image.open(tmp_path / "1_ov.png"))
    assert np.array_equal(hsv, decode_overlay(grey, ov, method="hsv", default_class=2))
    assert set(np.unique(hsv)) == {0, 2} and (hsv > 0).sum() <= (class_map > 0).sum()   # the folder's class


def test_per_channel_mean_and_std():
    cfg = load_config(None, ["mean=[0.485, 0.456, 0.406]", "std=[0.229, 0.224, 0.225]"])
    x = normalise(np.full((2, 2, 3), 255, np.uint8), cfg).numpy()
    assert np.allclose(x[:, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
    with pytest.raises(ConfigError, match="mean"):
        load_config(None, ["mean=[0.4, 0.5]"])
    with pytest.raises(ConfigError, match="std"):
        load_config(None, ["std=[0.2, 0.0, 0.2]"])
