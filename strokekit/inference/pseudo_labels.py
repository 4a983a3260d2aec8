"""What pseudo.py does: the seg ensemble's phase-2 decisions on the unlabelled test images -> a pseudo-label
folder (data/pseudo.py reads it back as a training split).

The labels are the pipeline's decisions (pipeline.iter_phase2: the spec's post-processing and the never-empty
fill, exactly what infer.py would submit), filtered by confidence:
- a pixel is ignored (IGNORE/<id>.png; the losses skip it) where the ensemble's probability of its decision,
  lesion or not, is below `pixel_confidence`: P(lesion) = 1 - P(background) for a lesion pixel, P(background)
  for a background pixel (so a blob that post-processing removed is ignored, not taught as background);
- an image is dropped (kept = 0 in labels.csv, with the reason) when the mean P(lesion) over its decided lesion
  pixels is below `image_confidence`, or when no lesion pixel is left after the pixel filter: every phase-2
  image holds a lesion, so an image is never taught as lesion-free.

Only the image files (PNG / DICOM) of the test set are read: test images are found by file name
(index.scan + pair_files, or the test folder's PNG/ and DICOM/), never through the index's label pass, so no
MASK, OVERLAY or answer key is opened.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from strokekit.atomic import write_atomic
from strokekit.data import layout
from strokekit.data.index import DataLayoutError, pair_files, scan
from strokekit.data.pseudo import FOLDERS, LABEL_COLUMNS, LABELS_CSV, WRITER, PseudoLabelError
from strokekit.data.submission import write_phase2_mask
from strokekit.errors import OutputExistsError
from strokekit.vocabulary import BACKGROUND, HEMORRHAGIC, ISCHEMIC


@dataclass(frozen=True)
class Confidence:
    """The two filters (pseudo.py --pixel-confidence / --image-confidence)."""
    pixel: float = 0.75
    image: float = 0.5

    def __post_init__(self):
        for name, value in (("pixel", self.pixel), ("image", self.image)):
            if not 0.0 <= value <= 1.0:
                raise PseudoLabelError(f"--{name}-confidence {value}: a probability in [0, 1]")


# --------------------------------------------------------------------------- the test images, without labels


def find_unlabelled_rows(data: str | Path, split: str = "test2") -> pd.DataFrame:
    """(image_id, png, dicom, split) of the phase-2 test images: `data` is a data root (its `split`) or one test
    folder. Files are matched by name only; the phase-1 test set is refused (its images may hold no lesion)."""
    data = Path(data)
    if not data.is_dir():
        raise DataLayoutError(f"test data folder {data} does not exist")
    records, _, _ = scan(data)  # names only: no file is opened
    index = pair_files(records) if not records.empty else None
    phase1 = DataLayoutError(f"{data} is the phase-1 test set: its images need not hold a lesion, so the "
                             "never-empty prior of pseudo-labels does not hold; use the phase-2 test set")
    if index is not None and (index["split"] == split).any():
        rows = index[index["split"] == split]
    elif index is not None and set(index["split"]) == {"test1"}:
        raise phase1
    elif index is not None and index["split"].isin(["test1", "test2", "train"]).any():
        raise DataLayoutError(f"{data}: no {split} images (splits found: {sorted(index['split'].unique())}); "
                              "pseudo-labels come from the phase-2 test set: point --data at it")
    else:
        from strokekit.inference.submit import scan_test_folder
        rows = scan_test_folder(data)
    if (rows["split"] == "test1").all():
        raise phase1
    rows = rows.reindex(columns=["image_id", "png", "dicom", "split"]).fillna("")
    return rows.sort_values("image_id").reset_index(drop=True)


# --------------------------------------------------------------------------- one image


def label_image(class_map: np.ndarray, probs: np.ndarray, confidence: Confidence) -> dict:
    """The label of one image from the pipeline's decision and blended probabilities (3, H, W): ignore map,
    image confidence, kept or dropped and why (see the module docstring)."""
    lesion = class_map != BACKGROUND
    p_lesion = 1.0 - probs[BACKGROUND]
    certainty = np.where(lesion, p_lesion, 1.0 - p_lesion)
    ignore = certainty < confidence.pixel
    labelled = lesion & ~ignore
    score = float(p_lesion[lesion].mean()) if lesion.any() else 0.0
    if not lesion.any():
        reason = "no lesion decided"
    elif score < confidence.image:
        reason = f"image confidence below {confidence.image}"  # the figure is in the confidence column
    elif not labelled.any():
        reason = f"every lesion pixel below the pixel confidence {confidence.pixel}"
    else:
        reason = ""
    return {"kept": int(not reason), "reason": reason, "ignore": ignore, "confidence": round(score, 6),
            "has_ischemic": int((class_map[labelled] == ISCHEMIC).any()),
            "has_hemorrhagic": int((class_map[labelled] == HEMORRHAGIC).any()),
            "lesion_pixels": int(lesion.sum()), "labelled_lesion_pixels": int(labelled.sum()),
            "ignored_pixels": int(ignore.sum())}


# --------------------------------------------------------------------------- the folder


def check_out_dir(out: Path, overwrite: bool, inputs: list[Path]) -> None:
    """OutputExistsError unless `out` is new, empty, or (with overwrite) a folder pseudo.py wrote; never
    inside, equal to or holding an input folder."""
    target = out.resolve()
    for folder in inputs:
        folder = folder.resolve()
        if target == folder or target.is_relative_to(folder) or folder.is_relative_to(target):
            raise OutputExistsError(f"{out} overlaps the input data {folder}: write pseudo-labels outside the "
                                    "test images' folders")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file; --out names a pseudo-label folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    from strokekit.inference.manifest import read_manifest

    try:
        manifest = read_manifest(out) or {}
    except ValueError:
        manifest = {}
    if manifest.get("written_by") != WRITER:
        raise OutputExistsError(f"{out} is not empty and pseudo.py did not write it (no manifest.json of "
                                f"{WRITER}): it is never replaced; choose another --out")
    if not overwrite:
        raise OutputExistsError(f"{out} already holds pseudo-labels; pass --overwrite to replace them, or "
                                "choose another --out")


def write_folder(pipeline, rows: pd.DataFrame, out: Path, confidence: Confidence) -> pd.DataFrame:
    """Label every row with the pipeline into a fresh folder `out` (which must not exist): MASK/, IGNORE/,
    copies of the kept images, labels.csv. Returns labels.csv's table."""
    for name in FOLDERS.values():
        (out / name).mkdir(parents=True)
    files = rows.set_index("image_id")
    records = []
    for d in pipeline.iter_phase2(rows, keep_probs=True):
        label = label_image(d.class_map, d.probs, confidence)
        ignore = label.pop("ignore")
        record = {"image_id": d.image_id, **label, "png": "", "dicom": "", "mask": "", "ignore": "",
                  "fallback": int(bool(d.fallback))}
        if label["kept"]:
            height, width = d.class_map.shape
            record["mask"] = f"{FOLDERS['mask']}/{d.image_id}.png"
            write_phase2_mask(out / record["mask"], d.class_map, size=(width, height))
            record["ignore"] = f"{FOLDERS['ignore']}/{d.image_id}.png"
            Image.fromarray((ignore * 255).astype(np.uint8), "L").save(out / record["ignore"])
            for kind in ("png", "dicom"):
                source = files.at[d.image_id, kind]
                if source:
                    record[kind] = f"{FOLDERS[kind]}/{d.image_id}{Path(source).suffix.lower()}"
                    shutil.copyfile(source, out / record[kind])
        records.append(record)
    table = pd.DataFrame.from_records(records, columns=LABEL_COLUMNS)
    write_atomic(out / LABELS_CSV, lambda f: table.to_csv(f, index=False), text=True)
    return table


def replace_folder(built: Path, out: Path) -> None:
    """Put the finished folder `built` at `out` (an earlier pseudo.py folder there is removed after)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(built, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
