"""Offline-first weight files: the download policy, the local-cache look-up, and fitting a state dict.

The kit never waits on the network by surprise. It follows the ecosystem's switch, `HF_HUB_OFFLINE`:
`HF_HUB_OFFLINE=0` (or false / no / off) allows downloads, any true value forbids them, and when it is unset
the kit stays offline (it sets `HF_HUB_OFFLINE=1` itself). `STROKEKIT_ALLOW_DOWNLOAD=1` is a deprecated
alias of `HF_HUB_OFFLINE=0`, heeded only while HF_HUB_OFFLINE is unset. `pretrained: true` is checked
against the local caches (the hub cache huggingface_hub itself uses, `constants.HF_HUB_CACHE`, and torch
hub's) before any model is built, so a missing file fails in milliseconds with a message saying how to
provide it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from strokekit.errors import UserError


PREFIXES = ("module.", "_orig_mod.")  # added by DataParallel/DDP and torch.compile
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class WeightsError(UserError, RuntimeError):
    """Weights that cannot be found offline or do not fit the model."""


TRUE_VALUES, FALSE_VALUES = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
ALLOW_HINT = "HF_HUB_OFFLINE=0"  # what a user sets to allow downloads


def downloads_allowed() -> bool:
    """HF_HUB_OFFLINE=0 allows downloads, a true value forbids them; unset: the deprecated
    STROKEKIT_ALLOW_DOWNLOAD=1 allows them, else the kit stays offline."""
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if value in FALSE_VALUES:
        return True
    if value:  # 1 / true / anything else the hub would read as offline
        return False
    return os.environ.get("STROKEKIT_ALLOW_DOWNLOAD", "") == "1"


def apply_offline_policy() -> None:
    """Put huggingface_hub in the mode downloads_allowed() says, also after it was imported (it reads
    HF_HUB_OFFLINE once, at import): offline unless the user allowed downloads."""
    allowed = downloads_allowed()
    if not allowed:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
        constants.HF_HUB_OFFLINE = not allowed
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm
        pass


def hf_cache_dir() -> Path:
    """The hub cache huggingface_hub uses (constants.HF_HUB_CACHE: $HF_HUB_CACHE, else $HF_HOME/hub, ...)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_hf_file(repo_id: str, filenames=HF_WEIGHT_FILES, revision: str | None = None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        path = try_to_load_from_cache(repo_id, name, cache_dir=hf_cache_dir(), revision=revision)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def cached_url_file(url: str | None) -> str | None:
    if not url:
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
    return str(path) if path.is_file() else None


def timm_pretrained_file(name: str) -> tuple[str | None, str]:
    """(local file or None, where timm would fetch it from) for a timm model's default weights."""
    import timm

    pcfg = timm.models.get_pretrained_cfg(name)
    if pcfg is None:
        raise WeightsError(f"timm model {name!r} has no pretrained weights; set pretrained: false")
    sources = []
    if pcfg.hf_hub_id:
        repo, _, rev = pcfg.hf_hub_id.partition("@")
        files = (pcfg.hf_hub_filename,) if pcfg.hf_hub_filename else HF_WEIGHT_FILES
        sources.append(f"hub {repo} ({' or '.join(files)})")
        found = cached_hf_file(repo, files, revision=rev or None)
        if found:
            return found, sources[0]
    if pcfg.url:
        sources.append(f"url {pcfg.url}")
        found = cached_url_file(pcfg.url)
        if found:
            return found, sources[-1]
    return None, "; ".join(sources) or "no download source"


def smp_pretrained_file(encoder: str, weights: str = "imagenet") -> tuple[str | None, str]:
    """(local file or None, hub repo) for an smp encoder's weights; `tu-` encoders are timm models."""
    if encoder.startswith("tu-"):
        return timm_pretrained_file(encoder[3:])
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders[encoder]["pretrained_settings"].get(weights)
    if settings is None:
        raise WeightsError(f"smp encoder {encoder!r} has no {weights!r} weights; "
                           f"it offers {list(encoders[encoder]['pretrained_settings'])}")
    repo, rev = settings["repo_id"], settings.get("revision")
    ok = cached_hf_file(repo, ("model.safetensors",), rev) and cached_hf_file(repo, ("config.json",), rev)
    return (cached_hf_file(repo, ("model.safetensors",), rev) if ok else None), f"hub {repo}"


def missing_weights_message(what: str, source: str) -> str:
    return (f"pretrained: true needs the ImageNet weights of {what}, but they are not in the local cache "
            f"({hf_cache_dir()} or {Path(torch.hub.get_dir()) / 'checkpoints'}) and downloads are off.\n"
            f"  They would come from: {source}\n"
            "  Fix one of:\n"
            f"  - run once with {ALLOW_HINT} on a machine with internet (fills the cache), or copy\n"
            "    that cache folder here (set HF_HOME / HF_HUB_CACHE if it lives elsewhere);\n"
            "  - download the weight file yourself and set `weights: /path/to/file` (.safetensors, .pth, or a\n"
            "    strokekit checkpoint) in the config or with --set weights=PATH;\n"
            "  - train from scratch with --set pretrained=false.")


# ---- reading and fitting state dicts ----

def strip_prefixes(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def read_state_dict(path: str | os.PathLike, use_ema: bool = True) -> dict:
    """A state dict from .safetensors, a plain torch file or a checkpoint (model / state_dict / ema keys)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes one clear message
        raise WeightsError(f"{path}: not a readable weights file ({type(err).__name__}: {err})") from None
    if isinstance(state, dict):
        keys = (["ema"] if use_ema else []) + ["model", "state_dict", "model_state_dict"]
        for key in keys:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(f"{path}: holds no state dict of tensors")
    return strip_prefixes(state)


def fit_state_dict(model: torch.nn.Module, state: dict, source: str) -> dict:
    """Load what fits: adapts a 3-channel first conv to in_chans, drops heads of another size.

    Keys may be the model's own or its encoder's (smp encoder files). Returns a report of what was skipped.
    """
    from timm.models import adapt_input_conv

    own = model.state_dict()
    # a wrapped model's net: an aux_seg classifier's, a deep_supervision or seg_head: sigmoid U-Net's (both: net.net.)
    while not set(state) & set(own) and any(k.startswith("net.") for k in state):
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    if not set(state) & set(own) and any(f"encoder.{k}" in own for k in state):
        state = {f"encoder.{k}": v for k, v in state.items()}
    fitted, dropped = {}, []
    for key, value in state.items():
        target = own.get(key)
        if target is None:
            dropped.append(key)
        elif target.shape == value.shape:
            fitted[key] = value
        elif value.ndim == 4 and target.shape[0] == value.shape[0] and target.shape[2:] == value.shape[2:]:
            fitted[key] = adapt_input_conv(target.shape[1], value.to(torch.float32)).to(target.dtype)
        else:
            dropped.append(key)
    if not fitted:
        raise WeightsError(f"{source}: no tensor fits this model (is it for another architecture?)")
    missing = [k for k in own if k not in fitted]
    model.load_state_dict(fitted, strict=False)
    return {"loaded": len(fitted), "dropped": dropped, "missing": missing}
