"""Where defaults resolve (config/settings.py): the project folder is the folder of the nearest strokekit.yaml
from the working directory upward ($STROKEKIT_SETTINGS first), else the working directory. A config's
relative paths (its own and the built-in data/phantom, runs) resolve against it; paths typed on the command
line stay the working directory's; without a settings file nothing changes."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from strokekit.cli import demo
from strokekit.cli.train import parse_args, resolve_config
from strokekit.config.settings import in_project, project_dir, settings_path, write_settings


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project folder with its strokekit.yaml, and a subfolder of it as the working directory."""
    monkeypatch.delenv("STROKEKIT_SETTINGS", raising=False)
    root = tmp_path / "project"
    (root / "notebooks" / "deep").mkdir(parents=True)
    write_settings({"submissions": "submissions"}, root / "strokekit.yaml")
    monkeypatch.chdir(root / "notebooks" / "deep")
    return root


def test_the_settings_file_is_found_from_a_subfolder(project):
    assert settings_path() == project / "strokekit.yaml"
    assert project_dir() == project
    assert in_project("runs") == project / "runs"


def test_defaults_resolve_in_the_project_typed_paths_in_the_working_directory(project):
    cfg = resolve_config(parse_args(["--fold", "0"]))
    assert cfg["data"] == str(project / "data/phantom") and cfg["runs_dir"] == str(project / "runs")
    cfg = resolve_config(parse_args(["--data", "here", "--out", "out", "--set", "folds=f.csv"]))
    assert (cfg["data"], cfg["runs_dir"], cfg["folds"]) == ("here", "out", "f.csv")


def test_a_config_files_relative_paths_resolve_in_the_project(project, tmp_path):
    config = tmp_path / "elsewhere" / "c.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({"data": "data/real", "runs_dir": "/abs/runs"}), encoding="utf-8")
    cfg = resolve_config(parse_args(["--config", str(config)]))
    assert cfg["data"] == str(project / "data/real") and cfg["runs_dir"] == "/abs/runs"


def test_without_a_settings_file_nothing_moves(tmp_path, monkeypatch):
    monkeypatch.delenv("STROKEKIT_SETTINGS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert not any((folder / "strokekit.yaml").exists() for folder in (tmp_path, *tmp_path.parents))
    assert project_dir() == Path.cwd() and settings_path() == Path("strokekit.yaml")
    cfg = resolve_config(parse_args(["--fold", "0"]))
    assert (cfg["data"], cfg["runs_dir"]) == ("data/phantom", "runs")
    assert in_project("runs") == Path("runs")


def test_strokekit_settings_names_the_project(project, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    write_settings({"submissions": "submissions"}, other / "mine.yaml")
    monkeypatch.setenv("STROKEKIT_SETTINGS", str(other / "mine.yaml"))
    assert project_dir() == other
    assert resolve_config(parse_args([]))["runs_dir"] == str(other / "runs")


def test_the_demo_runs_the_kits_scripts_and_configs_from_anywhere(tmp_path):
    cmd = demo.command("train", tmp_path)
    assert Path(cmd[-1]).is_absolute() and Path(cmd[-1]) == demo.KIT / "train.py"
    assert demo.command("train", demo.KIT)[-1] == "train.py"
    assert (tmp_path / demo.kit_path("configs", "tiny_seg.yaml", project=tmp_path)).is_file()
