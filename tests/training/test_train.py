"""train.py end to end on a 128-px phantom, on the CPU: each task trains fold 0 with its tiny config, writes
the run directory and OOF predictions that match the folds file, and learns; a killed run resumes exactly."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import train
from strokekit.models.checkpoint import read_checkpoint
from strokekit.config import load_config
from strokekit.training.loader import make_loader
from strokekit.data.index import build_index
from strokekit.data.readers import load_class_map
from strokekit.training.validation import predict_loader
from strokekit.data.folds import read_folds
from strokekit.evaluation.metrics import roc_auc
from strokekit.models.registry import load_checkpoint
from strokekit.training.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]
RUN_FILES = {"config.yaml", "log.csv", "curves.png", "best.pt", "last.pt", "summary.json", "done"}


def train_fold0(config: str, data: Path, out: Path, *overrides: str) -> Path:
    args = ["--config", str(ROOT / "configs" / config), "--fold", "0", "--data", str(data), "--out", str(out),
            "--no-progress"]
    assert train.main(args + (["--set", *overrides] if overrides else [])) == 0
    return out / Path(config).stem / "fold0"


def validation_rows(data: Path, task: str) -> pd.DataFrame:
    index, _ = build_index(data)
    folds = read_folds(data / "folds.csv", index)
    cfg = load_config(None, [f"task={task}"])
    return get_task(task).split(index, folds, 0, cfg)[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on a busy 2-core runner


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def stroke_run(train_phantom, runs) -> Path:
    return train_fold0("tiny_stroke_aux.yaml", train_phantom, runs)


@pytest.fixture(scope="module")
def type_run(train_phantom, runs) -> Path:
    return train_fold0("tiny_type_aux.yaml", train_phantom, runs)


@pytest.fixture(scope="module")
def seg_run(train_phantom, runs) -> Path:
    """tiny_seg for 4 of its 8 epochs: its any-lesion Dice on fold 0 is ~0.6 by then (0.73 after 8), three
    times test_seg_run_dir_oof_and_dice's 0.2."""
    return train_fold0("tiny_seg.yaml", train_phantom, runs, "epochs=4")


def check_run_dir(run_dir: Path, oof_name: str) -> dict:
    assert RUN_FILES | {oof_name} <= {p.name for p in run_dir.iterdir()}
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    log = pd.read_csv(run_dir / "log.csv")
    assert log["epoch"].tolist() == list(range(1, cfg["epochs"] + 1))
    summary = yaml.safe_load((run_dir / "summary.json").read_text())
    assert summary["best_epoch"] in log["epoch"].tolist()
    assert summary["best_metric"] == pytest.approx(log[summary["metric"]].max())
    ckpt = read_checkpoint(run_dir / "best.pt")
    assert ckpt["epoch"] == summary["best_epoch"] and ckpt["config"] == cfg
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == cfg["epochs"]
    return summary


@pytest.mark.parametrize("task", ["stroke", "type"])
def test_classifier_run_dir_and_oof(task, request, train_phantom):
    run_dir = request.getfixturevalue(f"{task}_run")
    summary = check_run_dir(run_dir, "oof.csv")
    oof = pd.read_csv(run_dir / "oof.csv")
    assert list(oof.columns) == ["image_id", "fold", "target", "prob"]
    val = validation_rows(train_phantom, task)
    assert oof["image_id"].tolist() == val["image_id"].tolist() and (oof["fold"] == 0).all()
    positive = "hemorrhagic" if task == "type" else None
    truth = (val["class_name"] == positive) if positive else (val["class_name"] != "no_stroke")
    assert oof["target"].tolist() == truth.astype(int).tolist()
    assert oof["prob"].between(0, 1).all() and oof["prob"].std() > 0
    # the OOF file is the best checkpoint's prediction: its AUC is the summary's final AUC
    assert roc_auc(oof["target"], oof["prob"]) == pytest.approx(summary["final_metrics"]["auc"])


@pytest.mark.parametrize("task", ["stroke", "type"])
def test_classifier_beats_chance_on_the_held_out_fold(task, request):
    """tiny_stroke_aux / tiny_type_aux (DICOM windows + the lesion-location loss) on the patients of fold 0
    (bench/aux_seg.py: every fold and two seeds clear 0.8; the PNG-only tiny configs mostly do not)."""
    oof = pd.read_csv(request.getfixturevalue(f"{task}_run") / "oof.csv")
    assert roc_auc(oof["target"], oof["prob"]) >= 0.8


def test_stroke_checkpoint_reloaded_gives_back_the_oof(stroke_run, train_phantom):
    """best.pt, reloaded as infer.py loads it (the aux_seg head rebuilt from the config, then unused),
    predicts the validation slices exactly as the OOF file says, and the loss fell while training."""
    log = pd.read_csv(stroke_run / "log.csv")
    assert log["train_loss"].iloc[-1] < 0.7 * log["train_loss"].iloc[0]
    model, cfg = load_checkpoint(stroke_run / "best.pt")
    assert cfg["aux_seg"] > 0 and hasattr(model, "lesion_head")
    val = validation_rows(train_phantom, "stroke")
    task = get_task("stroke")
    loader = make_loader(task.dataset(val, cfg, train=False), cfg, torch.device("cpu"))
    metrics, state = predict_loader(model, loader, task, cfg, torch.device("cpu"), flips=cfg["oof_tta"])
    oof = pd.read_csv(stroke_run / "oof.csv")
    assert np.concatenate(state["ids"]).tolist() == oof["image_id"].tolist()
    assert np.allclose(np.concatenate(state["prob"]), oof["prob"], atol=1e-6)


def test_seg_run_dir_oof_and_dice(seg_run, train_phantom):
    summary = check_run_dir(seg_run, "oof.npz")
    cfg = yaml.safe_load((seg_run / "config.yaml").read_text())
    oof = np.load(seg_run / "oof.npz")
    val = validation_rows(train_phantom, "seg")
    assert oof["image_id"].dtype == np.int64 and oof["image_id"].tolist() == val["image_id"].tolist()
    size = cfg["oof_size"]
    assert oof["probs"].shape == (len(val), 3, size, size) and oof["probs"].dtype == np.float16
    assert np.allclose(oof["probs"].astype(np.float32).sum(axis=1), 1.0, atol=2e-2)
    assert (oof["fold"] == 0).all() and oof["orig_hw"].tolist() == [[128, 128]] * len(val)
    assert summary["final_metrics"]["dice_micro_any_lesion"] > 0.2
    final = summary["final_metrics"]  # the phantom's patients hold several slices: pooled per patient differs
    assert final["iou_patientwise_lesion_mean"] != pytest.approx(final["iou_macro_imagewise_lesion_mean"])
    # the OOF probabilities, upsampled, give back the validation Dice
    pred = torch.nn.functional.interpolate(torch.from_numpy(oof["probs"].astype(np.float32)), size=(128, 128),
                                           mode="bilinear", align_corners=False).argmax(1).numpy()
    truth = np.stack([load_class_map(row) for row in val.to_dict("records")])
    tp = ((pred > 0) & (truth > 0)).sum()
    dice = 2 * tp / ((pred > 0).sum() + (truth > 0).sum())
    # (ids in another order would give about 0; the 64-px OOF loses only the finest lesion edges)
    assert dice > 0.6 * summary["final_metrics"]["dice_micro_any_lesion"]


def _train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "tiny_stroke.yaml"),
            "--fold", "0", "--data", str(data), "--out", str(out), "--no-progress",
            "--set", f"epochs={EPOCHS}", "img_size=64", *extra]


EPOCHS = 6  # epochs ~1 s each: a signal sent after epoch 1 or 2 must still find the run busy on a loaded box
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # the same thread count in every run keeps the sums identical


def _stop_after_epoch(command: list[str], last: Path, epoch: int, sig: int) -> subprocess.CompletedProcess:
    # a job started in the background by a non-interactive shell inherits SIGINT ignored (and Python then
    # installs no KeyboardInterrupt handler): give the child the terminal's default, as a user's Ctrl-C has
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and read_checkpoint(last)["epoch"] >= epoch:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.stdout.read()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(command, proc.returncode, out)


def test_interrupt_then_resume_matches_an_uninterrupted_run(train_phantom, tmp_path, capsys):
    run_dir = tmp_path / "cut" / "tiny_stroke" / "fold0"
    command = _train_command(train_phantom, tmp_path / "cut")
    stopped = _stop_after_epoch(command, run_dir / "last.pt", 1, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stdout[-6000:]
    assert "best auc=" in stopped.stdout and "--resume" in stopped.stdout  # Ctrl-C reports the best epoch
    assert train.main(command[2:]) == 2  # no silent restart over an unfinished run
    assert "--resume" in capsys.readouterr().err
    killed = _stop_after_epoch(command + ["--resume"], run_dir / "last.pt", 2, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    saved = read_checkpoint(run_dir / "last.pt")["epoch"]  # 2, or later if the kill came late
    assert 2 <= saved < EPOCHS
    done = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resumed after epoch {saved}" in done.stdout
    log = pd.read_csv(run_dir / "log.csv")
    assert log["epoch"].tolist() == list(range(1, EPOCHS + 1))
    load_checkpoint(run_dir / "best.pt")
    assert read_checkpoint(run_dir / "last.pt")["epoch"] == EPOCHS
    # the same run without interruptions gives the same numbers, epoch by epoch
    whole = subprocess.run(_train_command(train_phantom, tmp_path / "whole"), capture_output=True, text=True, env=ENV)
    assert whole.returncode == 0, whole.stderr
    reference = pd.read_csv(tmp_path / "whole" / "tiny_stroke" / "fold0" / "log.csv")
    for column in ("lr", "train_loss", "val_loss", "auc"):
        assert np.allclose(log[column], reference[column], rtol=1e-5, atol=1e-6), column


def test_sweep_skips_done_folds(stroke_run, train_phantom, capsys):
    out = stroke_run.parents[1]
    assert train.main(["--config", str(ROOT / "configs" / f"{stroke_run.parent.name}.yaml"), "--fold", "0", "--data",
                       str(train_phantom), "--out", str(out), "--no-progress"]) == 0
    assert "skipping" in capsys.readouterr().out


def test_folds_file_must_match_the_data(train_phantom, tmp_path, capsys):
    folds = pd.read_csv(train_phantom / "folds.csv")
    folds.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    code = train.main(["--config", str(ROOT / "configs" / "tiny_stroke.yaml"), "--data", str(train_phantom),
                       "--folds-csv", str(tmp_path / "short.csv"), "--out", str(tmp_path)])
    assert code == 2 and "does not match the data index" in capsys.readouterr().err
    assert not (tmp_path / "tiny_stroke").exists()  # nothing trained


@pytest.mark.parametrize("override", ["early_stop=abc", "clip_grad=abc", "weights=123", "metric=bogus",
                                      "sampler=bogus", "lr=-1", "lr=nan", "aug.hflip=5", "num_workers=-1",
                                      "img_size=7"])
def test_bad_config_value_exits_2_at_once(train_phantom, tmp_path, capsys, override):
    """A bad value stops train.py before it reads any data (no epoch, no run folder), naming the key."""
    started = time.time()
    assert train.main(_train_command(train_phantom, tmp_path, override)[2:]) == 2
    assert time.time() - started < 5
    err = capsys.readouterr().err
    assert err.startswith(f"error: {override.split('=')[0]}: must be") or "is not logged" in err, err
    assert not (tmp_path / "tiny_stroke").exists()


def test_bad_config_value_exits_2_as_a_process(train_phantom, tmp_path):
    done = subprocess.run(_train_command(train_phantom, tmp_path, "metric=bogus"), capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert done.returncode == 2 and "error: metric: 'bogus' is not logged for task stroke" in done.stderr
    assert not (tmp_path / "tiny_stroke").exists()


def test_a_second_run_on_a_fold_folder_is_refused(train_phantom, tmp_path):
    """Two train.py on one fold folder at once: the second (plain, or --overwrite, which would clear the first's
    files) exits 2 naming the first's pid (strokekit/locks.py), and the first finishes intact. The first run is
    held still (SIGSTOP) after its first epoch while the second ones start, so it is busy however slow they are,
    and a short run is enough; it then goes on (SIGCONT) and must finish as if nothing had happened."""
    run_dir = tmp_path / "tiny_stroke" / "fold0"
    command = _train_command(train_phantom, tmp_path, "epochs=3")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    seconds = []
    try:
        deadline = time.time() + 300
        while not (run_dir / "log.csv").exists():  # an epoch is done: the run is under way
            assert first.poll() is None and time.time() < deadline, first.stdout.read()
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # a stopped process keeps its flock
        seconds = [subprocess.Popen(command + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=ENV) for extra in ([], ["--overwrite"])]
        results = [(proc.wait(timeout=120), proc.stderr.read()) for proc in seconds]
        assert first.poll() is None, "the first run ended before the second ones were refused"
    finally:
        for proc in seconds:  # (not refused: they train)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        first.send_signal(signal.SIGCONT)
        out, _ = first.communicate(timeout=600)
    for code, err in results:
        assert code == 2 and f"is in use by another train.py run: pid {first.pid} on " in err, err
    assert first.returncode == 0, out
    assert pd.read_csv(run_dir / "log.csv")["epoch"].tolist() == [1, 2, 3]
    assert (run_dir / "done").is_file() and read_checkpoint(run_dir / "last.pt")["epoch"] == 3
    assert not list(run_dir.glob(".*"))  # no temp file left, and the lock file went with the run


def test_type_specific_segmenter_learns_its_type_only(train_phantom, tmp_path):
    """seg_lesion_type: trained on its type's slices with the other class as background, validated on every
    lesion slice of the fold (OOF lines up with a 3-class run's), it never draws the other class."""
    overrides = ["epochs=2", "img_size=64", "oof_size=32", "seg_lesion_type=hemorrhagic"]
    cfg = load_config(ROOT / "configs" / "tiny_seg.yaml", overrides + [f"data={train_phantom}"])
    index, _ = build_index(train_phantom)
    train_rows, val_rows = get_task("seg").split(index, read_folds(train_phantom / "folds.csv", index), 0, cfg)
    assert (train_rows["has_hemorrhagic"] == 1).all() and (val_rows["has_ischemic"] == 1).any()
    run_dir = train_fold0("tiny_seg.yaml", train_phantom, tmp_path, *overrides)
    oof = np.load(run_dir / "oof.npz")
    assert oof["image_id"].tolist() == validation_rows(train_phantom, "seg")["image_id"].tolist()
    drawn = oof["probs"].astype(np.float32).argmax(axis=1)
    assert (drawn == 2).any() and not (drawn == 1).any()  # a 3-class run draws ischemia here (~5 % of pixels)
