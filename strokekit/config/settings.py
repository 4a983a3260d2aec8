"""The project settings file (`strokekit.yaml`, or $STROKEKIT_SETTINGS): what `python train.py --fold 0` trains
and what `python infer.py --phase 2` submits when nothing else is typed.

    data: data/phantom                 # the data set root
    train: [configs/tiny_stroke_aux.yaml, configs/tiny_seg.yaml]   # configs train.py trains without --config
    ensembles:                         # specs (or model folders) infer.py uses without --ensemble
      stroke: ensembles/demo_stroke.yaml
      seg: ensembles/demo_seg.yaml
      type: null                       # phase 2's type ensemble, when there is one
    submissions: submissions           # where infer.py writes submissions/phase<N> without --out

Every script's flags override it; paths in it are relative to the file's folder. demo.py writes one.

The project folder is the folder of that file: $STROKEKIT_SETTINGS, else the nearest strokekit.yaml in the
working directory or a folder above it (as git finds its repository), else the working directory itself.
Relative paths a config holds (its own or the built-in defaults: data/phantom, runs, the folds and cache
folders) resolve against the project folder (`anchor_paths`), so a command typed in a subfolder of a project
reads and writes the project's data/ and runs/, not new ones beside it; paths typed on the command line
(--data, --out, --set data=...) stay relative to the working directory, as for any shell command.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from strokekit.config import ConfigError
from strokekit.vocabulary import TASKS

FILENAME = "strokekit.yaml"
KEYS = ("data", "train", "ensembles", "submissions")


PATH_KEYS = ("data", "folds", "runs_dir", "cache_dir", "pseudo")  # config keys naming project folders


def settings_path() -> Path:
    """$STROKEKIT_SETTINGS, else the nearest strokekit.yaml from the working directory upward, else
    ./strokekit.yaml (where demo.py writes one)."""
    if os.environ.get("STROKEKIT_SETTINGS"):
        return Path(os.environ["STROKEKIT_SETTINGS"])
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        if (folder / FILENAME).is_file():
            return folder / FILENAME if folder != cwd else Path(FILENAME)
    return Path(FILENAME)


def project_dir() -> Path:
    """The folder relative config paths resolve against: the settings file's when there is one, else the working
    directory."""
    path = settings_path()
    return path.resolve().parent if path.is_file() else Path.cwd()


def in_project(*parts: str) -> Path:
    """A path in the project folder: relative (as typed) when that is the working directory, else absolute."""
    project = project_dir()
    return Path(*parts) if project == Path.cwd() else project.joinpath(*parts)


def anchor_paths(cfg: dict, typed: set[str] | frozenset = frozenset()) -> dict:
    """Resolve the config's relative project paths (PATH_KEYS) against project_dir(), in place, except the keys
    in `typed` (given on the command line: those are the working directory's). Unchanged when the project folder
    is the working directory. Returns cfg."""
    project = project_dir()
    if project == Path.cwd():
        return cfg
    for key in PATH_KEYS:
        value = cfg.get(key)
        if key not in typed and isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            cfg[key] = str(project / value)
    return cfg


def typed_keys(overrides: list[str] | None, **flags) -> set[str]:
    """The path keys given on the command line: --set key=... items and the flags (key=value) that were set."""
    keys = {item.partition("=")[0].strip() for item in overrides or []}
    return keys | {key for key, value in flags.items() if value}


def read_settings(path: str | os.PathLike | None = None) -> dict | None:
    """The settings as {data, train: [paths], ensembles: {task: path}, submissions, path}, paths resolved
    against the file's folder; None when there is no settings file."""
    path = Path(path) if path is not None else settings_path()
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping with keys {', '.join(KEYS)}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid: {', '.join(KEYS)}")
    base = path.resolve().parent

    def at(value, key):
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: {key} must be a path, got {value!r}")
        return str(base / value)

    train = raw.get("train") or []
    if isinstance(train, str):
        train = [train]
    if not isinstance(train, list):
        raise ConfigError(f"{path}: train must be a config path or a list of them")
    ensembles = raw.get("ensembles") or {}
    if not isinstance(ensembles, dict) or set(ensembles) - set(TASKS):
        raise ConfigError(f"{path}: ensembles must map tasks ({', '.join(TASKS)}) to spec paths")
    return {"path": str(path), "data": at(raw.get("data"), "data"),
            "train": [at(c, "train") for c in train],
            "ensembles": {task: at(spec, f"ensembles.{task}") for task, spec in ensembles.items()},
            "submissions": at(raw.get("submissions"), "submissions") or str(base / "submissions")}


def write_settings(settings: dict, path: str | os.PathLike | None = None) -> Path:
    """Write a settings file (paths as given); returns its path."""
    from strokekit.atomic import write_text_atomic

    path = Path(path) if path is not None else settings_path()
    unknown = sorted(set(settings) - set(KEYS))
    if unknown:
        raise ConfigError(f"settings: unknown key(s) {unknown}; valid: {', '.join(KEYS)}")
    header = "# strokekit project settings: what train.py / infer.py use when no --config / --ensemble is given\n"
    write_text_atomic(path, header + yaml.safe_dump(settings, sort_keys=False))
    return path
