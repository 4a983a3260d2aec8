"""The phantom loop shared by the end-to-end tests (test_ensemble_infer, test_export, test_predictor,
test_manifest): a 64-px phantom, its folds, every config of CONFIGS trained on 2 folds through train.py,
and the stroke / seg / type ensemble specs ensemble.py writes from them (its main() in the test process).
Session fixtures, made once per test session (conftest.py imports them), so each file that needs them adds no
training time.
"""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET_RECALL = 0.9
TINY = {"num_workers": 0, "batch_size": 16, "lr": 3.0e-3, "aug": {"shift_scale_rotate": 0.0}}
CONFIGS = {  # two configs per task with different preprocessing, so inference reads images two ways
    "stroke_a": {"task": "stroke", "model": "tiny_cnn", "img_size": 64, "epochs": 5, "seed": 1},
    "stroke_b": {"task": "stroke", "model": "tiny_cnn", "img_size": 48, "mean": 0.45, "epochs": 5, "aux_seg": 1.0,
                 "lr": 1.0e-3, "seed": 2},
    "seg_a": {"task": "seg", "model": "tiny_unet", "img_size": 64, "oof_size": 64, "epochs": 6, "loss": "ce",
              "class_weights": [1, 5, 5], "batch_size": 8, "seed": 1},
    "seg_b": {"task": "seg", "model": "tiny_unet", "img_size": 32, "oof_size": 32, "epochs": 6, "loss": "ce",
              "class_weights": [1, 5, 5], "batch_size": 8, "lr": 2.0e-3, "seed": 2},
    # type_a keeps 10 epochs: after 6 its ensemble calls every phase-2 test slice ischemic, and the gated-spec
    # test of test_ensemble_infer needs both types chosen
    "type_a": {"task": "type", "model": "tiny_cnn", "img_size": 64, "epochs": 10, "lr": 2.0e-3, "seed": 1},
}


def run_script(script: str, *args, cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == expect, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def run_script_here(script: str, *args, cwd: Path) -> str:
    """run_script for a script that must succeed, as its main() in this process (no interpreter start-up) from
    `cwd`: its standard output."""
    import contextlib
    import io

    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_main(script.removesuffix(".py"), *args)
    finally:
        os.chdir(before)
    assert code == 0, f"{script} exited {code}\n{out.getvalue()}\n{err.getvalue()}"
    return out.getvalue()


def train_all(root: Path, data: Path, parallel: int = 2) -> Path:
    """train.py --fold all for every config, `parallel` at a time with one thread each (2 CPU cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    (root / "configs").mkdir()
    pending, running = list(CONFIGS.items()), []
    while pending or running:
        while pending and len(running) < parallel:
            name, cfg = pending.pop(0)
            path = root / "configs" / f"{name}.yaml"
            path.write_text(yaml.safe_dump({**TINY, **cfg, "data": str(data)}), encoding="utf-8")
            command = [sys.executable, str(ROOT / "train.py"), "--config", str(path), "--fold", "all",
                       "--out", str(root / "runs"), "--no-progress"]
            running.append(subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True))
        proc = running.pop(0)
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{proc.args}\n{output}"
    return root / "runs"


@pytest.fixture(scope="session")
def loop(tmp_path_factory) -> SimpleNamespace:
    """One phantom, its folds, and every config trained on 2 folds (shared by all tests here)."""
    from strokekit.phantom.dataset import make_phantom

    root = tmp_path_factory.mktemp("loop")
    data = make_phantom(root / "data", n=240, seed=3, size=64, n_test1=60, n_test2=16)
    run_script("kfold.py", "--data", data, "--folds", 2, cwd=root)
    return SimpleNamespace(root=root, data=data, runs=train_all(root, data))


@pytest.fixture(scope="session")
def stroke_spec(loop) -> tuple[Path, str]:
    out = loop.root / "ensembles" / "stroke.yaml"
    stdout = run_script_here("ensemble.py", "--task", "stroke", loop.runs / "stroke_a", loop.runs / "stroke_b",
                             "--top-k", 1, "--greedy", "--blend", "auto", "--objective", "recall",
                             "--target-recall", TARGET_RECALL, "--out", out, cwd=loop.root)
    return out, stdout


@pytest.fixture(scope="session")
def seg_spec(loop) -> tuple[Path, str]:
    out = loop.root / "ensembles" / "seg.yaml"
    stdout = run_script_here("ensemble.py", "--task", "seg", loop.runs / "seg_a", loop.runs / "seg_b", "--greedy",
                             "--seg-classifier", "type", "--out", out, cwd=loop.root)
    return out, stdout


@pytest.fixture(scope="session")
def type_spec(loop) -> Path:
    out = loop.root / "ensembles" / "type.yaml"
    run_script_here("ensemble.py", "--task", "type", loop.runs / "type_a", "--objective", "youden", "--out", out,
                    cwd=loop.root)
    return out


def run_main(script: str, *args) -> int:
    """A script's main() in this process (no interpreter start-up): its exit status."""
    import importlib

    return importlib.import_module(script).main([str(a) for a in args])


@pytest.fixture(scope="session")
def shipped(loop, stroke_spec, seg_spec, type_spec, tmp_path_factory) -> SimpleNamespace:
    """The three specs exported to a model folder that is then moved elsewhere (the export is deleted), and
    both phases' submissions written by infer.py from the specs and from the moved folder."""
    import shutil

    root = tmp_path_factory.mktemp("shipped")
    exported = root / "export" / "full"
    assert run_main("export", seg_spec[0], type_spec, stroke_spec[0], "--out", exported) == 0
    model = root / "elsewhere" / "full"
    shutil.copytree(exported, model)
    shutil.rmtree(root / "export")
    subs = {}
    for phase, test_dir in ((1, "YARISMA_1"), (2, "YARISMA_2")):
        specs = [stroke_spec[0]] if phase == 1 else [seg_spec[0], "--type-ensemble", type_spec]
        for name, source in (("spec", specs), ("model", [model])):
            out = root / f"{name}_p{phase}"
            extra = ["--save-probs"] if phase == 2 else []
            assert run_main("infer", "--phase", phase, "--ensemble", *source, "--data", loop.data / test_dir,
                            "--out", out, "--batch-size", 8, "--device", "cpu", *extra) == 0
            subs[(name, phase)] = out
    return SimpleNamespace(root=root, model=model, subs=subs)
