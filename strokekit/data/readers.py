"""Readers for the data set's files: PNG slices, DICOM (-> HU -> windows), MASK and OVERLAY -> class maps.

Every reader raises `BadInputError` naming the file and what is wrong, never a bare library traceback.
`check_png` / `check_dicom` judge a file from its header and checksums without decoding its pixels (the
up-front pass of data/check.py); the readers apply the same rules when they decode.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError

from strokekit.data.encodings import decode_overlay, rgb_to_class_map
from strokekit.errors import UserError
from strokekit.vocabulary import HEMORRHAGIC, ISCHEMIC

BRAIN_WINDOW = (40, 80)  # center, width in HU: how the organisers' PNGs look
PNG_MODES_16BIT = ("I;16", "I;16B", "I;16L", "I")
PNG_MODES = ("L", "LA", "RGB", "RGBA", "P") + PNG_MODES_16BIT
# What PIL raises on damaged image bytes (DecompressionBombError: a header claiming billions of pixels).
_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, DecompressionBombError)


class BadInputError(UserError, ValueError):
    """A data file that cannot be read or does not hold what the kit expects."""

    def __init__(self, path, problem: str | None = None):
        if problem is None:  # rebuilt from one message (a DataLoader worker re-raises errors that way)
            path, problem = _split_message(str(path))
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}" if path else problem)


def _split_message(text: str) -> tuple[str, str]:
    """'<path>: <problem>' from a message, or the last 'BadInputError: ...' line of a worker's traceback."""
    lines = [line for line in text.strip().splitlines() if line.strip()] or [""]
    line = next((x for x in reversed(lines) if "BadInputError: " in x), lines[-1])
    path, sep, problem = line.split("BadInputError: ", 1)[-1].partition(": ")
    return (path, problem) if sep else ("", path)


def _open_png(path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in PNG_MODES:
                raise BadInputError(path, f"unsupported PNG mode {im.mode}")
            im.load()
            if im.mode in PNG_MODES_16BIT:
                return np.asarray(im, dtype=np.int32)
            return np.asarray(im.convert("RGBA") if im.mode == "P" else im)
    except FileNotFoundError:
        raise BadInputError(path, "file does not exist") from None
    except BadInputError:
        raise
    except _PIL_ERRORS as err:
        raise BadInputError(path, f"not a readable image ({type(err).__name__}: {err})") from None


def check_png(path) -> tuple[int, int, str]:
    """(height, width, mode) from a PNG's header, every chunk's checksum verified; no pixel is decoded.

    Another format under a .png name (read_png reads those too) has no checksums to walk: it is decoded."""
    try:
        with Image.open(path) as im:
            (width, height), mode = im.size, im.mode
            im.verify() if im.format == "PNG" else im.load()
    except FileNotFoundError:
        raise BadInputError(path, "file does not exist") from None
    except _PIL_ERRORS as err:
        raise BadInputError(path, f"not a readable image ({type(err).__name__}: {err})") from None
    if mode not in PNG_MODES:
        raise BadInputError(path, f"unsupported PNG mode {mode}")
    return height, width, mode


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


NO_RESCALE = "no RescaleSlope/RescaleIntercept; assuming stored values are HU"


def _dcmread(path, pixels: bool = True):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except FileNotFoundError:
        raise BadInputError(path, "file does not exist") from None
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on damaged bytes
        raise BadInputError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from None


def _dicom_facts(ds, path) -> dict:
    """The header fields the kit relies on; BadInputError for a slice it cannot read as one grey CT image."""
    try:
        facts = {"modality": str(ds.get("Modality", "CT") or "CT"),
                 "photometric": str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
                 "samples": int(ds.get("SamplesPerPixel", 1) or 1), "frames": int(ds.get("NumberOfFrames", 1) or 1),
                 "rows": int(ds.Rows), "columns": int(ds.Columns), "bits": int(ds.get("BitsAllocated", 16) or 16),
                 "syntax": str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "unknown"),
                 "rescale": [ds.get(k) for k in ("RescaleSlope", "RescaleIntercept")]}
    except Exception as err:  # noqa: BLE001 - values are parsed lazily, so damage shows up here
        raise BadInputError(path, f"damaged DICOM header ({type(err).__name__}: {err})") from None
    if facts["modality"] != "CT":
        raise BadInputError(path, f"Modality is {facts['modality']!r}, the kit reads CT only")
    if facts["samples"] != 1 or facts["photometric"] not in ("MONOCHROME1", "MONOCHROME2"):
        raise BadInputError(path, f"colour DICOM ({facts['photometric']}, {facts['samples']} samples per pixel); "
                                  "the kit reads grey CT slices")
    if facts["frames"] != 1:
        raise BadInputError(path, f"{facts['frames']} frames in one file; the kit reads one slice per file")
    slope, intercept = (getattr(v, "value", v) for v in facts["rescale"])
    facts["rescale"] = None
    if slope not in (None, "") and intercept not in (None, ""):
        try:
            facts["rescale"] = (float(slope), float(intercept))
        except (TypeError, ValueError):
            raise BadInputError(path, f"RescaleSlope {slope!r} / RescaleIntercept {intercept!r} are not "
                                      "numbers") from None
    return facts


def _compressed(syntax: str) -> bool:
    from pydicom.uid import UID

    try:
        return bool(UID(syntax).is_compressed)
    except ValueError:
        return True  # not a transfer syntax pydicom knows: treat it as one it must decode


def check_dicom(path) -> tuple[int, int, list[str]]:
    """(rows, columns, notes) from a DICOM's header and the size of its pixel data; nothing is decoded."""
    ds = _dcmread(path)
    facts = _dicom_facts(ds, path)
    try:
        have = len(ds.PixelData or b"") if "PixelData" in ds else None
    except Exception as err:  # noqa: BLE001 - a damaged element header shows up when the value is parsed
        raise BadInputError(path, f"damaged pixel data element ({type(err).__name__}: {err})") from None
    if have is None:
        raise BadInputError(path, "no pixel data")
    if _compressed(facts["syntax"]):
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(facts["syntax"])
            missing = [] if decoder.is_available else decoder.missing_dependencies
        except (NotImplementedError, ValueError):
            decoder, missing = None, ["a decoder pydicom knows"]
        if missing:
            raise BadInputError(path, f"compressed pixel data (transfer syntax {facts['syntax']}) needs "
                                      f"{'; '.join(missing)}")
    else:
        need = facts["rows"] * facts["columns"] * facts["bits"] // 8
        if have < need:
            raise BadInputError(path, f"pixel data holds {have} bytes, {facts['rows']}x{facts['columns']} at "
                                      f"{facts['bits']} bits needs {need} (a truncated file?)")
    return facts["rows"], facts["columns"], [] if facts["rescale"] else [NO_RESCALE]


def read_dicom_hu(path) -> np.ndarray:
    """A CT DICOM slice as float32 Hounsfield units (modality LUT: RescaleSlope / RescaleIntercept)."""
    from pydicom.pixels import apply_modality_lut

    ds = _dcmread(path)
    facts = _dicom_facts(ds, path)
    try:
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - pydicom raises many types; name file + syntax for the user
        hint = " Compressed DICOM needs pylibjpeg / gdcm installed." if _compressed(facts["syntax"]) else ""
        raise BadInputError(path, f"cannot decode pixel data (transfer syntax {facts['syntax']}): "
                                  f"{err}.{hint}") from None
    if pixels.ndim != 2:
        raise BadInputError(path, f"pixel data of shape {pixels.shape}; the kit reads one grey slice")
    if facts["rescale"] is None:
        warnings.warn(f"{path}: {NO_RESCALE}", stacklevel=2)
        hu = pixels.astype(np.float32)
    else:
        try:
            hu = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
        except Exception as err:  # noqa: BLE001 - a damaged Modality LUT Sequence and the like
            raise BadInputError(path, f"cannot apply the modality LUT ({type(err).__name__}: {err})") from None
    if facts["photometric"] == "MONOCHROME1":
        hu = hu.max() + hu.min() - hu  # inverted display: high stored values are dark
    return hu


def read_dicom_header(path) -> dict:
    """Patient / study / series ids of a DICOM file without reading its pixels ('' when absent)."""
    ds = _dcmread(path, pixels=False)
    try:
        return {key: str(getattr(ds, key, "") or "") for key in
                ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")}
    except Exception as err:  # noqa: BLE001 - values are parsed lazily
        raise BadInputError(path, f"damaged DICOM header ({type(err).__name__}: {err})") from None


def window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """HU -> uint8 with a linear window [center - width/2, center + width/2]."""
    low = center - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - low) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def windows_to_channels(hu: np.ndarray, windows) -> np.ndarray:
    """HU -> HxWxC uint8, one channel per [center, width] window (brain 40/80, subdural 80/200 ...)."""
    return np.stack([window(hu, c, w) for c, w in windows], axis=-1)


def _open_8bit(path, what: str) -> np.ndarray:
    arr = _open_png(path)
    if arr.dtype != np.uint8:
        raise BadInputError(path, f"a 16-bit image; a {what} is 8-bit RGB(A)")
    return arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 2 else arr  # grey + alpha: the grey


def read_mask(path) -> np.ndarray:
    """A MASK PNG (official colours only) as an HxW uint8 class map."""
    try:
        return rgb_to_class_map(_open_8bit(path, "MASK"), strict=True, source=str(path))
    except BadInputError:
        raise
    except ValueError as err:  # colours outside the official three
        raise BadInputError(path, str(err).removeprefix(f"{path}: ")) from None


def read_overlay_mask(png_path, overlay_path, method: str = "exact",
                      default_class: int | None = None) -> np.ndarray:
    """Decode an OVERLAY against its PNG into an HxW class map (see encodings.decode_overlay)."""
    png, overlay = _open_8bit(png_path, "PNG paired with an OVERLAY"), _open_8bit(overlay_path, "OVERLAY")
    if png.shape[:2] != overlay.shape[:2]:
        raise BadInputError(overlay_path, f"OVERLAY is {overlay.shape[:2]} but its PNG is {png.shape[:2]}")
    try:
        return decode_overlay(png, overlay, method=method, default_class=default_class)
    except ValueError as err:
        raise BadInputError(overlay_path, f"cannot decode the OVERLAY against {png_path}: {err}") from None


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
    if row.get("overlay") and not row.get("png"):
        raise BadInputError(row["overlay"], "an OVERLAY without its PNG cannot be decoded (no MASK either)")
    if row.get("overlay"):
        folder_class = {"ischemic": ISCHEMIC, "hemorrhagic": HEMORRHAGIC}.get(row.get("class_name"))
        return read_overlay_mask(row["png"], row["overlay"], method=overlay_method,
                                 default_class=folder_class if overlay_method == "hsv" else None)
    return None


def image_size(path) -> tuple[int, int]:
    """(height, width) of a PNG without decoding it."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except _PIL_ERRORS as err:
        raise BadInputError(path, f"not a readable image ({err})") from None


def exists(path) -> bool:
    return bool(path) and Path(path).is_file()
