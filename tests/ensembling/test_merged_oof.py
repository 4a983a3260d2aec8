"""merged_oof.py: one runs/<config>/oof.csv | oof.npz beside the per-fold files, rewritten when a fold changes,
never read in place of the fold files it was made from (a stale one cannot hide a re-trained fold)."""
import os

import numpy as np
import pandas as pd

from strokekit.ensembling import merged_oof
from strokekit.ensembling.selection import load_oof


def write_fold(run, k, ids, prob):
    (run / f"fold{k}").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image_id": ids, "fold": k, "target": [i % 2 for i in ids], "prob": prob}).to_csv(
        run / f"fold{k}" / "oof.csv", index=False)


def test_classifier_merge_refresh_and_precedence(tmp_path):
    run = tmp_path / "runs" / "cls"
    write_fold(run, 0, [4, 2], [0.1, 0.2])
    write_fold(run, 1, [3, 1], [0.3, 0.4])
    path = merged_oof.refresh(run)
    assert path == run / "oof.csv"
    merged = pd.read_csv(path)
    assert merged["image_id"].tolist() == [1, 2, 3, 4] and merged["fold"].tolist() == [1, 0, 1, 0]
    assert merged_oof.is_current(run)
    stamp = path.stat().st_mtime_ns
    assert merged_oof.refresh(run) == path and path.stat().st_mtime_ns == stamp  # current: left alone

    write_fold(run, 1, [3, 1], [0.9, 0.8])  # fold 1 re-trained: the merged file is now stale
    os.utime(run / "fold1" / "oof.csv", ns=(stamp + 10**9, stamp + 10**9))
    assert not merged_oof.is_current(run)
    assert load_oof(run)["prob"].tolist() == [0.8, 0.2, 0.9, 0.1]  # the fold files, not the stale merge
    merged_oof.refresh(run)
    assert pd.read_csv(path)["prob"].tolist() == [0.8, 0.2, 0.9, 0.1]

    write_fold(run, 2, [5], [0.5])  # a fold added: its folds differ even if mtimes would not tell
    os.utime(run / "fold2" / "oof.csv", ns=(stamp, stamp))
    os.utime(path, ns=(stamp + 2 * 10**9, stamp + 2 * 10**9))
    assert not merged_oof.is_current(run)
    assert merged_oof.refresh(run) and sorted(set(pd.read_csv(path)["fold"])) == [0, 1, 2]

    alone = tmp_path / "shared_oof"  # only the merged file (e.g. shared without its folds): read as the run
    alone.mkdir()
    (alone / "oof.csv").write_bytes(path.read_bytes())
    assert load_oof(alone)["image_id"].tolist() == [1, 2, 3, 4, 5]


def test_seg_merge_is_npz_with_folds(tmp_path):
    run = tmp_path / "seg"
    rng = np.random.default_rng(0)
    for k, ids in ((0, [7, 5]), (1, [6])):
        (run / f"fold{k}").mkdir(parents=True)
        np.savez(run / f"fold{k}" / "oof.npz", image_id=np.array(ids),
                 probs=rng.random((len(ids), 3, 4, 4)).astype(np.float16), fold=np.full(len(ids), k))
    path = merged_oof.refresh(run)
    assert path == run / "oof.npz"
    with np.load(path) as data:
        assert data["image_id"].tolist() == [5, 6, 7] and data["fold"].tolist() == [0, 1, 0]
        assert data["probs"].shape == (3, 3, 4, 4)
    assert merged_oof.is_current(run)
    assert merged_oof.refresh(tmp_path / "empty") is None
