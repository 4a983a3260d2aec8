"""The end of a fold: with the best checkpoint, the OOF pass, summary.json and the `done` marker (written last).

`tr` is the fold's engine.Trainer. With topk_average the best checkpoint is first the mean of the k best epochs'
weights (topk.py). Soups (soup.py) end their folds here too.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from strokekit.atomic import write_json, write_text_atomic
from strokekit.models.checkpoint import read_checkpoint, save_atomic, versions
from strokekit.models.weights import strip_prefixes
from strokekit.training import distributed
from strokekit.training.topk import write_averaged
from strokekit.training.validation import predict_loader
from strokekit.vocabulary import resolve_flips, resolve_scales


def finish_fold(tr, fold: int, run_dir: Path, started: float, log=print) -> dict:
    """With the best checkpoint (EMA weights when on): OOF file, final metrics, summary.json, done.

    With topk_average the best checkpoint is first the mean of the k best epochs' weights; best.pt is
    rewritten with it (and these final metrics) before the OOF file, and last.pt loses its top-k set at the end.

    Under torchrun rank 0 reads best.pt and broadcasts its weights; all ranks validate their shards, and
    rank 0 writes the gathered OOF file and the rest. Every rank returns the summary.
    """
    weights = distributed.on_main(lambda: _best_weights(tr, run_dir))
    model = tr.eval_model
    model.load_state_dict(weights)
    metrics, state = predict_loader(model, tr.val_loader, tr.task, tr.cfg, tr.device, tr.loss_fn, keep_oof=True,
                                    flips=tr.cfg["oof_tta"], scales=tr.cfg["oof_tta_scales"])
    if tr.topk is not None:  # rank 0 only
        _write_averaged_best(tr, run_dir, weights, metrics, log)
    summary = distributed.on_main(_write_fold, tr, fold, run_dir, started, metrics, state, log)
    if tr.topk is not None:  # the fold is done: last.pt need not carry k more copies of the model
        ckpt = read_checkpoint(run_dir / "last.pt")
        ckpt.pop("topk", None)
        save_atomic(ckpt, run_dir / "last.pt")
    distributed.barrier()
    return summary


def _best_weights(tr, run_dir: Path) -> dict:
    if tr.topk is not None:
        return tr.topk.average()
    best = read_checkpoint(run_dir / "best.pt")
    return strip_prefixes(best["ema"] if tr.ema is not None else best["model"])


def _write_averaged_best(tr, run_dir: Path, weights: dict, metrics: dict, log) -> None:
    """best.pt's eval weights := the top-k mean (topk.write_averaged); summary.json and the log say which epochs."""
    write_averaged(run_dir / "best.pt", weights, "ema" if tr.ema is not None else "model", metrics, tr.topk)
    tr.info["topk_average"] = {"k": tr.topk.k, "epochs": tr.topk.epochs, "values": tr.topk.values,
                               "averaged_metric": metrics.get(tr.metric)}
    log(f"best.pt = mean weights of epochs {tr.topk.epochs} ({tr.metric} "
        f"{', '.join(f'{v:.4f}' for v in tr.topk.values)}; averaged {metrics.get(tr.metric, math.nan):.4f})")


def _write_fold(tr, fold: int, run_dir: Path, started: float, metrics: dict, state: dict, log) -> dict:
    oof = tr.task.write_oof(state, fold, run_dir)
    summary = {"task": tr.task.name, "model": tr.cfg["model"], "fold": fold, "metric": tr.metric,
               "mode": tr.mode, "best_epoch": tr.best_epoch, "best_metric": tr.best, "epochs_run": tr.epoch,
               "final_metrics": metrics, "oof": Path(oof).name, "oof_tta": resolve_flips(tr.cfg["oof_tta"]),
               "oof_tta_scales": resolve_scales(tr.cfg["oof_tta_scales"]),
               "seed": tr.cfg["seed"],
               "time_s": round(time.time() - started, 1), **tr.info, "versions": versions()}
    write_json(run_dir / "summary.json", summary)
    write_text_atomic(run_dir / "done", time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    log(f"fold {fold}: best {tr.metric}={tr.best:.4f} at epoch {tr.best_epoch}; OOF -> {oof}")
    return summary
