"""Model soup vs averaging predictions: one config fine-tuned from one checkpoint under several seeds, then
(a) the best seed alone, (b) the mean of the seeds' predictions, (c) the soup (the mean of their weights: one
model), each tuned by ensemble.py on fold 0's OOF and scored on the phantom's phase-1 test set.

    python bench/soup.py                      # the phantom of bench/oof_tta.py, fold 0, seeds 0,1,2 (~10 min, 1 core)
    python bench/soup.py --seeds 0,1,2,3,4

The common start is tiny_stroke_aux trained on fold 0 (seed 42, its 8 epochs); each seed fine-tunes it on the
same fold for --epochs at --lr (`weights:` that checkpoint, so only data order, augmentation draws and dropout
differ). Fold 0 only: a start trained on fold 0's training images keeps fold 0's OOF clean (another fold's
validation images would be among its training images). Each row: the fold's OOF AUC, the test AUC, balanced
accuracy, F1 and recall at the OOF-tuned threshold (95 % bootstrap intervals over the 192 test images) and
forward passes per test image (x the TTA flips). Runs already finished under --work are reused (delete it for
a fresh measurement). Writes bench/results/soup.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import DEFAULT_WORK, machine, table, write_result  # also puts the repo on sys.path
from oof_tta import cli, phantom, read_yaml

FIGURES = ("auc", "balanced_accuracy", "f1", "recall")


def tuned_and_scored(name: str, runs: list[Path], data: Path, work: Path, passes: int, args) -> dict:
    slug = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)  # file names without spaces
    spec = work / "ensembles" / f"{slug}.yaml"
    cli("ensemble", ["--task", "stroke", *map(str, runs), "--objective", "f1", "--blend", "mean", "--keep-blend",
                     "--test-size", str(args.n_test1), "--out", str(spec)])
    sub, score = work / "submissions" / slug, work / "scores" / f"{slug}.json"
    cli("infer", ["--phase", "1", "--ensemble", str(spec), "--data", str(data / "YARISMA_1"), "--out", str(sub),
                  "--overwrite"])
    cli("score", ["--phase", "1", "--pred", str(sub / "asama1.txt"),
                  "--truth", str(data / "YARISMA_1" / "ASAMA1_Cevaplar.txt"), "--probs", str(sub / "probs.csv"),
                  "--out", str(score)])
    spec, score = read_yaml(spec), json.loads(score.read_text())
    return {"row": name, "runs": [str(r) for r in runs], "oof_auc": spec["oof"]["intervals"]["auc"]["estimate"],
            "threshold": spec["threshold"]["value"], "passes_per_image": passes,
            **{f: score[f] for f in FIGURES}, "test_95": {f: [score["intervals"][f]["low"],
                                                              score["intervals"][f]["high"]] for f in FIGURES}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "soup")
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--n-test1", type=int, default=192)
    parser.add_argument("--folds", type=int, default=3, help="folds of the phantom (fold 0 is trained)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs per seed (default 4)")
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default 1e-3)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    from strokekit.training.soup import soup_runs

    start = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    data, runs = phantom(args.work, args.n, 128, args.n_test1, 97, args.folds), args.work / "runs"
    common = ["--config", "configs/tiny_stroke_aux.yaml", "--fold", "0", "--data", str(data),
              "--folds-csv", str(data / f"folds{args.folds}.csv"), "--out", str(runs), "--no-progress"]
    cli("train", [*common, "--set", "name=start", "seed=42"])
    cli("train", [*common, "--seeds", args.seeds, "--set", "name=ft", f"epochs={args.epochs}", f"lr={args.lr}",
                  f"weights={runs / 'start' / 'fold0' / 'best.pt'}"])
    seeds = [runs / f"ft_s{s.strip()}" for s in args.seeds.split(",")]
    soup_runs(seeds, runs / "ft_soup")
    flips = 2  # none + hflip, infer.py's default
    rows = [tuned_and_scored("start", [runs / "start"], data, args.work, flips, args)]
    rows += [tuned_and_scored(f"seed {r.name}", [r], data, args.work, flips, args) for r in seeds]
    rows.append(tuned_and_scored("prediction mean", seeds, data, args.work, flips * len(seeds), args))
    rows.append(tuned_and_scored("soup (weight mean)", [runs / "ft_soup"], data, args.work, flips, args))
    cell = lambda r, f: f"{r[f]:.3f} [{r['test_95'][f][0]:.3f}, {r['test_95'][f][1]:.3f}]"
    print(table([[r["row"], f"{r['oof_auc']:.3f}", *(cell(r, f) for f in FIGURES), r["passes_per_image"]]
                 for r in rows], ["row", "OOF AUC", *(f"test {f}" for f in FIGURES), "passes / image"]))
    print(f"{time.time() - start:.0f} s")
    if not args.no_write:
        write_result("soup", {"machine": machine(), "phantom": {"n": args.n, "size": 128, "seed": 0,
                                                                "folds": args.folds, "n_test1": args.n_test1,
                                                                "data": str(data)},
                              "fine_tune": {"seeds": args.seeds, "epochs": args.epochs, "lr": args.lr}, "rows": rows,
                              "batchnorm": "running statistics averaged", "wall_s": round(time.time() - start)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
