"""Lesions of the phantom: what a patient's lesions are (random_lesion) and how a slice draws them
(draw_lesions: hemorrhage blobs and crescents, ischemic wedges and lacunes, chronic infarcts as mimics)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strokekit.vocabulary import HEMORRHAGIC, ISCHEMIC
from strokekit.phantom.draw import Frame, Layers, Tissue, soften, texture, wrap

HEMORRHAGE_KINDS = ("ich", "sdh")         # intraparenchymal blob, subdural crescent
ISCHEMIA_KINDS = ("territory", "lacune")  # vascular-territory wedge, small deep infarct
MIMIC_KINDS = ("old_infarct",)            # chronic infarct: CSF-dense, sharp, not a stroke label


@dataclass
class Lesion:
    """A lesion (or chronic mimic) of one patient, drawn on the slices with z_lo <= level <= z_hi."""
    kind: str                 # one of HEMORRHAGE_KINDS, ISCHEMIA_KINDS, MIMIC_KINDS
    shape: str                # blob (ich, lacune), wedge (territory), crescent (sdh); old infarcts: either
    side: int                 # hemisphere: +1 (u > 0) or -1
    u: float                  # blob centre
    v: float
    size: float               # radius (blob), half-angle in rad (wedge), largest thickness (crescent)
    value: float              # HU (ich, sdh, old_infarct) or HU change (territory, lacune)
    z_lo: float
    z_hi: float
    step: float = 0.08        # slice spacing of the patient, sets how fast the lesion tapers
    angle: float = 0.0        # blob orientation; wedge / crescent direction (outline angle)
    elong: float = 1.0
    depth: float = 0.5        # wedge's inner radius, in brain radii
    spread: float = 0.6       # crescent's angular half-width (rad)
    wobble: tuple = ()        # boundary harmonics ((k, amplitude, phase), ...)

    @property
    def label(self) -> int:
        return HEMORRHAGIC if self.kind in HEMORRHAGE_KINDS else ISCHEMIC if self.kind in ISCHEMIA_KINDS else 0

    def scale_at(self, level: float) -> float:
        """0 off the lesion's levels; 0.5..1 on them, largest mid-way (a rough ellipsoid in z)."""
        if not self.z_lo <= level <= self.z_hi:
            return 0.0
        half = (self.z_hi - self.z_lo) / 2 + 0.5 * self.step
        t = (level - (self.z_lo + self.z_hi) / 2) / half
        return 0.5 + 0.5 * math.sqrt(max(0.0, 1.0 - t * t))


def random_lesion(kind: str, rng: np.random.Generator, z_lo: float, z_hi: float, step: float,
                  side: int | None = None, small: bool = False) -> Lesion:
    """A lesion of `kind` on levels z_lo..z_hi; small=True for the minor lesion of a both-types slice."""
    side = int(side if side is not None else rng.choice((-1, 1)))
    wobble = tuple((k, float(rng.uniform(0.02, 0.12)), float(rng.uniform(0, 2 * math.pi))) for k in (2, 3, 5))
    common = dict(kind=kind, side=side, z_lo=z_lo, z_hi=z_hi, step=step, wobble=wobble,
                  angle=float(rng.uniform(0, math.pi)), elong=float(rng.uniform(1.0, 1.6)))
    deep = (side * rng.uniform(0.08, 0.24), rng.uniform(-0.15, 0.15))
    lobar = (side * rng.uniform(0.15, 0.38), rng.uniform(-0.45, 0.45))
    lateral = float(rng.uniform(-1.1, 1.1) + (0 if side > 0 else math.pi))  # wedge / crescent direction
    if kind == "ich":
        u, v = deep if rng.random() < 0.5 else lobar
        radius = math.exp(rng.uniform(math.log(0.015), math.log(0.035 if small else 0.13)))
        return Lesion(shape="blob", u=u, v=v, size=radius, value=float(rng.uniform(68, 90)), **common)
    if kind == "sdh":
        return Lesion(shape="crescent", u=0.0, v=0.0, size=float(rng.uniform(0.012, 0.025 if small else 0.06)),
                      value=float(rng.uniform(66, 86)), spread=float(rng.uniform(0.35, 0.9)),
                      **{**common, "angle": lateral})
    if kind == "lacune" or (kind == "old_infarct" and rng.random() < 0.4):
        u, v = deep
        value = float(rng.uniform(4, 14)) if kind == "old_infarct" else float(rng.uniform(-9.5, -6.5))
        return Lesion(shape="blob", u=u, v=v, size=float(rng.uniform(0.015, 0.032)), value=value,
                      **{**common, "kind": kind, "elong": 1.0 if kind == "lacune" else 1.2})
    if kind in ("territory", "old_infarct"):
        half = float(rng.uniform(0.08, 0.15) if small or kind == "old_infarct" else rng.uniform(0.12, 0.45))
        value = float(rng.uniform(4, 14)) if kind == "old_infarct" else float(rng.uniform(-8.5, -5.5))
        return Lesion(shape="wedge", u=0.0, v=0.0, size=half, value=value,
                      depth=float(rng.uniform(0.35, 0.75) if not small else rng.uniform(0.7, 0.85)),
                      **{**common, "angle": lateral})
    raise ValueError(f"unknown lesion kind {kind!r}; known: {HEMORRHAGE_KINDS + ISCHEMIA_KINDS + MIMIC_KINDS}")


def draw_lesions(f: Frame, level: float, hu: np.ndarray, g: Layers, t: Tissue,
             rng: np.random.Generator) -> np.ndarray:
    """Draw the patient's lesions present at this level; returns the class map (0/1/2)."""
    h = f.head
    order = {"old_infarct": 0, "territory": 1, "lacune": 1, "ich": 2, "sdh": 2}
    present = sorted((les for les in h.lesions if les.scale_at(level) > 0), key=lambda les: order[les.kind])
    hem = np.zeros_like(t.brain)
    isc = np.zeros_like(t.brain)
    near_bone = g.inner < h.gap + 2.5 / f.unit_px
    if g.intrusion.any():
        near_bone |= ndimage.binary_dilation(g.intrusion, iterations=3)
    inside = g.intracranial & ~g.intrusion
    for les in present:
        k = les.scale_at(level)
        if les.kind == "ich":
            region = _blob_lesion(f, les, k, t.parenchyma & ~near_bone) & inside
            edema = _blob_lesion(f, les, k * 1.35, t.parenchyma & ~near_bone) & t.parenchyma & ~region
            hu[edema] -= rng.uniform(3, 6)
            hu[region] = les.value + 2.5 * texture(f.size, rng)[region]
            hem |= region
        elif les.kind == "sdh":
            off = np.abs(wrap(g.phi - les.angle))
            thick = max(les.size * k, 1.5 / f.unit_px) * np.cos(np.minimum(off / les.spread, 1) * np.pi / 2)
            region = inside & (g.inner < thick) & (off < les.spread)
            if not region.any():
                region = _fallback(f, les, inside & (g.inner <= h.gap + 3 / f.unit_px))
            hu[region] = les.value
            hem |= region
        else:
            isc |= _infarct(f, les, k, hu, g, t, near_bone)
    if hem.any():
        isc &= ~ndimage.binary_dilation(hem, iterations=2)   # keep the two kinds apart: OVERLAYs stay decodable
    class_map = np.zeros(hu.shape, dtype=np.uint8)
    class_map[isc] = ISCHEMIC
    class_map[hem] = HEMORRHAGIC
    return class_map


def _blob_lesion(f: Frame, les: Lesion, k: float, allowed: np.ndarray) -> np.ndarray:
    """A round lesion at the patient's lesion centre, moved to the nearest allowed pixel if needed."""
    centre = _snap(f, allowed, les.u, les.v)
    if centre is None:
        return np.zeros_like(allowed)
    r = max(les.size * k, 1.6 / f.unit_px)
    return f.blob(*centre, r * math.sqrt(les.elong), r / math.sqrt(les.elong), les.angle, les.wobble)


def _snap(f: Frame, allowed: np.ndarray, u: float, v: float) -> tuple[float, float] | None:
    row, col = f.to_pixel(u, v)
    r, c = int(round(row)), int(round(col))
    if 0 <= r < f.size and 0 <= c < f.size and allowed[r, c]:
        return u, v
    rows, cols = np.nonzero(allowed)
    if rows.size == 0:
        return None
    i = int(np.argmin((rows - row) ** 2 + (cols - col) ** 2))
    return float(f.u[rows[i], cols[i]]), float(f.v[rows[i], cols[i]])


def _fallback(f: Frame, les: Lesion, allowed: np.ndarray) -> np.ndarray:
    """A small disc where a lesion's shape found no room at this level (it must show on its slices)."""
    centre = _snap(f, allowed, les.u if les.shape == "blob" else les.side * 0.25, les.v)
    if centre is None:
        raise RuntimeError("phantom: no brain tissue on this slice to hold a lesion")
    return f.disc_px(*centre, 0.02, min_px=2.0) & allowed


def _infarct(f: Frame, les: Lesion, k: float, hu: np.ndarray, g: Layers, t: Tissue,
             near_bone: np.ndarray) -> np.ndarray:
    """Acute ischemia (soft hypodensity, returns its hard mask) or a chronic infarct (sharp, CSF-dense)."""
    h = f.head
    if les.shape == "blob":
        region = _blob_lesion(f, les, k, t.parenchyma & ~near_bone) & (t.parenchyma | t.sulci)
    else:  # a wedge of a vascular territory, from `depth` out to the cortex
        _, amp, phase = les.wobble[0]
        off = np.abs(wrap(g.phi - les.angle))
        region = ((off < les.size * k * (1 + amp * np.sin(7 * g.rho_b + phase)))
                  & (g.rho_b > les.depth * (1 + amp * np.sin(5 * g.phi + phase)))
                  & (t.parenchyma | t.sulci) & (f.u * les.side > 0))
    if les.kind == "old_infarct":
        hu[region & ~near_bone] = les.value
        t.parenchyma = t.parenchyma & ~region   # lost tissue: no acute lesion can sit there
        g.findings.append("old_infarct")
        return np.zeros_like(region)
    hu[region & t.sulci] = h.gm                       # swollen cortex effaces its sulci
    eligible = (t.parenchyma | (region & t.sulci)) & ~near_bone
    if not (region & eligible).any():
        region = _fallback(f, les, eligible)
    radius_px = math.sqrt(region.sum() / math.pi)
    soft = soften(region, max(0.3, min(3.0 * f.px512, 0.35 * radius_px)))
    effect = np.clip((soft - 0.1) / 0.6, 0, 1) * eligible  # full inside the mask, fading over its border
    hu += effect * (les.value - 0.3 * (h.gm - h.wm) * t.gm)  # and the grey/white contrast fades
    mask = (soft > 0.5) & eligible
    return mask if mask.any() else region & eligible
