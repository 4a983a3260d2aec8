"""Peak memory of training and inference, measured on the real scripts run as subprocesses.

    python bench/memory.py                          # train.py (1 epoch) and infer.py, both models
    python bench/memory.py --models resnet18@224 --infer-images 40

For each run: the main process's peak RSS (the kernel's own figure, from wait4), and the peak of the whole
process tree's PSS (DataLoader workers and infer.py's reading thread included; PSS splits shared pages
between processes, so the sum is what the tree really holds), sampled from /proc every 0.1 s.
train.py trains one epoch on an 80-slice 512-px phantom (cache on, filled by the epoch); infer.py runs a
2-model x 4-flip ensemble on the phantom's test folder at its default batch size. Writes bench/results/memory_<device>.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import (DEFAULT_WORK, MODELS, ROOT, bench_config, machine, phantom, save_checkpoints, table,
                    write_bench_spec, write_result)

FLIPS = ["none", "hflip", "vflip", "hvflip"]


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(command: list[str], log: Path) -> dict:
    """Run `command`; its main-process peak RSS and its process tree's peak PSS, in MiB, and its seconds."""
    start, peak_pss = time.perf_counter(), 0
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            todo, tree = [proc.pid], []
            while todo:
                tree.append(todo.pop())
                todo += _children(tree[-1])
            peak_pss = max(peak_pss, sum(_pss_kib(p) for p in tree))
            time.sleep(0.1)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited {code}; see {log}")
    return {"peak_rss_main_mib": usage.ru_maxrss / 1024, "peak_pss_tree_mib": peak_pss / 1024,
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--infer-images", type=int, default=100, help="test images for infer.py")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"phantom etc. (default {DEFAULT_WORK})")
    parser.add_argument("--note", default="", help="what else ran on the machine, for the JSON")
    args = parser.parse_args()
    import torch

    from strokekit.data.index import build_index
    from strokekit.data.folds import make_folds, write_folds

    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = machine(args.note)
    root = phantom(args.work, n_train=80, n_test=args.infer_images)
    if not (root / "folds.csv").is_file():
        write_folds(make_folds(build_index(root)[0], n_folds=5, seed=0), root / "folds.csv")
    results, python = {}, sys.executable
    for name in args.models:
        cfg = bench_config(name)
        runs = args.work / "memory_runs"
        shutil.rmtree(runs, ignore_errors=True)
        sets = [*MODELS[name], "epochs=1", f"runs_dir={runs}"]
        train = [python, "train.py", "--fold", "0", "--data", str(root), "--no-progress", "--set", *sets]
        results[f"train {name}"] = measure(train, args.work / f"memory_train_{name}.log")
        spec = write_bench_spec(cfg["task"], save_checkpoints(cfg, args.work / "checkpoints"), FLIPS,
                                args.work / f"spec_{cfg['task']}.yaml")
        phase, folder = (1, "YARISMA_1") if cfg["task"] == "stroke" else (2, "YARISMA_2")
        out = args.work / f"memory_submission_{cfg['task']}"
        infer = [python, "infer.py", "--phase", str(phase), "--ensemble", spec, "--data", str(root / folder),
                 "--out", str(out), "--overwrite"]
        results[f"infer {name}"] = measure(infer, args.work / f"memory_infer_{name}.log")
    print(table([[k, r["peak_rss_main_mib"], r["peak_pss_tree_mib"], r["seconds"]] for k, r in results.items()],
                ["run", "peak RSS main (MiB)", "peak PSS tree (MiB)", "seconds"]))
    write_result(f"memory_{device}", {"machine": info, "device": device, "train": "1 epoch, 64-slice fold, batch 16, "
                                      "2 workers", "infer": f"{args.infer_images} images, 2 models x 4 flips, "
                                      "infer.py's default batch", "results": results})


if __name__ == "__main__":
    main()
