"""k-fold splits: stratified by class and lesion type, grouped by patient so no patient straddles a split.

The folds CSV (image_id, fold, group, stratum) is written once by kfold.py and read by every later stage.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .atomic import write_atomic
from .data.index import group_ids, lesion_type

FOLD_COLUMNS = ["image_id", "fold", "group", "stratum"]


class FoldsError(ValueError):
    """A folds file that does not match the data index."""


def strata(index: pd.DataFrame) -> pd.Series:
    """Stratification label: folder class x lesion type, e.g. 'ischemic/both' (covers every task)."""
    return index["class_name"] + "/" + lesion_type(index)


def make_folds(index: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign every training image a fold; groups (patients) stay whole, strata stay balanced."""
    train = index[index["split"] == "train"].reset_index(drop=True)
    if len(train) < n_folds:
        raise FoldsError(f"{len(train)} training images cannot make {n_folds} folds")
    groups = group_ids(train)
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
