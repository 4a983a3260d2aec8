"""Scale-out through torchrun: PyTorch's own process group and DistributedDataParallel, nothing home-made.

`torchrun --nproc_per_node=N train.py ...` starts N processes with RANK / WORLD_SIZE / LOCAL_RANK set; `init`
joins them into one process group (nccl on CUDA, gloo on the CPU, or the config's `ddp_backend`) and each
process drives LOCAL_RANK's GPU. Without torchrun (no WORLD_SIZE) nothing here starts and every helper is the
identity: one process behaves exactly as if this module did not exist.

Rules the engine follows with these helpers:
- `batch_size` in a config is the *global* batch: each process takes batch_size / world_size, so a config
  means the same optimisation on 1 or N GPUs (same steps per epoch, same LR schedule).
- rank 0 alone reads and writes the run folder (config, log.csv, checkpoints, OOF, summary, done); what
  the other ranks need from it (a resumed checkpoint, the best weights, decisions) is broadcast, so the run
  folder needs no shared file system across machines.
- validation is sharded in contiguous blocks without padding (unlike DistributedSampler, which repeats
  images to even the shards), gathered on rank 0 in the data set's order, and the metrics broadcast, so
  best-epoch choice, the plateau schedule and early stopping agree on every rank.
"""
from __future__ import annotations

import datetime
import os
import pickle
from contextlib import nullcontext
from typing import Any, Callable

import torch
import torch.distributed as dist

from strokekit.errors import UserError


_OBJECTS = None  # process group for Python objects: gloo beside nccl, so objects never travel through GPUs


class DistributedError(UserError, RuntimeError):
    """A misconfigured torchrun launch (world size, batch size, backend)."""


def launched() -> bool:
    """True inside a torchrun (or any launcher that sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if enabled() else 0


def world() -> int:
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if enabled() else 0


def init(cfg: dict) -> bool:
    """Join torchrun's process group (when launched by it); returns whether training is distributed."""
    global _OBJECTS
    if not launched() or enabled():
        return enabled()
    size = int(os.environ["WORLD_SIZE"])
    if cfg["batch_size"] % size:
        raise DistributedError(f"batch_size {cfg['batch_size']} is the global batch and must divide evenly over "
                               f"{size} processes (each takes batch_size / world size)")
    if cfg["sync_bn"] and not torch.cuda.is_available():
        raise DistributedError("sync_bn: PyTorch's SyncBatchNorm runs on GPUs only; set sync_bn: false on the CPU")
    backend = cfg.get("ddp_backend") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DistributedError("ddp_backend nccl needs CUDA GPUs; use gloo on the CPU")
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible: "
                                   "--nproc_per_node must not exceed the GPUs of a machine")
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    _OBJECTS = dist.new_group(backend="gloo") if backend != "gloo" else None
    return True


def shutdown() -> None:
    global _OBJECTS
    if enabled():
        dist.destroy_process_group()
    _OBJECTS = None


def device() -> torch.device:
    """LOCAL_RANK's GPU, or the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def per_process_batch(batch_size: int) -> int:
    return batch_size // world()


def rank_seed(seed: int) -> int:
    """A seed of this rank's own (rank 0 keeps `seed`): augmentations and dropout differ across ranks."""
    return seed + 100_003 * rank()


# ---- moving Python objects between ranks ----

def barrier() -> None:
    if enabled():
        dist.barrier(group=_OBJECTS)


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (the identity in one process)."""
    if not enabled():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=_OBJECTS)
    return box[0]


def gather(obj: Any) -> list | None:
    """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere ([obj] in one process)."""
    if not enabled():
        return [obj]
    out = [None] * world() if is_main() else None
    dist.gather_object(obj, out, dst=0, group=_OBJECTS)
    return out


def total(*values: float) -> tuple[float, ...]:
    """Each value summed over ranks, known to every rank."""
    if not enabled():
        return values
    out = [None] * world()
    dist.all_gather_object(out, values, group=_OBJECTS)
    return tuple(sum(v[i] for v in out) for i in range(len(values)))


def on_main(fn: Callable, *args, **kwargs) -> Any:
    """Run fn on rank 0 only; every rank gets its result, or raises the exception it raised."""
    if not enabled():
        return fn(*args, **kwargs)
    result, error = None, None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - handed to every rank, raised there
            error = err if _picklable(err) else RuntimeError(f"{type(err).__name__}: {err}")
    result, error = broadcast((result, error))
    if error is not None:
        raise error
    return result


def main_first(fn: Callable, *args, **kwargs) -> Any:
    """Rank 0 runs fn first (it may fill a cache), then the others; an error on rank 0 is raised everywhere."""
    if not enabled():
        return fn(*args, **kwargs)
    result = on_main(fn, *args, **kwargs)
    return result if is_main() else fn(*args, **kwargs)


def _picklable(obj) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:  # noqa: BLE001
        return False


def gather_state(state: dict, losses: list) -> tuple[dict | None, list | None]:
    """A validation pass's task state and per-batch losses from every rank, joined on rank 0 in rank order.

    With contiguous shards (ShardSampler) rank order is the data set's order. List values are concatenated,
    other values (settings) taken from rank 0. Other ranks get (None, None).
    """
    parts = gather((state, losses))
    if parts is None:
        return None, None
    if len(parts) == 1:
        return state, losses
    joined = {key: ([item for s, _ in parts for item in s[key]] if isinstance(value, list) else value)
              for key, value in parts[0][0].items()}
    return joined, [loss for _, part in parts for loss in part]


# ---- the model ----

def prepare_model(model: torch.nn.Module, cfg: dict) -> torch.nn.Module:
    """SyncBatchNorm in place of BatchNorm when the config asks for it and training is distributed."""
    if enabled() and cfg["sync_bn"]:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap(model: torch.nn.Module, dev: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the model (the model itself in one process)."""
    if not enabled():
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def sync_buffers(*models: torch.nn.Module | None) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, so that what all ranks validate is what
    rank 0 saves: DDP broadcasts buffers at the start of each forward, so the last batch leaves them apart."""
    if not enabled():
        return
    for model in models:
        if model is not None:
            for buffer in unwrap(model).buffers():
                dist.broadcast(buffer, src=0)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def no_sync(model: torch.nn.Module, stepping: bool):
    """Skip DDP's gradient all-reduce on accumulation steps that do not end in an optimizer step."""
    if stepping or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return nullcontext()
    return model.no_sync()
