"""HU-window jitter (config aug.window_shift, aug.window_scale): each training sample's DICOM windows moved a few
HU, so the model does not learn one scanner's or one annotator's exact grey levels.

Per sample and per window, the centre moves by U(-window_shift, +window_shift) HU and the width is multiplied by
U(1 - window_scale, 1 + window_scale); neighbouring slices (config neighbours) share their sample's windows.
Windowing needs Hounsfield units, not the uint8 channels the preprocessing cache holds for plain training, so
jittered training reads HU: decoded from the DICOM (hu_range applied), or from the cache's `hu` entries, which
hold them at img_size as float16 (area-resized HU; float16 keeps the brain's -100..100 HU to 1/16 HU). A
cached jittered sample is therefore windowed after the resize, where the plain path windows before it: the
two differ only at pixels that mix tissue across a window's edge (skull next to brain). Validation, OOF and
inference never jitter and take the plain path, exactly as infer.py predicts.
"""
from __future__ import annotations

import numpy as np

from strokekit.data.badinput import BadInputError
from strokekit.data.dicom import read_dicom_hu, windows_to_channels
from strokekit.data.equalize import equalize_channels
from strokekit.data.neighbours import neighbour_count, stack_slices


def jitter_enabled(cfg: dict) -> bool:
    aug = cfg.get("aug") or {}
    return cfg["image_source"] == "dicom" and (aug.get("window_shift", 0) > 0 or aug.get("window_scale", 0) > 0)


def read_hu_slice(row: dict, cfg: dict) -> np.ndarray:
    """One slice's HU as HxWx1 float32 (stack_slices' `read_one`)."""
    if not row.get("dicom"):
        raise BadInputError(row.get("png") or row["image_id"], "no DICOM file for this image (HU window jitter "
                                                               "reads DICOM)")
    return read_dicom_hu(row["dicom"], cfg.get("hu_range")).astype(np.float32)[..., None]


def load_hu(row: dict, cfg: dict) -> np.ndarray:
    """HxWxS float32 HU of the slice (S = 1) or of it and its neighbours (S = 2k + 1, in load_input's order)."""
    return stack_slices(row, cfg, read_hu_slice) if neighbour_count(cfg) else read_hu_slice(row, cfg)


def jittered_windows(windows, shift: float, scale: float, rng: np.random.Generator) -> list[list[float]]:
    """Each [centre, width] moved: centre + U(-shift, shift), width x U(1 - scale, 1 + scale)."""
    out = []
    for centre, width in windows:
        dc = rng.uniform(-shift, shift) if shift > 0 else 0.0
        dw = rng.uniform(1.0 - scale, 1.0 + scale) if scale > 0 else 1.0
        out.append([float(centre) + dc, float(width) * dw])
    return out


def hu_to_channels(hu: np.ndarray, windows, in_chans: int) -> np.ndarray:
    """HxWxS HU -> HxWxC uint8 laid out as load_input lays out its channels: per slice, one channel per window;
    a single window repeated to fill in_chans (load_image's rule)."""
    image = np.concatenate([windows_to_channels(hu[..., s], windows) for s in range(hu.shape[-1])], axis=-1)
    if image.shape[-1] != in_chans:
        image = np.repeat(image[..., :1], in_chans, axis=-1)
    return np.ascontiguousarray(image)


def jittered_input(hu: np.ndarray, cfg: dict, rng: np.random.Generator) -> np.ndarray:
    aug = cfg["aug"]
    windows = jittered_windows(cfg["windows"], aug.get("window_shift", 0), aug.get("window_scale", 0), rng)
    image = hu_to_channels(hu, windows, cfg["in_chans"])
    return equalize_channels(image, cfg.get("equalize"))  # as load_image does after its windows
