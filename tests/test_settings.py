"""The two commands a competitor types: `python train.py --fold 0` and `python infer.py --phase 2`, with the
project settings file (strokekit.yaml) saying what to train, on which data, and which specs to submit."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import small_phantom
from strokekit.config import ConfigError
from strokekit.config.settings import read_settings, write_settings

ROOT = Path(__file__).resolve().parents[1]


def script(name, *args, cwd, expect=0):
    env = {k: v for k, v in os.environ.items() if k != "STROKEKIT_SETTINGS"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / name), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    data = small_phantom(root, n=60, seed=6, size=64, n_test1=4, n_test2=6)
    (root / "configs").mkdir()
    (root / "configs" / "seg.yaml").write_text(yaml.safe_dump({
        "task": "seg", "model": "tiny_unet", "img_size": 64, "oof_size": 64, "epochs": 1, "batch_size": 8,
        "num_workers": 0, "loss": "ce", "class_weights": [1, 10, 10]}), encoding="utf-8")
    write_settings({"data": "data", "train": ["configs/seg.yaml"], "ensembles": {"seg": "ensembles/seg.yaml"},
                    "submissions": "submissions"}, root / "strokekit.yaml")
    assert Path(read_settings(root / "strokekit.yaml")["data"]) == data.resolve()
    return root


def test_train_fold_0_trains_what_the_settings_name(project):
    out = script("train.py", "--fold", "0", "--no-progress", cwd=project)
    assert "from strokekit.yaml" in out and "configs/seg.yaml" in out
    assert (project / "runs" / "seg" / "fold0" / "done").is_file()


def test_infer_phase_2_names_the_missing_spec_then_submits(project):
    if not (project / "runs" / "seg" / "fold0" / "done").is_file():
        script("train.py", "--fold", "0", "--no-progress", cwd=project)
    missing = script("infer.py", "--phase", "2", cwd=project, expect=2)
    assert "ensemble.py --task seg" in missing and not (project / "submissions").exists()
    script("ensemble.py", "--task", "seg", "runs/seg", "--out", "ensembles/seg.yaml", "--n-boot", 50, cwd=project)
    out = script("infer.py", "--phase", "2", cwd=project)
    assert "ensembles/seg.yaml (from" in out and "valid submission" in out
    masks = sorted((project / "submissions" / "phase2").glob("*.png"))
    truth = sorted((project / "data" / "YARISMA_2" / "MASK").glob("*.png"))
    assert [m.name for m in masks] == [t.name for t in truth] and len(masks) == 6
    scored = script("score.py", "--phase", "2", "--pred", "submissions/phase2", "--truth", "data/YARISMA_2/MASK",
                    "--n-boot", 0, cwd=project)
    assert "IoU" in scored


def test_without_settings_train_says_what_it_is_about_to_do(tmp_path):
    out = script("train.py", "--fold", "0", "--data", tmp_path / "nowhere", cwd=tmp_path, expect=2)
    assert out.index("built-in defaults") < out.index("error:")


@pytest.mark.parametrize("text", ["bogus: 1\n", "train: 3\n", "ensembles: {classifier: x.yaml}\n", "- a\n"])
def test_a_bad_settings_file_is_refused_by_name(tmp_path, text):
    (tmp_path / "strokekit.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="strokekit.yaml"):
        read_settings(tmp_path / "strokekit.yaml")
