"""Readers for the data set's files: PNG slices, DICOM (-> HU -> windows), MASK and OVERLAY -> class maps.

Every reader raises `BadInputError` naming the file and what is wrong, never a bare library traceback.
`check_png` / `check_dicom` (the up-front pass of data/check.py) apply exactly the rules the readers apply, so a
file the check passes is read, and read to the pixels it holds: a PNG's chunks are walked (checksums, one
IHDR first, IDATs, IEND) and its compressed stream inflated to the size its header promises; a DICOM's pixel
header must be present and coherent and its pixels are decoded (compressed syntaxes too) and rescaled, and
Hounsfield units outside `HU_RANGE` are refused. What no check can see: a flipped bit inside a DICOM's pixel
data (it has no checksum), or a plausible but wrong header value (a slope of 1.5 instead of 1).
"""
from __future__ import annotations

import errno
import math
import os
import struct
import warnings
import zlib
from io import BytesIO
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
# What PIL raises on damaged image bytes (DecompressionBombError: a header claiming billions of pixels;
# IndexError: a PNG without IDAT chunks, in Image.verify).
_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, DecompressionBombError,
               IndexError, KeyError, struct.error, zlib.error, MemoryError)
# Hounsfield units a CT slice can hold after RescaleSlope / RescaleIntercept: air is -1000, dense bone and
# dental metal reach ~3000 (12-bit scanners clip at 3071). The lower bound leaves room for the padding
# scanners write outside the field of view (GE: stored -2000 with intercept -1024 = -3024 HU); pixels equal to
# the file's PixelPaddingValue are not judged. A slice with a pixel outside is refused: its rescale tags are
# damaged (a slope of 1e38, an intercept of -32768). The default of the config key `hu_range` (set it for an
# extended-HU-scale data set); check_dicom / read_dicom_hu take it as hu_range.
HU_RANGE = (-3100.0, 5000.0)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> (samples per pixel, allowed bit depths)
_PNG_COLOUR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)), 4: (2, (8, 16)),
                     6: (4, (8, 16))}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


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


def unreadable(path, err: OSError) -> BadInputError:
    """A file the OS cannot open, named: missing, a dangling symlink, a symlink loop, a folder ..."""
    if os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if err.errno == errno.ELOOP:
            return BadInputError(path, f"a symlink loop (-> {target})")
        if isinstance(err, FileNotFoundError):
            return BadInputError(path, f"a dangling symlink: its target {target} does not exist")
    if isinstance(err, FileNotFoundError):
        return BadInputError(path, "file does not exist")
    if err.errno == errno.ELOOP:
        return BadInputError(path, "a symlink loop in its path")
    if isinstance(err, IsADirectoryError):
        return BadInputError(path, "a folder, not a file")
    return BadInputError(path, f"cannot be read ({type(err).__name__}: {err.strerror or err})")


def _read_bytes(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise unreadable(path, err) from None


def png_problem(data: bytes) -> str | None:
    """What is wrong with a PNG's structure (None: nothing): the chunks' checksums and order, and whether the
    compressed image data inflates to exactly the bytes its header's size needs, with valid row filters."""
    if not data.startswith(PNG_SIGNATURE):
        return "not a PNG file"
    pos, header, seen, idat, idat_done = len(PNG_SIGNATURE), None, [], [], False
    while True:
        if pos + 8 > len(data):
            return "truncated: the file ends before its IEND chunk"
        length, tag = struct.unpack(">I4s", data[pos:pos + 8])
        if length > 2**31 - 1 or pos + 12 + length > len(data):
            return f"truncated: chunk {tag.decode('latin-1')!r} claims {length} bytes, the file ends first"
        body = data[pos + 8:pos + 8 + length]
        if not tag.isalpha():
            return f"damaged chunk type {tag!r} at byte {pos}"
        name = tag.decode("ascii")
        if zlib.crc32(tag + body) != struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]:
            return f"the checksum of chunk {name} (at byte {pos}) does not match its data"
        pos += 12 + length
        if not seen and name != "IHDR":
            return f"the first chunk is {name}, not IHDR"
        if name == "IHDR":
            if seen:
                return "a second IHDR chunk"
            if length != 13:
                return f"IHDR holds {length} bytes, not 13"
            header = struct.unpack(">IIBBBBB", body)
        elif name == "IDAT":
            if idat_done:
                return "IDAT chunks interrupted by other chunks"
            idat.append(body)
        elif idat:
            idat_done = True
        if name == "PLTE" and idat:
            return "PLTE after the image data"
        seen.append(name)
        if name == "IEND":
            break  # bytes after IEND are ignored by every reader
    if not idat:
        return "no IDAT chunk: the image data is missing"
    width, height, depth, colour, compression, filtering, interlace = header
    if not (0 < width < 2**31 and 0 < height < 2**31):
        return f"IHDR size {width}x{height}"
    if colour not in _PNG_COLOUR_TYPES or depth not in _PNG_COLOUR_TYPES[colour][1]:
        return f"IHDR colour type {colour} with bit depth {depth} is not a PNG combination"
    if compression or filtering or interlace > 1:
        return f"IHDR compression / filter / interlace methods {compression} / {filtering} / {interlace}"
    if colour == 3 and "PLTE" not in seen:
        return "a palette image without a PLTE chunk"
    bits = depth * _PNG_COLOUR_TYPES[colour][0]
    passes = [(width, height)] if not interlace else [
        (-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in _ADAM7]
    rows = [(w * bits + 7) // 8 for w, h in passes if w > 0 and h > 0 for _ in range(h)]
    need = len(rows) + sum(rows)
    if need > 2**30:
        return f"IHDR size {width}x{height} is too large for a CT slice"
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(idat), need + 1)
    except zlib.error as err:
        return f"damaged compressed image data ({err})"
    if len(raw) != need or not inflater.eof:
        held = f"{len(raw)}" if len(raw) <= need else "more than"
        return (f"the image data inflates to {held} bytes{'' if inflater.eof else ' (the stream is cut)'}; "
                f"{width}x{height} at {bits} bits per pixel needs {need}")
    starts = np.cumsum([0] + [1 + r for r in rows[:-1]])
    filters = np.frombuffer(raw, np.uint8)[starts]
    if (filters > 4).any():
        return f"row filter type {int(filters.max())} does not exist (damaged image data)"
    return None


def _png_image(path) -> tuple[bytes, str]:
    """The bytes of an image file and its PNG structure checked (another format under a .png name is left to
    Pillow to decode); BadInputError naming what is wrong."""
    data = _read_bytes(path)
    if data.startswith(PNG_SIGNATURE):
        problem = png_problem(data)
        if problem:
            raise BadInputError(path, f"damaged PNG: {problem}")
        return data, "PNG"
    return data, "other"


def _decode_image(path, data: bytes) -> np.ndarray:
    try:
        with Image.open(BytesIO(data)) as im:
            if im.mode not in PNG_MODES:
                raise BadInputError(path, f"unsupported PNG mode {im.mode}")
            im.load()
            if im.mode in PNG_MODES_16BIT:
                return np.asarray(im, dtype=np.int32)
            return np.asarray(im.convert("RGBA") if im.mode == "P" else im)
    except BadInputError:
        raise
    except _PIL_ERRORS as err:
        raise BadInputError(path, f"not a readable image ({type(err).__name__}: {err})") from None


def _open_png(path) -> np.ndarray:
    data, _ = _png_image(path)
    return _decode_image(path, data)


def check_png(path) -> tuple[int, int, str]:
    """(height, width, mode) of a PNG, judged as the readers judge it: every chunk's checksum, the chunk
    order, and the compressed data inflated to the size the header promises (see `png_problem`).

    Another format under a .png name (read_png reads those too) has no checksums to walk: it is decoded."""
    data, kind = _png_image(path)
    try:
        with Image.open(BytesIO(data)) as im:
            (width, height), mode = im.size, im.mode
            im.verify() if kind == "PNG" else im.load()
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
    """Patient / study / series ids of a DICOM file without reading its pixels ('' when absent); a file
    whose header holds no pixel data element (cut short inside its header) is BadInputError."""
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
    return ids


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
        image = windows_to_channels(read_dicom_hu(row["dicom"], cfg.get("hu_range")), cfg["windows"])
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
