"""Readers: PNG grey/RGB/RGBA/16-bit, DICOM -> HU and windows, MASK colours, OVERLAY decoding (real files)."""
import warnings

import numpy as np
import pytest
from PIL import Image

from helpers import write_dicom, write_png
from strokekit.data.encodings import class_map_to_rgb, decode_overlay, encode_overlay, rgb_to_class_map
from strokekit.data.badinput import BadInputError
from strokekit.data.dicom import read_dicom_hu, window, windows_to_channels
from strokekit.data.readers import load_image, read_mask, read_overlay_mask, read_png

REAL_OVERLAYS = [("Hemorrhagic", "10029", 2, 1443), ("Hemorrhagic", "14343", 2, 7287),
                 ("Ischemic", "11114", 1, 4976), ("Ischemic", "13239", 1, 2290)]


@pytest.fixture
def grey():
    return np.random.default_rng(0).integers(0, 256, (32, 40), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA"])
def test_png_modes_read_as_the_same_grey(tmp_path, grey, mode):
    expand = {"L": grey, "RGB": np.stack([grey] * 3, -1), "RGBA": np.dstack([grey] * 3 + [np.full_like(grey, 255)]),
              "LA": np.dstack([grey, np.full_like(grey, 255)])}[mode]
    path = write_png(tmp_path / f"{mode}.png", expand, mode)
    assert np.array_equal(read_png(path), grey)


def test_png_16bit_is_scaled_to_8bit(tmp_path):
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    path = tmp_path / "16.png"
    Image.fromarray(arr).save(path)
    assert read_png(path).tolist() == [[0, 64], [128, 255]]


def test_png_truncated_or_fake_is_a_clear_error(tmp_path, grey):
    good = write_png(tmp_path / "good.png", grey)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("cut.png", "text.png", "missing.png"):
        with pytest.raises(BadInputError, match=name):
            read_png(tmp_path / name)


def test_dicom_rescale_to_hu_matches_known_values(tmp_path):
    stored = np.array([[0, 1024], [1064, 2024]], dtype=np.int16)
    path = write_dicom(tmp_path / "a.dcm", stored, slope=1.0, intercept=-1024.0)
    assert read_dicom_hu(path).tolist() == [[-1024, 0], [40, 1000]]
    path2 = write_dicom(tmp_path / "b.dcm", stored, slope=0.5, intercept=-20.0)
    assert read_dicom_hu(path2).tolist() == [[-20, 492], [512, 992]]


def test_dicom_without_rescale_warns_and_reads_raw(tmp_path):
    stored = np.array([[10, 20]], dtype=np.int16)
    path = write_dicom(tmp_path / "raw.dcm", stored, slope=None, intercept=None)
    with pytest.warns(UserWarning, match="RescaleSlope"):
        assert read_dicom_hu(path).tolist() == [[10, 20]]


def test_dicom_non_ct_and_garbage_are_refused(tmp_path):
    mr = write_dicom(tmp_path / "mr.dcm", np.zeros((4, 4), np.int16), modality="MR")
    with pytest.raises(BadInputError, match="Modality"):
        read_dicom_hu(mr)
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 50)
    with pytest.raises(BadInputError, match="junk.dcm"):
        read_dicom_hu(tmp_path / "junk.dcm")


def test_windows_as_channels():
    hu = np.array([[0.0, 40.0, 80.0, -100.0]])
    assert window(hu, 40, 80).tolist() == [[0, 128, 255, 0]]
    channels = windows_to_channels(hu, [[40, 80], [80, 200]])
    assert channels.shape == (1, 4, 2)
    assert channels[0, :, 1].tolist() == [26, 76, 128, 0]  # (hu + 20) * 255 / 200, half to even


def test_load_image_from_dicom_windows_and_png(tmp_path):
    stored = np.full((8, 8), 1064, np.int16)  # 40 HU everywhere
    row = {"image_id": 1, "dicom": str(write_dicom(tmp_path / "1.dcm", stored)),
           "png": str(write_png(tmp_path / "1.png", np.full((8, 8), 7, np.uint8)))}
    cfg = {"image_source": "dicom", "windows": [[40, 80], [80, 200], [32, 8]], "in_chans": 3}
    assert load_image(row, cfg)[0, 0].tolist() == [128, 76, 255]
    cfg = {"image_source": "png", "windows": [[40, 80]], "in_chans": 3}
    assert load_image(row, cfg)[0, 0].tolist() == [7, 7, 7]


def test_mask_colours_round_trip_and_strictness(tmp_path):
    cm = np.zeros((6, 6), np.uint8)
    cm[1:3, 1:3], cm[4:, 4:] = 1, 2
    path = write_png(tmp_path / "m.png", class_map_to_rgb(cm))
    assert np.array_equal(read_mask(path), cm)
    rgb = class_map_to_rgb(cm)
    rgb[0, 0] = (10, 200, 0)
    with pytest.raises(ValueError, match="not one of the official mask colours"):
        rgb_to_class_map(rgb)
    assert rgb_to_class_map(rgb, strict=False)[0, 0] == 2


@pytest.mark.parametrize("folder,image_id,cls,n_pixels", REAL_OVERLAYS)
def test_decode_real_overlays(real_samples, folder, image_id, cls, n_pixels):
    base = real_samples / "teknofest_aaratsatsangi" / "Test Images"
    png_path, ov_path = base / "PNG" / folder / f"{image_id}.png", base / "Overlay" / folder / f"{image_id}.png"
    class_map = read_overlay_mask(png_path, ov_path)
    png, overlay = np.asarray(Image.open(png_path)), np.asarray(Image.open(ov_path))
    changed = (png != overlay).any(-1)
    assert np.array_equal(class_map > 0, changed)  # region == changed pixels
    assert changed.sum() == n_pixels
    assert set(np.unique(class_map[changed])) == {cls}  # every region gets its folder's class


@pytest.mark.parametrize("folder,image_id,cls,n_pixels", REAL_OVERLAYS)
def test_encoder_reproduces_real_overlays(real_samples, folder, image_id, cls, n_pixels):
    """Our encoder (used by the phantom) makes the same composite as the organisers, up to anti-aliasing."""
    base = real_samples / "teknofest_aaratsatsangi" / "Test Images"
    png = np.asarray(Image.open(base / "PNG" / folder / f"{image_id}.png"))
    overlay = np.asarray(Image.open(base / "Overlay" / folder / f"{image_id}.png"))
    ours = encode_overlay(png[..., 0], decode_overlay(png, overlay))
    assert ours.shape == overlay.shape and (ours[..., 3] == 255).all()
    off = np.abs(ours[..., :3].astype(int) - overlay[..., :3]).max(-1) > 2
    assert off.sum() < 0.05 * n_pixels  # only some anti-aliased contour pixels differ


def test_decoder_splits_touching_lesions_of_both_types():
    grey = np.full((40, 40), 100, np.uint8)
    cm = np.zeros((40, 40), np.uint8)
    cm[10:30, 5:20], cm[10:30, 20:35] = 1, 2  # touching blocks: one 8-connected changed region
    decoded = decode_overlay(grey, encode_overlay(grey, cm))
    assert (decoded == cm).mean() > 0.99


def test_decoder_uses_blend_factor_without_contour():
    grey = np.full((10, 10), 90, np.uint8)
    overlay = np.dstack([grey] * 3 + [np.full_like(grey, 255)]).copy()
    overlay[5, 5, :3] = (np.rint(0.25 * 90 + 0.75 * 255), np.rint(0.25 * 90), np.rint(0.25 * 90))
    assert decode_overlay(grey, overlay)[5, 5] == 2


def test_hsv_rule_finds_red_but_not_the_class(real_samples):
    base = real_samples / "teknofest_aaratsatsangi" / "Test Images"
    png = base / "PNG" / "Hemorrhagic" / "14343.png"
    ov = base / "Overlay" / "Hemorrhagic" / "14343.png"
    exact = read_overlay_mask(png, ov)
    hsv = read_overlay_mask(png, ov, method="hsv", default_class=2)
    assert set(np.unique(hsv)) <= {0, 2}
    overlap = ((hsv > 0) & (exact > 0)).sum() / (exact > 0).sum()
    assert 0.5 < overlap < 1.0  # loses the contour ring


def test_no_warning_noise_on_clean_png(tmp_path, grey):
    path = write_png(tmp_path / "g.png", grey)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_png(path)
