"""Which checkpoint to submit: a fold's best epoch by the argmax Dice, by the post-processed Dice
(`select_postprocess`), or the mean weights of its top-k epochs (`topk_average`), on the phantom.

    python bench/checkpoint_choice.py                  # tiny_seg, 600-slice 128-px phantom, 5 folds, k = 3
    python bench/checkpoint_choice.py --k 5 --folds 0 1

Each fold trains twice through engine.train_fold with `select_postprocess: {threshold: 0.5, min_area: 16}`:
once plain, once with `topk_average: k`. The plain run's log.csv gives the post-processed and official Dice
at the epoch the argmax Dice would have picked and at the one the post-processed Dice picked; the averaged
run's final metrics give the top-k figure. Prints a table and writes bench/results/checkpoint_choice.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, write_result  # noqa: E402
from strokekit.config import load_config  # noqa: E402
from strokekit.data.index import build_index  # noqa: E402
from strokekit.training.engine import train_fold  # noqa: E402
from strokekit.data.folds import make_folds, read_folds, write_folds  # noqa: E402
from strokekit.phantom.dataset import make_phantom  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PP = "select_postprocess={threshold: 0.5, min_area: 16}"
PPM, RAW, OFFICIAL = "pp_dice_macro_imagewise_lesion_mean", "dice_macro_imagewise_lesion_mean", "pp_official_dice"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/strokekit-bench/checkpoint_choice"))
    parser.add_argument("--k", type=int, default=3, help="topk_average (default 3)")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--note", default="", help="what else ran on the machine, for the JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = args.work / "data"
    if not (data / "folds.csv").exists():
        make_phantom(data, n=600, seed=0, size=128, n_test1=4, n_test2=4)
        index, _ = build_index(data)
        write_folds(make_folds(index, n_folds=5, seed=42), data / "folds.csv")
    index, _ = build_index(data)
    folds = read_folds(data / "folds.csv", index)
    rows = []
    for fold in args.folds:
        out = {}
        for name, sets in (("single", [PP]), ("topk", [PP, f"topk_average={args.k}"])):
            cfg = load_config(ROOT / "configs" / "tiny_seg.yaml", sets + [f"data={data}", "seed=1"])
            run_dir = args.work / f"runs_k{args.k}" / name / f"fold{fold}"
            start = time.time()
            summary = train_fold(cfg, index, folds, fold, run_dir, progress=False, log=lambda *a: None)
            out[name] = (summary, pd.read_csv(run_dir / "log.csv"), time.time() - start)
        single, log, _ = out["single"]
        topk = out["topk"][0]
        raw_best, pp_best = int(log.loc[log[RAW].idxmax(), "epoch"]), int(single["best_epoch"])
        at = lambda epoch, column: float(log.loc[log.epoch == epoch, column].iloc[0])  # noqa: E731
        rows.append({"fold": fold, "raw_best_epoch": raw_best, "pp_best_epoch": pp_best,
                     "pp_dice@raw_best": at(raw_best, PPM), "pp_dice@pp_best": at(pp_best, PPM),
                     "pp_dice@topk": topk["final_metrics"][PPM],
                     "official_dice@raw_best": at(raw_best, OFFICIAL), "official_dice@pp_best": at(pp_best, OFFICIAL),
                     "official_dice@topk": topk["final_metrics"][OFFICIAL],
                     "raw_dice@raw_best": at(raw_best, RAW), "raw_dice@topk": topk["final_metrics"][RAW],
                     "topk_epochs": topk["topk_average"]["epochs"],
                     "time_single_s": round(out["single"][2], 1), "time_topk_s": round(out["topk"][2], 1)})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    means = table.drop(columns=["topk_epochs"]).mean(numeric_only=True).round(4)
    print(table.to_string())
    print(means.to_string())
    write_result("checkpoint_choice", {"machine": machine(args.note), "k": args.k, "rows": rows,
                                       "means": means.to_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
