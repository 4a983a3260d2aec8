"""Does the input pipeline keep up with the model? Training-loader images/s (decode + augment) with and
without the preprocessing cache, the model's own train-step images/s, and the share of a real training epoch
spent waiting for data (the engine's `data_wait`), for resnet18 @224 and Unet-resnet34 @256.

    python bench/loader.py                                  # both models on a 320-slice 512-px phantom
    python bench/loader.py --models resnet18@224 --epoch-images 64 --note "quiet box"

Loader rates are over --batches batches after the first (worker start-up excluded; the training slices are
repeated when fewer); "main process" rates use num_workers=0 and show what one worker delivers. Epoch rows
run engine.train_one_epoch on --epoch-images training slices (first batch and worker start included, as in
training). The goal: data_wait <= 5 % with the cache.
Writes bench/results/loader_<device>.json.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import DEFAULT_WORK, MODELS, Timer, bench_config, machine, phantom, table, wait_for_quiet, write_result

import pandas as pd  # noqa: E402  (after common, which puts the repo on sys.path)
import torch  # noqa: E402

from strokekit.training.loader import make_loader  # noqa: E402
from strokekit.data.index import build_index  # noqa: E402
from strokekit.models.precision import autocast  # noqa: E402
from strokekit.training.engine import optimizer_step, pick_device, setup, train_one_epoch  # noqa: E402
from strokekit.data.folds import make_folds  # noqa: E402
from strokekit.training.tasks import get_task  # noqa: E402

import prepare  # noqa: E402


def loader_rate(task, rows, cfg: dict, device, batches: int) -> float:
    """Images/s a training loader delivers after its first batch."""
    rows = pd.concat([rows] * -(-(batches + 1) * cfg["batch_size"] // len(rows)), ignore_index=True)
    loader = make_loader(task.dataset(rows, cfg, train=True), cfg, device, shuffle=True)
    iterator = iter(loader)
    next(iterator)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        seen += len(next(iterator)["image"])
    rate = seen / (time.perf_counter() - start)
    del iterator
    return rate


def step_rate(tr, steps: int) -> float:
    """Images/s of forward + backward + optimizer step on one batch held on the device (no loader)."""
    batch = next(iter(tr.train_loader))
    images = batch["image"].to(tr.device)
    if tr.device.type == "cuda" and tr.cfg["channels_last"]:
        images = images.contiguous(memory_format=torch.channels_last)
    target = batch["mask" if "mask" in batch else "target"].to(tr.device)
    tr.model.train()
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()  # the first step warms up (allocations, cuDNN autotuning)
        with autocast(tr.device, tr.cfg["amp"]):
            loss = tr.loss_fn(tr.model(images), target)
        loss.backward()
        optimizer_step(tr)
        loss.item()
    return steps * len(images) / (time.perf_counter() - start)


def subset(index, folds, cfg: dict, n_train: int):
    """The index cut to n_train training slices of fold 0's training side (+ a few validation ones)."""
    train_rows, val_rows = get_task(cfg["task"]).split(index, folds, 0, cfg)
    keep = set(train_rows["image_id"][:n_train]) | set(val_rows["image_id"][:8])
    return index[index["image_id"].isin(keep)].reset_index(drop=True)


def bench_model(name: str, index, folds, args, device) -> dict:
    cache_dir = args.work / f"cache_{name}_{time.time_ns()}"
    cfg = bench_config(name, f"num_workers={args.workers}", f"batch_size={args.batch_size}", cache=False,
                       cache_dir=str(cache_dir))
    small = subset(index, folds, cfg, args.epoch_images)
    out = {"config": {k: cfg[k] for k in ("task", "model", "encoder", "img_size", "batch_size", "num_workers",
                                          "amp", "aug")}}
    tr = setup(cfg, small, folds, 0)
    n_epoch = len(tr.train_loader.dataset)
    print(f"{name}: {n_epoch} training slices per epoch, batch {cfg['batch_size']}, {cfg['num_workers']} workers")
    out["loads"] = [wait_for_quiet(args.quiet_load)]
    out["train_step_images_per_s"] = step_rate(tr, args.steps)
    out["loads"].append(wait_for_quiet(args.quiet_load))
    with Timer() as t:
        epoch = train_one_epoch(tr, progress=False)
    out["epoch_files"] = {"images_per_s": n_epoch / t.seconds, "data_wait": epoch["data_wait"]}

    cached_cfg = dict(cfg, cache=True)
    rows = get_task(cfg["task"]).split(index, folds, 0, cfg)[0].to_dict("records")
    filled = prepare.fill(cached_cfg, rows, workers=args.workers, progress=False)
    out["prepare_images_per_s"] = filled["rows"] / filled["seconds"]
    tr = setup(cached_cfg, small, folds, 0)
    out["loads"].append(wait_for_quiet(args.quiet_load))
    with Timer() as t:
        epoch = train_one_epoch(tr, progress=False)
    out["epoch_cache"] = {"images_per_s": n_epoch / t.seconds, "data_wait": epoch["data_wait"]}

    task = get_task(cfg["task"])
    rows_df = index[index["image_id"].isin([r["image_id"] for r in rows])]
    for label, c in (("files", cfg), ("cache", cached_cfg)):
        for workers in (args.workers, 0):
            c_w = dict(c, num_workers=workers)
            out["loads"].append(wait_for_quiet(args.quiet_load))
            rates = [loader_rate(task, rows_df, c_w, device, args.batches) for _ in range(args.repeats)]
            out[f"loader_{label}_{'workers' if workers else 'main'}_images_per_s"] = max(rates)
    shutil.rmtree(cache_dir, ignore_errors=True)
    return out


def report(results: dict, workers: int) -> str:
    rows = []
    for name, r in results.items():
        rows += [[name, f"loader, files, {workers} workers", r["loader_files_workers_images_per_s"], ""],
                 [name, f"loader, cache, {workers} workers", r["loader_cache_workers_images_per_s"], ""],
                 [name, "loader, files, main process", r["loader_files_main_images_per_s"], ""],
                 [name, "loader, cache, main process", r["loader_cache_main_images_per_s"], ""],
                 [name, "prepare.py fill", r["prepare_images_per_s"], ""],
                 [name, "train step, batch in memory", r["train_step_images_per_s"], ""],
                 [name, "train epoch, files", r["epoch_files"]["images_per_s"],
                  f"{100 * r['epoch_files']['data_wait']:.1f} %"],
                 [name, "train epoch, cache", r["epoch_cache"]["images_per_s"],
                  f"{100 * r['epoch_cache']['data_wait']:.1f} %"]]
    return table(rows, ["model", "measurement", "images/s", "data_wait"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help=f"phantom and temporary cache (default {DEFAULT_WORK})")
    parser.add_argument("--train-images", type=int, default=320, help="phantom training slices (512 px)")
    parser.add_argument("--epoch-images", type=int, default=96, help="training slices in the timed epochs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (the config default)")
    parser.add_argument("--batches", type=int, default=16, help="batches timed per loader measurement")
    parser.add_argument("--repeats", type=int, default=2, help="loader measurements kept at their best")
    parser.add_argument("--steps", type=int, default=3, help="timed train steps on a held batch")
    parser.add_argument("--quiet-load", type=float, help="wait until the 1-min load average is <= this "
                                                         "before each timed part (shared machines)")
    parser.add_argument("--note", default="", help="what else ran on the machine, for the JSON")
    args = parser.parse_args()
    device = pick_device()
    info = machine(args.note)
    root = phantom(args.work, args.train_images)
    index, _ = build_index(root)
    folds = make_folds(index, n_folds=5, seed=0)
    results = {name: bench_model(name, index, folds, args, device) for name in args.models}
    print(report(results, args.workers))
    for name, r in results.items():
        share = r["epoch_cache"]["data_wait"]
        print(f"{name}: loader wait with the cache {100 * share:.1f} % of the epoch "
              f"({'meets' if share <= 0.05 else 'misses'} the 5 % goal)")
    write_result(f"loader_{device.type}", {"machine": info, "device": str(device), "settings": vars(args) | {
        "work": str(args.work)}, "results": results})


if __name__ == "__main__":
    main()
