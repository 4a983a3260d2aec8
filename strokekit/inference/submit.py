"""What infer.py does: find the test images, run an ensemble spec on them, write and validate a submission.

Phase 1: `asama1.txt` (submission.write_phase1) + `probs.csv` (image_id, prob, label, one column per
member). Phase 2: one `<id>.png` per image at the image's own size + `types.csv` (per-image stroke type)
and, when asked, `probs.npz` (float16 probabilities). The side files are not `<id>.png`, so
submission.validate_phase2 ignores them (it reads `*.png` only); upload the PNGs. infer.py writes a
`manifest.json` beside them (strokekit/manifest.py: provenance and every file's sha256).
A submission folder is never overwritten without `overwrite=True`, and only the files a submission
consists of are removed then.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from strokekit.atomic import write_atomic
from strokekit.data import layout
from strokekit.data.check import InputCheck, apply_policy, check_files
from strokekit.data.index import DataLayoutError, build_index
from strokekit.postprocess.decide import phase1_labels, phase2_class_map, type_class, type_decision
from strokekit.config.postprocess import normalise_spec
from strokekit.ensembling.seg_classifier import seg_classifier_prob
from strokekit.ensembling.spec import SpecError
from strokekit.errors import OutputExistsError
from strokekit.locks import hold_folder
from strokekit.data.submission import (PHASE1_FILENAME, mask_files, validate_phase2, write_phase1,
                                  write_phase2_mask)
from strokekit.vocabulary import image_type

SIDE_FILES = ("probs.csv", "types.csv", "probs.npz", "manifest.json", "skipped.csv", PHASE1_FILENAME)
DEFAULT_SPLIT = {1: "test1", 2: "test2"}


# --------------------------------------------------------------------------- test images


def find_test_rows(data: str | Path, split: str | None = None, phase: int = 1) -> tuple[pd.DataFrame, str]:
    """(rows with image_id, png, dicom, split) of the test images, and the split they came from.

    `data` is a data root (any layout build_index knows; `split` picks test1 / test2, default by phase)
    or one test folder (YARISMA_1, Test Veri Seti_1 ...) holding PNG/ and/or DICOM/.
    """
    data = Path(data)
    if not data.is_dir():
        raise DataLayoutError(f"test data folder {data} does not exist")
    split = split or DEFAULT_SPLIT[phase]
    try:
        index, _ = build_index(data)
    except DataLayoutError:
        index = None  # a test folder alone: build_index needs the data root above it
    if index is None:
        rows = scan_test_folder(data)
    elif (index["split"] == split).any():
        rows = index[index["split"] == split]
    else:
        raise DataLayoutError(f"{data}: no {split} images (splits found: {sorted(index['split'].unique())}); "
                              "pass --split, or point --data at the test folder itself")
    return rows.sort_values("image_id").reset_index(drop=True), split


def scan_test_folder(folder: Path) -> pd.DataFrame:
    """Image files of one test folder: `<id>.png` / `<id>.dcm` in its PNG/ and DICOM/ subfolders (or itself)."""
    found: dict[int, dict] = {}
    subfolders = [p for p in folder.iterdir() if p.is_dir() and layout.modality_of(p.name) in ("png", "dicom")]
    for sub in subfolders or [folder]:
        for path in sorted(sub.iterdir()):
            kind = {".png": "png", ".dcm": "dicom"}.get(path.suffix.lower())
            in_place = not subfolders or layout.modality_of(sub.name) == kind
            if kind and layout.image_id(path.stem) is not None and in_place:  # ASCII-digit ids only
                found.setdefault(int(path.stem), {"image_id": int(path.stem), "png": "", "dicom": ""})[kind] = str(path)
    if not found:
        raise DataLayoutError(f"{folder}: no <id>.png or <id>.dcm in it or in PNG/ / DICOM/ subfolders")
    rows = pd.DataFrame(list(found.values()))
    rows["split"] = layout.test_split_of(folder.name) or "test"
    return rows


def check_test_rows(rows: pd.DataFrame, predictors, policy: str = "fail") -> tuple[pd.DataFrame, InputCheck]:
    """Check the image files the predictors' members read (PNG and / or DICOM) from their headers; `fail`
    raises at the first bad one, `skip` returns the rows without the bad images."""
    reads = {(m.cfg["image_source"], tuple(m.cfg.get("hu_range") or ()) if m.cfg["image_source"] == "dicom" else ())
             for p in predictors if p is not None for m in p.members}  # each member's Hounsfield range
    check = InputCheck(n_images=len(rows))
    for source, hu_range in sorted(reads):
        part = check_files(rows, source, hu_range=hu_range or None)
        check.bad += [bad for bad in part.bad if bad not in check.bad]
        check.warnings += part.warnings
        check.seconds += part.seconds
    kept = apply_policy(rows, check, policy)
    if kept.empty:
        raise DataLayoutError(f"no readable test image is left ({len(check.bad_ids)} bad)")
    return kept, check


# --------------------------------------------------------------------------- output folder


def prepare_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Create the submission folder; an existing one with submission files needs overwrite=True,
    which removes only those files (`<id>.png`, asama1.txt and the side files), nothing else. The folder is
    locked (`<parent>/.<name>.lock`, strokekit/locks.py) until the process ends: a second run writing there
    meanwhile is refused naming this one (FolderLockedError)."""
    out = Path(out)
    existing = [p for p in out.glob("*") if p.name in SIDE_FILES] + list(mask_files(out).values()) \
        if out.is_dir() else []
    if existing and not overwrite:
        raise OutputExistsError(f"{out} already holds a submission ({len(existing)} files); pass --overwrite "
                                "to replace it, or choose another --out")
    hold_folder(out, what="infer.py run", beside=True)
    for path in existing:
        path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------- phase 1


def image_probs(predictor, rows: pd.DataFrame, target: str) -> dict:
    """{image_id, prob, members?} of a classifier spec, or of a seg spec's segmentation classifier."""
    if predictor.task != "seg":
        return predictor.predict_classifier(rows)
    clf = predictor.spec.get("seg_classifier")
    if not clf or clf["target"] != target:
        raise SpecError(f"{predictor.spec['path']}: a seg spec gives {target} decisions only with a "
                        f"seg_classifier for {target} (ensemble.py --seg-classifier {target})")
    ids, probs = [], []
    for image_id, p in predictor.iter_seg(rows):
        ids.append(image_id)
        probs.append(seg_classifier_prob(p, clf))
    return {"image_id": np.asarray(ids, dtype=np.int64), "prob": np.asarray(probs)}


def decision_threshold(spec: dict) -> float:
    return float(spec["threshold"]["value"] if spec["task"] != "seg" else
                 spec["seg_classifier"]["threshold"]["threshold"])


def run_phase1(predictor, rows: pd.DataFrame, out: Path) -> dict:
    """Write asama1.txt (validated against the test ids) and probs.csv; returns what was decided."""
    result = image_probs(predictor, rows, "stroke")
    threshold = decision_threshold(predictor.spec)
    labels = phase1_labels(result["prob"], threshold)
    write_phase1(out / PHASE1_FILENAME, result["image_id"], labels, expected_ids=rows["image_id"].tolist())
    table = pd.DataFrame({"image_id": result["image_id"], "prob": result["prob"], "label": labels})
    for name, member in zip([m["name"] for m in predictor.spec["members"]], result.get("members", [])):
        table[f"prob:{name}"] = member
    write_atomic(out / "probs.csv", lambda f: table.to_csv(f, index=False), text=True)
    return {"threshold": threshold, "n_stroke": int(labels.sum())}


# --------------------------------------------------------------------------- phase 2


def needs_gate(seg_spec: dict) -> bool:
    """Whether a seg spec's post-processing gates its classes on an image-level P(stroke)."""
    return normalise_spec(seg_spec.get("postprocess"))["gate"] is not None


def gate_kind(seg_spec: dict) -> str:
    """'stroke' (both classes gated on P(stroke)) or 'type' (each class on its type probability)."""
    return (seg_spec.get("postprocess_search") or {}).get("gate_kind") or "stroke"


def require_gate(predictor, gate_predictor) -> None:
    """SpecError when the seg spec is gated and no ensemble of the gate's task gives its probabilities."""
    if not needs_gate(predictor.spec):
        return
    kind = gate_kind(predictor.spec)
    if gate_predictor is None or gate_predictor.task != kind:
        sources = (predictor.spec.get("postprocess_search") or {}).get("gate_source")
        got = "" if gate_predictor is None else f"; {gate_predictor.spec['path']} is a {gate_predictor.task} spec"
        raise SpecError(f"{predictor.spec['path']}: its post-processing gates the lesion classes on the "
                        f"{kind} classifier's probabilities (tuned on the OOF of {sources or 'a ' + kind + ' run'})"
                        f"; pass a {kind} spec or model folder over those runs with --gate-ensemble{got}")


def gate_probs(predictor, gate_predictor, rows: pd.DataFrame) -> dict:
    """{image_id: the gate's image-level probability} when the seg spec is gated, else {}: P(stroke) for both
    classes, or {ischemic: 1 - P(hemorrhagic), hemorrhagic: P(hemorrhagic)} from a type ensemble."""
    require_gate(predictor, gate_predictor)
    if not needs_gate(predictor.spec):
        return {}
    result = image_probs(gate_predictor, rows, gate_predictor.task)
    return {int(i): gate_value(p, gate_predictor.task) for i, p in zip(result["image_id"], result["prob"])}


def gate_value(prob: float, kind: str):
    """What phase2_class_map's image_prob takes for a gate of `kind`."""
    return float(prob) if kind == "stroke" else {"ischemic": 1.0 - float(prob), "hemorrhagic": float(prob)}


def run_phase2(predictor, rows: pd.DataFrame, out: Path, type_predictor=None, fallback: bool = True,
               fraction: float = 0.5, max_area: float = 0.02, save_probs: bool = False,
               gate_predictor=None) -> dict:
    """Write one validated `<id>.png` per image, types.csv and (if asked) probs.npz. A gated seg spec needs
    `gate_predictor`, the stroke ensemble whose P(stroke) the gate compares with its thresholds."""
    types = type_probs(predictor, type_predictor, rows)
    gate = gate_probs(predictor, gate_predictor, rows)
    spec, records, kept, sizes = predictor.spec, [], {}, set()
    for image_id, probs in predictor.iter_seg(rows):
        p_hem, source = types["by_id"].get(image_id), types["source"]
        if source == "seg_classifier":
            p_hem = seg_classifier_prob(probs, spec["seg_classifier"])
        class_map, used = phase2_class_map(probs, spec["postprocess"], fallback, fraction,
                                           type_class(p_hem, types["threshold"]), max_area, gate.get(image_id))
        height, width = class_map.shape
        write_phase2_mask(out / f"{image_id}.png", class_map, size=(width, height))
        sizes.add((width, height))
        records.append({"image_id": image_id, "type": type_decision(class_map, p_hem, types["threshold"]),
                        "type_source": source, "p_hemorrhagic": p_hem, "mask_type": image_type(class_map),
                        "lesion_pixels": int(np.count_nonzero(class_map)), "fallback": int(used)})
        if save_probs:
            kept[image_id] = probs.astype(np.float16)
    validate_phase2(out, rows["image_id"].tolist(), size=sizes.pop() if len(sizes) == 1 else None)
    write_atomic(out / "types.csv", lambda f: pd.DataFrame(records).to_csv(f, index=False), text=True)
    if save_probs:
        write_atomic(out / "probs.npz", lambda f: np.savez_compressed(
            f, image_id=np.asarray(list(kept), dtype=np.int64), **{str(i): p for i, p in kept.items()}))
    return {"postprocess": spec["postprocess"], "gated_by_stroke_prob": bool(gate), "fallback": fallback,
            "fallback_fraction": fraction, "fallback_max_area": max_area,
            "fallback_images": int(sum(r["fallback"] for r in records)), "type_source": types["source"],
            "type_threshold": types["threshold"]}


def type_probs(predictor, type_predictor, rows: pd.DataFrame) -> dict:
    """Where the per-image type comes from: a type ensemble, the seg spec's type classifier, or the mask."""
    if type_predictor is not None:
        if type_predictor.task != "type":
            raise SpecError(f"--type-ensemble {type_predictor.spec['path']} is a {type_predictor.task} spec, "
                            "not a type spec")
        result = type_predictor.predict_classifier(rows)
        return {"source": "type_ensemble", "threshold": decision_threshold(type_predictor.spec),
                "by_id": dict(zip(result["image_id"].tolist(), result["prob"].tolist()))}
    clf = predictor.spec.get("seg_classifier")
    if clf and clf["target"] == "type":
        return {"source": "seg_classifier", "threshold": float(clf["threshold"]["threshold"]), "by_id": {}}
    return {"source": "mask", "threshold": None, "by_id": {}}


def timed(fn, *args, **kwargs) -> tuple[dict, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
