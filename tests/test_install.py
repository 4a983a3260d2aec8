"""`pip install -e .` gives working console commands: a fresh venv (its site-packages borrowing this
interpreter's, so torch is not installed twice) gets the kit with --no-deps, and its strokekit-score /
strokekit-train answer --help from a folder outside the checkout."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "infer", "ensemble", "score", "kfold", "prepare", "tune", "leaderboard", "report", "export",
            "export-nnunet", "make-phantom", "demo", "pseudo")

pytestmark = pytest.mark.slow


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_every_command_points_at_its_entry_point():
    scripts = project()["scripts"]
    assert sorted(scripts) == sorted(f"strokekit-{c}" for c in COMMANDS)
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert module == f"strokekit.cli.{name.removeprefix('strokekit-').replace('-', '_')}", name
        assert callable(getattr(importlib.import_module(module), attr)), target


def test_extras_say_what_they_install():
    extras = project()["optional-dependencies"]
    names = {extra: {req.split(">")[0].split("=")[0].strip().lower() for req in reqs} for extra, reqs in extras.items()}
    assert names["tune"] == {"optuna"}  # optuna's own dependencies are optuna's business
    assert names["dev"] == {"pytest", "openpyxl"}
    assert names["tracking"] == {"tensorboard", "wandb", "mlflow"}


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A new venv whose site-packages also sees this interpreter's (a .pth file), strokekit installed into it
    editable, without dependencies and without build isolation (no network)."""
    where = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                          "-e", str(ROOT)], capture_output=True, text=True, cwd=where)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return python


@pytest.mark.parametrize("command", ["score", "train"])
def test_console_command_answers_help_from_elsewhere(fresh_venv, command, tmp_path):
    exe = fresh_venv.parent / f"strokekit-{command}"
    assert exe.is_file(), f"pip install -e . did not install strokekit-{command}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("usage: strokekit-") and "--help" in done.stdout


def test_installed_metadata_declares_the_extras(fresh_venv, tmp_path):
    code = "import importlib.metadata as m; print('\\n'.join(m.requires('strokekit')))"
    out = subprocess.run([fresh_venv, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert any(line.startswith("optuna") and 'extra == "tune"' in line for line in out.splitlines()), out
    assert any(line.startswith("pytest") and 'extra == "dev"' in line for line in out.splitlines()), out
