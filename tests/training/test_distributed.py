"""train.py under torchrun: two CPU processes (gloo) train with DistributedDataParallel, rank 0 writes one OOF
file holding every validation image once, the metric lands close to a one-process run with the same seed and
global batch, and a fold left unfinished by one process is resumed by two. The distributed samplers deal out
the one-process global batches; launch mistakes fail with a one-line error."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import train
from strokekit.config import load_config
from strokekit.data.dataset import BalancedSampler, LesionBatchSampler, shard_of_batches
from strokekit.training.loader import ShardSampler
from strokekit.data.index import build_index
from strokekit.training.engine import train_fold
from strokekit.data.folds import read_folds
from strokekit.evaluation.metrics import roc_auc
from strokekit.training.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny_stroke.yaml"
# The balanced sampler draws one global sequence that both runs cut into the same global batches (shards of
# them under torchrun), and without augmentation the two runs differ only in BatchNorm statistics, taken per
# process over half a batch (SyncBatchNorm, which would make them equal, runs on GPUs only).
SETS = ["img_size=64", "epochs=2", "sampler=balanced", "aug.hflip=0", "aug.shift_scale_rotate=0"]


def train_args(data: Path, out: Path, fold: str, *extra: str) -> list[str]:
    return ["--config", str(CONFIG), "--fold", fold, "--data", str(data), "--out", str(out), "--no-progress",
            *extra, "--set", *SETS]


def batches(order: list[int], size: int) -> list[list[int]]:
    return [sorted(order[k:k + size]) for k in range(0, len(order) - size + 1, size)]


def test_distributed_samplers_deal_out_the_one_process_batches():
    labels = np.r_[np.zeros(37, int), np.ones(14, int)]
    one = BalancedSampler(labels, seed=5)
    ranks = [BalancedSampler(labels, seed=5, batch_size=8, rank=r, world=2) for r in (0, 1)]
    for sampler in (one, *ranks):
        sampler.set_epoch(3)
    shares = [list(s) for s in ranks]
    assert [len(s) for s in shares] == [len(s) for s in ranks] == [24, 24]  # 6 full global batches of 8
    joined = [sorted(a + b) for a, b in zip(batches(shares[0], 4), batches(shares[1], 4))]
    assert joined == batches(list(one), 8)

    has_lesion = np.arange(40) % 3 == 0
    one = list(LesionBatchSampler(has_lesion, 8, 0.5, seed=2))
    ranks = [list(LesionBatchSampler(has_lesion, 8, 0.5, seed=2, rank=r, world=2)) for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(b) for b in one] and len(ranks[0]) == len(one) == 5
    assert all(len(b) == 4 and has_lesion[b].sum() == 2 for share in ranks for b in share)  # 2 lesions each

    for n in (0, 1, 5, 122):
        for world in (1, 2, 3):
            tiles = [i for rank in range(world) for i in ShardSampler(n, rank, world)]
            assert tiles == list(range(n))  # every image once, no padding, in order
    assert shard_of_batches([7, 8, 9], 4, 1, 2) == [8, 7]  # shorter than a batch: repeated to fill one


@pytest.mark.parametrize("sets, message", [(["batch_size=15"], "divide evenly over 2"),
                                           (["sync_bn=true"], "GPUs only")])
def test_a_bad_launch_fails_with_one_line(sets, message, train_phantom, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert train.main(train_args(train_phantom, tmp_path, "0") + sets) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "tiny_stroke").exists()


class StopAfterFirstEpoch(Exception):
    pass


def stop(epoch: int, row: dict) -> None:
    raise StopAfterFirstEpoch


def validation_rows(data: Path, fold: int) -> pd.DataFrame:
    index, _ = build_index(data)
    folds = read_folds(data / "folds.csv", index)
    return get_task("stroke").split(index, folds, fold, load_config(CONFIG, SETS))[1]


def test_two_processes_write_the_whole_oof_and_match_one(train_phantom, tmp_path, one_thread):
    one, two = tmp_path / "one", tmp_path / "two"
    assert train.main(train_args(train_phantom, one, "0")) == 0  # the one-process reference, fold 0
    # fold 1 stopped after epoch 1 by one process (as tune.py prunes); folds 2-4 already done
    cfg = load_config(CONFIG, SETS + [f"data={train_phantom}"])
    index, _ = build_index(train_phantom)
    with pytest.raises(StopAfterFirstEpoch):
        train_fold(cfg, index, read_folds(train_phantom / "folds.csv", index), 1, two / "tiny_stroke" / "fold1",
                   progress=False, log=lambda *a: None, on_epoch_end=stop)
    for fold in (2, 3, 4):
        (two / "tiny_stroke" / f"fold{fold}").mkdir(parents=True)
        (two / "tiny_stroke" / f"fold{fold}" / "done").write_text("")

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "train.py"), *train_args(train_phantom, two, "all", "--resume")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout  # rank 0 alone speaks: each line once
    assert out.count("fold 0 epoch 1/2") == out.count("fold 1 epoch 2/2") == 1 and "fold 1 epoch 1/2" not in out
    assert "fold 1: resumed after epoch 1" in out and out.count("done exists, skipping") == 3
    assert all(not (two / "tiny_stroke" / f"fold{k}" / "oof.csv").exists() for k in (2, 3, 4))

    for fold in (0, 1):
        run_dir = two / "tiny_stroke" / f"fold{fold}"
        assert (run_dir / "done").exists() and not list(run_dir.glob(".*.tmp*"))
        assert pd.read_csv(run_dir / "log.csv")["epoch"].tolist() == [1, 2]
        oof, val = pd.read_csv(run_dir / "oof.csv"), validation_rows(train_phantom, fold)
        # every validation image exactly once, in the one-process order (no DistributedSampler padding)
        assert oof["image_id"].tolist() == val["image_id"].tolist() and oof["image_id"].is_unique
        assert oof["target"].tolist() == (val["class_name"] != "no_stroke").astype(int).tolist()
        assert (oof["fold"] == fold).all()
        summary = pd.read_json(run_dir / "summary.json", typ="series")
        assert summary["world_size"] == 2 and summary["batch_per_process"] * 2 == cfg["batch_size"]
        assert roc_auc(oof["target"], oof["prob"]) == pytest.approx(summary["final_metrics"]["auc"])

    # two processes and one, same seed and global batch: the same training, up to BatchNorm statistics
    ref = pd.read_csv(one / "tiny_stroke" / "fold0" / "oof.csv")
    got = pd.read_csv(two / "tiny_stroke" / "fold0" / "oof.csv")
    assert abs(roc_auc(got["target"], got["prob"]) - roc_auc(ref["target"], ref["prob"])) < 0.05
    assert np.corrcoef(got["prob"], ref["prob"])[0, 1] > 0.8
    loss_one = pd.read_csv(one / "tiny_stroke" / "fold0" / "log.csv")["train_loss"]
    loss_two = pd.read_csv(two / "tiny_stroke" / "fold0" / "log.csv")["train_loss"]
    assert loss_two[0] == pytest.approx(loss_one[0], rel=0.02)  # the same batches, averaged gradients
