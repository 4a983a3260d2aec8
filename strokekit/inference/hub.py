"""Where `Predictor.from_pretrained(repo_or_path)` finds its model folder: a local folder, or a Hugging Face
hub repository holding an export.py folder (model.json, manifest.json, weights/), fetched with
`huggingface_hub.snapshot_download` into the hub's own cache.

The cache is tried first (`local_files_only=True`: no network when it holds the repository, at `revision`
or at what refs/main names); the hub is contacted only when the cache lacks it and downloads are allowed
(models/weights.py: `HF_HUB_OFFLINE=0`). Offline, a repository missing from the cache is one clear error
at once, never a wait. The snapshot is then checked like any model folder (modelfolder.read_model_folder:
every file's sha256, `expect_sha256` pinning manifest.json).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from strokekit.inference.modelfolder import MODEL_JSON, ModelFolderError
from strokekit.inference.manifest import MANIFEST
from strokekit.models.weights import ALLOW_HINT, apply_offline_policy, downloads_allowed, hf_cache_dir

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
FOLDER_FILES = [MODEL_JSON, MANIFEST, "weights/*"]  # an export.py folder: the model card and the like stay behind


def is_repo_id(text: str) -> bool:
    return bool(REPO_ID.match(text)) and ".." not in text and not text.endswith((".json", ".yaml", ".yml"))


def resolve_model_source(repo_or_path: str | os.PathLike, revision: str | None = None) -> tuple[Path, str]:
    """(local model folder, where it came from): an existing path as it is, else a hub repo id's snapshot."""
    path = Path(repo_or_path).expanduser()
    if path.exists():
        return path, str(path)
    text = str(repo_or_path)
    if not is_repo_id(text):
        raise ModelFolderError(f"{text}: no such model folder, and not a hub repository id (org/name)")
    at = f"{text}@{revision}" if revision else text
    return snapshot(text, revision), f"hub {at}"


def snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The repository's snapshot folder in the hub cache, downloaded first only when downloads are allowed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    apply_offline_policy()
    at = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=FOLDER_FILES,
                                      local_files_only=True))
    except LocalEntryNotFoundError:
        if not downloads_allowed():
            raise ModelFolderError(f"{at}: not in the hub cache ({hf_cache_dir()}) and downloads are off; run once "
                                   f"with {ALLOW_HINT} where there is internet, copy the cache, or pass a local "
                                   "model folder") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=FOLDER_FILES))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFolderError(f"{at}: download from the hub failed ({first})") from None
