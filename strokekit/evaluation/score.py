"""What score.py does: score a submission against the truth (phase 1 labels, phase 2 masks), check one, report.

Phase 1: an id missing from the upload counts as wrong (scored as the opposite of the truth), as the
organisers said; ids not in the truth are listed and ignored. Phase 2: a mask that is missing or not in
the official format (24-bit RGB PNG, the truth's size, official colours) is scored as all background.
Every figure in the JSON names how it was averaged. Torch- and matplotlib-free: the PNGs score.py writes
beside the JSON are drawn by strokekit.report.figures.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from strokekit.errors import InputFileError
from strokekit.data import layout
from strokekit.evaluation import metrics, official
from strokekit.vocabulary import CLASS_NAMES
from strokekit.data.submission import (PHASE1_FILENAME, SubmissionError, check_phase2_mask, mask_files,
                                       read_labels, read_phase2_mask, validate_phase1, validate_phase2)
from strokekit.vocabulary import IMAGE_TYPES, image_type

QUALIFYING_BALANCED_ACCURACY = 0.75  # the specification's phase-1 bar


# --------------------------------------------------------------------------- ids and side files


def ids_from_folder(folder: os.PathLike | str) -> list[int]:
    """Image ids of a test folder: `<id>.png|.dcm` in its PNG/ or DICOM/ subfolder, or in the folder itself."""
    return sorted(_image_files(folder))


def _image_files(folder: os.PathLike | str) -> dict[int, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"{folder}: no such folder")
    subfolders = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    for candidate in (subfolders.get("png"), subfolders.get("dicom"), folder):
        if candidate is None:
            continue
        files = {int(p.stem): p for p in sorted(candidate.iterdir())
                 if p.suffix.lower() in (".png", ".dcm") and layout.image_id(p.stem) is not None}
        if files:
            return files
    raise InputFileError(f"{folder}: no <id>.png or <id>.dcm files in it, or in PNG/ or DICOM/")


def image_sizes_from_folder(folder: os.PathLike | str) -> dict[int, tuple[int, int] | None]:
    """{id: (width, height)} of a test folder's images from their headers (PNG, else DICOM Rows / Columns): the
    size each phase-2 mask must have. None where the header cannot be read (that mask's size is not checked)."""
    from strokekit.data.badinput import BadInputError
    from strokekit.data.readers import image_size

    sizes = {}
    for id_, path in _image_files(folder).items():
        try:
            if path.suffix.lower() == ".png":
                height, width = image_size(path)
            else:
                import pydicom

                ds = pydicom.dcmread(path, stop_before_pixels=True)
                height, width = int(ds.Rows), int(ds.Columns)
            sizes[id_] = (width, height)
        except (BadInputError, OSError, ValueError, TypeError, AttributeError, KeyError):
            sizes[id_] = None  # pydicom's errors on damaged headers are of these kinds
    return sizes


def read_probs_csv(path: os.PathLike | str) -> dict[int, float]:
    """{id: probability} from a CSV with columns image_id, prob (other columns ignored)."""
    if not Path(path).is_file():
        raise SubmissionError(path, ["file not found"])
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"image_id", "prob"} - set(reader.fieldnames or [])
        if missing:
            raise SubmissionError(path, [f"needs columns image_id, prob; missing {sorted(missing)} "
                                         f"(has {reader.fieldnames})"])
        try:
            return {int(row["image_id"]): float(row["prob"]) for row in reader}
        except (TypeError, ValueError) as err:
            raise SubmissionError(path, [f"line {reader.line_num}: not an integer image_id and a number prob "
                                         f"({err})"]) from None


def submission_name(pred: os.PathLike | str) -> str:
    """Name for the score files: the submission folder's name (also for submissions/<name>/asama1.txt)."""
    pred = Path(pred).resolve()
    return pred.parent.name if pred.is_file() and pred.name == PHASE1_FILENAME else pred.stem


# --------------------------------------------------------------------------- phase 1


def score_phase1(pred_path: os.PathLike | str, truth_path: os.PathLike | str,
                 probs_path: os.PathLike | str | None = None, n_boot: int = 1000,
                 patients: dict[int, str] | None = None) -> dict:
    """Confusion matrix and threshold metrics of an asama1.txt; ROC AUC from a probs CSV if given; 95 %
    bootstrap intervals of each (`n_boot` resamples of the scored images, or with `patients` (image id ->
    patient) of whole patients, as many as the test set holds; 0 = none)."""
    truth = read_labels(truth_path)
    pred = read_labels(pred_path)
    try:
        validate_phase1(pred_path, truth)
        format_problems = []
    except SubmissionError as err:
        format_problems = err.problems
    ids = sorted(truth)
    missing = [i for i in ids if i not in pred]
    y = np.array([truth[i] for i in ids])
    # a missing id is wrong whatever the truth: score it as the opposite label
    answered = np.array([pred.get(i, 1 - truth[i]) for i in ids])
    counts = metrics.confusion_counts(y, answered)
    result = {"phase": 1, "pred": str(pred_path), "truth": str(truth_path), "n_images": len(ids),
              "n_positive": int(y.sum()), "missing_ids": missing,
              "extra_ids": sorted(set(pred) - set(truth)), "format_problems": format_problems,
              "confusion": counts, **metrics.metrics_from_counts(**counts), "auc": None, "auc_n_images": 0}
    result["qualifies"] = result["balanced_accuracy"] >= QUALIFYING_BALANCED_ACCURACY
    probs = None
    if probs_path is not None:
        probs = read_probs_csv(probs_path)
        result.update(_auc_from_probs(truth, probs))
    if n_boot:
        from strokekit.evaluation.bootstrap import phase1_intervals

        complete = probs is not None and all(i in probs for i in ids)  # AUC's interval only over every image
        result["intervals"] = phase1_intervals(y, answered, [probs[i] for i in ids] if complete else None,
                                               n_boot=n_boot, patients=_patients(patients, ids))
    return result


def _auc_from_probs(truth: dict[int, int], probs: dict[int, float]) -> dict:
    ids = [i for i in sorted(truth) if i in probs]
    auc = metrics.roc_auc([truth[i] for i in ids], [probs[i] for i in ids]) if ids else float("nan")
    return {"auc": auc, "auc_n_images": len(ids),
            "auc_missing_ids": [i for i in sorted(truth) if i not in probs]}


def phase1_table(result: dict) -> str:
    c = result["confusion"]
    lines = [f"phase 1: {result['n_images']} images ({result['n_positive']} stroke), "
             f"{len(result['missing_ids'])} missing (scored wrong), {len(result['extra_ids'])} extra (ignored)",
             "",
             "               pred 0   pred 1",
             f"  truth 0  {c['tn']:>8} {c['fp']:>8}",
             f"  truth 1  {c['fn']:>8} {c['tp']:>8}",
             ""]
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy"):
        lines.append(f"  {key:<18} {result[key]:.4f}")
    lines[-1] += "   (the specification's metric; 0.75 qualified)"
    if result["auc"] is not None:
        lines.append(f"  {'auc':<18} {result['auc']:.4f}   (from probs, {result['auc_n_images']} images)")
    for problem in result["format_problems"]:
        lines.append(f"  format problem: {problem}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- phase 2


def load_prediction(pred_dir: Path, id_: int, shape: tuple[int, int]) -> tuple[np.ndarray, str]:
    """(class map, status) of one submitted mask; missing or malformed -> all background, as officially."""
    path = pred_dir / f"{id_}.png"
    if not path.is_file():
        return np.zeros(shape, np.uint8), "missing"
    problems = check_phase2_mask(path, size=(shape[1], shape[0]))
    if problems:
        return np.zeros(shape, np.uint8), "invalid: " + "; ".join(problems)
    return read_phase2_mask(path), "ok"


def score_image(pred: np.ndarray, true: np.ndarray, se_size: int = 3, region_rule: bool = True,
                empty: float = 1.0) -> dict:
    """Official tolerant counts and scores, strict per-class counts and image types of one image."""
    record = official.official_scores(pred, true, se_size, region_rule, empty)
    strict = metrics.seg_stats(pred, true)
    for c in (1, 2):
        name = CLASS_NAMES[c]
        record.update({f"strict_{k}_{name}": int(getattr(strict, k)[0, c]) for k in ("tp", "fp", "fn")})
    record.update(type_true=image_type(true), type_pred=image_type(pred))
    return record


def score_phase2(pred_dir: os.PathLike | str, truth_dir: os.PathLike | str, se_size: int = 3,
                 region_rule: bool = True, empty: float = 1.0, n_boot: int = 1000,
                 patients: dict[int, str] | None = None) -> dict:
    """Score a folder of `<id>.png` masks against a folder of true MASK PNGs (every truth id is scored), with
    95 % bootstrap intervals of the headline figures (`n_boot` resamples of the scored images, or with
    `patients` of whole patients; 0 = none)."""
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    truth_files = mask_files(truth_dir)
    if not truth_files:
        raise InputFileError(f"{truth_dir}: no <id>.png truth masks")
    records, stats = [], []
    for id_, path in truth_files.items():
        true = read_phase2_mask(path, strict=False)  # mirrors may store masks as RGBA/grey
        pred, status = load_prediction(pred_dir, id_, true.shape)
        records.append({"id": id_, "status": status, **score_image(pred, true, se_size, region_rule, empty)})
        stats.append(metrics.seg_stats(pred, true))
    strict = metrics.SegStats(*(np.concatenate(parts) for parts in zip(*stats)))
    intervals = {}
    if n_boot:
        from strokekit.evaluation.bootstrap import phase2_intervals

        intervals = phase2_intervals([r["iou"] for r in records], [r["dice"] for r in records], strict,
                                     n_boot=n_boot, patients=_patients(patients, [r["id"] for r in records]))
    return {"phase": 2, "pred": str(pred_dir), "truth": str(truth_dir), "n_images": len(records),
            "se_size": se_size, "rule": "region" if region_rule else "pixel",
            "empty_image_score": empty,
            "missing_ids": [r["id"] for r in records if r["status"] == "missing"],
            "invalid": {str(r["id"]): r["status"] for r in records if r["status"].startswith("invalid")},
            "extra_ids": sorted(set(mask_files(pred_dir)) - set(truth_files)) if pred_dir.is_dir() else [],
            "official": _official_summary(records, empty),
            "strict": {"empty_rule": "class empty in truth and prediction -> NaN, left out of means",
                       **metrics.seg_scores(strict)},
            **_type_summary(records),
            "intervals": intervals,
            "per_image": records}


def _patients(patients: dict[int, str] | None, ids: list[int]):
    """bootstrap.Patients for the scored `ids`: every patient among them drawn per resample."""
    if patients is None:
        return None
    from strokekit.evaluation.bootstrap import Patients

    found = Patients.of(patients, ids, 1)
    return Patients(found.groups, len(set(found.groups)))


def intervals_table(result: dict) -> str:
    """The result's 95 % bootstrap intervals, one line per figure ('' when none were computed)."""
    from strokekit.evaluation.bootstrap import format_interval

    rows = [(name, value) for name, value in (result.get("intervals") or {}).items()
            if np.isfinite(value.get("estimate", np.nan))]
    if not rows:
        return ""
    width = max(len(name) for name, _ in rows)
    first = rows[0][1]
    lines = [f"95 % intervals (bootstrap over the scored {'patients' if first.get('patients') else 'images'}):"]
    lines += [f"  {name:<{width}}  {format_interval(value)}" for name, value in rows]
    return "\n".join(lines)


def _official_summary(records: list[dict], empty: float) -> dict:
    counts = {k: np.array([r[k] for r in records]) for k in ("tp", "fp", "fn", "tn")}
    totals = {k: int(v.sum()) for k, v in counts.items()}
    per_image = official.tolerant_scores(*counts.values(), empty=empty)
    return {"mean_imagewise": {k: float(metrics.nanmean(v, axis=0)) for k, v in per_image.items()},
            "micro": {**totals, **official.tolerant_scores(**totals, empty=empty)}}


def _type_summary(records: list[dict]) -> dict:
    confusion = {t: {p: 0 for p in IMAGE_TYPES} for t in IMAGE_TYPES}
    for r in records:
        confusion[r["type_true"]][r["type_pred"]] += 1
    right = sum(confusion[t][t] for t in IMAGE_TYPES)
    return {"type_accuracy": right / len(records), "type_confusion_true_by_pred": confusion}


def phase2_table(result: dict, worst: int = 5) -> str:
    o, s = result["official"], result["strict"]
    lines = [f"phase 2: {result['n_images']} images, {len(result['missing_ids'])} missing and "
             f"{len(result['invalid'])} invalid (scored as background), {len(result['extra_ids'])} extra; "
             f"tolerant counting with a {result['se_size']}x{result['se_size']} element, {result['rule']} rule",
             "", f"  {'official (tolerant)':<28} {'IoU':>7} {'Dice':>7} {'prec':>7} {'recall':>7}"]
    for name, key in (("mean over images", "mean_imagewise"), ("micro (summed counts)", "micro")):
        v = o[key]
        lines.append(f"  {name:<28} {v['iou']:>7.4f} {v['dice']:>7.4f} {v['precision']:>7.4f} {v['recall']:>7.4f}")
    lines += ["", f"  {'strict per class':<28} {'IoU':>7} {'Dice':>7}"]
    for reduction in ("micro", "macro_imagewise"):
        for cls in ("ischemic", "hemorrhagic", "lesion_mean"):
            lines.append(f"  {reduction + ' ' + cls:<28} {s[f'iou_{reduction}_{cls}']:>7.4f} "
                         f"{s[f'dice_{reduction}_{cls}']:>7.4f}")
    lines += ["", f"  image type accuracy (set of classes present): {result['type_accuracy']:.4f}", "",
              "  worst images (official IoU):"]
    for r in worst_records(result["per_image"], worst):
        lines.append(f"    {r['id']:>6}  IoU {r['iou']:.3f}  TP {r['tp']} FP {r['fp']} FN {r['fn']}  "
                     f"{r['type_true']} -> {r['type_pred']}  {r['status']}")
    return "\n".join(lines)


def worst_records(records: list[dict], k: int) -> list[dict]:
    """The k images with the lowest official IoU (NaN last)."""
    return sorted(records, key=lambda r: (np.isnan(r["iou"]), r["iou"]))[:k]


# --------------------------------------------------------------------------- checking


def check_submission(target: os.PathLike | str, expected_ids: Iterable[int] | None = None,
                     size: tuple[int, int] | Mapping[int, tuple[int, int] | None] = (512, 512)) -> list[str]:
    """Validate an asama1.txt, a phase-2 mask folder, or a folder holding either; returns what was checked.

    size: (width, height) every mask must have, or {id: (width, height)} per image (image_sizes_from_folder:
    the test images are not always 512x512).

    Raises SubmissionError listing every problem found.
    """
    target = Path(target)
    expected = None if expected_ids is None else sorted(int(i) for i in expected_ids)
    if target.is_file():
        labels = validate_phase1(target, expected)
        return [f"{target}: valid phase-1 file, {len(labels)} ids ({sum(labels.values())} stroke)"]
    if not target.is_dir():
        raise SubmissionError(target, ["no such file or folder"])
    done = []
    if (target / PHASE1_FILENAME).is_file():
        done += check_submission(target / PHASE1_FILENAME, expected, size)
    if any(target.glob("*.png")):
        files = validate_phase2(target, expected, size)
        done.append(f"{target}: valid phase-2 folder, {len(files)} masks")
    if not done:
        raise SubmissionError(target, [f"neither {PHASE1_FILENAME} nor <id>.png masks in it"])
    return done
