"""The index of a data set: one pandas row per image id with its files and labels.

`build_index(root)` walks any supported layout (see layout.py), pairs PNG / DICOM / MASK / OVERLAY files by
image id, reads labels (folder class, the phase-1 answer key, lesion classes from masks or decoded
overlays, patient ids and slice order tags from DICOM headers) and reports which folders it mapped and
which files it skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from strokekit.atomic import write_atomic, write_text_atomic
from strokekit.data import layout
from strokekit.data.badinput import BadInputError, unreadable
from strokekit.data.dicom import read_dicom_header
from strokekit.data.readers import load_class_map
from strokekit.errors import UserError

COLUMNS = ["image_id", "split", "class_name", "png", "dicom", "mask", "overlay", "stroke",
           "has_ischemic", "has_hemorrhagic", "patient_id", "study_uid", "series_uid",
           "slice_position", "instance_number", "slice_location"]
ORDER_COLUMNS = ["slice_position", "instance_number", "slice_location"]  # NaN when unknown (data/neighbours.py)
# 2: the cache also keeps the files whose labels could not be read; 3: the slice order tags
INDEX_VERSION = 3


class DataLayoutError(UserError, ValueError):
    """The data folder cannot be indexed (missing, empty, duplicate ids ...)."""


@dataclass
class IndexReport:
    """What the indexer did with each folder and file, for the user to check."""
    root: str
    mapped: dict[str, str] = field(default_factory=dict)    # folder -> "split/class/modality"
    ignored: list[str] = field(default_factory=list)        # folders with no data files
    empty: list[str] = field(default_factory=list)          # folders with nothing in them
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def summary(self, max_items: int = 10) -> str:
        lines = [f"data root {self.root}: {len(self.mapped)} folders mapped"]
        lines += [f"  {folder} -> {meaning}" for folder, meaning in sorted(self.mapped.items())]
        if self.ignored:
            lines.append(f"  ignored {len(self.ignored)} folders: {', '.join(sorted(self.ignored)[:max_items])}")
        if self.empty:
            lines.append(f"  empty folders ({len(self.empty)}): {', '.join(sorted(self.empty)[:max_items])}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} files:")
            lines += [f"    {path}: {why}" for path, why in self.skipped[:max_items]]
            if len(self.skipped) > max_items:
                lines.append(f"    ... and {len(self.skipped) - max_items} more")
        return "\n".join(lines)


def scan(root: Path) -> tuple[pd.DataFrame, IndexReport, dict[str, Path]]:
    """Walk the tree: one record per (id, split, class, modality) file, plus answer keys per split."""
    report = IndexReport(root=str(root))
    records, answer_keys, visited = [], {}, set()
    # folders linked into the tree are followed (a PNG/ -> /mnt/disk2/PNG link used to be skipped silently);
    # a folder reached a second time (a symlink loop, two links to one folder) is listed, not walked again
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = Path(dirpath).relative_to(root)
        real = os.path.realpath(dirpath)
        if real in visited:
            report.skipped.append((str(rel), f"a folder already indexed as {real} (a symlink loop, or a second "
                                             "link to it): not read twice"))
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        meaning = layout.describe_path((root.resolve().name,) + rel.parts)  # the root may be YARISMA_1 itself
        used = False
        for name in sorted(filenames):
            path = Path(dirpath) / name
            record, reason = _classify_file(path, name, meaning)
            if record is not None:
                records.append(record)
                used = True
                broken = _broken_link(path)
                if broken:  # kept: the up-front check refuses its image by name; listed here for kfold.py
                    report.skipped.append((str(path.relative_to(root)), f"unreadable, {broken}"))
            elif reason == "answer key":
                answer_keys[meaning["split"]] = path
                report.mapped[str(rel / name)] = f"{meaning['split']}/answer key"
            elif reason:
                report.skipped.append((str(path.relative_to(root)), reason))
        if used:
            report.mapped[str(rel)] = _describe(meaning, records[-1]["modality"])
        elif rel.parts and any(not n.startswith(".") and not layout.is_answer_key(n) for n in filenames):
            report.ignored.append(str(rel))
        elif rel.parts and not dirnames and not any(not n.startswith(".") for n in filenames):
            report.empty.append(str(rel))  # e.g. a KANAMA/PNG whose copy never arrived
    return pd.DataFrame.from_records(records), report, answer_keys


def _broken_link(path: Path) -> str | None:
    """What is wrong with a symlink whose target cannot be opened (dangling, a loop), else None."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
        return None
    except OSError as err:
        return unreadable(path, err).problem


def _classify_file(path: Path, name: str, meaning: dict) -> tuple[dict | None, str | None]:
    if name.startswith(".") or name.casefold() in layout.STRAY_NAMES:
        return None, "not a data file"
    stem, ext = os.path.splitext(name)
    ext = ext.casefold()
    if ext == ".txt" and layout.is_answer_key(name):
        return None, "answer key"
    if ext not in (".png", ".dcm"):
        return None, f"not a .png/.dcm file"
    if layout.image_id(stem) is None:  # '²' and full-width '１００１２' are digits to str.isdigit
        return None, "file name is not an integer image id (ASCII digits 0-9)"
    modality = meaning["modality"] or ("dicom" if ext == ".dcm" else "png")
    if (modality == "dicom") != (ext == ".dcm"):
        return None, f"a {ext} file in a {modality.upper()} folder"
    if meaning["split"] == "train" and meaning["class_name"] is None:
        return None, "folder names give no class (no-stroke / ischemic / hemorrhagic)"
    return {"image_id": int(stem), "split": meaning["split"], "class_name": meaning["class_name"] or "",
            "modality": modality, "path": str(path)}, None


def _describe(meaning: dict, modality: str) -> str:
    cls = meaning["class_name"] or "-"
    return f"{meaning['split']}/{cls}/{modality}"


def pair_files(records: pd.DataFrame) -> pd.DataFrame:
    """One row per image id with a path column per modality; refuses ids claimed by two class folders."""
    claims = records.drop_duplicates(["image_id", "split", "class_name"])
    dup = claims[claims.duplicated("image_id", keep=False)]
    if len(dup):
        lines = [f"  id {i}: " + ", ".join(sorted(f"{r.split}/{r.class_name or '-'}" for r in grp.itertuples()))
                 for i, grp in list(dup.groupby("image_id"))[:10]]
        raise DataLayoutError(f"{dup.image_id.nunique()} image ids appear in more than one class/test folder "
                              "(ids must be unique across folders):\n" + "\n".join(lines))
    twice = records[records.duplicated(["image_id", "modality"], keep=False)]
    if len(twice):
        raise DataLayoutError("the same id has two files of one kind: " + ", ".join(twice.path.head(6)))
    wide = records.pivot(index="image_id", columns="modality", values="path")
    wide = wide.reindex(columns=list(layout.MODALITIES), fill_value="").fillna("").astype(str)
    meta = claims.set_index("image_id")[["split", "class_name"]]
    return meta.join(wide).reset_index()


def build_index(root: str | os.PathLike, lesion_labels: bool = True, headers: bool = True,
                cache: bool = True, verbose: bool = False) -> tuple[pd.DataFrame, IndexReport]:
    """Index a data set in any supported layout. See the module docstring; columns are `COLUMNS`."""
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"data folder {root} does not exist (make one with "
                              "`python make_phantom.py --out data/phantom` or point --data at the data set)")
    records, report, answer_keys = scan(root)
    if records.empty:
        raise DataLayoutError(f"no .png/.dcm files with integer ids under {root}\n{report.summary()}")
    signature = _signature(records, answer_keys, lesion_labels, headers)
    cached = _read_cache(root, signature) if cache else None
    if cached is not None:
        index, label_problems = cached
        report.skipped += label_problems
    else:
        index = pair_files(records)
        n_scanned = len(report.skipped)
        index = _add_labels(index, answer_keys, lesion_labels, headers, report)
        if cache:  # with the files whose labels could not be read: a cached index reports them again
            _write_cache(root, signature, index, report.skipped[n_scanned:])
    if verbose:
        print(report.summary())
    return index, report


def _add_labels(index: pd.DataFrame, answer_keys: dict, lesion_labels: bool, headers: bool,
                report: IndexReport) -> pd.DataFrame:
    index = index.sort_values("image_id").reset_index(drop=True)
    index["stroke"] = np.where(index.split == "train", (index.class_name != "no_stroke").astype(int), -1)
    index.loc[index.split == "test2", "stroke"] = 1  # every phase-2 image holds a lesion
    if "test1" in answer_keys:
        from strokekit.data.submission import SubmissionError, read_labels

        try:
            key = read_labels(answer_keys["test1"])
        except (SubmissionError, OSError) as err:  # the test images stay, without labels
            report.skipped.append((str(answer_keys["test1"]), f"answer key not used: {err}"))
            key = {}
        is_test1 = index.split == "test1"
        index.loc[is_test1, "stroke"] = index.loc[is_test1, "image_id"].map(key).fillna(-1).astype(int)
    index["has_ischemic"] = index["has_hemorrhagic"] = -1
    if lesion_labels:
        _add_lesion_labels(index, report)
    for col in ("patient_id", "study_uid", "series_uid"):
        index[col] = ""
    for col in ORDER_COLUMNS:
        index[col] = np.nan
    if headers:
        _add_headers(index, report)
    return index[COLUMNS]


def _add_lesion_labels(index: pd.DataFrame, report: IndexReport) -> None:
    """Lesion classes present in each image, from its MASK or decoded OVERLAY; no-stroke images have none."""
    no_stroke = index.class_name == "no_stroke"
    index.loc[no_stroke, ["has_ischemic", "has_hemorrhagic"]] = 0
    for i in np.flatnonzero(((index["mask"] != "") | (index.overlay != "")).to_numpy()):
        row = index.iloc[i].to_dict()
        try:
            class_map = load_class_map(row)
        except BadInputError as err:
            report.skipped.append((err.path, f"lesion labels unknown: {err.problem}"))
            continue
        index.loc[i, "has_ischemic"] = int((class_map == 1).any())
        index.loc[i, "has_hemorrhagic"] = int((class_map == 2).any())


def _add_headers(index: pd.DataFrame, report: IndexReport) -> None:
    for i in np.flatnonzero((index.dicom != "").to_numpy()):
        try:
            header = read_dicom_header(index.at[i, "dicom"])
        except BadInputError as err:
            report.skipped.append((err.path, f"patient id unknown: {err.problem}"))
            continue
        index.loc[i, ["patient_id", "study_uid", "series_uid"]] = [
            header["PatientID"], header["StudyInstanceUID"], header["SeriesInstanceUID"]]
        index.loc[i, ORDER_COLUMNS] = [header[col] for col in ORDER_COLUMNS]


def group_ids(index: pd.DataFrame) -> pd.Series:
    """The grouping key for folds: patient, else study, else series, else the image itself."""
    group = index["patient_id"].where(index["patient_id"] != "", index["study_uid"])
    group = group.where(group != "", index["series_uid"])
    return group.where(group != "", "image-" + index["image_id"].astype(str))


def lesion_type(index: pd.DataFrame) -> pd.Series:
    """'none' | 'ischemic' | 'hemorrhagic' | 'both' from the lesion columns (the folder when unknown)."""
    isc, hem = index["has_ischemic"], index["has_hemorrhagic"]
    out = pd.Series("none", index=index.index)
    out[isc == 1] = "ischemic"
    out[hem == 1] = "hemorrhagic"
    out[(isc == 1) & (hem == 1)] = "both"
    unknown = (isc < 0) | (hem < 0)
    out[unknown] = index.loc[unknown, "class_name"].replace({"no_stroke": "none"})
    return out


# ---- cache: the index of a large data set takes a minute (masks, overlays, headers); reuse it ----

def _signature(records: pd.DataFrame, answer_keys: dict, lesion_labels: bool, headers: bool) -> str:
    digest = hashlib.sha1(f"v{INDEX_VERSION}/{lesion_labels}/{headers}".encode())
    for path in sorted(records.path.tolist() + [str(p) for p in answer_keys.values()]):
        digest.update(f"{path}\0{_file_stamp(path)}\n".encode())
    return digest.hexdigest()


def _file_stamp(path: str) -> str:
    """Size and mtime of a file; of the link itself for a dangling symlink or a symlink loop (the up-front
    check and the readers name those files: indexing must not die on them)."""
    for stat in (os.stat, os.lstat):
        try:
            info = stat(path)
            return f"{'' if stat is os.stat else 'link '}{info.st_size}\0{info.st_mtime_ns}"
        except OSError:
            continue
    return "missing"


def _cache_paths(root: Path) -> tuple[Path, Path]:
    return root / ".strokekit" / "index.csv", root / ".strokekit" / "index.json"


def _read_cache(root: Path, signature: str) -> tuple[pd.DataFrame, list[tuple[str, str]]] | None:
    table, meta = _cache_paths(root)
    try:
        info = json.loads(meta.read_text())
        if info["signature"] != signature:
            return None
        index = pd.read_csv(table, keep_default_na=False, dtype={"patient_id": str, "study_uid": str,
                                                                 "series_uid": str, "class_name": str})[COLUMNS]
        for col in ORDER_COLUMNS:  # written as '' when unknown; keep_default_na reads that back as ''
            index[col] = pd.to_numeric(index[col], errors="coerce")
        return index, [(str(path), str(why)) for path, why in info.get("skipped", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(root: Path, signature: str, index: pd.DataFrame, skipped: list[tuple[str, str]]) -> None:
    table, meta = _cache_paths(root)
    try:
        table.parent.mkdir(exist_ok=True)
        write_atomic(table, lambda f: index.to_csv(f, index=False), text=True)
        write_text_atomic(meta, json.dumps({"signature": signature, "skipped": skipped}))
    except OSError:
        pass  # a read-only data set simply is not cached
