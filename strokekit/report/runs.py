"""report.py's page for runs and ensembles: one static HTML file per call, every figure embedded.

Per source (a run folder or an ensemble spec; see evaluate.py): training curves per fold, OOF metrics per
fold with mean ± std, for an ensemble its members against the blend (members.py) and the 95 % bootstrap
intervals ensemble.py recorded; for classifiers the confusion matrix at the decision threshold, ROC and
precision-recall curves, OOF probability histograms and calibration, the metrics-against-threshold curve;
for segmenters the image-type confusion and the post-processing search surfaces; then per-class results
by lesion-size bin, the false-positive rate on no-stroke slices, and the worst OOF cases (galleries.py:
classifiers' false negatives and false positives apart, seg cases cropped around the lesion). The same page
for a scored submission is `write_submission_report` (submission.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from strokekit.ensembling import merged_oof
from strokekit.evaluation import metrics
from strokekit.progress import bar
from strokekit.report import figures as figs, galleries
from strokekit.report import members as member_table
from strokekit.data.index import build_index
from strokekit.data.readers import load_class_map, read_png
from strokekit.report.evaluate import (SIZE_BINS, ReportError, Source, classifier_fold_table, classifier_oof,
                                       classifier_size_bins, data_root, find_sources, fold_logs, mean_std_rows,
                                       predicted_map, seg_fold_table, seg_oof, seg_records, seg_size_bins,
                                       type_confusion)
from strokekit.report.html import HtmlReport, intervals_frame
from strokekit.vocabulary import IMAGE_TYPES, LESION_NAMES

SURFACE_GRID = {"threshold": [None, 0.3, 0.5, 0.7], "min_area": [0, 16, 64, 256], "closing": [0],
                "keep_largest": [False], "overlap": ["argmax"]}
POSITIVE = {"stroke": ("no stroke", "stroke"), "type": ("ischemic", "hemorrhagic")}


class DataContext:
    """The data set's index and true masks, read once per data root."""

    def __init__(self, root: Path):
        self.root = root
        self.rows = build_index(root)[0].set_index("image_id")
        self._masks: dict[int, np.ndarray | None] = {}

    def row(self, image_id: int) -> dict:
        return {"image_id": int(image_id), **self.rows.loc[int(image_id)].to_dict()}

    def mask(self, image_id: int) -> np.ndarray | None:
        """True class map (MASK or decoded OVERLAY); all background for a no-stroke slice; None if unlabelled."""
        if image_id not in self._masks:
            row = self.row(image_id)
            class_map = load_class_map(row)
            if class_map is None and row["class_name"] == "no_stroke" and row.get("png"):
                class_map = np.zeros(read_png(row["png"]).shape, np.uint8)
            self._masks[image_id] = class_map
        return self._masks[image_id]

    def grey(self, image_id: int, shape) -> np.ndarray:
        row = self.row(image_id)
        return read_png(row["png"]) if row.get("png") else np.zeros(shape, np.uint8)

    def negatives(self, ids) -> set[int]:
        ids = [int(i) for i in ids]
        return {i for i in ids if self.rows.loc[i, "class_name"] == "no_stroke"}


def write_report(paths: list[str | os.PathLike], out: str | os.PathLike | None = None,
                 data: str | os.PathLike | None = None, worst: int = 8, size_bins=SIZE_BINS) -> Path:
    """Write the report of every run / ensemble named by `paths` into one HTML file; returns its path."""
    sources = find_sources(paths)
    out = Path(out) if out else default_out(paths, sources)
    title = sources[0].name if len(sources) == 1 else f"{len(sources)} runs / ensembles"
    page = HtmlReport(f"strokekit report: {title}")
    contexts: dict[Path, DataContext] = {}
    for source in bar(sources, desc="report", unit="run"):
        root = data_root(source, data)
        context = contexts.setdefault(root.resolve(), DataContext(root))
        for run in source.runs if source.kind == "run" else ():
            merged_oof.refresh(run)  # runs/<config>/oof.csv | oof.npz beside the folds' (merged_oof.py)
        if source.task == "seg":
            seg_sections(page, source, context, worst, size_bins)
        else:
            classifier_sections(page, source, context, worst, size_bins)
    return page.write(out)


def default_out(paths, sources: list[Source]) -> Path:
    if len(sources) == 1 and sources[0].kind == "run":
        return sources[0].runs[0] / "report.html"
    if len(sources) == 1:
        return sources[0].spec_path.with_suffix(".report.html")
    return Path("report.html")


def header(page: HtmlReport, source: Source, lines: list[str]) -> None:
    page.section(f"{source.name} ({source.kind}, task {source.task})")
    members = ", ".join(f"{r.name}" for r in source.runs)
    page.text(f"{'members' if source.kind == 'ensemble' else 'run'}: {members}; model {source.cfg.get('model')}"
              + (f", encoder {source.cfg.get('encoder')}" if source.task == "seg" else "")
              + f", image size {source.cfg.get('img_size')}")
    for line in lines:
        page.text(line, note=True)
    page.section("training curves per fold", level=3)
    logs = fold_logs(source)
    metric = source.cfg.get("metric") or ("dice_macro_imagewise_lesion_mean" if source.task == "seg" else "auc")
    page.figure(figs.training_curves(logs, metric), f"log.csv of every fold: loss, validation {metric} (thin) "
                "with its moving average over 5 epochs (thick) and the best epoch starred, learning rate, epoch time",
                alt="training curves")


def intervals_section(page: HtmlReport, intervals: dict | None) -> None:
    """ensemble.py's 95 % bootstrap intervals of the spec's OOF figures (resamples of the test set's size)."""
    if not intervals:
        return
    page.section("95 % bootstrap intervals (ensemble.py)", level=3)
    first = next(iter(intervals.values()))
    page.table(intervals_frame(intervals),
               caption=f"OOF figures with their 95 % interval over {first.get('n_boot')} bootstrap resamples of "
                       f"{first.get('size')} images (the test set's size): how far the test score may move by "
                       "chance alone")


def members_section(page: HtmlReport, table: pd.DataFrame, metric: str) -> None:
    page.section("members against the blend", level=3)
    shown = table.rename(columns={"oof": f"OOF {metric}", "loo_delta": "blend without it − blend"})
    page.table(shown, caption="each run alone, its weight in the blend and whether --top-runs kept it; "
                              "leave-one-out: the blend's OOF figure without the member, minus the blend's "
                              "(negative: the member helps)")
    page.figure(figs.members_and_blend(member_table.chart_rows(table), metric), alt="members and blend")


# --------------------------------------------------------------------------- classifiers


def classifier_sections(page: HtmlReport, source: Source, context: DataContext, worst: int, size_bins) -> None:
    oof, decision = classifier_oof(source)
    t = decision["value"]
    y, p, folds = oof["target"].to_numpy(), oof["prob"].to_numpy(), oof["fold"].to_numpy()
    neg_name, pos_name = POSITIVE[source.task]
    header(page, source, [f"{len(oof)} OOF images ({int(y.sum())} {pos_name}); decision threshold {t:.4f}: "
                          f"{decision['how']}"])
    page.section("OOF metrics per fold", level=3)
    page.table(mean_std_rows(classifier_fold_table(oof, t)),
               caption=f"AUC; recall, precision, specificity, F1, balanced accuracy at threshold {t:.4f}; "
                       "mean ± std over folds (ddof = 1)")
    if source.kind == "ensemble":
        members_section(page, *member_table.classifier_members(source))
        intervals_section(page, source.spec["oof"].get("intervals"))
    page.section("confusion matrix, ROC and precision-recall", level=3)
    c = metrics.confusion_counts(y, p, t)
    page.figure(figs.confusion([[c["tn"], c["fp"]], [c["fn"], c["tp"]]], [neg_name, pos_name],
                               f"pooled OOF at {t:.3f}"), "confusion matrix (pooled OOF)", alt="confusion matrix")
    page.figure(figs.roc_pr(y, p, folds), "ROC and precision-recall per fold and pooled", alt="ROC and PR curves")
    page.section("OOF probabilities and calibration", level=3)
    page.figure(figs.probability_histograms(y, p, t, (neg_name, pos_name)),
                "left: the OOF probability of each image by its true class; right: the reliability diagram",
                alt="probability histograms and calibration")
    page.section("threshold search", level=3)
    page.figure(figs.threshold_curve(y, p, t, decision.get("plateau"), f"{source.name}: metrics against threshold"),
                "the threshold-search surface: each metric at every OOF score used as threshold",
                alt="threshold surface")
    page.section("per class by lesion size", level=3)
    stroke_ids = oof.loc[y == 1 if source.task == "stroke" else np.ones(len(oof), bool), "image_id"]
    masks = {int(i): m for i in stroke_ids if (m := context.mask(int(i))) is not None and m.any()}
    bins = classifier_size_bins(oof, t, masks, size_bins)
    page.table(bins, caption="share of slices classified right, by the size of each lesion class in the true mask "
                             "(share of the slice); a slice with both classes counts in both")
    page.figure(figs.size_bins(bins, "correct", "classified right, by lesion class and size"), alt="size bins")
    page.section("false positives on no-stroke slices", level=3)
    if source.task == "stroke":
        neg = oof[oof["target"] == 0]
        rate = neg.assign(fp=neg["prob"] >= t).groupby("fold")["fp"].agg(["size", "mean"]).reset_index()
        rate.columns = ["fold", "no-stroke slices", "false-positive rate"]
        page.table(mean_std_rows(rate), caption=f"no-stroke slices called stroke at {t:.4f} (= 1 - specificity)")
    else:
        page.text("not applicable: the type task sees stroke slices only", note=True)
    page.section(f"worst {worst} OOF cases", level=3)
    for target, kind, called in ((1, "false negatives", neg_name), (0, "false positives", pos_name)):
        wrong = oof[(oof["target"] == target) & ((oof["prob"] >= t) != bool(target))]
        wrong = wrong.assign(error=np.abs(target - wrong["prob"])).sort_values("error", ascending=False)
        if wrong.empty:
            page.text(f"{kind}: none at threshold {t:.4f}", note=True)
            continue
        cases = []
        for r in wrong.head(worst).itertuples():
            truth = context.mask(int(r.image_id))
            grey = context.grey(int(r.image_id), truth.shape if truth is not None else (64, 64))
            cases.append({"grey": grey, "truth": truth,
                          "caption": f"image {r.image_id}, fold {r.fold}\np({pos_name}) = {r.prob:.3f}"})
        page.figure(galleries.error_tiles(cases, f"{kind}: true {pos_name if target else neg_name}, called "
                                                 f"{called} ({len(wrong)} in all)"),
                    f"{kind}, most confident first (of {len(wrong)}); true lesions outlined (ischemia light blue, "
                    "hemorrhage green)", alt=kind)


# --------------------------------------------------------------------------- segmentation


def seg_sections(page: HtmlReport, source: Source, context: DataContext, worst: int, size_bins) -> None:
    oof, post = seg_oof(source)
    ids = [int(i) for i in oof["image_id"]]
    masks = {i: context.mask(i) for i in bar(ids, desc=f"{source.name}: masks", unit="image")}
    unlabelled = [i for i, m in masks.items() if m is None]
    if unlabelled:
        raise ReportError(f"{source.name}: OOF images without MASK / OVERLAY in {context.root}: {unlabelled[:5]}")
    negatives = context.negatives(ids)
    records = seg_records(oof, masks, post, negatives)
    how = "the spec's post-processing" if post else "argmax of the OOF probabilities (as train.py validates)"
    header(page, source, [f"{len(ids)} OOF images ({len(negatives)} no-stroke); masks decoded by {how}, at each "
                          "true mask's resolution; strict per-image Dice (a class empty in truth and prediction "
                          "is left out)"])
    page.section("OOF metrics per fold", level=3)
    page.table(mean_std_rows(seg_fold_table(records)),
               caption="Dice per image on lesion slices (mean), strict IoU summed over lesion pixels (micro), "
                       "false-positive rate on no-stroke slices; mean ± std over folds (ddof = 1)")
    if source.kind == "ensemble":
        members_section(page, *member_table.seg_members(source, masks, negatives))
        interval = source.spec["oof"].get("postprocessed_interval")
        metric = str(source.spec["oof"].get("metric", "dice")).split()[0]
        intervals_section(page, {f"{metric} post-processed": interval} if interval else None)
    page.section("OOF probabilities per lesion class", level=3)
    page.figure(figs.lesion_probability_histograms(lesion_peaks(oof, masks)),
                "each OOF image's highest probability of the class (at the OOF resolution), by whether its true "
                "mask holds the class", alt="lesion probability histograms")
    page.section("image-type confusion", level=3)
    page.figure(figs.confusion(type_confusion(records), list(IMAGE_TYPES), "lesion classes present"),
                "the set of lesion classes in the true and the predicted mask", alt="type confusion matrix")
    page.section("threshold search", level=3)
    table, chosen = seg_search_table(source, oof, masks)
    page.figure(figs.seg_surfaces(table, chosen, "best OOF Dice over the other settings"),
                "the post-processing search surfaces" + (" (red: the spec's choice)" if chosen else
                                                         " (a small grid on this run's OOF)"), alt="threshold surface")
    page.section("per class by lesion size", level=3)
    bins = seg_size_bins(records[~records["negative"]], size_bins)
    page.table(bins, caption="per lesion class and size (share of the slice it covers): mean per-image Dice and "
                             "the share of lesions the prediction touches")
    page.figure(figs.size_bins(bins, "dice", "Dice by lesion class and size"), alt="size bins")
    page.section("false positives on no-stroke slices", level=3)
    neg = records[records["negative"]]
    if len(neg):
        rate = neg.assign(fp=neg["pred_lesion_pixels"] > 0).groupby("fold")["fp"].agg(["size", "mean"]).reset_index()
        rate.columns = ["fold", "no-stroke slices", "false-positive rate"]
        page.table(mean_std_rows(rate), caption="no-stroke slices with any predicted lesion pixel")
    else:
        page.text("the OOF holds no no-stroke slice: train with seg_val_negatives: true to measure it", note=True)
    page.section(f"worst {worst} OOF cases", level=3)
    page.figure(galleries.seg_gallery(seg_worst_cases(records, oof, masks, post, context, worst)),
                "lowest per-image Dice on lesion slices, and no-stroke slices with the most predicted lesion; "
                "the whole slice with its TP / FP / FN map (crop framed in white dashes), then the crop: CT, "
                "truth, prediction and strict per-pixel outcome", alt="worst cases")


def lesion_peaks(oof: dict, masks: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per lesion class: the highest OOF probability per image, (images holding the class, images without)."""
    out = {}
    for name, cls in LESION_NAMES.items():
        peak = np.asarray(oof["probs"][:, cls], dtype=np.float32).reshape(len(oof["image_id"]), -1).max(1)
        has = np.array([bool((masks[int(i)] == cls).any()) for i in oof["image_id"]])
        out[name] = (peak[has], peak[~has])
    return out


def seg_search_table(source: Source, oof: dict, masks: dict) -> tuple[pd.DataFrame, dict | None]:
    if source.spec is not None:
        name = source.spec.get("postprocess_search", {}).get("table")
        path = source.spec_path.parent / name if name else None
        if path is not None and path.is_file():
            return pd.read_csv(path), source.spec["postprocess"]
    from strokekit.ensembling.seg_search import search_postprocess

    lesion = [i for i, m in enumerate(oof["image_id"]) if masks[int(m)].any()]
    part = {"image_id": oof["image_id"][lesion], "probs": oof["probs"][lesion]}
    return search_postprocess(part, masks, SURFACE_GRID, metric="dice"), None


def seg_worst_cases(records: pd.DataFrame, oof: dict, masks: dict, post, context: DataContext, k: int) -> list[dict]:
    """Lesion slices with the lowest Dice, plus up to a quarter no-stroke slices with the most predicted lesion."""
    negatives = records[records["negative"] & (records["pred_lesion_pixels"] > 0)]
    negatives = negatives.sort_values("pred_lesion_pixels", ascending=False).head(k // 4)
    lesion = records[~records["negative"]].sort_values("dice_lesion_mean", na_position="first")
    order = pd.concat([lesion.head(k - len(negatives)), negatives])
    position = {int(i): n for n, i in enumerate(oof["image_id"])}
    cases = []
    for r in order.itertuples():
        truth = masks[r.image_id]
        pred = predicted_map(oof["probs"][position[r.image_id]], truth.shape, post)
        score = f"no-stroke, {r.pred_lesion_pixels} px" if r.negative else f"Dice {r.dice_lesion_mean:.2f}"
        cases.append({"grey": context.grey(r.image_id, truth.shape), "truth": truth, "pred": pred,
                      "caption": f"image {r.image_id}, fold {r.fold}\n{score}\ntruth: {r.type_true}\n"
                                 f"predicted: {r.type_pred}"})
    return cases
