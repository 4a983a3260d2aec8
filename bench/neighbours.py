"""2.5D input on the phantom: the CPU-sized classifier and U-Net with and without neighbouring slices
(config `neighbours: 1`), paired on the same folds, slices and seeds.

    OMP_NUM_THREADS=1 nice -n 10 python bench/neighbours.py              # fold 0 (~15 min on 2 idle cores)
    python bench/neighbours.py --folds 0,1 --only tiny_seg                # one row pair, two folds

A fold a run already finished under --work is not retrained.

Rows: tiny_stroke_aux (tiny_cnn on three DICOM windows at 128 px with the lesion-location loss, 8 epochs: 3
channels, with neighbours 9 = 3 windows x slices i-1, i, i+1) and tiny_seg (tiny U-Net on the PNG at 128 px, 8
epochs: the grey slice repeated in 3 channels, with neighbours slices i-1, i, i+1). Each is
train.py on the given folds of one phantom (make_phantom n=600 seed=0 size=128, 5 folds seed 42, as
tests/conftest.py's train_phantom), one training at a time. Figures are held-out (OOF) ones with 95 %
bootstrap intervals over images (1000 resamples): AUC for the classifier; for the U-Net the mean per-image
lesion Dice (lesion vs background at the mask's resolution, OOF probabilities upsampled, argmax) over the
validated lesion slices, pooled over the folds; `diff` is the paired difference (with - without) on the same
resamples. Each row also records each fold's own selection metric, training seconds and the fallback counts of
its neighbours run (summary.json). Writes bench/results/neighbours.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_WORK, ROOT, machine, table, write_result  # also puts the repo on sys.path

ROWS = {"tiny_stroke_aux": "stroke", "tiny_seg": "seg"}
N_BOOT = 1000


def make_data(work: Path) -> Path:
    from strokekit.data.folds import make_folds, write_folds
    from strokekit.data.index import build_index
    from strokekit.phantom.dataset import make_phantom

    data = work / "phantom_600_128"
    if not (data / "folds.csv").is_file():
        make_phantom(data, n=600, seed=0, size=128, n_test1=4, n_test2=4, overwrite=data.exists())
        index, _ = build_index(data)
        write_folds(make_folds(index, n_folds=5, seed=42), data / "folds.csv")
    return data


def train(config: str, k: int, folds: str, data: Path, work: Path) -> tuple[Path, float, dict]:
    """train.py, fold by fold (one training at a time); in_chans = the config's channels per slice x (2k + 1)."""
    from strokekit.config import load_config
    from strokekit.data.neighbours import slice_channels

    name = f"{config}_nb{k}"
    log = work / f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    in_chans = slice_channels(load_config(ROOT / "configs" / f"{config}.yaml")) * (2 * k + 1) if k else None
    start, reused = time.time(), []  # summary.json's time_s is each fold's own training time
    for fold in folds.split(","):
        if (work / "runs" / name / f"fold{fold}" / "done").is_file():  # kept from an earlier call: not retrained
            reused.append(fold)
            continue
        with open(log, "a", encoding="utf-8") as out:
            code = subprocess.run(["nice", "-n", "10", sys.executable, "train.py", "--config",
                                   f"configs/{config}.yaml", "--fold", fold, "--data", str(data), "--out",
                                   str(work / "runs"), "--no-progress", "--overwrite", "--set", f"name={name}",
                                   f"neighbours={k}", *([f"in_chans={in_chans}"] if k else [])],
                                  cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        if code:
            raise SystemExit(f"train.py failed ({code}); see {log}")
    run = work / "runs" / name
    summaries = [json.loads((run / f"fold{fold}" / "summary.json").read_text()) for fold in folds.split(",")]
    return run, time.time() - start, {"fold_counts": [s.get("neighbours") for s in summaries], "reused_folds": reused,
                                      "fold_metric": [round(s["final_metrics"][s["metric"]], 4) for s in summaries],
                                      "fold_train_s": [s["time_s"] for s in summaries]}


def classifier_values(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import pandas as pd

    table_ = pd.concat([pd.read_csv(p) for p in sorted(run.glob("fold*/oof.csv"))]).sort_values("image_id")
    return table_["image_id"].to_numpy(), table_["target"].to_numpy(), table_["prob"].to_numpy()


def seg_values(run: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, per-image lesion Dice) of the run's OOF slices."""
    from strokekit.data.index import build_index
    from strokekit.data.readers import load_class_map
    from strokekit.postprocess.steps import resize_probs

    index, _ = build_index(data)
    rows = index.set_index("image_id")
    ids, dice = [], []
    for path in sorted(run.glob("fold*/oof.npz")):
        oof = np.load(path)
        for image_id, probs in zip(oof["image_id"], oof["probs"]):
            truth = load_class_map(rows.loc[int(image_id)].to_dict()) > 0
            pred = resize_probs(probs.astype(np.float32), truth.shape).argmax(0) > 0
            denom = truth.sum() + pred.sum()
            ids.append(int(image_id))
            dice.append(2.0 * (truth & pred).sum() / denom if denom else 1.0)
    order = np.argsort(ids)
    return np.asarray(ids)[order], np.asarray(dice)[order]


def paired(statistic, with_nb: tuple, without: tuple, n: int, seed: int = 0) -> dict:
    """Estimates, 95 % intervals and the paired difference of `statistic` over the same image resamples."""
    rng = np.random.default_rng(seed)
    draws = {"with": [], "without": [], "diff": []}
    for idx in rng.integers(0, n, size=(N_BOOT, n)):
        a, b = statistic(*(x[idx] for x in with_nb)), statistic(*(x[idx] for x in without))
        draws["with"].append(a)
        draws["without"].append(b)
        draws["diff"].append(a - b)
    estimates = {"with": statistic(*with_nb), "without": statistic(*without)}
    estimates["diff"] = estimates["with"] - estimates["without"]
    return {key: {"estimate": float(estimates[key]), "low": float(np.nanpercentile(v, 2.5)),
                  "high": float(np.nanpercentile(v, 97.5))} for key, v in draws.items()}


def measure(config: str, folds: str, data: Path, work: Path) -> dict:
    from strokekit.evaluation.metrics import roc_auc

    runs = {k: train(config, k, folds, data, work) for k in (0, 1)}
    if ROWS[config] == "stroke":
        values = {k: classifier_values(run) for k, (run, _, _) in runs.items()}
        assert np.array_equal(values[0][0], values[1][0]), "the two runs validated different images"
        result = paired(roc_auc, values[1][1:], values[0][1:], len(values[0][0]))
        metric = "OOF AUC"
    else:
        values = {k: seg_values(run, data) for k, (run, _, _) in runs.items()}
        assert np.array_equal(values[0][0], values[1][0]), "the two runs validated different images"
        result = paired(np.mean, (values[1][1],), (values[0][1],), len(values[0][0]))
        metric = "OOF lesion Dice"
    return {"row": config, "metric": metric, "images": int(len(values[0][0])), "folds": folds, **result,
            **{key: {f"neighbours={k}": info[key] for k, (_, _, info) in runs.items()}
               for key in ("fold_metric", "fold_train_s", "reused_folds")},
            "fallbacks": runs[1][2]["fold_counts"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "neighbours")
    parser.add_argument("--folds", default="0", help="folds to train, e.g. 0,1 (default 0)")
    parser.add_argument("--only", default=",".join(ROWS), help=f"rows (default all: {', '.join(ROWS)})")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if any(n not in ROWS for n in names):
        parser.error(f"unknown rows; valid: {', '.join(ROWS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    data = make_data(args.work)
    rows = []
    for name in names:
        rows.append(measure(name, args.folds, data, args.work))
        print(json.dumps(rows[-1]), flush=True)
    interval = lambda r, key: "{estimate:.3f} [{low:.3f}, {high:.3f}]".format(**r[key])
    print(table([[r["row"], r["metric"], r["images"], interval(r, "without"), interval(r, "with"), interval(r, "diff"),
                  r["fold_metric"]["neighbours=0"], r["fold_metric"]["neighbours=1"]] for r in rows],
                ["row", "metric", "images", "neighbours 0", "neighbours 1", "diff (paired)", "per fold (0)",
                 "per fold (1)"]))
    write_result("neighbours", {"machine": machine(), "phantom": {"n": 600, "size": 128, "seed": 0},
                                "folds": args.folds, "n_boot": N_BOOT, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
