"""Held-out AUC of the CPU-sized classifiers on the phantom with and without the lesion-location auxiliary
loss (aux_seg), and what each part of tiny_stroke_aux is worth (ablations), over every fold and a few seeds.

    python bench/aux_seg.py                           # stroke: 600-slice 128-px phantom, 5 folds, seeds 42, 0 (~13 min)
    python bench/aux_seg.py --task type               # the type classifier (ischemic vs hemorrhagic)
    python bench/aux_seg.py --folds 0 --seeds 42      # one run per variant

stroke variants: tiny_stroke (as shipped: PNG at 96 px), tiny_stroke_aux (three DICOM windows at 128 px + the
lesion-location auxiliary loss), and tiny_stroke_aux without aux_seg, and with the PNG (the brain window)
instead of the DICOM windows, and with each augmentation of the from-scratch menu on top (HU-window jitter
±10 HU / ±10 %, mixup 0.4, CutMix; mix_prob 0.5): `--variants` picks some, `--out` keeps them apart. type variants: tiny_type (as shipped: PNG at 128 px, 6 epochs), tiny_type_aux (the
same recipe as tiny_stroke_aux, 12 epochs), its two ablations, and tiny_type with only the DICOM windows.
Each run is train.py on one fold of the same phantom and folds file the tests use (make_phantom n=600 seed=0
size=128; make_folds 5 folds seed 42); the figure is the fold's held-out AUC (summary.json final_metrics.auc,
the OOF file's). Two runs at a time, one thread each.
Writes bench/results/<task>_aux.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import ROOT, machine

WINDOWS = ["image_source=dicom", "windows=[[40,80],[80,200],[35,20]]", "in_chans=3"]  # tiny_*_aux's windows
VARIANTS = {
    "stroke": {
        "tiny_stroke": ("tiny_stroke", []),
        "tiny_stroke_aux": ("tiny_stroke_aux", []),
        "tiny_stroke_aux, aux_seg=0": ("tiny_stroke_aux", ["aux_seg=0"]),
        "tiny_stroke_aux, PNG input": ("tiny_stroke_aux", ["image_source=png"]),
        # the augmentation keys of issue 16, each on top of tiny_stroke_aux
        "tiny_stroke_aux, HU-window jitter": ("tiny_stroke_aux", ["aug.window_shift=10", "aug.window_scale=0.1"]),
        "tiny_stroke_aux, HU-window jitter 0.01": ("tiny_stroke_aux", ["aug.window_shift=0.01",
                                                                       "aug.window_scale=0.0001"]),
        "tiny_stroke_aux, HU-window jitter 2 HU": ("tiny_stroke_aux", ["aug.window_shift=2", "aug.window_scale=0.02"]),
        "tiny_stroke_aux, mixup": ("tiny_stroke_aux", ["mixup=0.4", "mix_prob=0.5"]),
        "tiny_stroke_aux, cutmix": ("tiny_stroke_aux", ["cutmix=1.0", "mix_prob=0.5"]),
    },
    "type": {
        "tiny_type": ("tiny_type", []),
        "tiny_type_aux": ("tiny_type_aux", []),
        "tiny_type_aux, aux_seg=0": ("tiny_type_aux", ["aux_seg=0"]),
        "tiny_type_aux, PNG input": ("tiny_type_aux", ["image_source=png"]),
        "tiny_type + DICOM windows (6 epochs, no sampler)": ("tiny_type", WINDOWS),
    },
}


def test_phantom(work: Path) -> Path:
    """The phantom and folds of tests/conftest.py's train_phantom."""
    from strokekit.data.index import build_index
    from strokekit.data.folds import make_folds, write_folds
    from strokekit.phantom.dataset import make_phantom

    data = work / "phantom_600_128"
    if not (data / "folds.csv").is_file():
        make_phantom(data, n=600, seed=0, size=128, n_test1=4, n_test2=4, overwrite=data.exists())
        index, _ = build_index(data)
        write_folds(make_folds(index, n_folds=5, seed=42), data / "folds.csv")
    return data


def launch(task: str, variant: str, fold: int, seed: int, data: Path, runs: Path) -> tuple[subprocess.Popen, Path]:
    config, sets = VARIANTS[task][variant]
    tag = hashlib.sha1(" ".join(sets).encode()).hexdigest()[:8]  # runs already done are reused by train.py
    name = f"{config}-{tag}-s{seed}"
    command = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / f"{config}.yaml"),
               "--fold", str(fold), "--data", str(data), "--out", str(runs), "--no-progress",
               "--set", f"name={name}", f"seed={seed}", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, runs / name / f"fold{fold}" / "summary.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(VARIANTS), default="stroke")
    parser.add_argument("--work", type=Path, default=Path("/tmp/strokekit_bench/aux_seg"))
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0])
    parser.add_argument("--variants", nargs="+", help="a subset of the task's variants (default all)")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", type=Path, help="default bench/results/<task>_aux.json")
    args = parser.parse_args(argv)
    args.variants = args.variants or list(VARIANTS[args.task])
    unknown = sorted(set(args.variants) - set(VARIANTS[args.task]))
    if unknown:
        parser.error(f"unknown {args.task} variants {unknown}; known: {list(VARIANTS[args.task])}")
    args.out = args.out or ROOT / "bench" / "results" / f"{args.task}_aux.json"
    data = test_phantom(args.work)
    jobs = [(v, s, f) for v in args.variants for s in args.seeds for f in args.folds]
    results: dict = {v: {} for v in args.variants}
    running, started = [], time.time()
    while jobs or running:
        while jobs and len(running) < args.parallel:
            variant, seed, fold = jobs.pop(0)
            running.append((variant, seed, fold, time.time(),
                            *launch(args.task, variant, fold, seed, data, args.work / "runs")))
        variant, seed, fold, t0, proc, summary = running.pop(0)
        output, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"train.py {variant} fold {fold} seed {seed} failed:\n{output[-2000:]}")
        auc = round(float(json.loads(summary.read_text())["final_metrics"]["auc"]), 4)
        results[variant].setdefault(f"seed{seed}", {})[f"fold{fold}"] = auc
        print(f"{variant:38s} seed {seed:3d} fold {fold}: held-out AUC {auc:.3f} ({time.time() - t0:.0f} s)",
              flush=True)
    summary = {}
    for variant, by_seed in results.items():
        aucs = [a for folds in by_seed.values() for a in folds.values()]
        summary[variant] = {"mean": round(float(np.mean(aucs)), 4), "min": min(aucs), "max": max(aucs),
                            "share_at_least_0.8": round(float(np.mean(np.array(aucs) >= 0.8)), 3), "runs": len(aucs)}
        print(f"{variant:38s} mean {summary[variant]['mean']:.3f}  min {summary[variant]['min']:.3f}  "
              f"max {summary[variant]['max']:.3f}  runs >= 0.8: {summary[variant]['share_at_least_0.8']:.0%}")
    out = {"data": "make_phantom n=600 seed=0 size=128, 5 folds seed 42 (the tests' train_phantom)",
           "seconds": round(time.time() - started), "machine": machine(), "summary": summary, "held_out_auc": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
