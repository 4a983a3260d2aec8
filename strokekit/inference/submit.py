"""What infer.py does: find the test images, run the pipeline (pipeline.py) on them, write and validate a
submission. The decisions are the pipeline's (strokekit.Predictor returns the same); this module only finds
the inputs and writes files.

Phase 1: `asama1.txt` (submission.write_phase1) + `probs.csv` (image_id, prob, label, one column per
member). Phase 2: one `<id>.png` per image at the image's own size + `types.csv` (per-image stroke type)
and, when asked, `probs.npz` (float16 probabilities). The side files are not `<id>.png`, so
submission.validate_phase2 ignores them (it reads `*.png` only); upload the PNGs. infer.py writes a
`manifest.json` beside them (strokekit/manifest.py: provenance and every file's sha256).
A submission folder is only replaced when its manifest.json says infer.py wrote it, with `overwrite=True`,
and then only the files that manifest lists; a folder inside, equal to or holding the input data (paths
resolved, symlinks too) is never an output folder (prepare_out_dir).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from strokekit.atomic import write_atomic
from strokekit.data import layout
from strokekit.data.check import InputCheck, apply_policy, check_files
from strokekit.data.index import DataLayoutError, build_index
from strokekit.data.submission import (PHASE1_FILENAME, mask_files, validate_phase2, write_phase1,
                                       write_phase2_mask)
from strokekit.errors import OutputExistsError
from strokekit.inference.manifest import MANIFEST, read_manifest, sha256
from strokekit.locks import hold_folder
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


def input_folders(data: str | Path, rows: pd.DataFrame | None = None) -> list[Path]:
    """The folders the input data lives in, resolved (symlinks too): --data and every image file's folder."""
    folders = {Path(data).resolve()}
    if rows is not None:
        for kind in ("png", "dicom"):
            if kind in rows:
                folders |= {Path(os.path.realpath(f)).parent  # realpath: a symlink loop does not raise
                            for f in rows[kind] if isinstance(f, str) and f}
    return sorted(folders)


def written_by(manifest: dict | None) -> str | None:
    """The script a folder's manifest says wrote it (`written_by`, else its command's script name)."""
    if not manifest:
        return None
    command = manifest.get("command") or [None]
    return manifest.get("written_by") or (Path(str(command[0])).name if command[0] else None)


def check_out_dir(out: str | Path, overwrite: bool, inputs=(), writers=("infer.py",)) -> list[Path]:
    """The files a run writing to `out` would replace (none for a new or empty folder); OutputExistsError,
    creating and removing nothing, when `out` is a file, is inside, equal to or holds one of the `inputs`
    folders (input_folders), holds submission files that no manifest.json of one of `writers` lists with
    their current sha256, or (without `overwrite`) holds such a submission."""
    out = Path(out)
    target = out.resolve()
    for folder in map(Path, inputs):
        folder = folder.resolve()
        if target == folder or target.is_relative_to(folder) or folder.is_relative_to(target):
            where = "is" if target == folder else "is inside" if target.is_relative_to(folder) else "holds"
            raise OutputExistsError(f"{out} {where} the input data {folder}: a submission is never written "
                                    "where the images it is made from are; choose an output folder outside it")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file; the output names a submission folder")
    existing = sorted({p for p in out.glob("*") if p.name in SIDE_FILES} | set(mask_files(out).values())) \
        if out.is_dir() else []
    if not existing:
        return []
    try:
        manifest = read_manifest(out)
    except ValueError:
        manifest = None
    writer = written_by(manifest)
    if writer not in writers:
        names = ", ".join(p.name for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise OutputExistsError(f"{out} holds {len(existing)} files named as a submission's are ({names}) "
                                f"that {' / '.join(writers)} did not write (no manifest.json of "
                                f"{' / '.join(writers)} there): they are never replaced; choose another "
                                "output folder")
    foreign = [p for p in existing if p.name != MANIFEST and manifest["files"].get(p.name) != sha256(p)]
    if foreign:
        names = ", ".join(p.name for p in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise OutputExistsError(f"{out}: {len(foreign)} files are not the ones {writer} wrote there ({names}: "
                                "not in its manifest.json, or changed since): they are never replaced; move "
                                "them, or choose another output folder")
    if not overwrite:
        raise OutputExistsError(f"{out} already holds a submission {writer} wrote ({len(existing)} files); pass "
                                "--overwrite to replace it, or choose another --out")
    return existing


def prepare_out_dir(out: str | Path, overwrite: bool, inputs=(), writers=("infer.py",)) -> Path:
    """Create the submission folder (check_out_dir first); with overwrite=True an earlier submission of one
    of `writers` loses only the files its manifest lists (`<id>.png`, asama1.txt, side files), nothing else.
    The folder is locked (`<parent>/.<name>.lock`, strokekit/locks.py) until the process ends: a second run
    writing there meanwhile is refused naming this one (FolderLockedError)."""
    out = Path(out)
    check_out_dir(out, overwrite, inputs, writers)  # a refused folder gets nothing, no lock file either
    hold_folder(out, what=f"{' / '.join(writers)} run", beside=True)
    for path in check_out_dir(out, overwrite, inputs, writers):  # again: now no other run writes there
        path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------- writing the pipeline's decisions


def run_phase1(pipeline, rows: pd.DataFrame, out: Path) -> dict:
    """Write the pipeline's phase-1 decisions: asama1.txt (validated against the test ids) and probs.csv
    (image_id, prob, label, prob:<member>); returns what was decided."""
    decisions = pipeline.decide_phase1(rows)
    ids = np.asarray([d.image_id for d in decisions], dtype=np.int64)
    labels = np.asarray([int(d.stroke) for d in decisions], dtype=np.int64)
    write_phase1(out / PHASE1_FILENAME, ids, labels, expected_ids=rows["image_id"].tolist())
    table = pd.DataFrame({"image_id": ids, "prob": np.asarray([d.stroke_prob for d in decisions], dtype=float),
                          "label": labels})
    for name in (decisions[0].member_probs or {}) if decisions else ():
        table[f"prob:{name}"] = np.asarray([d.member_probs[name] for d in decisions], dtype=float)
    write_atomic(out / "probs.csv", lambda f: table.to_csv(f, index=False), text=True)
    return {"threshold": pipeline.stroke_threshold, "n_stroke": int(labels.sum())}


def run_phase2(pipeline, rows: pd.DataFrame, out: Path, save_probs: bool = False) -> dict:
    """Write the pipeline's phase-2 decisions: one validated `<id>.png` per image, types.csv and (if asked)
    probs.npz; returns what was decided."""
    records, kept, sizes = [], {}, set()
    for d in pipeline.iter_phase2(rows, keep_probs=save_probs):
        height, width = d.class_map.shape
        write_phase2_mask(out / f"{d.image_id}.png", d.class_map, size=(width, height))
        sizes.add((width, height))
        records.append({"image_id": d.image_id, "type": d.type, "type_source": d.type_source,
                        "p_hemorrhagic": d.p_hemorrhagic, "mask_type": image_type(d.class_map),
                        "lesion_pixels": int(np.count_nonzero(d.class_map)), "fallback": int(d.fallback)})
        if save_probs:
            kept[d.image_id] = d.probs.astype(np.float16)
    validate_phase2(out, rows["image_id"].tolist(), size=sizes.pop() if len(sizes) == 1 else None)
    write_atomic(out / "types.csv", lambda f: pd.DataFrame(records).to_csv(f, index=False), text=True)
    if save_probs:
        write_atomic(out / "probs.npz", lambda f: np.savez_compressed(
            f, image_id=np.asarray(list(kept), dtype=np.int64), **{str(i): p for i, p in kept.items()}))
    source, threshold = pipeline.type_source()
    return {"postprocess": pipeline.roles["seg"].spec["postprocess"],
            "gated_by_stroke_prob": pipeline.gate_kind is not None and bool(records),
            "fallback": pipeline.fallback, "fallback_fraction": pipeline.fallback_fraction,
            "fallback_max_area": pipeline.fallback_max_area,
            "fallback_images": int(sum(r["fallback"] for r in records)), "type_source": source,
            "type_threshold": threshold}


def timed(fn, *args, **kwargs) -> tuple[dict, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
