"""The nnU-Net v2 bridge: the kit's training set and folds in nnU-Net's raw format, and nnU-Net's predictions
back into the kit's phase-2 submission, so both are scored by score.py on the same folds and metric.

Raw format (nnU-Net v2 `documentation/dataset_format.md`): `nnUNet_raw/DatasetXXX_Name/` with `imagesTr/
<case>_0000.png` (one grey channel), `labelsTr/<case>.png` (integer labels 0 background, 1 ischemic,
2 hemorrhagic: the kit's class map), optional `imagesTs/<case>_0000.png`, and `dataset.json` (channel_names,
labels, numTraining, file_ending). The kit's folds become `splits_final.json` (`manual_data_splits.md`: a list
with one {"train": [...], "val": [...]} per fold), which nnU-Net reads from `nnUNet_preprocessed/DatasetXXX_Name/`.
A case is `<prefix>_<image id>` (default `stroke_123`), so a prediction `stroke_123.png` maps back to image 123.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from strokekit.atomic import write_atomic, write_json, write_text_atomic
from strokekit.data.encodings import MASK_COLOURS
from strokekit.data.index import build_index
from strokekit.data.dicom import read_dicom_hu, window
from strokekit.data.readers import load_class_map, read_png
from strokekit.data.folds import read_folds
from strokekit.errors import UserError

LABELS = {"background": 0, "ischemic": 1, "hemorrhagic": 2}  # = the kit's class map
FILE_ENDING = ".png"
CHANNEL = "0000"
DEFAULT_PREFIX = "stroke"
DEFAULT_CHANNEL_NAME = "brain_window"  # not "CT": the PNGs are windowed 8-bit, not HU (nnU-Net z-scores them)
DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")
SPLITS_FILE = "splits_final.json"
CASES_FILE = "cases.csv"
OWN_FILES = ("dataset.json", SPLITS_FILE, CASES_FILE)


class NnUNetError(UserError, ValueError):
    """An nnU-Net dataset or prediction folder the bridge cannot read or write as asked."""


def case_name(image_id: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}_{int(image_id)}"


def image_id_of(case: str) -> int:
    """The image id of a case name `<prefix>_<id>` (or a bare `<id>`)."""
    match = re.search(r"(?:^|_)(\d+)$", case)
    if not match:
        raise NnUNetError(f"case {case!r} is not named <prefix>_<image id> or <image id>")
    return int(match.group(1))


# --------------------------------------------------------------------------- kit -> nnU-Net


def training_rows(index: pd.DataFrame, folds: pd.DataFrame, negatives: float = 1.0,
                  seed: int = 0) -> tuple[pd.DataFrame, list[int]]:
    """(training rows with their fold, stroke ids left out for lack of MASK/OVERLAY).

    Every stroke slice with a MASK or OVERLAY; `negatives` is the share of no-stroke slices added (label
    all background), drawn with `seed` (1.0 = all, 0 = none).
    """
    if not 0.0 <= negatives <= 1.0:
        raise NnUNetError(f"negatives must be a share in [0, 1], got {negatives}")
    table = index[index["split"] == "train"].merge(folds[["image_id", "fold"]], on="image_id", validate="1:1")
    stroke = table[table["class_name"] != "no_stroke"]
    labelled = (stroke["mask"] != "") | (stroke["overlay"] != "")
    clean = table[table["class_name"] == "no_stroke"]
    if negatives < 1.0:
        clean = clean.sample(frac=negatives, random_state=seed)
    rows = pd.concat([stroke[labelled], clean]).sort_values("image_id").reset_index(drop=True)
    return rows, sorted(stroke.loc[~labelled, "image_id"].astype(int).tolist())


def grey_image(row: dict, source: str = "png", hu_window=(40.0, 80.0)) -> np.ndarray:
    """The slice as HxW uint8: the PNG, or the DICOM through one HU window (center, width)."""
    if not row.get(source):
        other = "png" if source == "dicom" else "dicom"
        raise NnUNetError(f"image {row['image_id']}: no {source.upper()} file; try --source {other}")
    if source == "dicom":
        return window(read_dicom_hu(row["dicom"]), *hu_window)
    return read_png(row["png"])


def write_png(path: Path, array: np.ndarray) -> None:
    """An 8-bit single-channel PNG, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), "L").save(f, "PNG"))


def write_label_png(path: Path, class_map: np.ndarray) -> None:
    """An nnU-Net label map: 8-bit grey PNG holding 0 / 1 / 2."""
    class_map = np.asarray(class_map)
    bad = set(np.unique(class_map).tolist()) - set(LABELS.values())
    if bad:
        raise NnUNetError(f"{path.name}: labels {sorted(bad)}; nnU-Net labels here are 0, 1, 2")
    write_png(path, class_map)


def write_label_pngs(masks: dict[int, np.ndarray], folder: str | os.PathLike,
                     prefix: str = DEFAULT_PREFIX) -> list[Path]:
    """Class maps by image id as nnU-Net label PNGs `<case>.png` (what nnU-Net predicts, too)."""
    folder = Path(folder)
    paths = []
    for image_id, class_map in masks.items():
        path = folder / f"{case_name(image_id, prefix)}{FILE_ENDING}"
        write_label_png(path, class_map)
        paths.append(path)
    return paths


def dataset_json(num_training: int, channel_name: str = DEFAULT_CHANNEL_NAME, name: str = "") -> dict:
    return {"channel_names": {"0": channel_name}, "labels": dict(LABELS), "numTraining": int(num_training),
            "file_ending": FILE_ENDING, "name": name,
            "description": "TEKNOFEST-2021 stroke CT slices exported by strokekit (export_nnunet.py)"}


def splits_from_folds(cases: pd.DataFrame) -> list[dict]:
    """nnU-Net's splits_final.json from the kit's folds: fold k validates on its cases, trains on the rest."""
    splits = []
    for fold in sorted(cases["fold"].unique()):
        val = cases["fold"] == fold
        splits.append({"train": sorted(cases.loc[~val, "case"].tolist()), "val": sorted(cases.loc[val, "case"].tolist())})
    return splits


def prepare_dataset_dir(out: Path, overwrite: bool) -> Path:
    """Check the folder name nnU-Net needs; refuse a folder holding an export unless overwrite, which removes
    only the export's own files."""
    if not DATASET_NAME.match(out.name):
        raise NnUNetError(f"{out.name!r}: nnU-Net needs the folder named Dataset<3 digits>_<name>, "
                          "e.g. nnUNet_raw/Dataset501_Stroke (custom ids from 500 avoid clashes)")
    existing = [out / name for name in OWN_FILES if (out / name).exists()]
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        existing += sorted((out / sub).glob(f"*{FILE_ENDING}")) if (out / sub).is_dir() else []
    if existing and not overwrite:
        raise NnUNetError(f"{out} already holds an nnU-Net export ({len(existing)} files); pass --overwrite")
    for path in existing:
        path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_dataset(data: str | os.PathLike, folds_path: str | os.PathLike, out: str | os.PathLike,
                   negatives: float = 1.0, seed: int = 0, test_split: str | None = None,
                   source: str = "png", hu_window=(40.0, 80.0), channel_name: str = DEFAULT_CHANNEL_NAME,
                   prefix: str = DEFAULT_PREFIX, overwrite: bool = False, log=print) -> dict:
    """Write the training set (and optionally a test split as imagesTs) in nnU-Net v2's raw format.

    Returns a summary: counts, the cases table, the folders written, and stroke ids left out (no label).
    """
    out = prepare_dataset_dir(Path(out), overwrite)
    index, _ = build_index(data)
    folds = read_folds(folds_path, index)
    rows, unlabelled = training_rows(index, folds, negatives, seed)
    if rows.empty:
        raise NnUNetError(f"{data}: no training slice with a label to export")
    records = []
    for row in rows.to_dict("records"):
        case = case_name(row["image_id"], prefix)
        image = grey_image(row, source, hu_window)
        class_map = load_class_map(row)
        if class_map is None:  # a no-stroke slice: all background
            class_map = np.zeros(image.shape, dtype=np.uint8)
        if class_map.shape != image.shape:
            raise NnUNetError(f"image {row['image_id']}: mask {class_map.shape} and image {image.shape} differ")
        write_png(out / "imagesTr" / f"{case}_{CHANNEL}{FILE_ENDING}", image)
        write_label_png(out / "labelsTr" / f"{case}{FILE_ENDING}", class_map)
        records.append({"case": case, "image_id": int(row["image_id"]), "fold": int(row["fold"]),
                        "class_name": row["class_name"], "ischemic_pixels": int((class_map == 1).sum()),
                        "hemorrhagic_pixels": int((class_map == 2).sum())})
    cases = pd.DataFrame(records)
    test_cases = export_test_images(index, out, test_split, source, hu_window, prefix) if test_split else []
    write_json(out / "dataset.json", dataset_json(len(cases), channel_name, out.name.split("_", 1)[1]))
    write_json(out / SPLITS_FILE, splits_from_folds(cases))
    write_atomic(out / CASES_FILE, lambda f: cases.to_csv(f, index=False), text=True)
    if unlabelled:
        log(f"left out {len(unlabelled)} stroke slices without MASK or OVERLAY: {unlabelled[:10]}")
    return {"out": out, "n_training": len(cases), "n_negatives": int((cases["class_name"] == "no_stroke").sum()),
            "n_test": len(test_cases), "n_folds": int(cases["fold"].nunique()), "unlabelled": unlabelled,
            "cases": cases}


def export_test_images(index: pd.DataFrame, out: Path, split: str, source: str, hu_window, prefix: str) -> list[str]:
    rows = index[index["split"] == split]
    if rows.empty:
        raise NnUNetError(f"no {split} images in the data set (splits: {sorted(index['split'].unique())})")
    cases = []
    for row in rows.sort_values("image_id").to_dict("records"):
        case = case_name(row["image_id"], prefix)
        write_png(out / "imagesTs" / f"{case}_{CHANNEL}{FILE_ENDING}", grey_image(row, source, hu_window))
        cases.append(case)
    return cases


def copy_splits(out: str | os.PathLike, preprocessed: str | os.PathLike) -> Path:
    """Put splits_final.json where nnU-Net reads it: <nnUNet_preprocessed>/<DatasetXXX_Name>/."""
    out = Path(out)
    target = Path(preprocessed) / out.name / SPLITS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, (out / SPLITS_FILE).read_text(encoding="utf-8"))
    return target


# --------------------------------------------------------------------------- nnU-Net -> kit


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """An nnU-Net label PNG as an HxW uint8 class map; values other than 0 / 1 / 2 are refused."""
    with Image.open(path) as image:
        mode = image.mode
        array = np.asarray(image)
    if array.ndim != 2:
        hint = " (a colour mask: is this already a submission?)" if mode in ("RGB", "RGBA") else ""
        raise NnUNetError(f"{path}: mode {mode}, not a single-channel label map{hint}")
    bad = set(np.unique(array).tolist()) - set(LABELS.values())
    if bad:
        raise NnUNetError(f"{path}: label values {sorted(bad)[:5]}; expected 0 background, 1 ischemic, "
                          "2 hemorrhagic")
    return array.astype(np.uint8)


def read_predictions(folder: str | os.PathLike) -> dict[int, np.ndarray]:
    """{image id: class map} of an nnU-Net prediction folder (`<case>.png`; its JSON side files ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NnUNetError(f"{folder}: no such folder")
    found: dict[int, np.ndarray] = {}
    for path in sorted(folder.glob(f"*{FILE_ENDING}")):
        if path.name.startswith("."):
            continue
        image_id = image_id_of(path.stem)
        if image_id in found:
            raise NnUNetError(f"{folder}: two predictions for image {image_id}")
        found[image_id] = read_label_png(path)
    if not found:
        raise NnUNetError(f"{folder}: no <case>{FILE_ENDING} predictions")
    return found


def predictions_to_submission(folder: str | os.PathLike, out: str | os.PathLike,
                              expected_ids: list[int] | None = None, overwrite: bool = False) -> dict:
    """Write nnU-Net's predictions as the kit's phase-2 submission (`<id>.png` in the official colours, each at
    its prediction's size) with a manifest; validated like infer.py's. Returns a summary."""
    from strokekit.data.submission import validate_phase2, write_phase2_mask
    from strokekit.inference.manifest import write_manifest
    from strokekit.inference.submit import prepare_out_dir

    masks = read_predictions(folder)
    if expected_ids is not None:
        missing = sorted(set(expected_ids) - set(masks))
        if missing:
            raise NnUNetError(f"{folder}: no prediction for {len(missing)} test images, e.g. {missing[:10]}")
    out = prepare_out_dir(out, overwrite, inputs=[folder], writers=("export_nnunet.py",))
    sizes = set()
    for image_id, class_map in masks.items():
        height, width = class_map.shape
        write_phase2_mask(out / f"{image_id}.png", class_map, size=(width, height))
        sizes.add((width, height))
    validate_phase2(out, expected_ids if expected_ids is not None else list(masks),
                    size=sizes.pop() if len(sizes) == 1 else None)
    lesion = {i: int(np.count_nonzero(m)) for i, m in masks.items()}
    write_manifest(out, {"written_by": "export_nnunet.py", "source": "nnU-Net predictions",
                         "predictions": str(Path(folder).resolve()),
                         "labels": LABELS, "colours": {str(k): v for k, v in MASK_COLOURS.items()}})
    return {"out": out, "n_images": len(masks), "empty": sorted(i for i, n in lesion.items() if n == 0)}
