"""Predictor.from_pretrained: a local model folder, or a hub repository id read from a hub cache laid out as
huggingface_hub lays it out (models--org--name/snapshots/<commit>/ with links into blobs/, refs/main), with
HF_HUB_OFFLINE=1 and no socket allowed to connect; the snapshot is hash-checked as a local folder is, and a
repository missing from the cache offline is one clear error at once."""
from __future__ import annotations

import hashlib
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from strokekit import Predictor
from strokekit.config import load_config
from strokekit.ensembling.spec import write_spec
from strokekit.inference.modelfolder import ModelFolderError, export_model
from strokekit.inference.manifest import sha256
from strokekit.models.checkpoint import build_checkpoint, save_atomic
from strokekit.models.registry import build_model

COMMIT = "a" * 40


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """An export.py folder of one untrained tiny_cnn stroke classifier (nothing trains here)."""
    where = tmp_path_factory.mktemp("model")
    cfg = load_config(None, ["task=stroke", "model=tiny_cnn", "img_size=32", "in_chans=3"])
    torch.manual_seed(0)
    save_atomic(build_checkpoint(build_model(cfg), cfg, 2, epoch=1), where / "tiny.pt")
    spec = write_spec({"task": "stroke", "blend": "mean", "tta": ["none", "hflip"], "threshold": {"value": 0.5},
                       "members": [{"name": "tiny", "checkpoints": ["tiny.pt"], "weight": 1.0}]}, where / "tiny.yaml")
    return export_model([spec], where / "models" / "tiny")


def hub_cache(cache: Path, repo: str, folder: Path, card: bool = True) -> Path:
    """The folder as huggingface_hub caches a repository: blobs by hash, a snapshot of links, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    if card:
        files["README.md"] = b"---\nlibrary_name: strokekit\n---\n# a model card\n"
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(Path(name).parts) + 1), "blobs", blob.name))  # snapshots/<c>/name
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """HF_HUB_OFFLINE=1, HF_HUB_CACHE=tmp (huggingface_hub's constant too) and no outgoing connection."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)  # restored after the test

    def refuse(*args, **kwargs):
        raise AssertionError(f"network contacted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return cache


def test_a_hub_repository_loads_from_the_cache_offline(model_folder, offline_hub):
    hub_cache(offline_hub, "org/tiny-stroke", model_folder)
    local = Predictor(model_folder, device="cpu")
    hub = Predictor.from_pretrained("org/tiny-stroke", device="cpu",
                                    expect_sha256=sha256(model_folder / "manifest.json"))
    x = np.random.default_rng(0).normal(40, 30, (3, 48, 48)).astype(np.float32)
    assert [r.stroke_prob for r in hub.predict(x)] == [r.stroke_prob for r in local.predict(x)]
    text = repr(hub)
    for part in ("hub org/tiny-stroke", "tasks=['stroke']", "tiny (tiny_cnn, 1 ckpt)", "tta none,hflip",
                 "img_size 32"):
        assert part in text, text
    assert str(model_folder) in repr(local) and repr(local).count("\n") == 1
    assert Predictor.from_pretrained(model_folder, device="cpu").source == str(model_folder)


def test_a_hub_snapshot_is_hash_checked_like_a_folder(model_folder, offline_hub):
    snapshot = hub_cache(offline_hub, "org/tiny-stroke", model_folder)
    with pytest.raises(ModelFolderError, match="expected"):
        Predictor.from_pretrained("org/tiny-stroke", device="cpu", expect_sha256="0" * 64)
    weights = next((snapshot / "weights").iterdir())
    blob = weights.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="sha256"):
        Predictor.from_pretrained("org/tiny-stroke", device="cpu")


def test_a_repository_missing_from_the_cache_offline_is_one_clear_error(offline_hub):
    start = time.perf_counter()
    with pytest.raises(ModelFolderError) as err:
        Predictor.from_pretrained("org/not-cached", device="cpu")
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "\n" not in message and "not in the hub cache" in message and "HF_HUB_OFFLINE=0" in message
    with pytest.raises(ModelFolderError, match="not a hub repository id"):
        Predictor.from_pretrained("no/such/folder", device="cpu")


def test_a_revision_names_its_snapshot(model_folder, offline_hub):
    hub_cache(offline_hub, "org/tiny-stroke", model_folder, card=False)
    assert Predictor.from_pretrained("org/tiny-stroke", revision=COMMIT, device="cpu").source == \
        f"hub org/tiny-stroke@{COMMIT}"
    shutil.rmtree(offline_hub / "models--org--tiny-stroke" / "snapshots")
    with pytest.raises(ModelFolderError, match="not in the hub cache"):
        Predictor.from_pretrained("org/tiny-stroke", revision=COMMIT, device="cpu")


def test_a_weights_path_must_stay_inside_the_folder_as_named(tmp_path):
    """Links inside the folder are its files (a hub snapshot's are links into blobs/); a path out of it is not."""
    from strokekit.inference.modelfolder import _inside

    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    folder = tmp_path / "model"
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "link.safetensors").symlink_to(outside)
    assert _inside(folder, "weights/link.safetensors", folder / "model.json") == outside.resolve()
    for name in ("../outside.safetensors", "weights/../../outside.safetensors", str(outside), None):
        with pytest.raises(ModelFolderError, match="not a file inside"):
            _inside(folder, name, folder / "model.json")
