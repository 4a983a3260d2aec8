"""Folds without patient ids: groups from image similarity keep every phantom patient whole."""
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import kfold
from strokekit.data.index import build_index
from strokekit.data.folds import fold_groups, make_folds, read_folds
from strokekit.data.grouping import (MIN_HASH_BITS, SimilarityParams, capped_groups, dhash, group_summary,
                                     hamming_pairs, head_pose, link_groups, similarity_groups, slice_grey)
from strokekit.phantom.dataset import TRUTH_CSV


def truth_patients(root, image_ids) -> pd.Series:
    truth = pd.read_csv(root / TRUTH_CSV).set_index("id")
    return pd.Series(image_ids).map(truth["patient"]).reset_index(drop=True)


def split_patients(groups, patients) -> int:
    """How many patients have slices in more than one group (or fold)."""
    return int((pd.Series(np.asarray(groups)).groupby(patients.to_numpy()).nunique() > 1).sum())


@pytest.fixture(scope="module")
def phantom_index(train_phantom):
    index, _ = build_index(train_phantom)
    return index


@pytest.fixture(scope="module")
def similarity(phantom_index):
    return fold_groups(phantom_index, "similarity", n_folds=5)


def test_similarity_groups_keep_patients_whole(train_phantom, phantom_index, similarity):
    train = phantom_index[phantom_index.split == "train"].reset_index(drop=True)
    patients = truth_patients(train_phantom, train.image_id)
    assert similarity.source == "similarity" and similarity.table.image_id.tolist() == train.image_id.tolist()
    assert split_patients(similarity.groups, patients) == 0
    sizes = similarity.groups.value_counts()
    assert len(sizes) >= 0.4 * patients.nunique()          # grouped, not merged into a few lumps
    assert sizes.max() <= 0.6 * len(train) / 5              # no group near a fold's size
    # a random split, by contrast, puts most patients on both sides
    random = make_folds(phantom_index, 5, seed=0, groups=fold_groups(phantom_index, "none").groups)
    assert split_patients(random.fold, patients) > 0.5 * patients.nunique()


def test_grouped_folds_never_split_a_patient_and_stay_stratified(train_phantom, phantom_index, similarity):
    folds = make_folds(phantom_index, 5, seed=3, groups=similarity.groups)
    patients = truth_patients(train_phantom, folds.image_id)
    assert split_patients(folds.fold, patients) == 0
    assert (folds.groupby("group").fold.nunique() == 1).all()
    share = pd.crosstab(folds.fold, folds.stratum.str.split("/").str[0], normalize="columns")
    assert (share.max() - share.min()).max() < 0.15         # each class spread roughly evenly
    assert folds.fold.value_counts().min() >= 0.6 * len(folds) / 5


@pytest.mark.parametrize("case", ["same_id", "unique_ids"])   # headers stripped: test_kfold_cli_with_headers_stripped
def test_auto_without_usable_headers_groups_by_images(train_phantom, phantom_index, case):
    index = phantom_index.copy()
    if case == "same_id":          # anonymised to one id: one group, fewer than the folds
        index["patient_id"] = "ANONYMOUS"
    else:                          # a fresh id per slice: groups nothing
        index["patient_id"] = "ANON" + index.image_id.astype(str)
    grouping = fold_groups(index, "auto", n_folds=5)
    assert grouping.source == "similarity"
    folds = make_folds(index, 5, seed=1, groups=grouping.groups)
    assert split_patients(folds.fold, truth_patients(train_phantom, folds.image_id)) == 0
    assert fold_groups(phantom_index, "auto", n_folds=5).source == "dicom"   # intact headers are used


def test_partial_headers_join_with_similarity(train_phantom, phantom_index):
    index = phantom_index.copy()
    train = index.split == "train"
    half = train & (index.image_id % 2 == 0)
    index.loc[half, ["patient_id", "study_uid", "series_uid"]] = ""
    grouping = fold_groups(index, "auto", n_folds=5)
    assert grouping.source == "dicom+similarity"
    rows = index[train].reset_index(drop=True)
    kept = (rows.patient_id != "").to_numpy()
    assert (grouping.groups[kept].groupby(rows.patient_id[kept]).nunique() == 1).all()   # header ids kept whole
    assert split_patients(grouping.groups, truth_patients(train_phantom, rows.image_id)) == 0


def test_near_duplicates_share_a_hash_and_one_group(train_phantom, phantom_index):
    train = phantom_index[phantom_index.split == "train"].head(40).reset_index(drop=True)
    grey = slice_grey(train.iloc[4].to_dict())
    noisy = np.clip(grey + np.random.default_rng(0).integers(-2, 3, grey.shape), 0, 255).astype(np.uint8)
    codes = np.stack([dhash(Image.fromarray(slice_grey(row))) for row in train.to_dict("records")]
                     + [dhash(Image.fromarray(noisy))])
    pairs = hamming_pairs(codes, SimilarityParams().dup_bits, min_set=MIN_HASH_BITS)
    assert [tuple(p) for p in pairs] == [(4, 40)]        # the re-saved copy, and no two different slices
    twin = train.iloc[[4]].assign(image_id=99999)         # the same slice under a second id
    table = similarity_groups(pd.concat([train, twin], ignore_index=True))
    assert table.group.iloc[4] == table.group.iloc[-1]


def test_hamming_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**63, size=(300, 4), dtype=np.uint64)
    codes[10] = codes[20] ^ np.uint64(0b101)                          # 2 bits apart
    codes[30] = codes[40] ^ np.uint64(0b111 << 60)                    # 3 bits apart
    bits = np.unpackbits(codes.view(np.uint8), axis=1)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    for max_bits in (2, 3, 110):
        i, j = np.nonzero(np.triu(dist <= max_bits, k=1))
        got = hamming_pairs(codes, max_bits, block=37)
        assert sorted(map(tuple, got)) == sorted(zip(i, j))
    assert len(hamming_pairs(codes, -1)) == 0


def test_head_pose_follows_the_head_and_ignores_a_thin_holder():
    yy, xx = np.mgrid[0:128, 0:128] + 0.5
    def head(cx, cy, angle, arc=False):
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        grey = np.where((u / 30) ** 2 + (v / 40) ** 2 <= 1, 120, 0).astype(np.uint8)
        if arc:  # a 1-px line touching the back of the head, enclosing a thin crescent of air
            ring = np.abs(np.hypot(u / 33, (v - 2) / 42) - 1) < 0.012
            grey[ring & (v > 20)] = 255
        return grey
    a, b = head(64, 64, 0.0), head(70, 58, 0.15)
    pa, pb = head_pose(a), head_pose(b)
    assert abs(pa[0]) < 0.01 and abs(pa[1]) < 0.01 and abs(pa[2]) < 0.01 and abs(pa[3] - 0.75) < 0.02
    assert pb[0] == pytest.approx(6 / 64, abs=0.01) and pb[1] == pytest.approx(-6 / 64, abs=0.01)
    assert abs(abs(pb[2]) - 0.15) < 0.02
    assert np.allclose(head_pose(head(64, 64, 0.0, arc=True)), pa, atol=0.005)
    assert np.isnan(head_pose(np.zeros((64, 64), np.uint8))).all()
    assert (dhash(Image.fromarray(a)) == dhash(Image.fromarray(a.copy()))).all()


def test_link_groups_capped_groups_and_summary():
    labels = link_groups(6, np.array([[0, 1], [1, 2]]), np.array([[4, 5]]))
    assert labels[0] == labels[1] == labels[2] and labels[4] == labels[5] and len(set(labels)) == 3
    chain, dist = np.array([[2, 3], [0, 1], [1, 2], [3, 4]]), np.array([0.9, 0.1, 0.2, 0.1])
    capped, refused = capped_groups(5, chain, dist, max_group=3)      # closest first: the 0.9 link is refused
    assert refused == 1 and len(set(capped[:3])) == 1 and capped[3] == capped[4] != capped[0]
    whole, refused = capped_groups(5, chain, dist, max_group=0)
    assert refused == 0 and len(set(whole)) == 1
    text = group_summary(pd.Series(["a"] * 8 + ["b", "c"]), n_folds=5)
    assert "3 groups over 10 images" in text and "1: 2" in text and "8-15: 1" in text and "warning" in text


def test_kfold_cli_with_headers_stripped(train_phantom, tmp_path, capsys):
    import pydicom

    data = tmp_path / "data"
    shutil.copytree(train_phantom, data, ignore=shutil.ignore_patterns(".strokekit", "folds.csv"))
    for path in data.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        for key in ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID"):
            delattr(ds, key)
        ds.save_as(path, enforce_file_format=True)
    assert kfold.main(["--data", str(data), "--folds", "5", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "groups: similarity" in out and "groups by size" in out and "groups found" in out
    folds = read_folds(data / "folds.csv")
    assert split_patients(folds.fold, truth_patients(data, folds.image_id)) == 0
    groups = pd.read_csv(data / "folds.groups.csv")
    assert {"image_id", "group", "group_size", "centre_x", "tilt", "dhash"} <= set(groups.columns)
    assert groups.set_index("image_id").group.loc[folds.image_id].tolist() == folds.group.tolist()
    assert kfold.main(["--data", str(data), "--group-by", "none", "--out", str(tmp_path / "r.csv")]) == 0
    assert pd.read_csv(tmp_path / "r.csv").group.nunique() == len(folds)
    assert not (tmp_path / "r.groups.csv").exists()


def test_kfold_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        kfold.main(["--help"])
    assert done.value.code == 0 and "--group-by" in capsys.readouterr().out
    assert kfold.main(["--data", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error:")
    with pytest.raises(SystemExit) as done:
        kfold.main(["--data", str(tmp_path), "--group-by", "patients"])
    assert done.value.code == 2
