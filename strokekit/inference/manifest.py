"""manifest.json: what produced a submission or a model folder, and the sha256 of every file in it.

A manifest records the kit version and git commit (None without git), package versions, the command line
and time, every checkpoint with its sha256 and its config as resolved (seeds included), and, where the
files can still be found, the hashes of the training data index (`<data>/.strokekit/index.csv`) and of the
folds file. Its `files` maps each file of the folder (relative path, manifest.json itself excepted) to its
sha256; `verify_folder` recomputes them, so `score.py --check` and the model-folder loader can tell a
changed, missing or added file.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from strokekit import __version__
from strokekit.atomic import write_json
from strokekit.errors import UserError

MANIFEST = "manifest.json"
PACKAGES = ("torch", "torchvision", "timm", "segmentation-models-pytorch", "safetensors", "numpy", "scipy",
            "pandas", "pillow", "opencv-python-headless", "pydicom", "PyYAML", "scikit-learn")
_HASHES: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256: a big checkpoint is hashed once per process


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (cached while the file's size and mtime stay the same)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def sha256_or_none(path) -> str | None:
    return sha256(path) if path and Path(path).is_file() else None


def git_info() -> dict:
    """{'commit', 'dirty'} of the kit's checkout; None values when git or the checkout is missing."""
    where = Path(__file__).resolve().parent

    def git(*args) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return {"commit": head.stdout.strip(), "dirty": dirty}


def package_versions() -> dict:
    versions = {"python": platform.python_version(), "strokekit": __version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def file_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """{relative posix path: sha256} of every file under `folder` except manifest.json and dotfiles."""
    folder = Path(folder)
    files = (p for p in sorted(folder.rglob("*")) if p.is_file())
    return {p.relative_to(folder).as_posix(): sha256(p) for p in files if p.relative_to(folder).as_posix() != MANIFEST
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def training_data(configs: list[dict]) -> list[dict]:
    """Per distinct (data, folds) of the checkpoints' configs: the data index and folds file hashes,
    None where the file is not found from here (configs name paths as they were at training time)."""
    seen, out = set(), []
    for cfg in configs:
        data, folds = cfg.get("data"), cfg.get("folds")
        folds = folds or (str(Path(data) / "folds.csv") if data else None)
        if (data, folds) in seen:
            continue
        seen.add((data, folds))
        index = Path(data) / ".strokekit" / "index.csv" if data else None
        out.append({"data": data, "data_index_sha256": sha256_or_none(index), "folds": folds,
                    "folds_sha256": sha256_or_none(folds)})
    return out


def write_manifest(folder: str | os.PathLike, info: dict, command: list[str] | None = None) -> Path:
    """Write folder/manifest.json: provenance (`info` and the environment) plus every file's sha256."""
    folder = Path(folder)
    manifest = {"kit_version": __version__, "git": git_info(), "packages": package_versions(),
                "command": list(sys.argv if command is None else command),
                "time": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), **info,
                "files": file_hashes(folder)}
    path = folder / MANIFEST
    write_json(path, manifest)
    return path


class ManifestError(UserError, ValueError):
    """A manifest.json that cannot be read as one (not JSON, no table of file hashes)."""


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The folder's manifest.json, or None when it has none; ManifestError when it is not a manifest."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ManifestError(f"{path}: no 'files' table of sha256 hashes")
    return manifest


def verify_files(folder: str | os.PathLike, expected: dict[str, str], source: str) -> list[str]:
    """Problems between `expected` {relative path: sha256} and the folder's files: changed, missing, added."""
    folder = Path(folder)
    actual = file_hashes(folder)
    problems = []
    for name, digest in expected.items():
        if name not in actual:
            problems.append(f"{name}: listed in {source} but missing")
        elif actual[name] != digest:
            problems.append(f"{name}: sha256 {actual[name][:12]}… differs from {source} ({str(digest)[:12]}…): "
                            "the file was changed after it was written")
    problems += [f"{name}: not listed in {source} (added after it was written)"
                 for name in actual if name not in expected]
    return problems


def verify_folder(folder: str | os.PathLike) -> tuple[dict | None, list[str]]:
    """(manifest or None, problems): every file of the folder against its manifest.json."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None, []
    return manifest, verify_files(folder, manifest["files"], MANIFEST)


# --------------------------------------------------------------------------- what infer.py ran


def ensemble_record(predictor) -> dict:
    """A loaded EnsemblePredictor's spec (or model folder), members, checkpoint hashes and configs as resolved."""
    spec = predictor.spec
    members = []
    for entry, member in zip(spec["members"], predictor.members):
        members.append({"name": entry["name"], "weight": entry["weight"], "checkpoints": [
            {"path": path, "sha256": sha256(path), "seed": cfg.get("seed"), "config": cfg}
            for path, cfg in zip(member.checkpoints, member.configs)]})
    return {"path": spec["path"], "sha256": sha256(spec["path"]), "model_folder": spec.get("model_folder"),
            "role": spec.get("role"), "task": spec["task"], "blend": spec["blend"], "members": members}


def run_record(data: str | os.PathLike, rows, predictors: list) -> dict:
    """Seeds, training data / folds hashes (a model folder's from its manifest), and the test inputs' hashes."""
    configs = [cfg for p in predictors for m in p.members for cfg in m.configs]
    folders = sorted({p.spec["model_folder"] for p in predictors if p.spec.get("model_folder")})
    training = training_data([cfg for p in predictors if not p.spec.get("model_folder")
                              for m in p.members for cfg in m.configs])
    model_folders = {}
    for folder in folders:
        recorded = read_manifest(folder) or {}
        training += recorded.get("training_data") or []
        model_folders[folder] = {"manifest_sha256": sha256_or_none(Path(folder) / MANIFEST),
                                 "exported_from": recorded.get("exported_from")}
    sources = sorted({m.cfg["image_source"] for p in predictors for m in p.members})
    index = Path(data) / ".strokekit" / "index.csv"
    return {"seeds": sorted({cfg["seed"] for cfg in configs if cfg.get("seed") is not None}),
            "training_data": training, "model_folders": model_folders,
            "test_inputs": {"data_index_sha256": sha256_or_none(index), "read": sources,
                            "files_sha256": inputs_sha256(rows, sources)}}


def inputs_sha256(rows, sources: list[str]) -> str:
    """One sha256 over (image id, file name, file sha256) of every test file the members read, by id."""
    digest = hashlib.sha256()
    for row in sorted(rows.to_dict("records"), key=lambda r: int(r["image_id"])):
        for kind in sources:
            path = row.get(kind)
            if path:
                digest.update(f"{int(row['image_id'])}\t{Path(path).name}\t{sha256(path)}\n".encode())
    return digest.hexdigest()
