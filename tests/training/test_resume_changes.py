"""--resume under a config that trains differently is refused naming the keys, unless --set gives each change
(then fold<k>/resume_changes.log records it); keys that change no learning (num_workers, paths) pass."""
from pathlib import Path

import pytest
import yaml

import train as train_script
from conftest import small_phantom

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def train(tmp_path, monkeypatch, capsys, one_thread):
    """train.py's main() in this process (no interpreter start-up per run), from tmp_path: its output."""
    monkeypatch.chdir(tmp_path)

    def run(cwd, config, *extra, expect=0):
        capsys.readouterr()
        code = train_script.main(["--config", str(config), "--fold", "0", "--out", str(cwd / "runs"),
                                  "--no-progress", *map(str, extra)])
        out = capsys.readouterr()
        assert code == expect, out.out + out.err
        return out.out + out.err
    return run


def test_resume_refuses_silent_changes_and_records_explicit_ones(tmp_path, train):
    data = small_phantom(tmp_path, n=40, seed=8, size=48, n_test1=2, n_test2=2)
    config = tmp_path / "r.yaml"
    base = {"task": "stroke", "model": "tiny_cnn", "img_size": 32, "epochs": 1, "batch_size": 16, "num_workers": 0,
            "data": str(data), "lr": 1.0e-3, "oof_tta": ["none"]}
    config.write_text(yaml.safe_dump(base), encoding="utf-8")
    train(tmp_path, config)
    fold = tmp_path / "runs" / "r" / "fold0"
    (fold / "done").unlink()                                   # as if killed after its last epoch
    config.write_text(yaml.safe_dump({**base, "lr": 5.0e-3, "num_workers": 1}), encoding="utf-8")
    refused = train(tmp_path, config, "--resume", expect=2)
    assert "lr: 0.001 -> 0.005" in refused and "num_workers" not in refused
    assert not (fold / "done").exists()
    train(tmp_path, config, "--resume", "--set", "lr=5e-3")
    assert (fold / "done").exists()
    assert "lr: 0.001 -> 0.005" in (fold / "resume_changes.log").read_text()
    assert yaml.safe_load((fold / "config.yaml").read_text())["lr"] == 5.0e-3
