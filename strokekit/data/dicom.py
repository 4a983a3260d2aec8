"""DICOM slices: the pixel header checked, pixels decoded (compressed syntaxes too) and rescaled to Hounsfield
units (refused outside `HU_RANGE`), and HU windows -> 8-bit channels. Every problem is a BadInputError naming
the file; `check_dicom` applies exactly the rules `read_dicom_hu` applies."""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from strokekit.data.badinput import BadInputError, unreadable

# Hounsfield units a CT slice can hold after RescaleSlope / RescaleIntercept: air is -1000, dense bone and
# dental metal reach ~3000 (12-bit scanners clip at 3071). The lower bound leaves room for the padding
# scanners write outside the field of view (GE: stored -2000 with intercept -1024 = -3024 HU); pixels equal to
# the file's PixelPaddingValue are not judged. A slice with a pixel outside is refused: its rescale tags are
# damaged (a slope of 1e38, an intercept of -32768). The default of the config key `hu_range` (set it for an
# extended-HU-scale data set); check_dicom / read_dicom_hu take it as hu_range.
HU_RANGE = (-3100.0, 5000.0)


NO_RESCALE = "no RescaleSlope/RescaleIntercept; assuming stored values are HU"


def _dcmread(path, pixels: bool = True):
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings on odd bytes: what matters is judged below
            return pydicom.dcmread(path, defer_size=None if pixels else 1024)  # pixels=False: not loaded
    except OSError as err:
        raise unreadable(path, err) from None
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on damaged bytes
        raise BadInputError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from None


def _required_int(ds, keyword: str) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        raise BadInputError("", f"no {keyword} in the header")
    return int(value)


def _dicom_facts(ds, path) -> dict:
    """The header fields the kit relies on; BadInputError for a slice it cannot read as one grey CT image."""
    try:
        facts = {"modality": str(ds.get("Modality", "CT") or "CT"),
                 "photometric": str(ds.get("PhotometricInterpretation", "") or "").strip(),
                 "samples": int(ds.get("SamplesPerPixel", 1) or 1), "frames": int(ds.get("NumberOfFrames", 1) or 1),
                 "rows": _required_int(ds, "Rows"), "columns": _required_int(ds, "Columns"),
                 "bits": _required_int(ds, "BitsAllocated"), "stored": _required_int(ds, "BitsStored"),
                 "high": int(ds.get("HighBit", -1) if ds.get("HighBit") not in (None, "") else -1),
                 "signed": _required_int(ds, "PixelRepresentation"),
                 "syntax": str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "unknown"),
                 "rescale": [(ds[k].value if ds[k].value is not None else "") if k in ds else None
                             for k in ("RescaleSlope", "RescaleIntercept")],  # None: absent, "": blank
                 "padding": ds.get("PixelPaddingValue")}
    except BadInputError as err:
        raise BadInputError(path, f"{err.problem} (a truncated or damaged file?)") from None
    except Exception as err:  # noqa: BLE001 - values are parsed lazily, so damage shows up here
        raise BadInputError(path, f"damaged DICOM header ({type(err).__name__}: {err})") from None
    if facts["modality"] != "CT":
        raise BadInputError(path, f"Modality is {facts['modality']!r}, the kit reads CT only")
    if not facts["photometric"]:
        raise BadInputError(path, "no PhotometricInterpretation in the header (a truncated or damaged file?)")
    if facts["samples"] != 1 or facts["photometric"] not in ("MONOCHROME1", "MONOCHROME2"):
        raise BadInputError(path, f"colour DICOM ({facts['photometric']}, {facts['samples']} samples per pixel); "
                                  "the kit reads grey CT slices")
    if facts["frames"] != 1:
        raise BadInputError(path, f"{facts['frames']} frames in one file; the kit reads one slice per file")
    if facts["rows"] <= 0 or facts["columns"] <= 0:
        raise BadInputError(path, f"Rows x Columns is {facts['rows']} x {facts['columns']}: no pixels")
    bits, stored, high = facts["bits"], facts["stored"], facts["high"]
    if bits not in (8, 16, 32) or not 1 <= stored <= bits or high not in (-1, stored - 1):
        raise BadInputError(path, f"BitsAllocated {bits} / BitsStored {stored} / HighBit "
                                  f"{'absent' if high < 0 else high} do not fit together")
    if facts["signed"] not in (0, 1):
        raise BadInputError(path, f"PixelRepresentation {facts['signed']} is neither 0 (unsigned) nor 1 (signed)")
    slope, intercept = (getattr(v, "value", v) for v in facts["rescale"])
    facts["rescale"] = None
    if (slope is None) != (intercept is None):  # one tag without the other (both blank only warns): one was lost
        raise BadInputError(path, f"RescaleSlope {slope!r} / RescaleIntercept {intercept!r}: one without the other")
    if slope not in (None, "") and intercept not in (None, ""):
        try:
            facts["rescale"] = (float(slope), float(intercept))
        except (TypeError, ValueError):
            raise BadInputError(path, f"RescaleSlope {slope!r} / RescaleIntercept {intercept!r} are not "
                                      "numbers") from None
        if not all(math.isfinite(v) for v in facts["rescale"]) or facts["rescale"][0] == 0:
            raise BadInputError(path, f"RescaleSlope {slope!r} / RescaleIntercept {intercept!r}: the slope must be "
                                      "a non-zero number and both finite")
    try:
        padding = facts["padding"]
        facts["padding"] = None if padding in (None, "", b"") else int(getattr(padding, "value", padding))
    except (TypeError, ValueError):
        facts["padding"] = None  # a PixelPaddingValue the kit cannot read only exempts nothing
    return facts


def _compressed(syntax: str) -> bool:
    from pydicom.uid import UID

    try:
        return bool(UID(syntax).is_compressed)
    except ValueError:
        return True  # not a transfer syntax pydicom knows: treat it as one it must decode


def _pixel_data_size(ds, facts: dict, path) -> None:
    """BadInputError for missing pixel data, or uncompressed data of another size than the header's."""
    try:
        have = len(ds.PixelData or b"") if "PixelData" in ds else None
    except Exception as err:  # noqa: BLE001 - a damaged element header shows up when the value is parsed
        raise BadInputError(path, f"damaged pixel data element ({type(err).__name__}: {err})") from None
    if have is None:
        raise BadInputError(path, "no pixel data (a truncated file?)")
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
        return
    need = facts["rows"] * facts["columns"] * facts["bits"] // 8
    if have < need:
        raise BadInputError(path, f"pixel data holds {have} bytes, {facts['rows']}x{facts['columns']} at "
                                  f"{facts['bits']} bits needs {need} (a truncated file?)")
    if have > need + 1:  # one pad byte keeps an odd length even
        raise BadInputError(path, f"pixel data holds {have} bytes, more than {facts['rows']}x{facts['columns']} "
                                  f"at {facts['bits']} bits needs ({need}): a damaged Rows / Columns / "
                                  "BitsAllocated?")


def _hounsfield(ds, facts: dict, path, hu_range=None) -> np.ndarray:
    """Decode and rescale the pixels (what check_dicom and read_dicom_hu share); BadInputError when the pixels
    cannot be decoded or the Hounsfield units fall outside HU_RANGE."""
    from pydicom.pixels import apply_modality_lut

    _pixel_data_size(ds, facts, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - pydicom raises many types; name file + syntax for the user
        hint = " Compressed DICOM needs pylibjpeg / gdcm installed." if _compressed(facts["syntax"]) else ""
        raise BadInputError(path, f"cannot decode pixel data (transfer syntax {facts['syntax']}): "
                                  f"{err}.{hint}") from None
    if pixels.shape != (facts["rows"], facts["columns"]):
        raise BadInputError(path, f"pixel data of shape {pixels.shape}; the header says one "
                                  f"{facts['rows']}x{facts['columns']} slice")
    if facts["rescale"] is None:
        hu = pixels.astype(np.float32)
    else:
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                hu = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
        except Exception as err:  # noqa: BLE001 - a damaged Modality LUT Sequence and the like
            raise BadInputError(path, f"cannot apply the modality LUT ({type(err).__name__}: {err})") from None
    low_hu, high_hu = hu_range if hu_range is not None else HU_RANGE
    judged = hu if facts["padding"] is None else hu[pixels != facts["padding"]]
    if judged.size and not (np.isfinite(judged).all() and low_hu <= judged.min() and judged.max() <= high_hu):
        low, high = float(np.nanmin(judged)), float(np.nanmax(judged))
        raise BadInputError(path, f"Hounsfield units {low:g} .. {high:g} after RescaleSlope / RescaleIntercept "
                                  f"{facts['rescale'] or '(absent)'}: a CT slice holds {low_hu:g} .. {high_hu:g} "
                                  "(config key hu_range); damaged rescale tags?")
    if facts["photometric"] == "MONOCHROME1":
        hu = hu.max() + hu.min() - hu  # inverted display: high stored values are dark
    return hu


def check_dicom(path, hu_range=None) -> tuple[int, int, list[str]]:
    """(rows, columns, notes) of a DICOM, judged as read_dicom_hu judges it: the pixel header present and
    coherent, the pixels decoded (compressed syntaxes too) and their Hounsfield units inside HU_RANGE."""
    ds = _dcmread(path)
    facts = _dicom_facts(ds, path)
    _hounsfield(ds, facts, path, hu_range)
    return facts["rows"], facts["columns"], [] if facts["rescale"] else [NO_RESCALE]


def read_dicom_hu(path, hu_range=None) -> np.ndarray:
    """A CT DICOM slice as float32 Hounsfield units (modality LUT: RescaleSlope / RescaleIntercept); a pixel
    outside hu_range (default HU_RANGE) is BadInputError."""
    ds = _dcmread(path)
    facts = _dicom_facts(ds, path)
    hu = _hounsfield(ds, facts, path, hu_range)
    if facts["rescale"] is None:
        warnings.warn(f"{path}: {NO_RESCALE}", stacklevel=2)
    return hu


def read_dicom_header(path) -> dict:
    """Patient / study / series ids of a DICOM file without reading its pixels ('' when absent), and its place
    in the series (`slice_position`, `instance_number`, `slice_location`: floats, NaN when absent or
    unreadable; see slice_order_tags); a file whose header holds no pixel data element (cut short inside its
    header) is BadInputError."""
    ds = _dcmread(path, pixels=False)
    try:
        ids = {key: str(getattr(ds, key, "") or "") for key in
               ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")}
        complete = "PixelData" in ds
    except Exception as err:  # noqa: BLE001 - values are parsed lazily
        raise BadInputError(path, f"damaged DICOM header ({type(err).__name__}: {err})") from None
    if not complete:
        raise BadInputError(path, f"no pixel data element: the file ({os.path.getsize(path)} bytes) is cut short "
                                  "or is not an image")
    try:
        ids.update(slice_order_tags(ds))
    except Exception:  # noqa: BLE001 - a damaged order tag only leaves the slice unordered
        ids.update(dict.fromkeys(("slice_position", "instance_number", "slice_location"), math.nan))
    return ids


def slice_order_tags(ds) -> dict:
    """Where a slice sits in its series, from the three tags that can say it (NaN where a tag is absent or not
    a number): `slice_position` = ImagePositionPatient along the slice normal (the cross product of
    ImageOrientationPatient's two directions; without a usable orientation, the position's z),
    `instance_number` = InstanceNumber, `slice_location` = SliceLocation."""
    def number(value) -> float:
        try:
            out = float(value)
        except (TypeError, ValueError):
            return math.nan
        return out if math.isfinite(out) else math.nan

    def numbers(keyword: str, n: int) -> list[float] | None:
        try:
            values = [number(v) for v in (ds.get(keyword) or [])]
        except TypeError:  # a single value where a list belongs
            return None
        return values if len(values) == n and all(math.isfinite(v) for v in values) else None

    position, orientation = numbers("ImagePositionPatient", 3), numbers("ImageOrientationPatient", 6)
    along = math.nan
    if position is not None:
        normal = None if orientation is None else np.cross(orientation[:3], orientation[3:])
        usable = normal is not None and float(np.linalg.norm(normal)) > 1e-6
        along = float(np.dot(position, normal / np.linalg.norm(normal))) if usable else position[2]
    return {"slice_position": along, "instance_number": number(ds.get("InstanceNumber")),
            "slice_location": number(ds.get("SliceLocation"))}


def window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """HU -> uint8 with a linear window [center - width/2, center + width/2]."""
    low = center - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - low) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def windows_to_channels(hu: np.ndarray, windows) -> np.ndarray:
    """HU -> HxWxC uint8, one channel per [center, width] window (brain 40/80, subdural 80/200 ...)."""
    return np.stack([window(hu, c, w) for c, w in windows], axis=-1)
