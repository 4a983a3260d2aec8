"""Self-describing checkpoints saved atomically, and the RNG states a resume needs.

A checkpoint is a dict of tensors and plain Python types only, so `torch.load(weights_only=True)` reads it:
  format, model, ema, num_outputs, config, epoch, best_metric, best_epoch, metric_name, metric_mode,
  optimizer, scheduler, scaler, rng, seed, versions, metrics
With `topk_average` (topk.py) a run's last.pt also holds `topk` (the k best epochs' weights, until the fold is
done) and its best.pt `averaged_epochs` / `averaged_values`, with the mean weights under `ema` (EMA on) or `model`.
Keys lose `module.` / `_orig_mod.` prefixes on save. Writing goes to a temporary file in the same folder,
flushed, fsynced and renamed over the old file, so a kill at any moment leaves the previous good file.
"""
from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

from strokekit.atomic import write_atomic
from strokekit.models.weights import WeightsError, strip_prefixes

FORMAT = "strokekit-checkpoint-v1"
REQUIRED = ("format", "model", "config", "num_outputs", "epoch")


def versions() -> dict:
    import segmentation_models_pytorch as smp
    import timm

    from strokekit import __version__
    return {"strokekit": __version__, "torch": str(torch.__version__), "timm": timm.__version__,
            "segmentation_models_pytorch": smp.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def build_checkpoint(model: torch.nn.Module, cfg: dict, num_outputs: int, ema: torch.nn.Module | None = None,
                     **state) -> dict:
    """The self-describing part every checkpoint has, plus the training `state` (epoch, optimizer ...)."""
    return {"format": FORMAT, "model": model_state(model), "ema": model_state(ema) if ema is not None else None,
            "num_outputs": int(num_outputs), "config": cfg, "task": cfg["task"], "versions": versions(), **state}


def model_state(model: torch.nn.Module) -> dict:
    """Weights without wrapper prefixes, on the CPU."""
    return strip_prefixes({k: v.detach().cpu() for k, v in model.state_dict().items()})


def save_atomic(obj, path: str | os.PathLike) -> None:
    """torch.save to `path` all or nothing: a kill leaves the previous file whole."""
    write_atomic(path, lambda f: torch.save(obj, f))


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a strokekit checkpoint with weights_only=True; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated / foreign / pickled-object files
        raise WeightsError(f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a strokekit checkpoint (no format={FORMAT!r})")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise WeightsError(f"{path}: checkpoint lacks {missing}")
    return ckpt


# ---- RNG states as plain types ----

def rng_state() -> dict:
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
