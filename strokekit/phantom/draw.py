"""Drawing primitives of the phantom: the head frame (pixel grid in head units), soft masks, and the
per-slice geometry (Layers) and tissue masks (Tissue) the anatomy and lesion steps share."""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from scipy import ndimage

REFERENCE_SIZE = 512


class Pose(Protocol):
    """Where a head lies in the image (anatomy.Head has these): centre, rotation and size in image units."""
    cx: float
    cy: float
    angle: float
    scale: float


class Frame:
    """The pixel grid mapped into the head frame, with shape helpers working on a bounding box."""

    def __init__(self, size: int, head: Pose):
        self.size, self.head = size, head
        t = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
        x, y = t[None, :] - head.cx, t[:, None] - head.cy
        c, s = math.cos(head.angle), math.sin(head.angle)
        self.u = (c * x + s * y) / head.scale
        self.v = (-s * x + c * y) / head.scale
        self.unit_px = size / 2 * head.scale  # pixels per head unit
        self.px512 = size / REFERENCE_SIZE    # pixel lengths given at 512 -> this size

    def to_pixel(self, u: float, v: float) -> tuple[float, float]:
        h = self.head
        c, s = math.cos(h.angle), math.sin(h.angle)
        x = h.cx + h.scale * (c * u - s * v)
        y = h.cy + h.scale * (s * u + c * v)
        return (y + 1) * self.size / 2 - 0.5, (x + 1) * self.size / 2 - 0.5

    def box(self, u: float, v: float, radius: float) -> tuple[slice, slice]:
        row, col = self.to_pixel(u, v)
        r = radius * self.unit_px + 2
        clip = lambda a: int(min(max(a, 0), self.size))  # noqa: E731
        return slice(clip(row - r), clip(row + r + 1)), slice(clip(col - r), clip(col + r + 1))

    def blob(self, u: float, v: float, au: float, av: float, angle: float = 0.0, wobble=()) -> np.ndarray:
        """Full-size boolean mask of a rotated ellipse whose outline wobbles by the given harmonics."""
        mask = np.zeros((self.size, self.size), dtype=bool)
        reach = max(au, av) * (1 + sum(a for _, a, _ in wobble))
        box = self.box(u, v, reach)
        du, dv = self.u[box] - u, self.v[box] - v
        c, s = math.cos(angle), math.sin(angle)
        du, dv = c * du + s * dv, -s * du + c * dv
        rho2 = (du / au) ** 2 + (dv / av) ** 2
        if wobble:
            phi = np.arctan2(dv / av, du / au)
            bound = 1 + sum(a * np.cos(k * phi + p) for k, a, p in wobble)
            mask[box] = rho2 < bound * bound
        else:
            mask[box] = rho2 < 1
        return mask

    def disc_px(self, u: float, v: float, radius: float, min_px: float = 1.2) -> np.ndarray:
        """A disc of at least `min_px` pixels radius (small dots stay visible at small sizes)."""
        r = max(radius, min_px / self.unit_px)
        return self.blob(u, v, r, r)


def soften(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blurred float copy of a mask, computed on its bounding box only."""
    out = np.zeros(mask.shape, dtype=np.float32)
    boxes = ndimage.find_objects(mask.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return out
    pad = int(3 * sigma) + 2
    box = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(boxes[0], mask.shape))
    out[box] = ndimage.gaussian_filter(mask[box].astype(np.float32), sigma)
    return out


def wrap(angle):
    """Angle difference folded into [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def level_profile(level: float) -> float:
    """Relative head size at a level: the vault is roughly an ellipsoid whose widest cut is at 0.35."""
    return math.sqrt(max(0.05, 1.0 - ((level - 0.35) / 0.72) ** 2))


def bump(level: float, centre: float, half_width: float) -> float:
    """1 at `centre`, falling to 0 at `centre` +- `half_width` (how much of a structure a level cuts)."""
    return max(0.0, 1.0 - ((level - centre) / half_width) ** 2)


class Layers:
    """Per-pixel geometry of the head at one level (plain attributes, filled by the drawing steps)."""


class Tissue:
    """Masks of the brain's compartments at one level (plain attributes)."""


def texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """Slow +-1 HU variation of brain density (beam, partial volume): an 8x8 field, bilinearly enlarged."""
    coarse = rng.standard_normal((8, 8)).astype(np.float32)
    x = np.linspace(0, 7, size, dtype=np.float32)
    weights = np.maximum(0, 1 - np.abs(x[:, None] - np.arange(8, dtype=np.float32)[None, :]))  # size x 8
    rows = np.einsum("ik,kl->il", weights, coarse * 1.2)
    return np.einsum("il,jl->ij", rows, weights)  # einsum, not @: no BLAS thread pool per worker
