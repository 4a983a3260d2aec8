"""Case galleries: worst segmentation cases cropped around the lesion (the whole slice as a thumbnail with the
crop framed), truth / prediction / TP-FP-FN map over the CT, and the classifier's false negatives and false
positives as separate tiles; score.py's worst-case grid. Drawn with report.figures' pyplot (the one module
that imports matplotlib).

Colours: on screen ischemia is drawn in DISPLAY_COLOURS (a light blue that shows on a grey CT; the official
(0, 0, 255) is nearly invisible on it) and hemorrhage in its official green; submission files keep the
official colours (data/encodings.py). The outcome map marks each pixel TP, FP or FN (OUTCOME_COLOURS);
seg OOF cases use strict per-pixel outcomes, score.py's grid the organisers' tolerant ones.
"""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import numpy as np

from strokekit.data.encodings import inner_contour
from strokekit.data.submission import read_phase2_mask
from strokekit.evaluation import official
from strokekit.evaluation.score import load_prediction, worst_records
from strokekit.report.figures import pyplot
from strokekit.vocabulary import LESION_NAMES

DISPLAY_COLOURS = {1: (40, 170, 255), 2: (0, 255, 0)}  # ischemia light blue (official: 0, 0, 255), hemorrhage
OUTCOME_COLOURS = {official.TP: (255, 215, 0), official.FP: (255, 40, 40), official.FN: (255, 0, 255)}
OUTCOME_LABELS = {official.TP: "TP (right)", official.FP: "FP (drawn, not there)", official.FN: "FN (missed)"}
CROP_MIN = 0.25  # the crop's side is at least this share of the slice's side


def tint(grey: np.ndarray, layers: dict[int, np.ndarray] | None, colours: dict, alpha: float = 0.45) -> np.ndarray:
    """The slice in grey with each boolean layer tinted and outlined in its colour."""
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey.mean(-1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for key, region in (layers or {}).items():
        if region is not None and region.any():
            colour = np.array(colours[key], dtype=np.float32)
            rgb[region] = (1 - alpha) * rgb[region] + alpha * colour
            rgb[inner_contour(region)] = colour
    return np.clip(rgb, 0, 255).astype(np.uint8)


def classes(class_map: np.ndarray | None) -> dict[int, np.ndarray]:
    return {} if class_map is None else {cls: np.asarray(class_map) == cls for cls in LESION_NAMES.values()}


def strict_outcomes(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per pixel: TP (lesion, right class), FN (true lesion missed or given the other class), FP (a predicted
    lesion pixel that is neither), TN."""
    out = np.full(truth.shape, official.TN, np.uint8)
    out[(pred > 0) & (pred != truth)] = official.FP
    out[(truth > 0) & (pred != truth)] = official.FN
    out[(truth > 0) & (pred == truth)] = official.TP
    return out


def crop_box(*maps, shape) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a square around every non-zero pixel of `maps` with a margin, at least CROP_MIN of the
    slice; the whole slice when nothing is marked."""
    h, w = shape
    marked = np.zeros(shape, bool)
    for m in maps:
        if m is not None:
            marked |= np.asarray(m) > 0
    if not marked.any():
        return 0, h, 0, w
    ys, xs = np.nonzero(marked)
    side = max(np.ptp(ys) + 1, np.ptp(xs) + 1)
    side = int(min(max(side * 1.6 + 8, CROP_MIN * max(h, w)), max(h, w)))
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    y0 = int(np.clip(cy - side // 2, 0, max(h - side, 0)))
    x0 = int(np.clip(cx - side // 2, 0, max(w - side, 0)))
    return y0, min(y0 + side, h), x0, min(x0 + side, w)


def _legend(fig, outcome: bool, classes_shown: bool = True, where: str = "upper") -> None:
    plt = pyplot()
    handles = []
    if classes_shown:
        handles += [plt.Rectangle((0, 0), 1, 1, color=np.array(DISPLAY_COLOURS[c]) / 255, label=f"{n}")
                    for n, c in LESION_NAMES.items()]
    if outcome:
        handles += [plt.Rectangle((0, 0), 1, 1, color=np.array(OUTCOME_COLOURS[k]) / 255, label=label)
                    for k, label in OUTCOME_LABELS.items()]
    if handles:
        fig.legend(handles=handles, loc=f"outside {where} center", ncol=len(handles), fontsize=8, frameon=False)


def _caption(ax, text: str, width: int = 26) -> None:
    ax.axis("off")
    lines = [part for line in str(text).split("\n") for part in (textwrap.wrap(line, width) or [""])]
    ax.text(0, 0.5, "\n".join(lines), va="center", ha="left", fontsize=8, family="monospace",
            transform=ax.transAxes)


def seg_gallery(cases: list[dict], outcome_kind: str = "strict"):
    """One row per case: caption, the whole slice with its TP / FP / FN map (the crop framed), then cropped
    around the true lesion (around the prediction on a slice without one): the CT, the truth, the prediction
    and the TP / FP / FN map.

    A case is {"grey": HxW, "truth": class map, "pred": class map, "caption": str, "outcome": optional HxW
    of official.TN/TP/FP/FN codes (default: strict per pixel)}."""
    plt = pyplot()
    columns = ["", "whole slice, TP / FP / FN", "CT (crop)", "truth", "prediction", f"TP / FP / FN ({outcome_kind})"]
    fig = plt.figure(figsize=(14, 2.3 * len(cases) + 0.6), layout="constrained")
    axes = fig.subplots(len(cases), len(columns), squeeze=False, width_ratios=[0.9, 1, 1, 1, 1, 1])
    for row, case in zip(axes, cases):
        grey, truth, pred = case["grey"], case["truth"], case.get("pred")
        pred = np.zeros_like(truth) if pred is None else pred
        outcome = case.get("outcome")
        outcome = strict_outcomes(pred, truth) if outcome is None else outcome
        y0, y1, x0, x1 = crop_box(truth if truth.any() else pred, shape=truth.shape)
        crop = (slice(y0, y1), slice(x0, x1))
        _caption(row[0], case["caption"])
        row[1].imshow(tint(grey, {k: outcome == k for k in OUTCOME_COLOURS}, OUTCOME_COLOURS, 0.6))
        row[1].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="white", ls="--", lw=1.2))
        row[2].imshow(tint(grey[crop], None, {}), interpolation="nearest")
        row[3].imshow(tint(grey[crop], classes(truth[crop]), DISPLAY_COLOURS), interpolation="nearest")
        row[4].imshow(tint(grey[crop], classes(pred[crop]), DISPLAY_COLOURS), interpolation="nearest")
        row[5].imshow(tint(grey[crop], {k: outcome[crop] == k for k in OUTCOME_COLOURS}, OUTCOME_COLOURS, 0.6),
                      interpolation="nearest")
        for ax in row[1:]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[0], columns):
        ax.set_title(name, fontsize=9)
    _legend(fig, outcome=True)
    return fig


def error_tiles(cases: list[dict], title: str, ncols: int = 4):
    """Classifier errors of one kind side by side, each with its caption above it: a slice with true lesions
    shows the whole slice (crop framed) and the crop around the lesion, outlined in the display colours; a
    slice without one shows the whole slice."""
    plt = pyplot()
    paired = any(c.get("truth") is not None and np.asarray(c["truth"]).any() for c in cases)
    ncols = max(1, min(ncols if paired else 5, len(cases)))
    nrows = max(1, math.ceil(len(cases) / ncols))
    fig = plt.figure(figsize=((3.8 if paired else 2.6) * ncols, 2.4 * nrows + 0.8), layout="constrained")
    panels = fig.subfigures(nrows, ncols, squeeze=False).ravel()
    for panel in panels[len(cases):]:
        panel.subplots().axis("off")
    for panel, case in zip(panels, cases):
        truth, grey = case.get("truth"), case["grey"]
        axes = panel.subplots(1, 2 if paired else 1, squeeze=False, width_ratios=[1, 1] if paired else None)[0]
        for ax in axes:
            ax.axis("off")
        axes[0].imshow(tint(grey, classes(truth), DISPLAY_COLOURS, alpha=0.3))
        if truth is not None and np.asarray(truth).any():
            y0, y1, x0, x1 = crop_box(truth, shape=np.asarray(truth).shape)
            axes[0].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="white", ls="--", lw=1))
            crop = (slice(y0, y1), slice(x0, x1))
            axes[1].imshow(tint(np.asarray(grey)[crop], classes(np.asarray(truth)[crop]), DISPLAY_COLOURS),
                           interpolation="nearest")
        panel.suptitle(case["caption"], fontsize=8)
    fig.suptitle(title, fontsize=10)
    if paired:
        _legend(fig, outcome=False, where="lower")  # the title holds the top
    return fig


def worst_cases(result: dict, k: int = 8, images_dir: str | os.PathLike | None = None):
    """score.py's grid of a scored phase-2 submission's k worst images (lowest official IoU), as seg_gallery:
    cropped around the lesion, the organisers' tolerant outcome map."""
    cases = []
    for record in worst_records(result["per_image"], k):
        true = read_phase2_mask(Path(result["truth"]) / f"{record['id']}.png", strict=False)
        pred, _ = load_prediction(Path(result["pred"]), record["id"], true.shape)
        outcome = official.outcome_map(pred, true, result["se_size"], result["rule"] == "region")
        grey = _read_grey(Path(images_dir) / f"{record['id']}.png", true.shape) if images_dir else \
            np.full(true.shape, 60, np.uint8)
        cases.append({"grey": grey, "truth": true, "pred": pred, "outcome": outcome,
                      "caption": f"image {record['id']}\nofficial IoU {record['iou']:.2f}"
                                 + (f"\ntruth: {record['type_true']}\npredicted: {record['type_pred']}"
                                    if "type_true" in record else "")})
    return seg_gallery(cases, outcome_kind=f"official, {result['se_size']}x{result['se_size']} tolerance")


def _read_grey(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        return np.full(shape, 60, np.uint8)
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))
