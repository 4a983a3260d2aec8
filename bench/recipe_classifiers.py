"""Why do the published systems' phase-1 classifiers stay near chance on the phantom at CPU scale? The model or
its training? Crosses the multi-task paper's own small CNN (`simple_cnn`, its phase-1 "Custom CNN") with the
kit's `tiny_cnn`, each trained the recipe's way and the way `configs/tiny_stroke_aux.yaml` trains.

    OMP_NUM_THREADS=1 nice -n 10 python bench/recipe_classifiers.py --data /tmp/strokekit_bench/recipes/phantom_600_256

Every row reads the same input as tiny_stroke_aux (three DICOM windows at 128 px, `aux_seg` 1.0: without them
no classifier of this size learns here, bench/aux_seg.py) and trains every fold of the phantom from scratch for
the same number of epochs. "recipe training": the multi-task recipe's BCE with balanced class weights, Adam
1e-3 without weight decay, plateau LR, batch 8 (the bench's CPU scaling of its 32), dropout 0.5, no
augmentation. "kit training": tiny_stroke_aux's CE with a class-balanced sampler, AdamW 2e-3, cosine LR, batch
16, flips and shift-scale-rotate (the network's own dropout kept). Figure: each
fold's validation AUC at its best epoch (optimistic by that choice, the same for every row). Writes
bench/results/recipe_classifiers.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import DEFAULT_WORK, ROOT, children_cpu_seconds, machine, run, table, write_result

PY = sys.executable
INPUT = ["img_size=128", "oof_size=128", "image_source=dicom", "windows=[[40,80],[80,200],[35,20]]", "in_chans=3",
         "aux_seg=1.0", "num_workers=0", "pretrained=false", "epoch_steps=null"]
RECIPE_TRAINING = ["loss=bce", "class_weights=balanced", "sampler=null", "optimizer=adam", "weight_decay=0.0",
                   "lr=1e-3", "scheduler=plateau", "batch_size=8", "drop_rate=0.5", "mean=0.0", "std=1.0",
                   "aug.hflip=0.0", "aug.shift_scale_rotate=0.0", "aug.brightness_contrast=0.0"]
KIT_TRAINING = ["loss=ce", "class_weights=null", "sampler=balanced", "optimizer=adamw", "weight_decay=1e-4",
                "lr=2e-3", "scheduler=cosine", "batch_size=16", "aug.hflip=0.5", "aug.shift_scale_rotate=0.5",
                "aug.brightness_contrast=0.0"]
SIMPLE_CNN = "configs/recipes/multitask/stroke_simple_cnn.yaml"
EFFNET = "configs/recipes/multitask/stroke_effnetv2b0.yaml"
TINY = "configs/tiny_stroke_aux.yaml"
ROWS = {  # name -> (config, overrides)
    "tiny_cnn, kit training (tiny_stroke_aux)": (TINY, KIT_TRAINING),
    "tiny_cnn, recipe training": (TINY, RECIPE_TRAINING),
    "simple_cnn, recipe training (the recipe)": (SIMPLE_CNN, RECIPE_TRAINING),
    "simple_cnn, kit training": (SIMPLE_CNN, KIT_TRAINING + ["drop_rate=0.5", "mean=0.0", "std=1.0"]),
    # the recipe's EfficientNetV2-B0 (its own training, dropout 0.4, ImageNet statistics; no weights here):
    # global average pooling, as timm and Keras have it, against average and max pooling side by side
    "effnetv2b0, recipe training (the recipe)": (EFFNET, RECIPE_TRAINING[:8] + RECIPE_TRAINING[-3:]),
    "effnetv2b0, recipe training, global_pool catavgmax": (EFFNET, RECIPE_TRAINING[:8] + RECIPE_TRAINING[-3:]
                                                           + ["global_pool=catavgmax"]),
}


def fold_aucs(run_dir: Path) -> list[float]:
    return [round(json.loads((fold / "summary.json").read_text())["best_metric"], 4)
            for fold in sorted(run_dir.glob("fold*")) if (fold / "summary.json").is_file()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a phantom with folds.csv (bench/recipes.py's)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "recipe_classifiers")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--only", type=int, nargs="*", help="row numbers to run (default all); the others are kept "
                                                             "from the results file")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (name, (config, sets)) in enumerate(ROWS.items()):
        if args.only is not None and k not in args.only:
            continue
        out, log = args.work / f"row{k}", args.work / f"row{k}.log"
        log.unlink(missing_ok=True)
        start, cpu = time.time(), children_cpu_seconds()
        run([PY, "train.py", "--config", ROOT / config, "--data", args.data, "--out", out, "--fold", "all",
             "--no-progress", "--overwrite", "--set", *INPUT, f"epochs={args.epochs}", "early_stop=null", *sets,
             f"name=row{k}"], log)
        aucs = fold_aucs(out / f"row{k}")
        rows.append({"row": name, "config": config, "sets": sets, "fold_auc": aucs,
                     "mean_auc": round(sum(aucs) / len(aucs), 4), "min_auc": min(aucs),
                     "cpu_s": round(children_cpu_seconds() - cpu), "wall_s": round(time.time() - start)})
        print(json.dumps(rows[-1]), flush=True)
    print(table([[r["row"], " / ".join(f"{a:.3f}" for a in r["fold_auc"]), r["mean_auc"], r["cpu_s"]] for r in rows],
                ["row", "fold AUC", "mean", "CPU s"]))
    path = ROOT / "bench" / "results" / "recipe_classifiers.json"
    old = json.loads(path.read_text()) if path.is_file() and args.only is not None else {}
    redone = {r["row"] for r in rows}
    kept = [r for r in old.get("rows", []) if r["row"] not in redone and old.get("data") == str(args.data)]
    order = list(ROWS)
    rows = sorted(kept + rows, key=lambda r: order.index(r["row"]) if r["row"] in order else len(order))
    write_result("recipe_classifiers", {"machine": machine(), "data": str(args.data), "epochs": args.epochs,
                                        "input": INPUT, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
