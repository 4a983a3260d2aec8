"""The kit's one plotting module (matplotlib, Agg): training curves, ROC / PR, confusion matrices, threshold
surfaces, size bins, the worst-case gallery with lesions drawn in the competition's colours (ischemia blue,
hemorrhage green) and score.py's worst-case grid of official outcomes.

Every figure function returns a matplotlib Figure; report_html embeds it, `save` writes it as a PNG. The
files drawn outside the report: a fold's curves.png (`fold_curves`, which train.py and tune.py hand to the
training engine, as training does not import the report stage), score.py's <name>.confusion.png (`confusion`)
and <name>.worst_cases.png (`worst_cases`), leaderboard.py's leaderboard.png (`leaderboard_bars`).
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from strokekit.atomic import write_atomic
from strokekit.evaluation import metrics, official
from strokekit.evaluation.score import load_prediction, worst_records
from strokekit.data.encodings import MASK_COLOURS, class_map_to_rgb, inner_contour
from strokekit.data.submission import read_phase2_mask

# the official outcome of each pixel (official.outcome_map) in score.py's worst-case grid
OUTCOME_COLOURS = {official.TN: (0, 0, 0), official.TP: (255, 255, 255), official.FP: (255, 0, 0),
                   official.FN: (255, 190, 0)}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int = 90) -> bytes:
    """A figure as PNG bytes (what the HTML pages embed); the figure is closed."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return buffer.getvalue()


def save(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write the figure as a PNG file, atomically (a kill leaves the previous file or the new one); closes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png_bytes(fig, dpi)
    write_atomic(path, lambda f: f.write(data))
    return path


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def training_curves(logs: dict[str, list[dict]], metric: str):
    """Loss (train solid, val dashed) and the selection metric per epoch, one colour per fold."""
    plt = pyplot()
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, rows) in enumerate(logs.items()):
        epochs = [r.get("epoch") for r in rows]
        colour = f"C{i % 10}"
        ax_loss.plot(epochs, [_number(r.get("train_loss")) for r in rows], color=colour, marker=".", label=f"{name} train")
        ax_loss.plot(epochs, [_number(r.get("val_loss")) for r in rows], color=colour, ls="--", marker=".",
                     label=f"{name} val")
        ax_metric.plot(epochs, [_number(r.get(metric)) for r in rows], color=colour, marker="o", label=name)
    ax_loss.set(title="loss (solid train, dashed validation)", xlabel="epoch")
    ax_metric.set(title=f"validation {metric}", xlabel="epoch")
    ax_loss.legend(fontsize=7, ncol=2)
    ax_metric.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fold_curves(rows: list[dict], metric: str, path: str | os.PathLike) -> Path:
    """A fold's curves.png from its log.csv rows: training_curves of that one fold (the training engine's
    `draw_curves`, called after every epoch)."""
    return save(training_curves({Path(path).parent.name or "fold": rows}, metric), path, dpi=80)


def roc_pr(y: np.ndarray, p: np.ndarray, folds: np.ndarray):
    """ROC and precision-recall curves: every fold thin, all folds pooled thick."""
    plt = pyplot()
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(10, 4.2))
    groups = [(f"fold {f}", folds == f) for f in np.unique(folds)] + [("pooled", np.ones(len(y), bool))]
    for name, rows in groups:
        if len(np.unique(y[rows])) < 2:
            continue
        table = metrics.threshold_table(y[rows], p[rows])
        fpr, tpr = np.r_[0, 1 - table["specificity"]], np.r_[0, table["recall"]]
        width = 2.5 if name == "pooled" else 1.0
        auc = metrics.roc_auc(y[rows], p[rows])
        ax_roc.plot(fpr, tpr, lw=width, label=f"{name} AUC {auc:.3f}")
        ax_pr.plot(table["recall"], table["precision"], lw=width, label=name)
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax_roc.set(xlabel="false-positive rate (1 - specificity)", ylabel="recall (sensitivity)", title="ROC",
               xlim=(0, 1), ylim=(0, 1.02))
    ax_pr.axhline(y.mean(), color="grey", lw=0.8, ls=":", label=f"prevalence {y.mean():.2f}")
    ax_pr.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    ax_roc.legend(fontsize=7)
    ax_pr.legend(fontsize=7)
    fig.tight_layout()
    return fig


def confusion(matrix: np.ndarray, labels: list[str], title: str = ""):
    """A confusion matrix, truth in rows, prediction in columns, counts written in the cells."""
    plt = pyplot()
    matrix = np.asarray(matrix)
    size = 1.2 + 0.9 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 0.6, size))
    ax.imshow(matrix, cmap="Blues")
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, str(int(value)), ha="center", va="center", fontsize=12,
                color="white" if value > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 2 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="prediction", ylabel="truth", title=title)
    fig.tight_layout()
    return fig


def threshold_curve(y: np.ndarray, p: np.ndarray, threshold: float, plateau=None, title: str = ""):
    """Recall, precision, specificity, F1 and balanced accuracy against the decision threshold."""
    plt = pyplot()
    table = metrics.threshold_table(y, p)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for key in ("recall", "precision", "specificity", "f1", "balanced_accuracy"):
        ax.plot(table["threshold"], table[key], drawstyle="steps-post", label=key)
    if plateau is not None and plateau[1] > plateau[0]:
        ax.axvspan(plateau[0], plateau[1], color="grey", alpha=0.15, label="near-best plateau")
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="threshold (p >= t is positive)", ylim=(0, 1.02), title=title)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def seg_surfaces(table: pd.DataFrame, chosen: dict | None = None, title: str = ""):
    """Per lesion class, the best OOF score over the other settings for each (threshold, min_area) pair."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name in zip(axes, ("ischemic", "hemorrhagic")):
        score = f"score.{name}" if f"score.{name}" in table else "score"
        frame = table.assign(_t=table[f"threshold.{name}"].map(_threshold_label))
        pivot = frame.pivot_table(index="_t", columns=f"min_area.{name}", values=score, aggfunc="max")
        pivot = pivot.reindex(sorted(pivot.index, key=lambda t: -1.0 if t == "argmax" else float(t)))
        image = ax.imshow(pivot.to_numpy(dtype=float), cmap="viridis", aspect="auto")
        ax.set_xticks(range(pivot.shape[1]), [str(int(c)) for c in pivot.columns])
        ax.set_yticks(range(pivot.shape[0]), list(pivot.index))
        for (r, c), value in np.ndenumerate(pivot.to_numpy(dtype=float)):
            ax.text(c, r, "–" if not np.isfinite(value) else f"{value:.3f}", ha="center", va="center",
                    fontsize=7, color="white")
        if chosen:
            t, m = _threshold_label(chosen["threshold"][name]), chosen["min_area"][name]
            if t in pivot.index and m in pivot.columns:
                ax.add_patch(plt.Rectangle((list(pivot.columns).index(m) - 0.5, list(pivot.index).index(t) - 0.5),
                                           1, 1, fill=False, ec="red", lw=2))
        ax.set(xlabel=f"min_area.{name} (pixels)", ylabel=f"threshold.{name}", title=f"{name}: {score}")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _threshold_label(value) -> str:
    return "argmax" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.2f}"


def size_bins(table: pd.DataFrame, value: str, title: str = ""):
    """Grouped bars: `value` per lesion class and size bin, with n under each bar."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = list(dict.fromkeys(table["size_bin"]))
    width = 0.38
    for i, (name, part) in enumerate(table.groupby("class", sort=False)):
        part = part.set_index("size_bin").reindex(bins)
        x = np.arange(len(bins)) + (i - 0.5) * width
        colour = np.array(MASK_COLOURS[1 if name == "ischemic" else 2]) / 255
        ax.bar(x, part[value].fillna(0), width, color=colour, label=name)
        for xi, n, v in zip(x, part["n"].fillna(0), part[value]):
            ax.text(xi, (0 if not np.isfinite(v) else v) + 0.01, f"n={int(n)}", ha="center", fontsize=7)
    ax.set_xticks(range(len(bins)), bins)
    ax.set(ylim=(0, 1.1), ylabel=value, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def overlay(grey: np.ndarray, class_map: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """The slice in grey with each lesion class tinted and outlined in its MASK colour."""
    grey = np.asarray(grey, dtype=np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if class_map is not None:
        for cls in (1, 2):
            region = class_map == cls
            if region.any():
                colour = np.array(MASK_COLOURS[cls], dtype=np.float32)
                rgb[region] = (1 - alpha) * rgb[region] + alpha * colour
                rgb[inner_contour(region)] = colour
    return np.clip(rgb, 0, 255).astype(np.uint8)


def gallery(cases: list[dict], columns: tuple[str, ...] = ("slice", "truth", "prediction")):
    """One row per case: the slice, the truth overlaid, the prediction overlaid (when the case has one).

    A case is {"grey": HxW, "truth": HxW class map or None, "pred": class map or None, "caption": str}.
    """
    plt = pyplot()
    fig, axes = plt.subplots(len(cases), len(columns), figsize=(2.7 * len(columns), 2.7 * len(cases)),
                             squeeze=False)
    for row, case in zip(axes, cases):
        panels = {"slice": overlay(case["grey"], None), "truth": overlay(case["grey"], case.get("truth")),
                  "prediction": overlay(case["grey"], case.get("pred"))}
        for ax, name in zip(row, columns):
            ax.imshow(panels[name])
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(case["caption"], fontsize=7)
    for ax, name in zip(axes[0], columns):
        ax.set_title(name + (" (ischemia blue, hemorrhage green)" if name != "slice" else ""), fontsize=8)
    fig.tight_layout()
    return fig


def tiles(cases: list[dict], ncols: int = 4):
    """Cases side by side, each the slice with its true lesions overlaid (classifier errors)."""
    plt = pyplot()
    nrows = math.ceil(len(cases) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, case in zip(axes.ravel(), cases):
        ax.imshow(overlay(case["grey"], case.get("truth")))
        ax.set_title(case["caption"], fontsize=7)
    fig.tight_layout()
    return fig


def worst_cases(result: dict, k: int = 8, images_dir: str | os.PathLike | None = None):
    """score.py's grid of a scored phase-2 submission's k worst images (lowest official IoU): [the slice],
    truth, prediction (official colours), official outcome map (TP white, FP red, FN amber)."""
    plt = pyplot()
    records = worst_records(result["per_image"], k)
    columns = (["image"] if images_dir else []) + ["truth", "prediction", "outcome"]
    fig, axes = plt.subplots(len(records), len(columns), figsize=(2.6 * len(columns), 2.6 * len(records)),
                             squeeze=False)
    for row, record in zip(axes, records):
        panels = _worst_case_panels(result, record, images_dir)
        for ax, name in zip(row, columns):
            ax.imshow(panels[name], cmap="gray" if panels[name].ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(f"{record['id']}  IoU {record['iou']:.2f}", fontsize=8)
    for ax, name in zip(axes[0], columns):
        ax.set_title(name if name != "outcome" else "TP white, FP red, FN amber", fontsize=8)
    fig.tight_layout()
    return fig


def _worst_case_panels(result: dict, record: dict, images_dir) -> dict[str, np.ndarray]:
    true = read_phase2_mask(Path(result["truth"]) / f"{record['id']}.png", strict=False)
    pred, _ = load_prediction(Path(result["pred"]), record["id"], true.shape)
    outcomes = official.outcome_map(pred, true, result["se_size"], result["rule"] == "region")
    lut = np.array([OUTCOME_COLOURS[i] for i in range(4)], dtype=np.uint8)
    panels = {"truth": class_map_to_rgb(true), "prediction": class_map_to_rgb(pred), "outcome": lut[outcomes]}
    if images_dir:
        panels["image"] = _read_grey(Path(images_dir) / f"{record['id']}.png", true.shape)
    return panels


def _read_grey(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        return np.zeros(shape, np.uint8)
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def leaderboard_bars(bars: dict[str, list[tuple]], metrics: dict[str, str]):
    """Horizontal bars per task: `bars[task]` holds (label, value, error, colour) rows (configs with their std
    over folds, ensembles without), `metrics[task]` names the metric shown."""
    plt = pyplot()
    tasks = list(bars)
    heights = [max(1, len(bars[t])) * 0.35 + 0.9 for t in tasks]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, task in zip(axes[:, 0], tasks):
        labels, values, errors, colours = zip(*bars[task]) if bars[task] else ((), (), (), ())
        y = np.arange(len(labels))
        ax.barh(y, values, xerr=[0 if math.isnan(e) else e for e in errors], color=colours, capsize=3)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"{task}: OOF {metrics[task]} (blue: configs, mean ± std over folds; orange: ensembles)",
                     fontsize=9)
        for yi, v in zip(y, values):
            ax.text(min(v, 0.88) + 0.01, yi, f"{v:.3f}", va="center", fontsize=7)
    fig.tight_layout()
    return fig
