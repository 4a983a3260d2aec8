"""k-fold splits: stratified by class and lesion type, grouped by patient so no patient straddles a split.

The folds CSV (image_id, fold, group, stratum) is written once by kfold.py and read by every later stage.
The groups come from DICOM headers or, where they give none, from image similarity (grouping.py):
`fold_groups(index, group_by)` chooses.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from strokekit.atomic import write_atomic
from strokekit.data.index import group_ids, lesion_type
from strokekit.data.grouping import SimilarityParams, link_groups, similarity_groups
from strokekit.errors import UserError

FOLD_COLUMNS = ["image_id", "fold", "group", "stratum"]
GROUP_BY = ("auto", "dicom", "similarity", "none")


class FoldsError(UserError, ValueError):
    """A folds file that does not match the data index."""


def strata(index: pd.DataFrame) -> pd.Series:
    """Stratification label: folder class x lesion type, e.g. 'ischemic/both' (covers every task)."""
    return index["class_name"] + "/" + lesion_type(index)


@dataclass
class Grouping:
    """The fold groups of the training images (in index order), where they came from, and the similarity table."""
    groups: pd.Series
    source: str                       # 'dicom' | 'similarity' | 'dicom+similarity' | 'none'
    reason: str
    table: pd.DataFrame | None = None  # grouping.similarity_groups' rows when images were compared


def fold_groups(index: pd.DataFrame, group_by: str = "auto", n_folds: int = 5,
                params: SimilarityParams = SimilarityParams(), workers: int = 1,
                max_group: int | None = None) -> Grouping:
    """Groups for the folds. dicom: PatientID, else study, else series UID, else the image; similarity: from
    the images only (headers ignored); none: every image alone (a random split); auto: the headers when every
    training image has one and they group (>= n_folds groups, some with several slices), otherwise similarity,
    joined with whatever header ids there are. max_group caps the similarity groups (default half a fold,
    0 = no cap)."""
    if group_by not in GROUP_BY:
        raise FoldsError(f"unknown grouping {group_by!r}; choose one of {', '.join(GROUP_BY)}")
    train = index[index["split"] == "train"].reset_index(drop=True)
    if group_by == "none":
        return Grouping("image-" + train["image_id"].astype(str), "none", "every image its own group")
    header = group_ids(train)
    if group_by == "dicom":
        return Grouping(header, "dicom", "DICOM PatientID / StudyInstanceUID / SeriesInstanceUID")
    has_header = ~header.str.startswith("image-")
    n_header = header[has_header].nunique()
    if group_by == "auto" and has_header.all() and n_folds <= n_header < len(train):
        return Grouping(header, "dicom", f"DICOM headers give {n_header} patients/series")
    if max_group is None:
        max_group = max(2, len(train) // (2 * n_folds))
    table = similarity_groups(train, params, workers, max_group)
    if group_by == "similarity":
        return Grouping(table["group"], "similarity", "image similarity (headers ignored)", table)
    without = train.loc[~has_header, "image_id"].astype(int).tolist()
    named = ", ".join(map(str, without[:5])) + (f" and {len(without) - 5} more" if len(without) > 5 else "")
    why = ("no training image has DICOM patient/study/series ids" if not has_header.any() else
           f"DICOM ids on {int(has_header.sum())} of {len(train)} images, {n_header} distinct"
           + (f"; none for image {named} (no DICOM file, or one whose header could not be read: see the "
              "skipped files)" if without else ""))
    if not has_header.any() or n_header < n_folds or n_header == has_header.sum():
        return Grouping(table["group"], "similarity", f"{why}: grouped by image similarity", table)
    labels = link_groups(len(train), _member_pairs(table["group"]), _member_pairs(header.where(has_header)))
    groups = pd.Series([f"sim-{k:05d}" for k in labels])
    table = table.assign(group=groups, group_size=groups.map(groups.value_counts()).to_numpy())
    return Grouping(groups, "dicom+similarity", f"{why}: image similarity joined with the header ids", table)


def _member_pairs(labels: pd.Series) -> np.ndarray:
    """Pairs (i, i') chaining the members of each label (NaN: none) - enough to keep each label's rows joined."""
    codes = pd.factorize(labels)[0]
    order = np.argsort(codes, kind="stable")
    same = (codes[order][1:] == codes[order][:-1]) & (codes[order][1:] >= 0)
    return np.stack([order[:-1][same], order[1:][same]], axis=1)


def make_folds(index: pd.DataFrame, n_folds: int = 5, seed: int = 42, groups: pd.Series | None = None
               ) -> pd.DataFrame:
    """Assign every training image a fold; groups (patients) stay whole, strata stay balanced.

    `groups`: one label per training image in index order (fold_groups(...).groups); default the DICOM ids."""
    train = index[index["split"] == "train"].reset_index(drop=True)
    if len(train) < n_folds:
        raise FoldsError(f"{len(train)} training images cannot make {n_folds} folds")
    if groups is None:
        groups = group_ids(train)
    elif len(groups) != len(train):
        raise FoldsError(f"{len(groups)} group labels for {len(train)} training images")
    groups = pd.Series(np.asarray(groups, dtype=object), index=train.index)
    if groups.nunique() < n_folds:
        raise FoldsError(f"only {groups.nunique()} patients/groups: fewer than {n_folds} folds")
    labels = strata(train)
    # a stratum too rare to reach every fold joins its class's most common stratum (sklearn warns otherwise)
    counts = labels.value_counts()
    common = labels[labels.map(counts) >= n_folds].groupby(train["class_name"]).agg(lambda s: s.mode()[0])
    rare = labels.map(counts) < n_folds
    labels = labels.where(~rare, train["class_name"].map(common).fillna(labels))
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = pd.Series(-1, index=train.index)
    for k, (_, val) in enumerate(splitter.split(train, labels, groups)):
        folds.iloc[val] = k
    return pd.DataFrame({"image_id": train["image_id"], "fold": folds, "group": groups,
                         "stratum": strata(train)})[FOLD_COLUMNS]


def write_folds(folds: pd.DataFrame, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: folds.to_csv(f, index=False), text=True)


def read_folds(path: str | os.PathLike, index: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read a folds CSV; with `index`, check it covers exactly the index's training images."""
    path = Path(path)
    if not path.is_file():
        raise FoldsError(f"folds file {path} does not exist: run `python kfold.py --data <data>` first")
    folds = pd.read_csv(path, dtype={"group": str, "stratum": str})
    missing_cols = set(FOLD_COLUMNS) - set(folds.columns)
    if missing_cols:
        raise FoldsError(f"{path} lacks columns {sorted(missing_cols)}; rewrite it with kfold.py")
    if index is not None:
        check_folds(folds, index, source=str(path))
    return folds


def check_folds(folds: pd.DataFrame, index: pd.DataFrame, source: str = "folds") -> None:
    train_ids = set(index.loc[index["split"] == "train", "image_id"])
    fold_ids = set(folds["image_id"])
    if train_ids != fold_ids:
        extra, missing = sorted(fold_ids - train_ids), sorted(train_ids - fold_ids)
        raise FoldsError(f"{source} does not match the data index: {len(missing)} training ids missing "
                         f"(e.g. {missing[:5]}), {len(extra)} unknown ids (e.g. {extra[:5]}). "
                         "Rerun kfold.py for this data set.")
    split_groups = folds.groupby("group")["fold"].nunique()
    if (split_groups > 1).any():
        raise FoldsError(f"{source}: groups on both sides of a split: {list(split_groups[split_groups > 1].index[:5])}")
