"""The one train / validate loop for every task, with resume, and the fold's final OOF pass.

`train_fold(cfg, index, folds, fold, run_dir)` reads top to bottom: build data, model, optimizer, schedule
-> (resume from last.pt) -> per epoch: train -> validate -> log.csv row -> best.pt -> last.pt -> curves.png
(`draw_curves`: train.py and tune.py pass strokekit.report.figures.fold_curves; training does not import the
report stage) -> early stop -> with the best checkpoint: OOF file, summary.json, and the `done` marker, written last.
With `topk_average: k` the k best epochs' weights are kept in memory (and in last.pt, for --resume), and at
the end best.pt holds their mean, validated once more for the OOF file and summary.json (topk.py).
`validation.predict_loader` runs a model over a loader (each epoch's validation, the OOF pass; infer.py predicts
with strokekit.inference.predict); `fold_end.finish_fold` writes the fold's OOF file, summary.json and done. Autocast is strokekit.models.precision's, which inference uses too.
Under torchrun the same loop runs in every process with DistributedDataParallel (see distributed.py): rank 0
alone writes the run folder, validation results are gathered on it and its metrics broadcast to all ranks.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from strokekit.training import distributed
from strokekit.data.neighbours import describe_counts, summary_counts
from strokekit.progress import bar
from strokekit.models.checkpoint import (build_checkpoint, model_state, read_checkpoint, rng_state, save_atomic,
                                         seed_everything, set_rng_state)
from strokekit.training.loader import make_loader
from strokekit.models.precision import autocast
from strokekit.training.mixing import draw_mix
from strokekit.models.registry import build_model
from strokekit.training.optim import LrSchedule, build_optimizer
from strokekit.training.runlog import EpochLog, check_interrupt, eta, interrupted
from strokekit.training.tasks import get_task, selection_metric
from strokekit.training.topk import TopK
from strokekit.training.validation import predict_loader
from strokekit.training.fold_end import finish_fold
from strokekit.models.weights import WeightsError, strip_prefixes


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Trainer:
    """Everything one fold's training holds; built once by `setup`."""
    cfg: dict
    task: object
    device: torch.device
    model: torch.nn.Module
    ema: object
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule
    scaler: object
    loss_fn: torch.nn.Module
    train_loader: object
    val_loader: object
    metric: str
    mode: str
    epoch: int = 0                 # completed epochs
    best: float | None = None
    best_epoch: int = 0
    info: dict = field(default_factory=dict)
    topk: TopK | None = None       # topk_average: the k best epochs' eval weights (rank 0 only)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The EMA or the bare model (never the DDP wrapper: validation shards differ in length)."""
        return self.ema.module if self.ema is not None else distributed.unwrap(self.model)


def setup(cfg: dict, index, folds, fold: int) -> Trainer:
    """Seeds, data loaders, model (+ EMA), loss, optimizer, schedule and scaler for one fold."""
    seed_everything(cfg["seed"])
    task = get_task(cfg["task"])
    device = distributed.device() if distributed.enabled() else pick_device()
    train_rows, val_rows = task.split(index, folds, fold, cfg)
    train_ds, val_ds = task.dataset(train_rows, cfg, train=True), task.dataset(val_rows, cfg, train=False)
    train_loader = make_loader(train_ds, cfg, device, shuffle=True, **task.sampler(train_ds, cfg))
    val_loader = make_loader(val_ds, cfg, device)
    model = distributed.prepare_model(build_model(cfg), cfg).to(device)
    if device.type == "cuda" and cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg["ema"]:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg["ema_decay"], use_warmup=True)
    model = distributed.wrap(model, device)  # DistributedDataParallel under torchrun
    weights = cfg["class_weights"]
    if weights == "balanced":
        counts = task.class_counts(train_ds)
        weights = (counts.sum() / (len(counts) * np.maximum(counts, 1))).tolist()
    loss_fn = task.build_loss(cfg, weights).to(device)
    optimizer = build_optimizer(model, cfg)
    schedule = LrSchedule(optimizer, cfg, math.ceil(len(train_loader) / cfg["accum_steps"]))
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg["amp"] == "fp16" else None
    metric, mode = selection_metric(cfg)
    info = {"n_train": len(train_ds), "n_val": len(val_ds), "class_weights": weights, "device": str(device),
            **summary_counts(cfg, train_ds, val_ds)}
    if distributed.enabled():
        info.update(world_size=distributed.world(), sync_bn=cfg["sync_bn"], backend=torch.distributed.get_backend(),
                    batch_per_process=distributed.per_process_batch(cfg["batch_size"]))
    if distributed.rank():
        seed_everything(distributed.rank_seed(cfg["seed"]))  # dropout differs across ranks
    topk = TopK(cfg["topk_average"], mode, metric) if cfg["topk_average"] and distributed.is_main() else None
    return Trainer(cfg, task, device, model, ema, optimizer, schedule, scaler, loss_fn, train_loader,
                   val_loader, metric, mode, info=info, topk=topk)


def train_one_epoch(tr: Trainer, progress: bool = True) -> dict:
    """One pass over the training loader with accumulation, clipping, AMP and EMA.

    Returns the mean loss, `images_per_s` (training images through the pass per second, all ranks) and
    `data_wait`: the share of the pass spent waiting for the loader's next batch (worker start-up and the
    first batch included). Near 0, the model sets the pace, not the input pipeline.
    """
    cfg, model, accum = tr.cfg, tr.model, tr.cfg["accum_steps"]
    model.train()
    total, seen, wait = 0.0, 0, 0.0
    batches = bar(tr.train_loader, desc=f"epoch {tr.epoch + 1}/{cfg['epochs']}", unit="batch",
                  show=progress and distributed.is_main())  # on a terminal only (strokekit/progress.py)
    tr.optimizer.zero_grad(set_to_none=True)
    started = ready = time.perf_counter()
    for i, batch in enumerate(batches):
        check_interrupt()
        wait += time.perf_counter() - ready
        images = batch["image"].to(tr.device, non_blocking=True)
        if tr.device.type == "cuda" and cfg["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        target = tr.task.loss_target(batch, tr.device)
        mix = draw_mix(cfg, images, tr.epoch, i)  # mixup / cutmix (training/mixing.py); None when off
        if mix is not None:
            images = mix.images(images)
        stepping = (i + 1) % accum == 0 or i + 1 == len(tr.train_loader)
        with distributed.no_sync(model, stepping):  # DDP: all-reduce gradients on stepping batches only
            with autocast(tr.device, cfg["amp"]):
                outputs = model(images)
                loss = (tr.loss_fn(outputs, target) if mix is None
                        else mix.loss(tr.loss_fn, outputs, target, tr.task.name))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {tr.epoch + 1}, batch {i}: loss is {float(loss)}; "
                                         "lower lr, set clip_grad, or use amp: bf16 instead of fp16")
            (tr.scaler.scale(loss / accum) if tr.scaler else loss / accum).backward()
        if stepping:
            optimizer_step(tr)
        total, seen = total + loss.item() * len(images), seen + len(images)
        batches.set_postfix(loss=f"{total / seen:.4f}", lr=f"{tr.schedule.lr():.2e}")
        ready = time.perf_counter()  # loss.item() above waited for the step, so the wait starts here
    elapsed = time.perf_counter() - started
    total, seen = distributed.total(total, seen)  # the global batch's mean loss under torchrun
    return {"train_loss": total / max(seen, 1), "data_wait": round(wait / elapsed, 4) if elapsed > 0 else 0.0,
            "images_per_s": round(seen / elapsed, 2) if elapsed > 0 else 0.0}


def optimizer_step(tr: Trainer) -> None:
    if tr.cfg["clip_grad"]:
        if tr.scaler:
            tr.scaler.unscale_(tr.optimizer)
        torch.nn.utils.clip_grad_norm_(tr.model.parameters(), tr.cfg["clip_grad"])
    if tr.scaler:
        tr.scaler.step(tr.optimizer)
        tr.scaler.update()
    else:
        tr.optimizer.step()
    tr.optimizer.zero_grad(set_to_none=True)
    tr.schedule.step()
    if tr.ema is not None:
        tr.ema.update(distributed.unwrap(tr.model), step=tr.schedule.step_count)


def reseed_epoch(tr: Trainer) -> None:
    """Data order and augmentations depend on (seed, epoch) only, so a resumed epoch sees the same data."""
    seed = tr.cfg["seed"] * 1000 + tr.epoch
    loader = tr.train_loader
    for sampler in (loader.sampler, loader.batch_sampler):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(tr.epoch)
    loader.generator.manual_seed(seed)
    loader.dataset.reseed(distributed.rank_seed(seed))  # each rank augments its images its own way


def checkpoint(tr: Trainer, metrics: dict, last: bool = False) -> dict:
    """Everything a resume or infer.py needs, as tensors and plain Python types (last.pt: + the top-k set)."""
    extra = {"topk": tr.topk.state()} if last and tr.topk is not None else {}
    return build_checkpoint(
        tr.model, tr.cfg, tr.task.num_outputs, ema=tr.ema.module if tr.ema is not None else None,
        epoch=tr.epoch, best_metric=tr.best, best_epoch=tr.best_epoch, metric_name=tr.metric,
        metric_mode=tr.mode, metrics=metrics, optimizer=tr.optimizer.state_dict(),
        scheduler=tr.schedule.state_dict(), scaler=tr.scaler.state_dict() if tr.scaler else None,
        rng=rng_state(), seed=tr.cfg["seed"], **extra)


SHAPE_KEYS = ("task", "model", "encoder", "in_chans")  # config keys that change the weights' shapes


def resume(tr: Trainer, path: Path, ckpt: dict | None = None) -> None:
    """Continue from last.pt (`ckpt`: that file already read, as rank 0 broadcasts it under torchrun)."""
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)  # on the CPU: RNG states stay CPU tensors
    keys = [k for k in SHAPE_KEYS if k != "encoder" or tr.cfg["task"] == "seg"]  # classifiers have no encoder
    changed = [f"{k}: {ckpt['config'].get(k)!r} -> {tr.cfg[k]!r}" for k in keys if ckpt["config"].get(k) != tr.cfg[k]]
    if changed:
        raise WeightsError(f"{path} cannot be resumed with this config ({', '.join(changed)}); "
                           "use another run name or --overwrite")
    distributed.unwrap(tr.model).load_state_dict(strip_prefixes(ckpt["model"]))
    if tr.ema is not None and ckpt["ema"] is not None:
        tr.ema.module.load_state_dict(ckpt["ema"])
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    tr.schedule.load_state_dict(ckpt["scheduler"])
    if tr.scaler and ckpt["scaler"]:
        tr.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    tr.epoch, tr.best, tr.best_epoch = ckpt["epoch"], ckpt["best_metric"], ckpt["best_epoch"]
    if tr.cfg["topk_average"] and ckpt.get("topk") is None and tr.epoch:  # every rank refuses alike
        raise WeightsError(f"{path} was trained without topk_average: its epochs' weights are gone, so "
                           "it cannot be averaged; resume without topk_average or start over (--overwrite)")
    if tr.topk is not None and ckpt.get("topk") is not None:
        try:
            tr.topk.load(ckpt["topk"])
        except ValueError as err:
            raise WeightsError(f"{path} cannot be resumed with topk_average: {err}") from None
        tr.topk.keep_until(tr.epoch)
    if distributed.rank():  # rank 0's RNG states were saved; the others take their own
        seed_everything(distributed.rank_seed(tr.cfg["seed"] * 1000 + tr.epoch))


def is_better(value: float, best: float | None, mode: str) -> bool:
    if value is None or math.isnan(value):
        return best is None
    return best is None or math.isnan(best) or (value > best if mode == "max" else value < best)


def train_fold(cfg: dict, index, folds, fold: int, run_dir, resume_run: bool = False,
               progress: bool = True, log=print, on_epoch_end=None, draw_curves=None) -> dict:
    """Train one fold into run_dir (see module docstring); returns the summary written to summary.json.

    `on_epoch_end(epoch, row)`, if given, sees each epoch's log.csv row after last.pt is saved; an
    exception it raises (tune.py's pruning) ends the fold there, leaving the run unfinished (no `done`).
    `draw_curves(rows, metric, path)`, if given, draws curves.png from log.csv's rows (rank 0): after the first
    epoch, then at most every CURVES_EVERY_S seconds, and once more when the loop ends (done, early stop,
    interrupt or error), so a drawing (~0.5 s) never costs as much as a short epoch.
    """
    run_dir, main = Path(run_dir), distributed.is_main()
    log = log if main else _quiet
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tr = setup(cfg, index, folds, fold)
    epochs_log = EpochLog(run_dir / "log.csv")
    last = run_dir / "last.pt"
    ckpt = distributed.on_main(lambda: read_checkpoint(last) if resume_run and last.is_file() else None)
    if ckpt is not None:
        resume(tr, last, ckpt)
        del ckpt
        if main:
            epochs_log.load().keep_until(tr.epoch)
        log(f"fold {fold}: resumed after epoch {tr.epoch} (best {tr.metric}={tr.best} at epoch {tr.best_epoch})")
    log(f"fold {fold}: {tr.info['n_train']} train / {tr.info['n_val']} val images, {tr.task.name} task, "
        f"{cfg['model']} on {tr.device}, selecting on {tr.metric} ({tr.mode})")
    if "neighbours" in tr.info:
        log(f"fold {fold}: {describe_counts(tr.info['neighbours'])}")
    epoch_times = []  # this session's, for the ETA
    curves = Curves(draw_curves if main else None, epochs_log.rows, tr.metric, run_dir / "curves.png")
    try:
        while tr.epoch < cfg["epochs"]:
            check_interrupt()
            epoch_start = time.time()
            reseed_epoch(tr)
            row = {"epoch": tr.epoch + 1, "lr": tr.schedule.lr(), **train_one_epoch(tr, progress)}
            distributed.sync_buffers(tr.model, tr.ema.module if tr.ema is not None else None)
            tr.epoch += 1
            metrics, _ = predict_loader(tr.eval_model, tr.val_loader, tr.task, cfg, tr.device, tr.loss_fn,
                                        progress=progress)
            row.update(metrics)
            row["time_s"] = round(time.time() - epoch_start, 2)
            epoch_times.append(row["time_s"])
            if main:
                epochs_log.append(row)
            value = metrics.get(tr.metric)
            if value is None:
                raise KeyError(f"metric {tr.metric!r} is not computed for task {tr.task.name}; "
                               f"choose one of {', '.join(metrics)}")
            improved = is_better(value, tr.best, tr.mode)
            if improved:
                tr.best, tr.best_epoch = value, tr.epoch
                if main:
                    save_atomic(checkpoint(tr, metrics), run_dir / "best.pt")
            if tr.topk is not None:
                tr.topk.offer(tr.epoch, value, lambda: model_state(tr.eval_model))
            tr.schedule.epoch_end(value, tr.mode)
            if main:
                save_atomic(checkpoint(tr, metrics, last=True), last)
                curves.draw(final=False)
            log(f"fold {fold} epoch {tr.epoch}/{cfg['epochs']}: train_loss {row['train_loss']:.4f} "
                f"val_loss {row.get('val_loss', float('nan')):.4f} {tr.metric} {value:.4f}"
                f"{' *' if improved else ''}, lr {row['lr']:.2e}, {row['images_per_s']:.1f} img/s "
                f"({row['time_s']:.0f}s, ETA {eta(epoch_times, cfg['epochs'] - tr.epoch)})")
            if on_epoch_end is not None:
                on_epoch_end(tr.epoch, row)
            if cfg["early_stop"] and tr.epoch - tr.best_epoch >= cfg["early_stop"]:
                log(f"fold {fold}: early stop, no better {tr.metric} for {cfg['early_stop']} epochs")
                break
    except BaseException as err:
        if interrupted(err):
            log(f"\nfold {fold}: interrupted after epoch {tr.epoch}; best {tr.metric}={tr.best} at epoch "
                f"{tr.best_epoch} in {run_dir / 'best.pt'}; continue with --resume")
        curves.draw(final=True, quiet=True)
        if interrupted(err) and not isinstance(err, KeyboardInterrupt):
            raise KeyboardInterrupt from err  # the scripts end it as the interrupt it is (exit 130)
        raise
    curves.draw(final=True)
    waits = [r["data_wait"] for r in epochs_log.rows if isinstance(r.get("data_wait"), (int, float))]
    tr.info["data_wait"] = round(float(np.mean(waits)), 4) if waits else None  # mean of log.csv's column
    return finish_fold(tr, fold, run_dir, started, log)


CURVES_EVERY_S = 30.0


class Curves:
    """curves.png drawn from log.csv's rows: the first epoch's at once, then at most every CURVES_EVERY_S
    seconds, and the last rows when the loop ends."""

    def __init__(self, draw, rows: list, metric: str, path: Path):
        self.fn, self.rows, self.metric, self.path = draw, rows, metric, path
        self.drawn, self.at = 0, -float("inf")

    def draw(self, final: bool, quiet: bool = False) -> None:
        """final: draw whatever is new; quiet: the loop is ending on an error, which a figure's must not mask."""
        if self.fn is None or len(self.rows) == self.drawn:
            return
        if not final and time.time() - self.at < CURVES_EVERY_S:
            return
        try:
            self.fn(self.rows, self.metric, self.path)
        except Exception:  # noqa: BLE001 - see `quiet`
            if not quiet:
                raise
        self.drawn, self.at = len(self.rows), time.time()


def _quiet(*args, **kwargs) -> None:
    """The log of ranks other than 0."""
