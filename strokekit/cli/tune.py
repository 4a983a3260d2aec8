"""Search hyper-parameters (config keys) with Optuna; every trial is a normal run, the best becomes a config.

    python tune.py --config configs/tiny_stroke.yaml --space configs/spaces/example_space.yaml --trials 20
    python tune.py --config configs/unet_r34_seg.yaml --space configs/spaces/seg_space.yaml --trials 30 \\
        --folds all --study-dir tunes/unet_r34 --set epochs=15
    python tune.py ...same command...            # continues the study until --trials trials have finished

TPE sampling (the first --random-trials at random, seeded), median pruning on the per-epoch validation metric
(the config's `metric`, default the task's) once --startup-trials trials have finished. Trial k trains
runs/<study>_t<k>/fold<f>/ as train.py does (pruned folds hold a `pruned` note and no `done`). The study folder
(default tunes/<config name>) holds study.db (Optuna SQLite storage), space.yaml, trials.csv and
<study>_tuned.yaml: the best trial's config, differences from the defaults only, ready for train.py --config.
One tune.py per study at a time; a killed trial is retried with the same parameters on the next run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from strokekit.config import add_config_args, folds_path, load_config
from strokekit.config.settings import anchor_paths, in_project, typed_keys
from strokekit.data.index import build_index
from strokekit.data.folds import FoldsError, read_folds
from strokekit.errors import script_main
from strokekit.training.runlog import exit_process
from strokekit.training.tuning import read_space, run_search, write_results
from strokekit.report.figures import fold_curves


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--space", required=True, help="search space YAML (see configs/spaces/example_space.yaml)")
    parser.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    parser.add_argument("--folds", default="0", help="folds each trial trains: 0 (default), 0,1 or all")
    parser.add_argument("--study-dir", help="study folder (default tunes/<config name> in the project folder)")
    parser.add_argument("--seed", type=int, help="sampler seed (default: the config's seed)")
    parser.add_argument("--random-trials", type=int, default=10, help="random trials before TPE (default 10)")
    parser.add_argument("--startup-trials", type=int, default=3,
                        help="finished trials before pruning starts (default 3)")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="epochs never pruned (default 1)")
    parser.add_argument("--data", help="data set root (overrides the config's `data`)")
    parser.add_argument("--folds-csv", help="folds file from kfold.py (default: <data>/folds.csv)")
    parser.add_argument("--out", help="runs folder (overrides the config's `runs_dir`)")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    return args


def fold_list(spec: str, folds) -> list[int]:
    available = sorted(int(k) for k in folds["fold"].unique())
    if spec == "all":
        return available
    try:
        wanted = [int(k) for k in spec.split(",")]
    except ValueError:
        wanted = []
    if not wanted or any(k not in available for k in wanted):
        raise FoldsError(f"--folds {spec}: the folds file has folds {available} (give e.g. 0, 0,1 or all)")
    return wanted


@script_main(interrupted="interrupted: run the same command again to continue the study")
def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    for key, value in (("data", args.data), ("folds", args.folds_csv), ("runs_dir", args.out)):
        if value:
            cfg[key] = value
    anchor_paths(cfg, typed_keys(args.set, data=args.data, folds=args.folds_csv, runs_dir=args.out))
    space = read_space(args.space)
    index, _ = build_index(cfg["data"])
    folds = read_folds(folds_path(cfg), index)
    study_dir = Path(args.study_dir) if args.study_dir else in_project("tunes", cfg["name"])
    study = run_search(cfg, space, args.trials, fold_list(args.folds, folds), study_dir, index, folds,
                       seed=args.seed, random_trials=args.random_trials, startup_trials=args.startup_trials,
                       warmup_epochs=args.warmup_epochs, draw_curves=fold_curves)
    tuned = write_results(study, cfg, study_dir)
    print(f"\n{study_dir / 'trials.csv'}: {len(study.trials)} trials")
    if tuned is None:
        print("no trial completed (all pruned or failed): nothing to write")
        return 1
    best = study.best_trial
    print(f"best: trial {best.number}, value {best.value:.4f}, " + ", ".join(f"{k}={v}" for k, v in best.params.items()))
    print(f"wrote {tuned}  (train it: python train.py --config {tuned} --fold all)")
    return 0


def entry_point() -> None:
    """`python tune.py` and the console command `strokekit-tune`."""
    exit_process(main)
