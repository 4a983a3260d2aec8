"""Model soup across runs: one run folder whose fold-k model is the mean of the given runs' fold-k weights.

`soup_runs(run_dirs, out)` averages, fold by fold, the eval weights (EMA when the config keeps one) of runs
trained from the same initialisation - e.g. one config fine-tuned from the same `weights:` checkpoint under
`train.py --seeds 0,1,2`, which then differ only in data order, augmentation draws and dropout - and writes
`out/fold<k>/` as train.py would: best.pt (the souped weights), config.yaml, the fold's OOF file made by the
training loop's own final pass (`fold_end.finish_fold`: the config's oof_tta flips), summary.json and `done`.
ensemble.py ranks and tunes it like any other run (`ensemble.py --soup OUT runs...`).

A soup is refused (SoupError, naming why) unless the runs have
  - the same task and architecture: the same state-dict keys and tensor shapes;
  - the same input: the config keys of INPUT_KEYS (how an image is read, sized and predicted);
  - the same folds: every fold holds the same validation images (else a souped fold has seen its OOF images);
  - the same initialisation: the model `engine.setup` builds for each run's config - what its training
    started from, seeded as training seeds it - is the same tensor for tensor (TRAINING_ONLY tensors aside).
    Runs from scratch under different seeds, or a random head on a pretrained backbone under different
    seeds, are refused: their weights live in different basins and their mean is no model.
Weights are averaged by `topk.average_weights` (the mean best.pt of `topk_average` uses): floating tensors in
float64, BatchNorm running means and variances averaged like the weights (not recomputed on training data),
num_batches_tracked rounded.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from strokekit.atomic import write_json
from strokekit.config import folds_path, save_config
from strokekit.data.folds import read_folds
from strokekit.data.index import build_index
from strokekit.errors import UserError
from strokekit.locks import FolderLock
from strokekit.models.checkpoint import build_checkpoint, read_checkpoint, save_atomic
from strokekit.models.weights import strip_prefixes
from strokekit.training import distributed
from strokekit.training.topk import average_weights

# config keys that decide how an image is read, sized and predicted: a soup has one config, so they must agree
INPUT_KEYS = ("task", "model", "encoder", "in_chans", "img_size", "oof_size", "image_source", "windows",
              "hu_range", "mean", "std", "neighbours", "norm", "deep_supervision", "seg_lesion_type", "oof_tta",
              "oof_tta_scales")
# tensors eval never uses: aux_seg's lesion head (eval returns the image logits; it is drawn afresh under each
# seed even when `weights:` holds one), so their start may differ; they are averaged like the rest
TRAINING_ONLY = ("lesion_head.",)
MARKER = "soup.json"  # in a soup folder: what it was made of (only such a folder is ever replaced)


class SoupError(UserError, ValueError):
    """Runs whose weights cannot be averaged into one model, or a soup folder that cannot be written."""


@dataclass
class SoupRun:
    path: Path
    cfg: dict
    folds: dict[int, Path]  # fold number -> finished fold folder


def eval_key(ckpt: dict) -> str:
    """The checkpoint's eval weights: EMA when it keeps one (as fold_end._best_weights reads best.pt)."""
    return "ema" if ckpt.get("ema") else "model"


def eval_weights(ckpt: dict) -> dict:
    return strip_prefixes(ckpt[eval_key(ckpt)])


def fingerprint(state: dict) -> str:
    """sha256 of a state dict: every tensor's name, dtype, shape and bytes, in key order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_soup_run(run_dir: str | os.PathLike, checkpoint: str = "best") -> SoupRun:
    run_dir = Path(run_dir)
    folds = {int(d.name[4:]): d for d in sorted(run_dir.glob("fold*"))
             if d.name[4:].isdigit() and (d / "done").is_file() and (d / f"{checkpoint}.pt").is_file()}
    if not folds:
        raise SoupError(f"{run_dir}: no finished fold (fold<k>/ with `done` and {checkpoint}.pt); train it first")
    cfg = yaml.safe_load((next(iter(folds.values())) / "config.yaml").read_text(encoding="utf-8"))
    return SoupRun(run_dir, cfg, folds)


def check_soupable(runs: list[SoupRun], checkpoint: str = "best", check_init: bool = True) -> list[int]:
    """The folds every run finished, after every check of the module docstring (SoupError naming the first
    that fails). check_init=False skips the initialisation check (tests prove it is what refuses)."""
    if len(runs) < 2:
        raise SoupError(f"a soup needs at least two runs, got {len(runs)}")
    first = runs[0]
    for run in runs[1:]:
        differ = [k for k in INPUT_KEYS if run.cfg.get(k) != first.cfg.get(k)]
        if differ:
            shown = "; ".join(f"{k}: {first.cfg.get(k)!r} vs {run.cfg.get(k)!r}" for k in differ)
            raise SoupError(f"cannot soup {first.path} and {run.path}: their configs differ in {shown}")
    folds = sorted(set.intersection(*(set(r.folds) for r in runs)))
    if not folds:
        raise SoupError(f"cannot soup {', '.join(str(r.path) for r in runs)}: no fold finished in all of them")
    for fold in folds:
        states = [eval_weights(read_checkpoint(r.folds[fold] / f"{checkpoint}.pt")) for r in runs]
        for run, state in zip(runs[1:], states[1:]):
            _same_architecture(first, run, states[0], state, fold)
        ids = [_oof_ids(r.folds[fold]) for r in runs]
        for run, other in zip(runs[1:], ids[1:]):
            if other != ids[0]:
                raise SoupError(f"cannot soup {first.path} and {run.path}: fold {fold} validates other images "
                                f"({len(ids[0])} vs {len(other)}; other folds files): a souped fold would have "
                                "trained on its own OOF images")
    if check_init:
        _same_initialisation(runs, folds[0])
    return folds


def _same_architecture(first: SoupRun, run: SoupRun, a: dict, b: dict, fold: int) -> None:
    if a.keys() != b.keys():
        extra = sorted(set(a) ^ set(b))
        raise SoupError(f"cannot soup {first.path} and {run.path}: different architectures (fold {fold}: "
                        f"{len(extra)} weights only in one of them, e.g. {extra[0]})")
    shapes = [k for k in a if a[k].shape != b[k].shape]
    if shapes:
        raise SoupError(f"cannot soup {first.path} and {run.path}: different architectures (fold {fold}: "
                        f"{shapes[0]} is {tuple(a[shapes[0]].shape)} vs {tuple(b[shapes[0]].shape)})")


def _oof_ids(fold_dir: Path) -> list[int]:
    import numpy as np
    import pandas as pd

    if (fold_dir / "oof.csv").is_file():
        return sorted(pd.read_csv(fold_dir / "oof.csv", usecols=["image_id"])["image_id"].astype(int).tolist())
    with np.load(fold_dir / "oof.npz") as oof:
        return sorted(int(i) for i in oof["image_id"])


def initial_weights(cfg: dict, fold: int, index=None, folds=None) -> dict:
    """The weights a fold's training starts from: engine.setup's model for this config, seeded as training."""
    from strokekit.training.engine import setup

    index = build_index(cfg["data"])[0] if index is None else index
    folds = read_folds(folds_path(cfg), index) if folds is None else folds
    tr = setup({**cfg, "topk_average": 0}, index, folds, fold)
    return {k: v.detach().cpu().clone() for k, v in distributed.unwrap(tr.model).state_dict().items()}


def _same_initialisation(runs: list[SoupRun], fold: int) -> None:
    index = build_index(runs[0].cfg["data"])[0]
    folds = read_folds(folds_path(runs[0].cfg), index)
    starts = [initial_weights(r.cfg, fold, index, folds) for r in runs]
    for run, start in zip(runs[1:], starts[1:]):
        differ = [k for k in starts[0]
                  if not k.startswith(TRAINING_ONLY) and not torch.equal(starts[0][k], start[k])]
        if differ:
            how = (f"weights: {run.cfg.get('weights')}" if run.cfg.get("weights") else
                   f"pretrained: {run.cfg.get('pretrained')}")
            raise SoupError(
                f"cannot soup {runs[0].path} and {run.path}: they start from different weights ({len(differ)} of "
                f"{len(start)} initial tensors differ, e.g. {differ[0]}; seeds {runs[0].cfg.get('seed')} and "
                f"{run.cfg.get('seed')}, {how}): a soup needs one initialisation, e.g. every run fine-tuned "
                "from the same `weights:` checkpoint; blend their predictions instead")


def soup_runs(run_dirs, out: str | os.PathLike, checkpoint: str = "best", log=print) -> Path:
    """Write the soup of `run_dirs` as the run folder `out` (see the module docstring); returns `out`.

    The folder is built beside `out` and swapped in at the end: a kill leaves the previous soup (or nothing).
    An existing `out` is replaced only when it is a soup (holds soup.json), never a trained run."""
    from strokekit.training.engine import setup
    from strokekit.training.fold_end import finish_fold

    out = Path(out)
    if out.exists() and not (out / MARKER).is_file():
        raise SoupError(f"{out} exists and is not a soup folder (no {MARKER}): choose another --soup folder")
    runs = [read_soup_run(d, checkpoint) for d in run_dirs]
    if out.resolve() in {r.path.resolve() for r in runs}:
        raise SoupError(f"--soup {out} is one of the runs it averages")
    folds = check_soupable(runs, checkpoint)
    cfg = {**runs[0].cfg, "name": out.name, "runs_dir": str(out.parent), "topk_average": 0}
    index = build_index(cfg["data"])[0]
    split = read_folds(folds_path(cfg), index)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FolderLock(out, "soup", beside=True):
        work = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        for fold in folds:
            fold_dir = work / f"fold{fold}"
            sources = [read_checkpoint(r.folds[fold] / f"{checkpoint}.pt") for r in runs]
            weights = average_weights([eval_weights(c) for c in sources])
            tr = setup({**cfg, "weights": None, "pretrained": False}, index, split, fold)  # weights: the soup's
            model = tr.eval_model
            model.load_state_dict(weights)
            fold_dir.mkdir(parents=True)
            save_config(cfg, fold_dir / "config.yaml")
            save_atomic(build_checkpoint(model, cfg, sources[0]["num_outputs"],
                                         ema=model if tr.ema is not None else None, epoch=0,
                                         souped_from=[str(r.folds[fold] / f"{checkpoint}.pt") for r in runs]),
                        fold_dir / "best.pt")
            tr.best, tr.info["souped_from"] = float("nan"), [str(r.path) for r in runs]
            finish_fold(tr, fold, fold_dir, time.time(), log=lambda *a, **k: None)
            log(f"soup fold {fold}: mean of {len(runs)} runs' {checkpoint}.pt -> {fold_dir.relative_to(work)}")
        write_json(work / MARKER, {"runs": [str(r.path) for r in runs], "checkpoint": checkpoint, "folds": folds,
                                   "batchnorm": "running statistics averaged", "time": time.strftime("%FT%T")})
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            work.rename(out)
            shutil.rmtree(old)
        else:
            work.rename(out)
    return out
