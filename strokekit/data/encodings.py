"""The competition's pixel encodings: MASK colours <-> class maps, OVERLAY composites <-> class maps.

Pure numpy/scipy. Class map convention everywhere in the kit: 0 background, 1 ischemic, 2 hemorrhagic.
The OVERLAY encoding was measured on the real files (see FORMATS.md): lesion pixels are an alpha blend of
the grey value with pure red, R = (1-a)g + 255a, G = B = (1-a)g, and a 1-pixel inner contour is drawn in
the class's MASK colour (anti-aliased contour pixels are half red, half mask colour).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from strokekit.vocabulary import BACKGROUND, EIGHT_CONNECTED, HEMORRHAGIC, ISCHEMIC

MASK_COLOURS = {BACKGROUND: (0, 0, 0), ISCHEMIC: (0, 0, 255), HEMORRHAGIC: (0, 255, 0)}
# Interior blend factors measured on the real OVERLAY files (a second clue beside the contour colour).
OVERLAY_ALPHA = {ISCHEMIC: 0.50, HEMORRHAGIC: 0.75}


def class_map_to_rgb(class_map: np.ndarray) -> np.ndarray:
    """HxW class map -> HxWx3 uint8 MASK image in the official colours."""
    class_map = np.asarray(class_map)
    bad = set(np.unique(class_map).tolist()) - set(MASK_COLOURS)
    if bad:
        raise ValueError(f"class map holds labels {sorted(bad)}; allowed are {sorted(MASK_COLOURS)}")
    lut = np.array([MASK_COLOURS[k] for k in sorted(MASK_COLOURS)], dtype=np.uint8)
    return lut[class_map.astype(np.intp)]


def rgb_to_class_map(rgb: np.ndarray, strict: bool = True, source: str = "mask") -> np.ndarray:
    """HxWx3(4) MASK image -> HxW uint8 class map.

    strict=True refuses any colour outside the official three (naming the colours and how many pixels);
    strict=False assigns each pixel the nearest official colour (for anti-aliased or resampled masks).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:  # a grey mask is only meaningful when it is all background
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    rgb = rgb[..., :3].astype(np.int16)
    palette = np.array([MASK_COLOURS[k] for k in sorted(MASK_COLOURS)], dtype=np.int16)
    dist = np.abs(rgb[..., None, :] - palette[None, None]).sum(-1)  # HxWx3 (per class)
    class_map = dist.argmin(-1).astype(np.uint8)
    if strict:
        off = dist.min(-1) != 0
        if off.any():
            colours, counts = np.unique(rgb[off].reshape(-1, 3), axis=0, return_counts=True)
            top = ", ".join(f"{tuple(int(v) for v in c)}x{n}" for c, n in
                            sorted(zip(colours, counts), key=lambda t: -t[1])[:5])
            raise ValueError(f"{source}: {int(off.sum())} pixels are not one of the official mask colours "
                             f"(0,0,0)/(0,0,255)/(0,255,0): {top}. Use strict=False to snap them.")
    return class_map


def inner_contour(region: np.ndarray) -> np.ndarray:
    """Pixels of a boolean region that have a 4-neighbour outside it (a 1-pixel inner border)."""
    eroded = ndimage.binary_erosion(region, structure=ndimage.generate_binary_structure(2, 1),
                                    border_value=0)
    return region & ~eroded


def encode_overlay(grey: np.ndarray, class_map: np.ndarray,
                   alpha: dict[int, float] | None = None, antialias: bool = True) -> np.ndarray:
    """Compose an OVERLAY (HxWx4 uint8 RGBA) the way the organisers did: red blend + coloured contour.

    antialias=True mimics the real files' anti-aliased contour pixels (half red, half mask colour, e.g.
    (128,127,0)), which sit where the border runs smoothly (few outside neighbours).
    """
    alpha = {**OVERLAY_ALPHA, **(alpha or {})}
    grey = np.asarray(grey, dtype=np.float32)
    out = np.repeat(grey[..., None], 3, axis=-1)
    for cls in (ISCHEMIC, HEMORRHAGIC):
        region = class_map == cls
        if not region.any():
            continue
        a = alpha[cls]
        g = grey[region]
        out[region] = np.stack([(1 - a) * g + 255 * a, (1 - a) * g, (1 - a) * g], axis=-1)
        contour = inner_contour(region)
        out[contour] = MASK_COLOURS[cls]
        if antialias:
            out[contour & _smooth_border(region)] = _half_red(MASK_COLOURS[cls])
    rgba = np.empty(grey.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    rgba[..., 3] = 255
    return rgba


def _smooth_border(region: np.ndarray) -> np.ndarray:
    """Border pixels with at most 2 of 8 neighbours outside, or 3 with only one 4-neighbour outside."""
    outside = (~region).astype(np.int8)
    n8 = ndimage.convolve(outside, np.ones((3, 3), np.int8), mode="constant", cval=1)
    n4 = ndimage.convolve(outside, ndimage.generate_binary_structure(2, 1).astype(np.int8),
                          mode="constant", cval=1)
    return (n8 <= 2) | ((n8 == 3) & (n4 == 1))


def _half_red(colour: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(int(np.ceil(0.5 * red + 0.5 * c)) if i == 0 else int(0.5 * red + 0.5 * c)
                 for i, (red, c) in enumerate(zip((255, 0, 0), colour)))


def _contour_votes(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel contour vote: ISCHEMIC where blue dominates, HEMORRHAGIC where green does, else 0.

    Interior (blended) pixels have G == B; contour pixels are (0,0,255)/(0,255,0) or anti-aliased with red,
    e.g. (128,0,127)/(128,127,0), so |G - B| is large exactly on the contour.
    """
    g, b = rgb[..., 1].astype(np.int16), rgb[..., 2].astype(np.int16)
    votes = np.zeros(rgb.shape[:2], dtype=np.uint8)
    votes[b - g > 40] = ISCHEMIC
    votes[g - b > 40] = HEMORRHAGIC
    return votes


def _class_from_blend(rgb: np.ndarray, pixels: np.ndarray, alpha: dict[int, float]) -> int:
    """Class of a region without contour pixels: nearest measured blend factor, a = (R - G) / 255."""
    a = np.median((rgb[..., 0].astype(np.float32) - rgb[..., 1])[pixels]) / 255.0
    return min(alpha, key=lambda cls: abs(alpha[cls] - a))


def decode_overlay(png: np.ndarray, overlay: np.ndarray, method: str = "exact",
                   default_class: int | None = None, alpha: dict[int, float] | None = None) -> np.ndarray:
    """Recover the HxW class map from a PNG slice and its OVERLAY.

    method="exact" (default): lesion = pixels where OVERLAY != PNG; each 8-connected region takes the class
    of its contour colour (majority); a region holding both contour colours (touching lesions of both types)
    is split pixel by pixel by the nearest contour pixel; a region with no contour pixel falls back to the
    blend factor. method="hsv": the seed paper's red-hue threshold (hue 0-10 or 160-255 on PIL's scale,
    saturation > 0); it cannot tell the classes apart, so every lesion pixel gets `default_class`.
    """
    alpha = {**OVERLAY_ALPHA, **(alpha or {})}
    png_rgb = _as_rgb(png)
    ov_rgb = _as_rgb(overlay)
    if png_rgb.shape != ov_rgb.shape:
        raise ValueError(f"PNG {png_rgb.shape[:2]} and OVERLAY {ov_rgb.shape[:2]} differ in size")
    if method == "hsv":
        if default_class not in (ISCHEMIC, HEMORRHAGIC):
            raise ValueError("method='hsv' cannot tell classes apart: pass default_class=1 or 2")
        return np.where(_red_hue(ov_rgb), default_class, BACKGROUND).astype(np.uint8)
    if method != "exact":
        raise ValueError(f"unknown overlay decoding method {method!r}; use 'exact' or 'hsv'")

    lesion = (png_rgb != ov_rgb).any(-1)
    class_map = np.zeros(lesion.shape, dtype=np.uint8)
    labels, n = ndimage.label(lesion, structure=EIGHT_CONNECTED)
    if n == 0:
        return class_map
    votes = _contour_votes(ov_rgb)
    votes[~lesion] = 0
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        region = labels[box] == index
        region_votes = votes[box][region]
        n_isc = int((region_votes == ISCHEMIC).sum())
        n_hem = int((region_votes == HEMORRHAGIC).sum())
        if n_isc == 0 and n_hem == 0:
            cls = default_class if default_class else _class_from_blend(ov_rgb[box], region, alpha)
            class_map[box][region] = cls
        elif min(n_isc, n_hem) <= 0.05 * (n_isc + n_hem):
            class_map[box][region] = ISCHEMIC if n_isc > n_hem else HEMORRHAGIC
        else:
            class_map[box][region] = _nearest_vote(votes[box], region)[region]
    return class_map


def _nearest_vote(votes: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Give every pixel the vote of its nearest voting pixel (for regions with two contour colours)."""
    voting = (votes > 0) & region
    _, (iy, ix) = ndimage.distance_transform_edt(~voting, return_indices=True)
    return votes[iy, ix]


def _red_hue(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image  # local import: only the optional HSV rule needs PIL here

    hsv = np.asarray(Image.fromarray(rgb.astype(np.uint8), "RGB").convert("HSV"))
    hue, sat = hsv[..., 0], hsv[..., 1]
    return ((hue <= 10) | (hue >= 160)) & (sat > 0)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    if image.shape[-1] == 4:
        return image[..., :3]
    return image
