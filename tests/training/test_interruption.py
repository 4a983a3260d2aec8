"""Interrupted runs never lose work: all-or-nothing writes (even under kill -9), a fold sweep that skips
finished folds and resumes an unfinished one, and a resume that refuses a checkpoint of another shape."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

import train
from strokekit.atomic import to_plain, write_atomic, write_json
from strokekit.models.checkpoint import build_checkpoint, read_checkpoint, save_atomic
from strokekit.config import load_config
from strokekit.data.index import build_index
from strokekit.training.engine import train_fold
from strokekit.data.folds import make_folds, read_folds, write_folds
from strokekit.models.registry import build_model
from strokekit.phantom.dataset import make_phantom

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=tiny_cnn", "img_size=64", "epochs=2", "num_workers=0", "batch_size=16"]


def test_a_failing_writer_leaves_the_previous_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("previous")

    def half_then_crash(f):
        f.write("{\"half\": ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_crash, text=True)
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind


def test_write_json_is_strict_and_atomic(tmp_path):
    """The kit's one JSON writer: numpy values, tuples, sets and paths made plain, NaN / inf as null."""
    import json

    import numpy as np

    data = {1: np.float32(0.5), "pair": (np.int64(3), np.bool_(True)), "nan": float("nan"), "inf": -np.inf,
            "array": np.array([[1.0, np.nan]]), "path": Path("a") / "b", "set": {2, 1}, "nested": [{"x": np.nan}]}
    plain = {"1": 0.5, "pair": [3, True], "nan": None, "inf": None, "array": [[1.0, None]],
             "path": str(Path("a") / "b"), "set": [1, 2], "nested": [{"x": None}]}
    assert to_plain(data) == plain
    path = write_json(tmp_path / "new" / "out.json", data)
    text = path.read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON")) == plain
    assert text.endswith("}\n") and [p.name for p in path.parent.iterdir()] == ["out.json"]


KILLED_WRITER = textwrap.dedent("""
    import sys, time, torch
    from strokekit.models.checkpoint import save_atomic

    class Pause:  # stands in for a slow write: torch.save is busy with this object when the kill lands
        def __reduce__(self):
            print("writing", flush=True)
            time.sleep(120)
            return (int, (0,))

    save_atomic({"format": "x", "weights": torch.ones(1000), "pause": Pause()}, sys.argv[1])
""")


def test_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    last = tmp_path / "last.pt"
    model = build_model(load_config(None, ["model=tiny_cnn"]))
    save_atomic(build_checkpoint(model, load_config(None, ["model=tiny_cnn"]), 2, epoch=3), last)
    before = last.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(last)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert last.read_bytes() == before and read_checkpoint(last)["epoch"] == 3


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """A 64-px phantom with a 2-fold folds.csv: two folds train in seconds."""
    root = make_phantom(tmp_path_factory.mktemp("sweep") / "data", n=60, seed=3, size=64, n_test1=2, n_test2=2)
    index, _ = build_index(root)
    write_folds(make_folds(index, n_folds=2, seed=0), root / "folds.csv")
    return root


def run_train(data: Path, out: Path, *args: str, overrides=()) -> int:
    return train.main(["--config", str(ROOT / "configs" / "tiny_stroke.yaml"), "--data", str(data), "--out",
                       str(out), "--no-progress", *args, "--set", *TINY, *overrides])


class Stop(Exception):
    pass


def stop_after_first_epoch(epoch, row):
    raise Stop  # what tune.py's pruning does: the fold ends after last.pt, without `done`


def test_sweep_skips_finished_folds_and_resumes_an_unfinished_one(small_data, tmp_path, capsys):
    assert run_train(small_data, tmp_path, "--fold", "0") == 0
    fold0, fold1 = tmp_path / "tiny_stroke" / "fold0", tmp_path / "tiny_stroke" / "fold1"
    stamp = {name: (fold0 / name).stat().st_mtime_ns for name in ("best.pt", "oof.csv", "done")}
    cfg = load_config(ROOT / "configs" / "tiny_stroke.yaml", TINY)
    index, _ = build_index(small_data)
    with pytest.raises(Stop):
        train_fold(cfg, index, read_folds(small_data / "folds.csv", index), 1, fold1, progress=False,
                   log=lambda *_: None, on_epoch_end=stop_after_first_epoch)
    assert read_checkpoint(fold1 / "last.pt")["epoch"] == 1 and not (fold1 / "done").exists()
    (fold1 / ".last.pt.tmp4242").write_bytes(b"half a checkpoint")  # what a kill inside save_atomic leaves
    capsys.readouterr()

    assert run_train(small_data, tmp_path, "--fold", "all") == 2  # never silently restarted
    assert "fold1 holds an unfinished run" in capsys.readouterr().err
    assert run_train(small_data, tmp_path, "--fold", "all", "--resume") == 0
    out = capsys.readouterr().out
    assert "fold 0: " in out and "skipping" in out and "fold 1: resumed after epoch 1" in out
    assert {name: (fold0 / name).stat().st_mtime_ns for name in stamp} == stamp  # fold 0 untouched
    assert pd.read_csv(fold1 / "log.csv")["epoch"].tolist() == [1, 2]
    assert (fold1 / "done").exists() and read_checkpoint(fold1 / "best.pt")["epoch"] in (1, 2)
    assert not list(fold1.glob(".*.tmp*"))  # the killed write's leftover is cleaned up on resume
    assert set(pd.read_csv(fold1 / "oof.csv")["image_id"]) == set(
        pd.read_csv(small_data / "folds.csv").query("fold == 1")["image_id"])


def test_resume_refuses_a_checkpoint_of_another_shape(small_data, tmp_path, capsys):
    run_dir = tmp_path / "tiny_stroke" / "fold0"
    cfg = load_config(ROOT / "configs" / "tiny_stroke.yaml", TINY)
    run_dir.mkdir(parents=True)
    save_atomic(build_checkpoint(build_model(cfg), cfg, 2, epoch=1), run_dir / "last.pt")
    assert run_train(small_data, tmp_path, "--fold", "0", "--resume", overrides=["in_chans=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "in_chans: 3 -> 1" in err and "Traceback" not in err


WRAPPED_INTERRUPT = textwrap.dedent("""
    import atexit, os, signal, sys
    from strokekit.training.runlog import exit_process, watch_interrupts

    def main():
        watch_interrupts()
        try:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C inside a library call ...
            signal.pause()
        except KeyboardInterrupt as err:
            raise RuntimeError("DataLoader worker interrupted") from err  # ... that reports it as another error
        return 0

    atexit.register(lambda: print("teardown ran", flush=True))
    exit_process(main)
""")


def test_any_error_after_ctrl_c_still_exits_130_without_teardown():
    """torch can turn the KeyboardInterrupt raised inside one of its calls into another exception; that must
    still end as an interrupt (exit 130, no interpreter teardown, which can abort with -6 after Ctrl-C)."""
    done = subprocess.run([sys.executable, "-c", WRAPPED_INTERRUPT], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 130, done.stdout + done.stderr
    assert "RuntimeError: DataLoader worker interrupted" in done.stderr and "interrupted" in done.stderr
    assert "teardown ran" not in done.stdout


def test_ctrl_c_inside_a_drawing_that_reports_it_as_another_error_still_ends_as_an_interrupt(small_data, tmp_path,
                                                                                              monkeypatch):
    """What CI saw: Ctrl-C right after epoch 1's last.pt landed in matplotlib's import for curves.png, which
    turned it into 'ImportError: initialization failed'. The fold must still say where to --resume from and
    end as the interrupt it is."""
    from strokekit.training import runlog

    def drawing_hit_by_ctrl_c(rows, metric, path):
        monkeypatch.setattr(runlog, "_INTERRUPT_SEEN", True)  # what watch_interrupts' handler records
        raise ImportError("initialization failed")

    cfg = load_config(ROOT / "configs" / "tiny_stroke.yaml", TINY)
    index, _ = build_index(small_data)
    said = []
    with pytest.raises(KeyboardInterrupt) as caught:
        train_fold(cfg, index, read_folds(small_data / "folds.csv", index), 0, tmp_path / "fold0", progress=False,
                   log=said.append, draw_curves=drawing_hit_by_ctrl_c)
    assert isinstance(caught.value.__cause__, ImportError)
    assert any("interrupted after epoch 1" in line and "--resume" in line for line in said)
    assert read_checkpoint(tmp_path / "fold0" / "last.pt")["epoch"] == 1
