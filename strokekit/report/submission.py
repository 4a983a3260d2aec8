"""The report page for a scored submission: what score.py computed (`evaluation.score.score_phase1` / `score_phase2`),
as one static HTML file with every figure embedded.

Phase 1: metrics, confusion matrix, false-positive rate on no-stroke slices; with the probabilities CSV also
ROC / precision-recall, the metrics-against-threshold curve and (with the images) the most confident errors.
Phase 2: official tolerant and strict scores, per-image table, image-type confusion, per-class Dice by lesion
size, images where a lesion class absent from the truth is predicted, and the worst images overlaid in the
competition's colours.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from strokekit.report import figures as figs, galleries
from strokekit.report.evaluate import SIZE_BINS, bin_labels, size_bin
from strokekit.report.html import HtmlReport, intervals_frame
from strokekit.data.submission import read_labels, read_phase2_mask
from strokekit.vocabulary import IMAGE_TYPES, LESION_NAMES



def write_submission_report(result: dict, out: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                            probs_csv: str | os.PathLike | None = None, worst: int = 8,
                            size_bins: tuple[float, float] = SIZE_BINS) -> Path:
    """Write the HTML report of a scored submission; `result` is score_phase1's or score_phase2's dict.

    images_dir: folder of the test slices `<id>.png` (drawn under the masks / in the error gallery);
    probs_csv: phase 1, the submission's probs.csv (image_id, prob) for the ROC / PR and threshold curves.
    """
    name = Path(result["pred"]).name if result["phase"] == 2 else Path(result["pred"]).parent.name
    page = HtmlReport(f"strokekit submission report: {name} (phase {result['phase']})")
    page.text(f"prediction {result['pred']}; truth {result['truth']}; {result['n_images']} images; "
              f"{len(result['missing_ids'])} missing, {len(result.get('extra_ids', []))} extra", note=True)
    if result["phase"] == 1:
        phase1(page, result, images_dir, probs_csv, worst)
    else:
        phase2(page, result, images_dir, worst, size_bins)
    return page.write(out)


def intervals_section(page: HtmlReport, result: dict) -> None:
    """score.py's 95 % bootstrap intervals (resamples of the scored images)."""
    intervals = result.get("intervals")
    if not intervals:
        page.text("no bootstrap intervals (score.py --n-boot 0)", note=True)
        return
    first = next(iter(intervals.values()))
    page.table(intervals_frame(intervals),
               caption=f"95 % intervals over {first.get('n_boot')} bootstrap resamples of the {first.get('n')} scored "
                       "images: how far the score may move on another draw of test images")


def phase1(page: HtmlReport, result: dict, images_dir, probs_csv, worst: int) -> None:
    c = result["confusion"]
    page.section("metrics")
    keys = ("accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "auc")
    page.table(pd.DataFrame([{k: result[k] if result[k] is not None else np.nan for k in keys}]),
               caption="balanced accuracy is the specification's metric (0.75 qualified); AUC needs probs.csv")
    intervals_section(page, result)
    page.section("confusion matrix")
    page.figure(figs.confusion([[c["tn"], c["fp"]], [c["fn"], c["tp"]]], ["no stroke", "stroke"]),
                "truth in rows, prediction in columns; a missing id counts as wrong", alt="confusion matrix")
    page.section("false positives on no-stroke slices")
    negatives = c["tn"] + c["fp"]
    page.table(pd.DataFrame([{"no-stroke slices": negatives, "called stroke": c["fp"],
                              "false-positive rate": c["fp"] / negatives if negatives else np.nan}]))
    page.text("per class by lesion size: not for phase 1 (its answer key holds labels, no masks); "
              "see report.py on the OOF of the runs", note=True)
    if probs_csv is None:
        page.text("no probs.csv given: ROC, precision-recall and the threshold curve need the probabilities", note=True)
        return
    from strokekit.evaluation.score import read_probs_csv

    truth, probs = read_labels(result["truth"]), read_probs_csv(probs_csv)
    ids = [i for i in sorted(truth) if i in probs]
    y, p = np.array([truth[i] for i in ids]), np.array([probs[i] for i in ids])
    page.section("ROC and precision-recall")
    page.figure(figs.roc_pr(y, p, label="test set"), f"{len(ids)} images with a probability",
                alt="ROC and PR curves")
    page.section("threshold curve")
    labels = read_labels(result["pred"])
    called = [i for i in ids if labels.get(i) == 1]
    threshold = min((probs[i] for i in called), default=0.5)
    page.figure(figs.threshold_curve(y, p, threshold, title="metrics against threshold"),
                f"dashed: the lowest probability the submission called stroke ({threshold:.3f})", alt="threshold curve")
    if images_dir:
        page.section(f"worst {worst} images")
        for target, kind, called in ((1, "false negatives", "no stroke"), (0, "false positives", "stroke")):
            wrong = [i for i in ids if truth[i] == target and labels.get(i) != target]
            if not wrong:
                page.text(f"{kind}: none", note=True)
                continue
            order = sorted(wrong, key=lambda i: -abs(truth[i] - probs[i]))[:worst]
            cases = [{"grey": _grey(images_dir, i, (64, 64)), "truth": None,
                      "caption": f"image {i}\np(stroke) = {probs[i]:.3f}"} for i in order]
            page.figure(galleries.error_tiles(cases, f"{kind}: true {'stroke' if target else 'no stroke'}, called "
                                                     f"{called} ({len(wrong)} in all)"),
                        f"{kind}, most confident first (phase 1's answer key has no masks)", alt=kind)


def phase2(page: HtmlReport, result: dict, images_dir, worst: int, size_bins) -> None:
    records = pd.DataFrame(result["per_image"])
    page.section("metrics")
    o, s = result["official"], result["strict"]
    rows = [{"scores": f"official tolerant ({result['se_size']}x{result['se_size']}, {result['rule']} rule), "
                       f"{label}", **{k: o[key][k] for k in ("iou", "dice", "precision", "recall")}}
            for label, key in (("mean over images", "mean_imagewise"), ("micro", "micro"))]
    page.table(pd.DataFrame(rows))
    parts = (*LESION_NAMES, "lesion_mean")
    strict = [{"reduction": r, **{f"{m} {c}": s[f"{m}_{r}_{c}"] for m in ("iou", "dice") for c in parts}}
              for r in ("micro", "macro_imagewise")]
    page.table(pd.DataFrame(strict), caption=s.get("empty_rule", ""))
    intervals_section(page, result)
    page.text(f"image type accuracy (set of lesion classes present): {result['type_accuracy']:.4f}")
    page.section("image-type confusion")
    matrix = np.array([[result["type_confusion_true_by_pred"][t][q] for q in IMAGE_TYPES] for t in IMAGE_TYPES])
    page.figure(figs.confusion(matrix, list(IMAGE_TYPES)), "lesion classes present in truth and prediction",
                alt="type confusion matrix")
    masks = {int(i): read_phase2_mask(Path(result["truth"]) / f"{int(i)}.png", strict=False) for i in records["id"]}
    page.section("per class by lesion size")
    bins = size_bin_table(records, masks, size_bins)
    page.table(bins, caption="strict per-image Dice of each lesion class, by the share of the slice it covers")
    page.figure(figs.size_bins(bins, "dice", "Dice by lesion class and size"), alt="size bins")
    page.section("false positives where the truth has no lesion of a class")
    page.table(false_positive_table(records, masks),
               caption="images whose truth lacks the class but whose prediction holds it (no-stroke slices: any class)")
    page.section("per image")
    columns = ["id", "status", "iou", "dice", "tp", "fp", "fn", "type_true", "type_pred"]
    page.table(records.sort_values("iou")[columns], caption="official tolerant counts, worst IoU first")
    page.section(f"worst {worst} images")
    page.figure(galleries.worst_cases(result, worst, images_dir),
                "lowest official IoU first: the whole slice with its outcome map (crop framed in white dashes), then "
                "the crop: CT, truth, prediction and the organisers' tolerant outcome of each pixel", alt="worst cases")


def size_bin_table(records: pd.DataFrame, masks: dict, bins) -> pd.DataFrame:
    rows = []
    for name, cls in LESION_NAMES.items():
        values = {edge: [] for edge in ("small", "medium", "large")}
        for r in records.itertuples():
            m = masks[int(r.id)]
            if (m == cls).any():
                tp, fp, fn = (getattr(r, f"strict_{k}_{name}") for k in ("tp", "fp", "fn"))
                values[size_bin((m == cls).mean(), bins)].append(2 * tp / (2 * tp + fp + fn))
        for label, edge in zip(bin_labels(bins), values):
            rows.append({"class": name, "size_bin": label, "n": len(values[edge]),
                         "dice": float(np.mean(values[edge])) if values[edge] else np.nan})
    return pd.DataFrame(rows)


def false_positive_table(records: pd.DataFrame, masks: dict) -> pd.DataFrame:
    rows = []
    for name, cls in (*LESION_NAMES.items(), ("any lesion on a no-stroke slice", 0)):
        if cls:
            absent = [r for r in records.itertuples() if not (masks[int(r.id)] == cls).any()]
            fp = [r for r in absent if getattr(r, f"strict_fp_{name}") > 0]
        else:
            absent = [r for r in records.itertuples() if not masks[int(r.id)].any()]
            fp = [r for r in absent if r.tp + r.fp > 0]
        rows.append({"class": name, "images without it": len(absent), "predicted anyway": len(fp),
                     "false-positive rate": len(fp) / len(absent) if absent else np.nan})
    return pd.DataFrame(rows)


def _grey(images_dir, image_id: int, shape) -> np.ndarray:
    from strokekit.data.readers import read_png

    path = Path(images_dir) / f"{image_id}.png" if images_dir else None
    return read_png(path) if path is not None and path.is_file() else np.zeros(shape, np.uint8)
