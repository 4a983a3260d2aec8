"""Train one fold, or every fold, of a stroke / type / seg model; write checkpoints and out-of-fold predictions.

    python train.py --config configs/tiny_stroke.yaml --fold 0                 # trains on folds != 0
    python train.py --config configs/unet_r34_seg.yaml --fold all --data /data/TEKNOFEST
    python train.py --config configs/tiny_seg.yaml --fold 0 --set epochs=5 lr=3e-4
    python train.py --config configs/tiny_seg.yaml --fold 0 --resume           # continue from last.pt
    python train.py --config configs/tiny_seg.yaml --fold all --seeds 0,1,2    # 3 runs: runs/tiny_seg_s0/ ...
    python train.py --config configs/tiny_seg.yaml --fold 0 --log tensorboard  # + runs/tiny_seg/fold0/tb/
    python train.py --fold 0            # the configs (and data) strokekit.yaml names; demo.py writes one

The task (stroke | type | seg) comes from the config. Each fold writes runs/<name>/fold<k>/:
    config.yaml   the resolved config          log.csv      one row per epoch (loss, lr, val metrics)
    curves.png    loss and metric curves       best.pt      best epoch by the selection metric
    last.pt       for --resume                 oof.csv      classifiers: image_id, fold, target, prob
    oof.npz       seg: image_id, probs (N,3,S,S) float16, fold, orig_hw
    summary.json  best epoch / metric, final metrics, seed, time     done   written last
    train.log     the fold's console output, each line timed (--resume appends to it)
--log tensorboard|wandb|mlflow (repeatable, or comma-separated; config key `log`) also sends each epoch's row
and the final OOF figures to those trackers, offline (fold<k>/tb/, fold<k>/wandb/, fold<k>/mlflow.db).
A sweep (`--fold all`) skips folds whose `done` exists (pass --overwrite to retrain them).
Before training, every training image (and, for seg, every MASK / OVERLAY) is checked from its header:
--on-bad-input fail (default) stops at a bad file, skip leaves it out and lists it in fold<k>/skipped.csv.
Pretrained weights are never downloaded unless HF_HUB_OFFLINE=0; see docs/training.md.

Several GPUs or machines: start the same command through torchrun (DistributedDataParallel; `batch_size` is
the global batch, split over the processes; rank 0 alone writes the run folder; `sync_bn: true` optional):
    torchrun --nproc_per_node=4 train.py --config configs/unet_r34_seg.yaml --fold 0
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 --rdzv_id=JOB \\
        train.py --config configs/unet_r34_seg.yaml --fold all
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from strokekit.config import ConfigError, add_config_args, folds_path, load_config, save_config, set_key
from strokekit.config.settings import anchor_paths, read_settings, typed_keys
from strokekit.locks import FolderLock
from strokekit.training import distributed
from strokekit.data.check import apply_policy, check_files
from strokekit.data.index import build_index
from strokekit.data.folds import FoldsError, read_folds
from strokekit.errors import main_rank as speaks, script_main
from strokekit import progress
from strokekit.config.advice import advice
from strokekit.training.runlog import ConsoleLog, exit_process, watch_interrupts
from strokekit.training.tracking import check_available


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--fold", default="0", help="fold to validate on (its index in the folds file), or 'all'")
    parser.add_argument("--data", help="data set root (overrides the config's `data`)")
    parser.add_argument("--folds-csv", help="folds file from kfold.py (default: <data>/folds.csv)")
    parser.add_argument("--out", help="runs folder (overrides the config's `runs_dir`, default runs)")
    parser.add_argument("--resume", action="store_true", help="continue each fold from its last.pt")
    parser.add_argument("--on-bad-input", choices=("fail", "skip"),
                        help="a bad data file stops the run (fail, the config default) or is left out (skip)")
    parser.add_argument("--overwrite", action="store_true", help="retrain folds that are already done")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are drawn only on a terminal anyway; logs stay)")
    parser.add_argument("--log", action="append", metavar="TRACKER",
                        help="experiment tracker(s): tensorboard, wandb, mlflow (repeat or comma-separate; "
                             "offline, see docs/training.md; default: the config's `log`)")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: the config trained once per seed, each "
                                        "a run of its own (runs/<name>_s<seed>/) for ensemble.py to rank (top-k "
                                        "of N runs by OOF, as the DPN-U-Net system kept 6 of ~40)")
    return parser.parse_args(argv)


def resolve_config(args) -> dict:
    """The validated config (every key checked against config/schema.py) before any data is read."""
    cfg = load_config(args.config, args.set)
    for key, value in (("data", args.data), ("folds", args.folds_csv), ("runs_dir", args.out),
                       ("on_bad_input", args.on_bad_input), ("log", ",".join(args.log or []))):
        if value:
            set_key(cfg, key, value, source="command line")
    return anchor_paths(cfg, typed_keys(args.set, data=args.data, folds=args.folds_csv, runs_dir=args.out))


def seed_configs(cfg: dict, seeds: str | None) -> list[dict]:
    """One config per seed of --seeds, named <name>_s<seed>; the config itself without --seeds."""
    if not seeds:
        return [cfg]
    out = []
    for text in dict.fromkeys(s.strip() for s in seeds.split(",") if s.strip()):
        if not (text.isascii() and text.isdigit()):
            raise ConfigError(f"--seeds {seeds}: seeds are whole numbers >= 0, comma-separated (e.g. 0,1,2)")
        run = dict(cfg)
        set_key(run, "seed", int(text), source="--seeds")
        set_key(run, "name", f"{cfg['name']}_s{text}", source="--seeds")
        out.append(run)
    if not out:
        raise ConfigError(f"--seeds {seeds!r}: no seed given")
    return out


def fold_list(spec: str, folds) -> list[int]:
    available = sorted(int(k) for k in folds["fold"].unique())
    if spec == "all":
        return available
    digits = spec.lstrip("-")
    if not (digits.isascii() and digits.isdigit()) or int(spec) not in available:  # '²' is a digit to isdigit
        raise FoldsError(f"--fold {spec}: the folds file has folds {available} (or use --fold all)")
    return [int(spec)]


RUN_FILES = ("done", "summary.json", "log.csv", "curves.png", "best.pt", "last.pt", "oof.csv", "oof.npz",
             "skipped.csv", "resume_changes.log", "train.log")


def lock_folds(run_root: Path, todo: list[int], held: list) -> None:
    """One run per fold folder: lock each fold to train (strokekit/locks.py) or fail naming the run holding it.
    The locks go into `held`; they drop when it does (main returns) or the process ends, kill -9 included."""
    for fold in todo:
        held.append(FolderLock(run_root / f"fold{fold}", what="train.py run").acquire())


# keys that do not change what a resumed fold learns (where files are, how fast they load, the final OOF pass)
RESUME_NEUTRAL = {"name", "data", "folds", "runs_dir", "on_bad_input", "log", "num_workers", "cache", "cache_dir",
                  "ddp_backend", "oof_tta", "oof_tta_scales"}


def check_run_dirs(run_root: Path, todo: list[int], cfg: dict, args) -> None:
    """Refuse to silently throw away an unfinished fold: it needs --resume or --overwrite. --resume under a
    config that trains differently (epochs, lr, model ...) is refused naming the keys, unless --set gives each
    change explicitly; then fold<k>/resume_changes.log records it."""
    for fold in todo:
        run_dir = run_root / f"fold{fold}"
        unfinished = (run_dir / "last.pt").exists() and not (run_dir / "done").exists()
        if unfinished and not (args.resume or args.overwrite):
            raise ConfigError(f"{run_dir} holds an unfinished run: --resume continues it, --overwrite "
                              "starts it over")
        if args.resume and unfinished and (run_dir / "config.yaml").is_file():
            changed = config_changes(load_config(str(run_dir / "config.yaml"), []), cfg)
            typed = {item.split("=", 1)[0].strip() for item in args.set}
            silent = [key for key in changed if key not in typed and key.split(".")[0] not in typed]
            if silent:
                raise ConfigError(f"--resume {run_dir}: the config changed {', '.join(changed[k] for k in silent)}; "
                                  "give each change with --set to resume with it, or --overwrite to start over")


def config_changes(old: dict, new: dict, prefix: str = "") -> dict[str, str]:
    """{dotted key: 'key: old -> new'} for the keys (outside RESUME_NEUTRAL) whose values differ."""
    changes = {}
    for key in sorted(set(old) | set(new)):
        name = prefix + key
        if not prefix and key in RESUME_NEUTRAL:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes.update(config_changes(a, b, name + "."))
        elif a != b:
            changes[name] = f"{name}: {a!r} -> {b!r}"
    return changes


def record_resume_changes(run_dir: Path, cfg: dict) -> None:
    """Append the config changes a --resume brings (given with --set) to fold<k>/resume_changes.log."""
    if not (run_dir / "config.yaml").is_file():
        return
    changed = config_changes(load_config(str(run_dir / "config.yaml"), []), cfg)
    if changed:
        import time

        with open(run_dir / "resume_changes.log", "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} resumed with {'; '.join(changed.values())}\n")


def clear_run_dir(run_dir: Path) -> None:
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def remove_stale_temp_files(run_dir: Path) -> None:
    """Half-written `.<file>.tmp<pid>` files a killed run left behind (one run per fold folder at a time)."""
    for stale in run_dir.glob(".*.tmp*"):
        stale.unlink(missing_ok=True)


def prepare_fold(fold: int, run_dir: Path, cfg: dict, check, args) -> bool:
    """Make run_dir ready for a fold (rank 0's job under torchrun); False when the fold is done and skipped."""
    if (run_dir / "done").exists() and not args.overwrite:
        print(f"fold {fold}: {run_dir}/done exists, skipping (--overwrite retrains it)")
        return False
    if not args.resume:
        clear_run_dir(run_dir)
    else:
        record_resume_changes(run_dir, cfg)
    remove_stale_temp_files(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    if check.bad:  # only reached with on_bad_input: skip
        check.write_skipped(run_dir / "skipped.csv")
        print(f"fold {fold}: {len(check.bad_ids)} bad images left out, listed in {run_dir / 'skipped.csv'}")
    else:
        (run_dir / "skipped.csv").unlink(missing_ok=True)
    return True


def configs_to_train(args) -> list[str | None]:
    """--config, else the settings file's `train` configs (its `data` too, unless --data is given), else the
    built-in defaults; what was picked, and from where, is printed before anything starts."""
    settings = read_settings()
    if settings and settings["data"] and not args.data:
        args.data = settings["data"]
    if args.config:
        return [args.config]
    if settings and settings["train"]:
        print(f"no --config: training {', '.join(settings['train'])} (from {settings['path']}); "
              "--config configs/<name>.yaml trains another")
        return settings["train"]
    print("no --config and no strokekit.yaml: training the built-in defaults (a stroke classifier, resnet18 on "
          "the PNGs at 256 px; see strokekit/config/__init__.py); --config configs/<name>.yaml picks a config, "
          "a strokekit.yaml (docs/training.md) sets the project's")
    return [None]


@script_main(interrupted="interrupted", speaks=speaks)  # torchrun's other ranks print no error
def main(argv=None) -> int:
    args = parse_args(argv)
    args.command = ["train.py", *(sys.argv[1:] if argv is None else map(str, argv))]
    progress.set_enabled(not args.no_progress)
    watch_interrupts()
    for config in configs_to_train(args):
        args.config = config
        code = train_configured(args)
        if code:
            return code
    return 0


def train_configured(args) -> int:
    """Train the folds of one config (args.config; None = the defaults), every seed of --seeds."""
    main_rank = os.environ.get("RANK", "0") == "0"  # torchrun's other ranks print nothing
    try:
        # config, data index and folds: every mismatch is reported before any training starts
        cfg = resolve_config(args)
        check_available(cfg["log"])  # a missing tracker package: one line, before anything trains
        for text in advice(cfg) if main_rank else ():
            print(f"warning: {text}")
        runs = seed_configs(cfg, args.seeds)
        distributed.init(cfg)
        main_rank = distributed.is_main()  # under torchrun: join the process group (rank 0 alone writes the run folder)
        index, report = distributed.main_first(build_index, cfg["data"])  # rank 0 fills the index cache
        folds = read_folds(folds_path(cfg), index)
        todo = fold_list(str(args.fold), folds)
        if cfg.get("pseudo"):  # the pseudo-label folder (ids, files) is checked before any fold folder is touched
            from strokekit.data.pseudo import pseudo_rows

            n_pseudo = len(pseudo_rows(cfg["pseudo"], index))
            if main_rank:
                print(f"pseudo-labels: {n_pseudo} test images from {cfg['pseudo']} join every fold's training "
                      "rows, never a validation set")
        held = []  # the fold folders' locks, dropped with this frame when main returns
        for run in runs:
            run_root = Path(run["runs_dir"]) / run["name"]
            distributed.on_main(lock_folds, run_root, todo, held)
            distributed.on_main(check_run_dirs, run_root, todo, run, args)
        check = distributed.on_main(check_files, index[index["split"] == "train"], cfg["image_source"],
                                    masks=cfg["task"] == "seg", report=report, hu_range=cfg.get("hu_range"))
        if main_rank:
            print(check.summary())
        index = apply_policy(index, check, cfg["on_bad_input"])
        summaries = []
        for run in runs:
            for fold in todo:
                run_dir = Path(run["runs_dir"]) / run["name"] / f"fold{fold}"
                if len(runs) > 1 and main_rank:
                    print(f"run {run['name']} (seed {run['seed']}), fold {fold}")
                if distributed.on_main(prepare_fold, fold, run_dir, run, check, args):
                    summaries.append(train_logged(run, index, folds, fold, run_dir, args, main_rank))
    finally:
        distributed.shutdown()
    if not main_rank:
        return 0
    for s in summaries:
        seed = f"seed {s['seed']}, " if args.seeds else ""
        print(f"{seed}fold {s['fold']}: best {s['metric']} {s['best_metric']:.4f} at epoch {s['best_epoch']} "
              f"({s['time_s']:.0f}s)")
    return 0


def train_logged(run: dict, index, folds, fold: int, run_dir: Path, args, main_rank: bool) -> dict:
    """train_fold with, on rank 0, the console copied to fold<k>/train.log and each epoch's row (then the
    final OOF figures) sent to the config's `log` trackers (training/tracking.py)."""
    from contextlib import nullcontext

    from strokekit.report.figures import fold_curves
    from strokekit.training.engine import train_fold  # torch / timm import after argument errors are out of the way
    from strokekit.training.tracking import Trackers

    console = ConsoleLog(run_dir / "train.log", header=" ".join(args.command)) if main_rank else nullcontext()
    with console, Trackers(run["log"] if main_rank else [], run_dir, run, fold) as trackers:
        summary = train_fold(run, index, folds, fold, run_dir, resume_run=args.resume,
                             progress=not args.no_progress, on_epoch_end=trackers.epoch, draw_curves=fold_curves)
        trackers.final(summary)
    return summary


def entry_point() -> None:
    """`python train.py` and the console command `strokekit-train`."""
    exit_process(main, skip_teardown=distributed.launched())
