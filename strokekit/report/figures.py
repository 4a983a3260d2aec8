"""The kit's one plotting module (matplotlib, Agg): training curves (nnU-Net's progress.png layout), ROC / PR,
confusion matrices, threshold surfaces, OOF probability histograms and calibration, members against their
blend, size bins and leaderboard.png; galleries.py draws the case galleries with its `pyplot`.

Every figure function returns a matplotlib Figure; report/html.py embeds it, `save` writes it as a PNG. The
files drawn outside the report: a fold's curves.png (`fold_curves`, which train.py and tune.py hand to the
training engine, as training does not import the report stage), score.py's <name>.confusion.png (`confusion`)
and <name>.worst_cases.png (galleries.worst_cases), leaderboard.py's leaderboard.png (`leaderboard_bars`).
Numbers written on coloured cells take black or white by the cell's luminance (`text_colour`).
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from strokekit.atomic import write_atomic
from strokekit.evaluation import metrics

CLASS_COLOURS = {"ischemic": (40 / 255, 170 / 255, 1.0), "hemorrhagic": (0.0, 0.75, 0.0)}  # display, not official


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


def text_colour(rgba) -> str:
    """Black or white, whichever reads better on a cell of this colour (relative luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([_number(r.get(key)) for r in rows], dtype=float)


def moving_average(values: np.ndarray, width: int = 5) -> np.ndarray:
    """Trailing mean over the last `width` finite values (nnU-Net's smoothed pseudo-Dice line)."""
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        window = values[max(0, i - width + 1):i + 1]
        window = window[np.isfinite(window)]
        out[i] = window.mean() if len(window) else np.nan
    return out


def training_curves(logs: dict[str, list[dict]], metric: str, mode: str | None = None):
    """nnU-Net's progress plot, one colour per fold: loss (train solid, validation dashed); the validation metric
    (thin) with its moving average (thick) and the best epoch starred; learning rate; epoch time. The folds'
    legend (with each best epoch) sits under the plots, so it never covers a curve."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    mode = mode or ("min" if "loss" in metric else "max")
    fig, axes = plt.subplots(2, 2, figsize=(12, 6.4), layout="constrained")
    (ax_loss, ax_metric), (ax_lr, ax_time) = axes
    handles = []
    for i, (name, rows) in enumerate(logs.items()):
        epochs = np.array([_number(r.get("epoch")) for r in rows])
        colour = f"C{i % 10}"
        ax_loss.plot(epochs, _column(rows, "train_loss"), color=colour)
        ax_loss.plot(epochs, _column(rows, "val_loss"), color=colour, ls="--")
        values = _column(rows, metric)
        ax_metric.plot(epochs, values, color=colour, lw=0.8, alpha=0.5, marker=".")
        ax_metric.plot(epochs, moving_average(values), color=colour, lw=2)
        label = name
        if np.isfinite(values).any():
            best = int(np.nanargmax(values) if mode == "max" else np.nanargmin(values))
            ax_metric.plot(epochs[best], values[best], marker="*", ms=13, color=colour, mec="black", ls="none")
            label = f"{name} (best: epoch {int(epochs[best])}, {values[best]:.3f})"
        ax_lr.plot(epochs, _column(rows, "lr"), color=colour)
        ax_time.plot(epochs, _column(rows, "time_s"), color=colour, marker=".")
        handles.append(Line2D([], [], color=colour, lw=2, label=label))
    style = [Line2D([], [], color="black", label="train"), Line2D([], [], color="black", ls="--", label="validation")]
    ax_loss.legend(handles=style, fontsize=7)
    ax_metric.legend(handles=[Line2D([], [], color="black", lw=0.8, marker=".", label="per epoch"),
                              Line2D([], [], color="black", lw=2, label="moving average (5 epochs)"),
                              Line2D([], [], color="grey", marker="*", ms=11, mec="black", ls="none",
                                     label="best epoch")], fontsize=7)
    ax_loss.set(title="loss", xlabel="epoch", ylabel="loss")
    ax_metric.set(title=f"validation {metric}", xlabel="epoch", ylabel=metric)
    ax_lr.set(title="learning rate", xlabel="epoch", ylabel="learning rate")
    ax_time.set(title="epoch time", xlabel="epoch", ylabel="seconds per epoch")
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    return fig


def fold_curves(rows: list[dict], metric: str, path: str | os.PathLike) -> Path:
    """A fold's curves.png from its log.csv rows: training_curves of that one fold (the training engine's
    `draw_curves`, called after every epoch)."""
    return save(training_curves({Path(path).parent.name or "fold": rows}, metric), path, dpi=80)


def roc_pr(y: np.ndarray, p: np.ndarray, folds: np.ndarray | None = None, label: str = "pooled"):
    """ROC and precision-recall curves: every fold thin and all folds pooled thick; with one fold (or
    folds=None, e.g. a test set) only the one curve, named `label`."""
    plt = pyplot()
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(10, 4.2))
    folds = np.zeros(len(y), int) if folds is None else np.asarray(folds)
    groups = [(f"fold {f}", folds == f) for f in np.unique(folds)] if len(np.unique(folds)) > 1 else []
    groups.append((label, np.ones(len(y), bool)))
    for name, rows in groups:
        if len(np.unique(y[rows])) < 2:
            continue
        table = metrics.threshold_table(y[rows], p[rows])
        fpr, tpr = np.r_[0, 1 - table["specificity"]], np.r_[0, table["recall"]]
        width = 2.5 if name == label else 1.0
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
    image = ax.imshow(matrix, cmap="Blues")
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, str(int(round(value))), ha="center", va="center", fontsize=12,
                color=text_colour(image.cmap(image.norm(value))))
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
    if plateau is not None:
        inside = np.unique(p[(p >= plateau[0]) & (p <= plateau[1])])
        if len(inside) > 2:
            ax.axvspan(plateau[0], plateau[1], color="grey", alpha=0.15,
                       label=f"near-best plateau ({len(inside)} OOF scores)")
        else:  # one or two points: no band to draw, say so
            for i, x in enumerate(inside if len(inside) else [plateau[0]]):
                ax.axvline(x, color="grey", ls=":", lw=1.5,
                           label=f"near-best plateau: {max(len(inside), 1)} point{'s' * (len(inside) > 1)} only"
                           if i == 0 else None)
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="threshold (p >= t is positive)", ylabel="metric at the threshold", ylim=(0, 1.02), title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the curves, never over them
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
                    fontsize=7, color=text_colour(image.cmap(image.norm(value))) if np.isfinite(value) else "black")
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
        ax.bar(x, part[value].fillna(0), width, color=CLASS_COLOURS.get(name, f"C{i}"), label=name)
        for xi, n, v in zip(x, part["n"].fillna(0), part[value]):
            ax.text(xi, (0 if not np.isfinite(v) else v) + 0.01, f"n={int(n)}", ha="center", fontsize=7)
    ax.set_xticks(range(len(bins)), bins)
    ax.set(ylim=(0, 1.1), ylabel=value, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def probability_histograms(y: np.ndarray, p: np.ndarray, threshold: float, names: tuple[str, str]):
    """OOF probabilities of the positive class, one histogram per true class, the decision threshold marked;
    beside it the calibration plot (reliability diagram): mean predicted probability against the observed
    positive share per probability bin, with the number of images in each bin."""
    plt = pyplot()
    fig, (ax_hist, ax_cal) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    bins = np.linspace(0, 1, 21)
    for target, name, colour in ((0, names[0], "tab:grey"), (1, names[1], "tab:red")):
        ax_hist.hist(p[y == target], bins=bins, color=colour, alpha=0.55, label=f"true {name} (n = {int((y == target).sum())})")
    ax_hist.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax_hist.set(xlabel=f"OOF p({names[1]})", ylabel="images", title="OOF probabilities per true class", xlim=(0, 1))
    ax_hist.legend(fontsize=7)
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, 9)
    mean_p, share, counts = [], [], []
    for b in range(10):
        rows = which == b
        if rows.any():
            mean_p.append(p[rows].mean())
            share.append(y[rows].mean())
            counts.append(int(rows.sum()))
    ax_cal.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfectly calibrated")
    ax_cal.plot(mean_p, share, marker="o", color="tab:blue", label="OOF")
    for x, v, n in zip(mean_p, share, counts):
        ax_cal.annotate(f"{n}", (x, v), textcoords="offset points", xytext=(4, -10), fontsize=7)
    brier = float(np.mean((p - y) ** 2)) if len(y) else math.nan
    ax_cal.set(xlabel="mean predicted probability (10 bins)", ylabel=f"observed share of {names[1]}",
               title=f"calibration (Brier {brier:.3f}; numbers: images per bin)", xlim=(0, 1), ylim=(-0.02, 1.02))
    ax_cal.legend(fontsize=7, loc="upper left")
    return fig


def lesion_probability_histograms(peaks: dict[str, tuple[np.ndarray, np.ndarray]]):
    """Segmenters, per lesion class: each OOF image's highest probability of that class, for images whose
    true mask holds the class and for those without it (how well the peak alone tells them apart)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(peaks), figsize=(5.5 * len(peaks), 3.6), squeeze=False, layout="constrained")
    bins = np.linspace(0, 1, 21)
    for ax, (name, (present, absent)) in zip(axes[0], peaks.items()):
        ax.hist(absent, bins=bins, color="tab:grey", alpha=0.55, label=f"class absent (n = {len(absent)})")
        ax.hist(present, bins=bins, color=CLASS_COLOURS.get(name, "tab:red"), alpha=0.7,
                label=f"class present (n = {len(present)})")
        ax.set(xlabel=f"highest OOF p({name}) in the image", ylabel="images", title=name, xlim=(0, 1))
        ax.legend(fontsize=7)
    return fig


def members_and_blend(rows: list[dict], metric: str, title: str = ""):
    """One bar per member (its own OOF `metric`) and the blend's, with each member's weight and, where known,
    what leaving it out does to the blend (leave-one-out: blend without it minus blend)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4), layout="constrained")
    labels = [r["name"] for r in rows]
    values = [r["oof"] for r in rows]
    colours = ["tab:orange" if r.get("blend") else ("tab:blue" if r.get("weight") else "lightgrey") for r in rows]
    y = np.arange(len(rows))
    ax.barh(y, values, color=colours)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    top = max([v for v in values if np.isfinite(v)] or [1.0])
    ax.set_xlim(0, 1 if top <= 1 else top * 1.05)
    for yi, r in zip(y, rows):  # a column right of the axis: OOF, weight, leave-one-out delta
        note = f"{r['oof']:.4f}"
        if not r.get("blend"):
            note += f"   weight {r['weight']:.2f}" if r.get("weight") else "   not in the blend"
            if r.get("loo_delta") is not None and np.isfinite(r["loo_delta"]):
                note += f"   leave-one-out {r['loo_delta']:+.4f}"
        ax.text(1.01, yi, note, va="center", fontsize=7, transform=ax.get_yaxis_transform())
    ax.set(xlabel=f"OOF {metric}", title=title or f"members and the blend (orange), OOF {metric}")
    return fig


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[:width - 1] + "…"


def leaderboard_bars(bars: dict[str, list[tuple]], metrics: dict[str, str]):
    """Horizontal bars per task, one axis per task and metric: `bars[task]` holds (label, value, per-fold
    values, colour) rows (configs with their folds as dots, ensembles without), `metrics[task]` names the
    metric. Labels are shortened to fit, values are written in a column right of the axis: nothing overlaps."""
    plt = pyplot()
    tasks = list(bars)
    heights = [max(1, len(bars[t])) * 0.32 + 0.9 for t in tasks]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(9, sum(heights) + 0.3), squeeze=False,
                             gridspec_kw={"height_ratios": heights}, layout="constrained")
    for ax, task in zip(axes[:, 0], tasks):
        labels, values, folds, colours = zip(*bars[task]) if bars[task] else ((), (), (), ())
        y = np.arange(len(labels))
        ax.barh(y, values, color=colours)
        for yi, points in zip(y, folds):
            if points:
                ax.plot(points, [yi] * len(points), "o", color="black", ms=3.5, label="one fold" if yi == 0 else None)
        ax.set_yticks(y, [_short(label) for label in labels], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"OOF {metrics[task]}", fontsize=8)
        ax.set_title(f"{task}: blue configs (dots: each fold), orange ensembles", fontsize=9)
        for yi, v, points in zip(y, values, folds):
            text = f"{v:.3f}" + (f"  (folds {min(points):.3f}–{max(points):.3f})" if len(points) > 1 else "")
            ax.text(1.01, yi, text, va="center", fontsize=7, transform=ax.get_yaxis_transform())
    return fig
