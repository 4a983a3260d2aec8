"""A pseudo-label folder: the phase-2 test images with the ensemble's masks, an extra training split.

pseudo.py (strokekit/inference/pseudo_labels.py) writes the folder, a seg config's `pseudo: <folder>` reads it
back as training rows. The format (docs/file-formats.md):

    <folder>/labels.csv      one row per test image: image_id, kept (0/1), reason, png, dicom, mask, ignore
                             (paths relative to the folder), has_ischemic, has_hemorrhagic, confidence,
                             lesion_pixels, labelled_lesion_pixels, ignored_pixels, fallback
    <folder>/PNG/<id>.png, DICOM/<id>.dcm   copies of the test images the kept rows train on
    <folder>/MASK/<id>.png   the label, in the official MASK colours (the ensemble's phase-2 decision)
    <folder>/IGNORE/<id>.png 8-bit grey, 255 where the label is too uncertain to train on (the loss skips it)
    <folder>/manifest.json   written_by pseudo.py: the spec, thresholds, counts, every file's sha256

Hard labels with an ignore mask, not soft labels: every seg loss of the kit compares logits with a class map,
and the ignore value (vocabulary.IGNORE_LABEL) lets each of them skip the uncertain pixels.

The rows are split "pseudo" with no fold: training/tasks.py adds them to every fold's training rows and
never to a validation set, so no OOF file ever holds a pseudo image. Ids that are also training ids are
refused (PseudoLabelError): a test image is not a training image, and a pseudo row must not shadow one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from strokekit.data.readers import read_png
from strokekit.errors import UserError
from strokekit.vocabulary import IGNORE_LABEL

LABELS_CSV = "labels.csv"
WRITER = "pseudo.py"
SPLIT = "pseudo"
FOLDERS = {"png": "PNG", "dicom": "DICOM", "mask": "MASK", "ignore": "IGNORE"}
LABEL_COLUMNS = ["image_id", "kept", "reason", "png", "dicom", "mask", "ignore", "has_ischemic", "has_hemorrhagic",
                 "confidence", "lesion_pixels", "labelled_lesion_pixels", "ignored_pixels", "fallback"]


class PseudoLabelError(UserError, ValueError):
    """A pseudo-label folder that cannot be trained on (missing, not pseudo.py's, ids of training images ...)."""


def read_labels(folder: str | Path) -> pd.DataFrame:
    """labels.csv of a pseudo-label folder (every row, kept or dropped); PseudoLabelError when it is not one."""
    folder = Path(folder)
    table = folder / LABELS_CSV
    if not folder.is_dir():
        raise PseudoLabelError(f"pseudo-label folder {folder} does not exist (make it with `python pseudo.py "
                               "--ensemble <seg spec> --data <phase-2 test folder> --out <folder>`)")
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("written_by") != WRITER or not table.is_file():
        raise PseudoLabelError(f"{folder} is not a pseudo-label folder written by pseudo.py (no {LABELS_CSV} "
                               f"and manifest.json of {WRITER})")
    try:
        labels = pd.read_csv(table, keep_default_na=False, dtype={k: str for k in FOLDERS})
    except (OSError, ValueError) as err:
        raise PseudoLabelError(f"{table}: unreadable ({err})") from None
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise PseudoLabelError(f"{table} lacks the columns {missing}; rewrite the folder with pseudo.py")
    if labels["image_id"].duplicated().any():
        raise PseudoLabelError(f"{table}: image ids listed twice: {sorted(labels.image_id[labels.image_id.duplicated()])[:5]}")
    return labels


def pseudo_rows(folder: str | Path, index: pd.DataFrame) -> pd.DataFrame:
    """The kept images of a pseudo-label folder as index rows (split "pseudo", absolute paths, an `ignore`
    column), checked against the data index: an id that is a training image's is refused."""
    folder = Path(folder)
    labels = read_labels(folder)
    kept = labels[labels["kept"].astype(int) == 1].copy()
    if kept.empty:
        raise PseudoLabelError(f"{folder}: every image was dropped by the confidence filter (labels.csv says "
                               "why); lower --image-confidence / --pixel-confidence of pseudo.py or train without it")
    train_ids = set(index.loc[index["split"] == "train", "image_id"].astype(int))
    clash = sorted(set(kept["image_id"].astype(int)) & train_ids)
    if clash:
        raise PseudoLabelError(f"{folder}: {len(clash)} pseudo-labelled ids are training images of the data set "
                               f"(e.g. {clash[:5]}): pseudo-labels come from the test images only; remake the "
                               "folder from the phase-2 test folder")
    for column in FOLDERS:
        paths = kept[column].map(lambda p: str(folder / p) if p else "")
        gone = [p for p in paths if p and not Path(p).is_file()]
        if gone:
            raise PseudoLabelError(f"{folder}: {len(gone)} files listed in {LABELS_CSV} are missing, e.g. {gone[0]}")
        kept[column] = paths
    if (kept["mask"] == "").any() or ((kept["png"] == "") & (kept["dicom"] == "")).all():
        raise PseudoLabelError(f"{folder}: kept rows without a mask or an image; rewrite the folder with pseudo.py")
    isc, hem = kept["has_ischemic"].astype(int), kept["has_hemorrhagic"].astype(int)
    rows = pd.DataFrame({
        "image_id": kept["image_id"].astype(np.int64), "split": SPLIT,
        "class_name": np.where(hem == 1, "hemorrhagic", "ischemic"), "png": kept["png"], "dicom": kept["dicom"],
        "mask": kept["mask"], "overlay": "", "stroke": 1, "has_ischemic": isc, "has_hemorrhagic": hem,
        "patient_id": "", "study_uid": "", "series_uid": "", "ignore": kept["ignore"]})
    return rows.sort_values("image_id").reset_index(drop=True)


def read_ignore(path: str | Path) -> np.ndarray:
    """An IGNORE PNG as an (H, W) bool map: True where the label is not trained on."""
    image = read_png(path)
    return np.asarray(image if image.ndim == 2 else image[..., 0]) > 127


def with_ignore(class_map: np.ndarray, ignore_path: str | Path | None) -> np.ndarray:
    """The class map with IGNORE_LABEL where the row's IGNORE file says so (unchanged without one)."""
    if not ignore_path:
        return class_map
    ignore = read_ignore(ignore_path)
    if ignore.shape != class_map.shape:
        raise PseudoLabelError(f"{ignore_path}: {ignore.shape} but its MASK is {class_map.shape}")
    out = class_map.copy()
    out[ignore] = IGNORE_LABEL
    return out
