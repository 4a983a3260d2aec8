"""Synthetic head-CT anatomy for the phantom data set: one axial slice in HU plus its lesion class map.

Shapes are drawn in a head frame: u runs across the head (image left to right), v from the face (-) to the
back of the head (+, down in the image), both in units of half the image width, so a slice looks the same
at any image size. `level` runs from the skull base (0) to the vertex (1). Pixel-sized details (blur,
lesion borders) are given at 512 px and scaled with the image. Drawing primitives (the head frame, soft
masks, texture) live in phantom_draw.py, the lesions in phantom_lesions.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from strokekit.phantom.draw import Frame, Layers, Tissue, bump, level_profile, soften, texture
from strokekit.phantom.lesions import Lesion, draw_lesions

AIR, FAT = -1000.0, -90.0
# Deep grey matter of the right side (u, v, half-axes, angle), mirrored for the left: caudate head,
# lentiform nucleus, thalamus, insular cortex.
DEEP_GREY = ((0.12, -0.16, 0.035, 0.05, 0.0), (0.2, -0.02, 0.04, 0.1, -0.15), (0.08, 0.1, 0.055, 0.07, 0.0),
             (0.31, -0.05, 0.025, 0.11, 0.2))


@dataclass
class Head:
    """One patient's anatomy, pose in the image, scanner look and findings (shared by all their slices)."""
    cx: float
    cy: float
    angle: float
    scale: float
    aspect: float              # head width / length
    outline: tuple             # ((k, amplitude, phase), ...) harmonics of the head outline
    scalp: float               # thicknesses in head units (1 unit = half the image width)
    skull: float
    gap: float                 # subarachnoid CSF between the inner skull table and the brain
    scalp_fat: float           # HU of the scalp's middle layer
    bone: float                # HU of cortical bone
    gm: float
    wm: float
    csf: float
    atrophy: float             # 1 = young adult; enlarges ventricles, sulci and fissures
    gyri: int
    gyri_phase: float
    noise: float               # HU, standard deviation of the final noise
    blur: float                # px at 512, Gaussian sigma of the scanner's smoothing
    holder: bool               # head-holder arc behind the head
    table: bool                # patient table lines at the bottom of the image
    calcs: tuple = ()          # choroid, pineal, basal_ganglia, falx
    leuko: float = 0.0         # HU change of periventricular white-matter disease (0 = none)
    lesions: list[Lesion] = field(default_factory=list)


def random_head(rng: np.random.Generator) -> Head:
    """A random adult head: size, shape, pose, tissue values, age-related findings."""
    atrophy = float(rng.uniform(0.8, 1.7))
    old = atrophy > 1.25
    calcs = tuple(name for name, p in (("choroid", 0.55 if old else 0.3), ("pineal", 0.5),
                                        ("basal_ganglia", 0.12), ("falx", 0.2)) if rng.random() < p)
    gm = float(rng.uniform(37.0, 42.0))
    return Head(
        cx=float(rng.uniform(-0.06, 0.06)), cy=float(rng.uniform(-0.1, 0.03)),
        angle=float(rng.uniform(-0.2, 0.2)), scale=float(rng.uniform(0.88, 1.05)),
        aspect=float(rng.uniform(0.74, 0.84)),
        outline=tuple((k, float(rng.uniform(0.0, 0.025)), float(rng.uniform(0, 2 * math.pi)))
                      for k in (1, 3, 4)),
        scalp=float(rng.uniform(0.02, 0.04)), skull=float(rng.uniform(0.022, 0.04)),
        gap=float(rng.uniform(0.008, 0.014) * atrophy), scalp_fat=float(rng.uniform(-100.0, 10.0)),
        bone=float(rng.uniform(1200.0, 1900.0)), gm=gm, wm=float(gm - rng.uniform(7.0, 9.5)),
        csf=float(rng.uniform(2.0, 10.0)), atrophy=atrophy, gyri=int(rng.integers(28, 40)),
        gyri_phase=float(rng.uniform(0, 2 * math.pi)), noise=float(rng.uniform(3.0, 5.5)),
        blur=float(rng.uniform(0.6, 1.0)), holder=bool(rng.random() < 0.7),
        table=bool(rng.random() < 0.4), calcs=calcs,
        leuko=float(-rng.uniform(4.0, 7.0)) if old and rng.random() < 0.5 else 0.0)


# ---------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Slice:
    """A rendered slice: Hounsfield units (int16) and the lesion class map (0/1/2)."""
    hu: np.ndarray
    class_map: np.ndarray
    parenchyma: np.ndarray  # brain tissue (grey, white matter, nuclei) before lesions: for tests
    findings: list          # non-stroke findings drawn (calcifications, old infarct, streaks ...)


def render_slice(head: Head, level: float, size: int, rng: np.random.Generator) -> Slice:
    """Draw one axial slice: head layers, skull base, brain, findings, lesions, then the scanner's look.

    Anatomy, lesions and scanner noise draw from separate streams of `rng`, so the same slice drawn
    without its lesions differs only where the lesions are.
    """
    anatomy_rng, lesion_rng, scanner_rng = rng.spawn(3)
    f = Frame(size, head)
    hu = np.full((size, size), AIR, dtype=np.float32)
    layers = _head_layers(f, level, hu)
    _skull_base(f, level, hu, layers, anatomy_rng)
    tissue = _brain(f, level, hu, layers, anatomy_rng)
    _mimics(f, level, hu, layers, tissue, anatomy_rng)
    class_map = draw_lesions(f, level, hu, layers, tissue, lesion_rng)
    _outside_head(f, hu, layers)
    return Slice(hu=_scanner(f, hu, scanner_rng), class_map=class_map, parenchyma=tissue.parenchyma,
                 findings=layers.findings)


def _head_layers(f: Frame, level: float, hu: np.ndarray) -> Layers:
    """Scalp, skull (cortical tables around diploe) and the intracranial space."""
    h, g = f.head, Layers()
    g.level, g.profile, g.findings = level, level_profile(level), []
    g.base = min(max((0.24 - level) / 0.24, 0.0), 1.0)     # skull-base features fade in below 0.24
    a_v = 0.74 * g.profile
    a_u = a_v * h.aspect
    un, vn = f.u / a_u, f.v / a_v
    rho = np.sqrt(un * un + vn * vn) + 1e-6
    g.phi = np.arctan2(vn, un)                               # 0 = +u side, +pi/2 = back of the head
    bound = 1 + sum(a * np.cos(k * g.phi + p) for k, a, p in h.outline)
    radius = np.sqrt(f.u * f.u + f.v * f.v) / rho            # head units per unit of rho, per direction
    depth = (bound - rho) * radius                           # distance in from the skin
    vertex = max(0.0, level - 0.78) / 0.22                   # the vault is cut obliquely near the top
    skull = h.skull * (1 + 0.3 * np.sin(g.phi) ** 2) * (1 + 1.0 * vertex + 0.3 * g.base)
    g.inner = depth - h.scalp - skull                        # depth below the inner skull table
    g.head = depth > 0
    scalp = g.head & (depth < h.scalp)
    hu[scalp] = 40.0
    hu[scalp & (depth > 0.3 * h.scalp) & (depth < 0.65 * h.scalp)] = h.scalp_fat
    g.bone = (depth >= h.scalp) & (g.inner < 0)
    t = np.clip(-g.inner / skull, 0, 1)                      # 0 at the inner table, 1 at the outer
    hu[g.bone] = (h.bone * (0.6 + 0.4 * np.abs(2 * t - 1)))[g.bone]   # dense tables, softer diploe between
    g.intracranial = g.inner >= 0
    hu[g.intracranial] = h.csf
    g.rho_b = rho / (bound - (h.scalp + skull + h.gap) / radius)   # 1 at the brain surface
    g.intrusion = np.zeros_like(g.head)                       # skull-base bone and air inside the skull
    return g


def tentorium_v(level: float, u):
    """v of the tentorium at lateral position u: the posterior fossa lies behind it below level 0.3."""
    t = min(max((0.3 - level) / 0.3, 0.0), 1.0)
    return 0.55 - 0.55 * t + (0.9 - 0.45 * t) * np.abs(u)


def _skull_base(f: Frame, level: float, hu: np.ndarray, g: Layers, rng: np.random.Generator) -> None:
    """Petrous ridges, clivus, sinuses, orbits and the beam-hardening streaks they cause."""
    if g.base <= 0:
        return
    h, fb = f.head, g.base
    bone, air = np.zeros_like(g.head), np.zeros_like(g.head)
    v0 = float(tentorium_v(level, 0.0))
    slope = 0.9 - 0.45 * min(max((0.3 - level) / 0.3, 0.0), 1.0)
    for s in (-1, 1):  # petrous ridges run along the front of the posterior fossa, mastoid air cells behind
        bone |= f.blob(s * 0.28, v0 + slope * 0.28 - 0.04, 0.22, 0.03 + 0.03 * fb, s * math.atan(slope))
        if fb > 0.3:
            for du, dv in ((0.46, 0.05), (0.5, 0.0), (0.43, 0.09)):
                air |= f.disc_px(s * du, v0 + slope * du - 0.04 + dv - 0.05, 0.012)
    if fb > 0.2:
        bone |= f.blob(0.0, v0 - 0.12, 0.055, 0.1)                            # clivus
    if fb > 0.45:
        air |= f.blob(0.0, v0 - 0.2, 0.05, 0.05)                               # sphenoid sinus
    face_v = -0.74 * g.profile * (1 - 0.45 * fb)
    face = g.intracranial & (f.v < face_v - 1.2 * f.u * f.u)   # temporal lobes reach further forward
    bone |= face
    for _ in range(int(3 + 5 * fb)):                                           # ethmoid / frontal air cells
        air |= f.blob(float(rng.uniform(-0.2, 0.2)), float(face_v - rng.uniform(0.02, 0.12)),
                      float(rng.uniform(0.015, 0.04)), float(rng.uniform(0.015, 0.04)))
    hu[bone & g.intracranial] = 0.6 * h.bone
    hu[air & (g.intracranial | g.bone)] = AIR
    if fb > 0.55:                                                              # orbits: fat around the globe
        for s in (-1, 1):
            orbit = f.blob(s * 0.2, face_v - 0.1, 0.1, 0.11) & face
            hu[orbit] = FAT
            hu[f.blob(s * 0.2, face_v - 0.12, 0.065, 0.07) & face] = 12.0
    g.intrusion = (bone | air) & g.intracranial
    _streaks(f, hu, g, v0, rng)
    g.findings.append("streaks")


def _streaks(f: Frame, hu: np.ndarray, g: Layers, v0: float, rng: np.random.Generator) -> None:
    """Beam hardening: a dark band between the petrous bones plus a few streaks from the dense bone."""
    inside = g.intracranial & ~g.intrusion
    lines = [(0.0, v0 - 0.03, 0.0, -rng.uniform(20, 40), 0.012)]
    for _ in range(int(rng.integers(2, 5))):
        lines.append((rng.uniform(-0.3, 0.3), v0 + rng.uniform(-0.05, 0.1), rng.uniform(0, math.pi),
                      rng.choice((-1, 1)) * rng.uniform(10, 25), rng.uniform(0.004, 0.012)))
    for pu, pv, angle, amp, width in lines:
        dist = (f.u - pu) * math.sin(angle) - (f.v - pv) * math.cos(angle)
        hu += np.where(inside, amp * g.base * np.exp(-(dist / width) ** 2), 0).astype(np.float32)


def _brain(f: Frame, level: float, hu: np.ndarray, g: Layers, rng: np.random.Generator) -> Tissue:
    """Cortex and white matter, deep grey nuclei, ventricles, fissures, sulci, posterior fossa."""
    h, t = f.head, Tissue()
    brain = g.intracranial & ~g.intrusion & (g.rho_b < 1)
    t.pf = brain & (f.v > tentorium_v(level, f.u)) if level < 0.3 else np.zeros_like(brain)
    cerebrum = brain & ~t.pf
    # gyri: an irregular fold pattern along the surface; sulci bend and vary in depth
    p, bend = h.gyri_phase, 2.5 * np.clip(1 - g.rho_b, 0, 0.3)
    fold = np.sin(h.gyri * g.phi + p + 1.2 * np.sin(3 * g.phi + p) + 0.6 * np.sin(8 * g.phi + 2 * p)
                  + bend * np.sin(5 * g.phi - p))
    cortex = 0.1 / math.sqrt(g.profile)
    t.wm = cerebrum & (g.rho_b < 1 - cortex * (1.25 - 0.75 * fold))
    hu[brain] = h.gm
    hu[t.wm] = h.wm
    hu[t.pf] = h.gm - 1.0
    sulcus_depth = cortex * (1.0 + 0.9 * (0.5 + 0.5 * np.sin(11 * g.phi + 3 * p)))
    csf = cerebrum & (fold < -0.93 + 0.07 * (h.atrophy - 1)) & (g.rho_b > 1 - sulcus_depth)   # sulci
    t.sulci = csf.copy()
    a = h.atrophy
    deep = bump(level, 0.43, 0.13)
    for s in (-1, 1):
        if deep > 0:  # caudate head, lentiform nucleus, thalamus; insular cortex
            r = math.sqrt(deep)
            for u, v, au, av, angle in DEEP_GREY:
                nucleus = f.blob(s * u, v, au * r, av * r, s * angle)
                hu[nucleus & cerebrum] = h.gm - 1.5
                t.wm &= ~nucleus
            csf |= f.blob(s * 0.38, -0.07, 0.13 * r, 0.006 + 0.006 * a, s * 0.35)               # sylvian fissure
    csf |= _ventricles(f, level, a)
    fissure = np.abs(f.u) < 0.003 + 0.004 * a
    if level < 0.75:
        fissure &= (f.v < -0.26) | (f.v > 0.34)
    csf |= fissure & cerebrum
    if level < 0.3:
        v0 = float(tentorium_v(level, 0.0))
        stem = f.blob(0.0, v0 - 0.03, 0.085, 0.075)
        csf |= f.blob(0.0, v0 - 0.03, 0.11, 0.1) & brain & ~stem                             # cisterns
        hu[stem & brain] = h.wm + 2.0
        if 0.05 < level < 0.25:
            csf |= f.blob(0.0, v0 + 0.1, 0.04, 0.022)                                        # 4th ventricle
    csf &= brain
    hu[csf] = h.csf
    hu[fissure & cerebrum & (np.abs(f.u) < 0.0025) & ~_ventricles(f, level, a)] = h.gm + 20  # falx
    hu[brain] += texture(f.size, rng)[brain]
    t.brain, t.csf = brain, csf
    t.sulci &= csf
    t.parenchyma = brain & ~csf
    t.gm = t.parenchyma & ~t.wm
    t.wm &= t.parenchyma
    return t


def _ventricles(f: Frame, level: float, atrophy: float) -> np.ndarray:
    """Lateral ventricles (frontal horns, bodies, atria), third ventricle, temporal horns."""
    out = np.zeros((f.size, f.size), dtype=bool)
    horn, body, atrium = bump(level, 0.5, 0.15), bump(level, 0.6, 0.16), bump(level, 0.5, 0.13)
    third, temporal, a = bump(level, 0.37, 0.09), bump(level, 0.26, 0.08), atrophy
    for s in (-1, 1):
        if horn > 0:
            out |= f.blob(s * 0.075 * math.sqrt(a), -0.2, 0.04 * a * math.sqrt(horn), 0.11 * horn, s * 0.3)
        if body > 0:
            out |= f.blob(s * 0.09, 0.02, 0.03 * a * math.sqrt(body), 0.16 * math.sqrt(body), s * -0.1)
        if atrium > 0:
            out |= f.blob(s * 0.15, 0.22, 0.045 * a * math.sqrt(atrium), 0.08 * atrium, s * -0.5)
        if temporal > 0:
            out |= f.blob(s * 0.3, 0.02, 0.02 * a * temporal, 0.05 * temporal, s * 0.6)
    if third > 0:
        out |= f.blob(0.0, 0.02, 0.004 + 0.008 * a, 0.1 * third)
    return out


def _mimics(f: Frame, level: float, hu: np.ndarray, g: Layers, t: Tissue, rng: np.random.Generator) -> None:
    """Findings that are not acute stroke: calcifications, white-matter disease (old infarcts: phantom_lesions)."""
    h = f.head
    dots = {"choroid": [(s * 0.155, 0.21, 0.011) for s in (-1, 1)] if 0.42 < level < 0.58 else [],
            "pineal": [(0.0, 0.15, 0.009)] if 0.33 < level < 0.48 else [],
            "basal_ganglia": [(s * 0.2, -0.02, 0.01) for s in (-1, 1)] if 0.33 < level < 0.5 else [],
            "falx": [(0.0, float(rng.uniform(-0.35, 0.35)), 0.007) for _ in range(2)] if level > 0.5 else []}
    for name in h.calcs:
        for u, v, r in dots[name]:
            dot = f.disc_px(u + rng.normal(0, 0.005), v + rng.normal(0, 0.005), r) & t.brain
            hu[dot] = rng.uniform(150, 600)
        if dots[name]:
            g.findings.append(f"calcification_{name}")
    if h.leuko and level > 0.4:
        caps = np.zeros_like(t.brain)
        for s in (-1, 1):
            if level < 0.7:
                caps |= f.blob(s * 0.09, -0.3, 0.05, 0.05) | f.blob(s * 0.18, 0.31, 0.05, 0.05)
            if level > 0.6:
                caps |= f.blob(s * 0.17, -0.12, 0.06, 0.08) | f.blob(s * 0.17, 0.14, 0.06, 0.08)
        hu += h.leuko * soften(caps, 4 * f.px512 + 0.5) * t.wm
        g.findings.append("white_matter_disease")


def _outside_head(f: Frame, hu: np.ndarray, g: Layers) -> None:
    """The head holder's arc behind the head and the table's edges below it."""
    h = f.head
    if h.holder:
        half_l = 0.74 + 0.06
        rho = np.sqrt((f.u / (half_l * h.aspect + 0.02)) ** 2 + (f.v / half_l) ** 2)
        arc = (np.abs(rho - 1) < 0.012) & (np.arctan2(np.abs(f.u), f.v) < 1.25) & ~g.head
        hu[arc] = 300.0 + 200.0 * h.aspect
    if h.table:
        n = f.size
        for top, height in ((0.9, 0.012), (0.94, 0.006)):
            r0 = int((top + 1) / 2 * n)
            hu[r0:r0 + max(1, int(height / 2 * n)), int(0.15 * n):int(0.85 * n)] = 180.0


def _scanner(f: Frame, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Correlated noise and the reconstruction kernel's slight blur; HU rounded to int16."""
    sigma = f.head.blur * f.px512
    noise = rng.standard_normal(hu.shape, dtype=np.float32) * (f.head.noise / _noise_gain(sigma))
    out = ndimage.gaussian_filter(hu + noise, sigma) if sigma > 0.25 else hu + noise
    return np.clip(np.rint(out), -1024, 3071).astype(np.int16)


def _noise_gain(sigma: float) -> float:
    """Factor by which a 2-D Gaussian blur of `sigma` px scales white noise's standard deviation."""
    if sigma <= 0.25:
        return 1.0
    delta = np.zeros(61)
    delta[30] = 1
    kernel = ndimage.gaussian_filter1d(delta, sigma)
    return float((kernel ** 2).sum())
