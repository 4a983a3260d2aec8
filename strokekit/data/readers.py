"""Readers for the data set's files: PNG slices, DICOM (-> HU -> windows), MASK and OVERLAY -> class maps.

Every reader raises `BadInputError` naming the file and what is wrong, never a bare library traceback.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .encodings import HEMORRHAGIC, ISCHEMIC, decode_overlay, rgb_to_class_map

BRAIN_WINDOW = (40, 80)  # center, width in HU: how the organisers' PNGs look


class BadInputError(ValueError):
    """A data file that cannot be read or does not hold what the kit expects."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


def _open_png(path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                return np.asarray(im, dtype=np.int32)
            if im.mode not in ("L", "LA", "RGB", "RGBA", "P"):
                raise BadInputError(path, f"unsupported PNG mode {im.mode}")
            return np.asarray(im.convert("RGBA") if im.mode == "P" else im)
    except FileNotFoundError:
        raise BadInputError(path, "file does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, BadInputError):
            raise
        raise BadInputError(path, f"not a readable image ({type(err).__name__}: {err})") from None


def read_png(path) -> np.ndarray:
    """A slice PNG as an HxW uint8 grey image (grey, grey+alpha, RGB(A) with R=G=B, or 16-bit)."""
    arr = _open_png(path)
    if arr.dtype != np.uint8:  # 16-bit grey: scale the full range down to 8 bits
        return (arr.astype(np.float32) * (255.0 / max(1, int(arr.max())))).round().astype(np.uint8)
    if arr.ndim == 2:
        return arr
    if arr.shape[-1] == 2:  # LA
        return arr[..., 0]
    rgb = arr[..., :3]
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., 0])
    # colour content in a slice (e.g. an OVERLAY passed by mistake) -> luminance, as PIL's "L"
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))


def read_dicom_hu(path) -> np.ndarray:
    """A CT DICOM slice as float32 Hounsfield units (modality LUT: RescaleSlope / RescaleIntercept)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError:
        raise BadInputError(path, "file does not exist") from None
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError) as err:
        raise BadInputError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from None
    modality = getattr(ds, "Modality", "CT")
    if modality != "CT":
        raise BadInputError(path, f"Modality is {modality!r}, the kit reads CT only")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - pydicom raises many types; name file + syntax for the user
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise BadInputError(path, f"cannot decode pixel data (transfer syntax {syntax}): {err}. "
                                  "Compressed DICOM needs pylibjpeg / gdcm installed.") from None
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        warnings.warn(f"{path}: no RescaleSlope/RescaleIntercept; assuming stored values are HU",
                      stacklevel=2)
        hu = pixels.astype(np.float32)
    else:
        hu = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        hu = hu.max() + hu.min() - hu  # inverted display: high stored values are dark
    return hu


def read_dicom_header(path) -> dict:
    """Patient / study / series ids of a DICOM file without reading its pixels ('' when absent)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # noqa: BLE001
        raise BadInputError(path, f"not a readable DICOM header ({type(err).__name__}: {err})") from None
    return {key: str(getattr(ds, key, "") or "") for key in
            ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")}


def window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """HU -> uint8 with a linear window [center - width/2, center + width/2]."""
    low = center - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - low) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def windows_to_channels(hu: np.ndarray, windows) -> np.ndarray:
    """HU -> HxWxC uint8, one channel per [center, width] window (brain 40/80, subdural 80/200 ...)."""
    return np.stack([window(hu, c, w) for c, w in windows], axis=-1)


def read_mask(path) -> np.ndarray:
    """A MASK PNG (official colours only) as an HxW uint8 class map."""
    return rgb_to_class_map(_open_png(path), strict=True, source=str(path))


def read_overlay_mask(png_path, overlay_path, method: str = "exact",
                      default_class: int | None = None) -> np.ndarray:
    """Decode an OVERLAY against its PNG into an HxW class map (see encodings.decode_overlay)."""
    png, overlay = _open_png(png_path), _open_png(overlay_path)
    if png.shape[:2] != overlay.shape[:2]:
        raise BadInputError(overlay_path, f"OVERLAY is {overlay.shape[:2]} but its PNG is {png.shape[:2]}")
    return decode_overlay(png, overlay, method=method, default_class=default_class)


def load_image(row, cfg: dict) -> np.ndarray:
    """The model input of one index row as HxWxC uint8 (C = cfg['in_chans']), from PNG or DICOM."""
    if cfg["image_source"] == "dicom":
        if not row.get("dicom"):
            raise BadInputError(row.get("png") or row["image_id"], "no DICOM file for this image")
        image = windows_to_channels(read_dicom_hu(row["dicom"]), cfg["windows"])
    else:
        if not row.get("png"):
            raise BadInputError(row.get("dicom") or row["image_id"], "no PNG file for this image")
        image = read_png(row["png"])[..., None]
    if image.shape[-1] != cfg["in_chans"]:
        image = np.repeat(image[..., :1], cfg["in_chans"], axis=-1)
    return np.ascontiguousarray(image)


def load_class_map(row, overlay_method: str = "exact") -> np.ndarray | None:
    """The true class map of one index row: MASK if present, else decoded OVERLAY, else None."""
    if row.get("mask"):
        return read_mask(row["mask"])
    if row.get("overlay") and row.get("png"):
        folder_class = {"ischemic": ISCHEMIC, "hemorrhagic": HEMORRHAGIC}.get(row.get("class_name"))
        return read_overlay_mask(row["png"], row["overlay"], method=overlay_method,
                                 default_class=folder_class if overlay_method == "hsv" else None)
    return None


def image_size(path) -> tuple[int, int]:
    """(height, width) of a PNG without decoding it."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (UnidentifiedImageError, OSError) as err:
        raise BadInputError(path, f"not a readable image ({err})") from None


def exists(path) -> bool:
    return bool(path) and Path(path).is_file()
