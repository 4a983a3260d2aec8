"""Folds: stratified by class x lesion type, grouped by patient, reproducible, checked against the index."""
import numpy as np
import pandas as pd
import pytest

from strokekit.data.folds import FoldsError, check_folds, make_folds, read_folds, write_folds


def synthetic_index(n_patients=60, seed=0):
    rng = np.random.default_rng(seed)
    rows, image_id = [], 10000
    for p in range(n_patients):
        cls = rng.choice(["no_stroke", "ischemic", "hemorrhagic"], p=[0.6, 0.2, 0.2])
        for _ in range(rng.integers(2, 7)):
            both = cls != "no_stroke" and rng.random() < 0.1
            rows.append({"image_id": image_id, "split": "train", "class_name": cls,
                         "has_ischemic": int(cls == "ischemic" or both),
                         "has_hemorrhagic": int(cls == "hemorrhagic" or both),
                         "patient_id": f"P{p}", "study_uid": "", "series_uid": ""})
            image_id += 1
    rows.append({"image_id": 1, "split": "test1", "class_name": "", "has_ischemic": -1, "has_hemorrhagic": -1,
                 "patient_id": "", "study_uid": "", "series_uid": ""})
    return pd.DataFrame(rows)


def test_groups_never_straddle_and_classes_balance():
    index = synthetic_index()
    folds = make_folds(index, n_folds=5, seed=1)
    assert (folds.groupby("group").fold.nunique() == 1).all()
    assert set(folds.fold) == set(range(5))
    assert 1 not in set(folds.image_id)  # test images get no fold
    share = pd.crosstab(folds.fold, folds.stratum.str.split("/").str[0], normalize="columns")
    assert (share.max() - share.min()).max() < 0.15  # each class spread roughly evenly


def test_reproducible_from_seed_and_seed_matters():
    index = synthetic_index()
    a, b, c = make_folds(index, 5, 3), make_folds(index, 5, 3), make_folds(index, 5, 4)
    assert a.equals(b) and not a.fold.equals(c.fold)


def test_file_round_trip_and_mismatch_detection(tmp_path):
    index = synthetic_index()
    folds = make_folds(index, 5, 0)
    write_folds(folds, tmp_path / "folds.csv")
    back = read_folds(tmp_path / "folds.csv", index)
    assert back.image_id.tolist() == folds.image_id.tolist() and back.fold.tolist() == folds.fold.tolist()
    with pytest.raises(FoldsError, match="does not match the data index"):
        check_folds(folds.iloc[1:], index)
    broken = folds.copy()
    first_group = broken.group.iloc[0]
    broken.loc[broken.group == first_group, "fold"] = [0, 1] + [0] * ((broken.group == first_group).sum() - 2)
    with pytest.raises(FoldsError, match="both sides"):
        check_folds(broken, index)
    with pytest.raises(FoldsError, match="kfold.py"):
        read_folds(tmp_path / "missing.csv")


def test_too_few_groups():
    with pytest.raises(FoldsError, match="fewer than 5 folds"):
        make_folds(synthetic_index(n_patients=3), 5)


def test_explicit_groups_are_kept_whole_and_checked():
    from strokekit.data.folds import fold_groups

    index = synthetic_index()
    train = index[index.split == "train"].reset_index(drop=True)
    coarse = "G" + (train.patient_id.str[1:].astype(int) // 3).astype(str)   # three patients per group
    folds = make_folds(index, 5, seed=2, groups=coarse)
    assert folds.group.tolist() == coarse.tolist()
    assert (folds.groupby("group").fold.nunique() == 1).all()
    with pytest.raises(FoldsError, match="group labels for"):
        make_folds(index, 5, groups=coarse.iloc[1:])
    alone = fold_groups(index, "none")
    assert alone.source == "none" and alone.groups.nunique() == len(train)
    assert fold_groups(index, "auto").source == "dicom"          # every image has a PatientID that groups
    with pytest.raises(FoldsError, match="unknown grouping"):
        fold_groups(index, "patients")
