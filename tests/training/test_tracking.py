"""train.py --log tensorboard: the event files, read back with TensorBoard's own reader, hold every epoch's
row of log.csv and the final OOF figures; fold<k>/train.log keeps the console, timed, across a --resume;
a tracker that is not installed is a one-line error before anything trains."""
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import train
from strokekit.cli import train as train_cli

ROOT = Path(__file__).resolve().parents[2]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ")


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_events_and_train_log_across_a_resume(train_phantom, tmp_path, capsys, one_thread):
    args = ["--config", str(ROOT / "configs" / "tiny_stroke.yaml"), "--fold", "0", "--data", str(train_phantom),
            "--out", str(tmp_path), "--no-progress", "--log", "tensorboard", "--set", "img_size=32", "oof_tta=[none]"]
    assert train.main([*args, "epochs=2"]) == 0
    run_dir = tmp_path / "tiny_stroke" / "fold0"
    (run_dir / "done").unlink()  # as if the run had stopped after epoch 2 of 3
    assert train.main([*args, "epochs=3", "--resume"]) == 0
    out = capsys.readouterr().out

    log = pd.read_csv(run_dir / "log.csv")
    found = scalars(run_dir / "tb")
    for column, tag in (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("lr", "opt/lr"),
                        ("auc", "val/auc"), ("images_per_s", "time/images_per_s"), ("time_s", "time/epoch_s")):
        steps, values = zip(*found[tag])
        assert list(steps) == [1, 2, 3], tag  # the resumed epoch 3 follows on, nothing twice
        assert values == pytest.approx(log[column].tolist(), rel=1e-5, abs=1e-6), tag
    summary = yaml.safe_load((run_dir / "summary.json").read_text())
    assert found["oof/auc"][-1] == (3, pytest.approx(summary["final_metrics"]["auc"], rel=1e-6))

    lines = (run_dir / "train.log").read_text(encoding="utf-8").splitlines()
    assert lines and all(STAMP.match(line) for line in lines)
    text = "\n".join(line[20:] for line in lines)
    assert text.count("--- train.py --config") == 2  # both sessions, appended
    for said in ("fold 0 epoch 1/2:", "fold 0 epoch 2/2:", "resumed after epoch 2", "fold 0 epoch 3/3:",
                 "fold 0: best auc="):
        assert said in text and said in out
    epoch_line = next(line for line in lines if "epoch 3/3:" in line)
    assert re.search(r"lr \d\.\d\de[-+]\d\d, [\d.]+ img/s \(\d+s, ETA 0:00:00\)$", epoch_line), epoch_line


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_not_installed_is_one_line_before_training(tracker, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, tracker, None)  # how Python sees a package that is not installed
    code = train.main(["--config", str(ROOT / "configs" / "tiny_stroke.yaml"), "--fold", "0", "--data",
                       str(tmp_path / "nowhere"), "--out", str(tmp_path), "--log", f"tensorboard,{tracker}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith(f"error: --log {tracker}: ") and f"pip install {tracker}" in err
    assert not (tmp_path / "tiny_stroke").exists()


def test_log_is_a_config_key_and_flags_add_up():
    args = train_cli.parse_args(["--log", "tensorboard", "--log", "wandb,mlflow"])
    assert train_cli.resolve_config(args)["log"] == ["tensorboard", "wandb", "mlflow"]
    assert train_cli.resolve_config(train_cli.parse_args(["--set", "log=[mlflow]"]))["log"] == ["mlflow"]
    with pytest.raises(Exception, match="tensorboard, wandb, mlflow"):
        train_cli.resolve_config(train_cli.parse_args(["--log", "neptune"]))


def test_tracker_names_match_the_schema():
    from strokekit.config.schema import TRACKERS
    from strokekit.training import tracking

    assert TRACKERS == tracking.TRACKERS == tuple(tracking.KINDS)
