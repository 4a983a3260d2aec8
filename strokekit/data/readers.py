"""Readers for the data set's files: PNG slices, MASK and OVERLAY -> class maps, and the one entry point per
image (`load_image`: PNG, or DICOM through data/dicom.py -> HU -> windows).

Every reader raises `BadInputError` naming the file and what is wrong, never a bare library traceback.
`check_png` / `check_dicom` (the up-front pass of data/check.py) apply exactly the rules the readers apply, so a
file the check passes is read, and read to the pixels it holds: a PNG's chunks are walked (checksums, one
IHDR first, IDATs, IEND) and its compressed stream inflated to the size its header promises; a DICOM's pixel
header must be present and coherent and its pixels are decoded (compressed syntaxes too) and rescaled, and
Hounsfield units outside `HU_RANGE` are refused. What no check can see: a flipped bit inside a DICOM's pixel
data (it has no checksum), or a plausible but wrong header value (a slope of 1.5 instead of 1).
"""
from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError

from strokekit.data.badinput import BadInputError, read_bytes
from strokekit.data.dicom import read_dicom_hu, windows_to_channels
from strokekit.data.encodings import decode_overlay, rgb_to_class_map
from strokekit.data.equalize import equalize_channels
from strokekit.vocabulary import HEMORRHAGIC, ISCHEMIC

BRAIN_WINDOW = (40, 80)  # center, width in HU: how the organisers' PNGs look
PNG_MODES_16BIT = ("I;16", "I;16B", "I;16L", "I")
PNG_MODES = ("L", "LA", "RGB", "RGBA", "P") + PNG_MODES_16BIT
# What PIL raises on damaged image bytes (DecompressionBombError: a header claiming billions of pixels;
# IndexError: a PNG without IDAT chunks, in Image.verify).
_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, DecompressionBombError,
               IndexError, KeyError, struct.error, zlib.error, MemoryError)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> (samples per pixel, allowed bit depths)
_PNG_COLOUR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)), 4: (2, (8, 16)),
                     6: (4, (8, 16))}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


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
    data = read_bytes(path)
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
    """The model input of one index row as HxWxC uint8 (C = cfg['in_chans']), from PNG or DICOM, each channel
    equalised when cfg['equalize'] says so."""
    if cfg["image_source"] == "dicom":
        if not row.get("dicom"):
            raise BadInputError(row.get("png") or row["image_id"], "no DICOM file for this image")
        image = windows_to_channels(read_dicom_hu(row["dicom"], cfg.get("hu_range")), cfg["windows"])
    else:
        if not row.get("png"):
            raise BadInputError(row.get("dicom") or row["image_id"], "no PNG file for this image")
        image = read_png(row["png"])[..., None]
    image = equalize_channels(image, cfg.get("equalize"))
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
