"""Segmentation from scratch at a fixed budget: which of nnU-Net's ingredients make the kit's U-Nets learn.

    python bench/seg_from_scratch.py --epochs 5                       # every row, fold 0 (~20 min a row on 2 cores)
    python bench/seg_from_scratch.py --epochs 5 --only old_default,weighted_ce

Every row trains `configs/unet_r34_seg.yaml` with `pretrained=false` (as offline users and the DPN-U-Net
paper train) on the same phantom, the same fold, the same slices and the same number of training samples
(epochs x training slices), changing one ingredient at a time: the old loss (smp Dice + plain CE), batch Dice,
lesion-centred crops, deep supervision, SGD + poly, instance norm, the lesion-weighted CE, the config as
shipped (batch Dice + weighted CE) with crops / deep supervision / nnU-Net's augmentation, the published
systems' U-Nets as their recipes ship them (`recipe_*`, one pass an epoch); `tiny_seg` is the
CPU smoke reference; `nnunet_2d` is nnU-Net v2 2d itself
(bench/nnunet_budget.py, when nnunetv2 is installed) on the same fold with as many training samples. Each row
then runs the kit's own loop on the fold's model: ensemble.py (OOF post-processing search), infer.py --phase 2
on the phantom's phase-2 test set and score.py (strict Dice per class, the organisers' official IoU with its
95 % bootstrap interval). CPU seconds are the children's user + system time. Writes
bench/results/seg_from_scratch.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import DEFAULT_WORK, ROOT, machine, run, children_cpu_seconds as cpu_seconds, table, write_result  # also puts the repo on sys.path

PY = sys.executable
BASE = ["pretrained=false"]
OLD = [*BASE, "loss=dice+ce", "class_weights=null"]                 # unet_r34_seg's loss before this bench
DICE = [*BASE, "loss=batch_dice+ce", "class_weights=null"]
CROPS = ["crop_size={crop}", "fg_crop_share=0.33"]
ROWS = {  # name -> (config, --set values): one ingredient at a time, same slices, folds and samples
    "old_default": ("unet_r34_seg", OLD),
    "batch_dice": ("unet_r34_seg", DICE),
    "fg_crops": ("unet_r34_seg", [*DICE, *CROPS]),
    "deep_supervision": ("unet_r34_seg", [*DICE, *CROPS, "deep_supervision=3"]),
    "sgd_poly": ("unet_r34_seg", [*DICE, *CROPS, "deep_supervision=3", "optimizer=sgd", "momentum=0.99", "lr=0.01",
                                  "scheduler=poly", "warmup_epochs=0", "ema=false"]),
    "instance_norm": ("unet_r34_seg", [*DICE, *CROPS, "deep_supervision=3", "norm=instance"]),
    "weighted_ce": ("unet_r34_seg", [*BASE, "loss=ce", "class_weights=[1,30,30]"]),     # tiny_seg's loss
    "default": ("unet_r34_seg", BASE),               # as shipped: batch Dice + CE weighing lesion pixels 30x
    "default_crops_ds": ("unet_r34_seg", [*BASE, *CROPS, "deep_supervision=3"]),
    "default_nnunet_aug": ("unet_r34_seg", [*BASE, "aug.gamma=0.3", "aug.low_res=0.25", "aug.rotate_limit=30",
                                            "aug.scale_limit=0.3"]),
    "tiny_seg": ("tiny_seg", []),
    "nnunet_2d": ("nnunet", []),  # nnU-Net v2 2d through export_nnunet.py, same fold and samples (needs nnunetv2)
    # the published systems' U-Nets as shipped (configs/recipes/, docs/recipes.md), from scratch at this budget
    "recipe_multitask_r50": ("recipes/multitask/seg_unet_r50", BASE),
    "recipe_multitask_effb3": ("recipes/multitask/seg_unet_effb3", BASE),
    "recipe_vgg_unet_scse": ("recipes/vgg_unet/seg_unet_scse", BASE),
    "recipe_deep_ensemble_r34": ("recipes/deep_ensemble/seg_unet_r34", BASE),
    # the same two recipes with the from-scratch override: their own loss terms, CE weighing lesion pixels 30x
    "recipe_vgg_unet_scse_wce": ("recipes/vgg_unet/seg_unet_scse", [*BASE, "class_weights=[1,30,30]"]),
    "recipe_deep_ensemble_r34_wce": ("recipes/deep_ensemble/seg_unet_r34", [*BASE, "class_weights=[1,30,30]"]),
    # the VGG16 recipe with unet_r34_seg's loss instead of its own: batch Dice of the lesions only (smp's Dice
    # scores the background too) + CE weighing lesion pixels 30x
    "recipe_vgg_unet_scse_wce_bd": ("recipes/vgg_unet/seg_unet_scse",
                                    [*BASE, "class_weights=[1,30,30]", "loss=batch_dice+ce"]),
    "recipe_dpn92_hypercolumn": ("recipes/dpn_unet/seg_dpn92_hypercolumn", [*BASE, "epoch_steps=null"]),
    # its from-scratch override: class_weights only weigh the two channels against each other under the
    # sigmoid head's focal loss, so BCE with each channel's lesion pixels weighed 30x (pos_weight) instead
    "recipe_dpn92_hypercolumn_wbce": ("recipes/dpn_unet/seg_dpn92_hypercolumn",
                                      [*BASE, "epoch_steps=null", "loss=bce", "class_weights=[1,30,30]"]),
}






def phantom(work: Path, n: int, size: int) -> Path:
    """n training slices at `size` px (seed 7, 40 phase-2 test slices) and 5 folds, made once under work/."""
    root = work / f"phantom_{n}_{size}"
    if not (root / "folds.csv").is_file():
        run([PY, "make_phantom.py", "--out", str(root), "--n", str(n), "--size", str(size), "--seed", "7",
             "--n-test2", "40", "--overwrite"], work / "phantom.log")
        run([PY, "kfold.py", "--data", str(root), "--folds", "5"], work / "phantom.log")
    return root


def kit_samples(data: Path, args) -> tuple[int, int]:
    """(training slices of the fold, samples = epochs x slices) of the unet_r34_seg rows."""
    from strokekit.config import load_config
    from strokekit.data.folds import read_folds
    from strokekit.data.index import build_index
    from strokekit.training.tasks import get_task

    cfg = load_config(ROOT / "configs" / "unet_r34_seg.yaml", [f"img_size={args.size}"])
    index, _ = build_index(data)
    train, _ = get_task("seg").split(index, read_folds(data / "folds.csv", index), int(args.fold), cfg)
    return len(train), len(train) * args.epochs


def measure_nnunet(data: Path, work: Path, args) -> dict:
    """nnU-Net v2 2d (bench/nnunet_budget.py) on the fold's slices, as many training samples as the kit's rows,
    nnU-Net's patch at the kit's training side; its test predictions scored as the kit's are."""
    import importlib.util

    if importlib.util.find_spec("nnunetv2") is None:
        raise SystemExit("row nnunet_2d needs nnU-Net v2: pip install nnunetv2 (an optional extra of the kit)")
    from strokekit.config import load_config

    slices, samples = kit_samples(data, args)
    negatives = load_config(ROOT / "configs" / "unet_r34_seg.yaml")["seg_negatives"]
    log, raw = work / "nnunet_2d.log", work / "nnUNet_raw" / "Dataset501_Stroke"
    log.unlink(missing_ok=True)
    start, cpu = time.time(), cpu_seconds()
    if not (raw / "dataset.json").is_file():
        run([PY, "export_nnunet.py", "--data", str(data), "--out", str(raw), "--test", "test2",
             "--negatives", str(negatives), "--overwrite"], log)
    pred, result = work / "nnunet_pred", work / "nnunet_2d.json"
    env = {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "nnUNet_compile": "f"}
    run([PY, "bench/nnunet_budget.py", "--raw", str(raw), "--work", str(work / "nnunet"), "--fold", args.fold,
         "--samples", str(samples), "--batch", "10", "--patch", str(args.size), "--pred-out", str(pred),
         "--out-json", str(result)], log, env)
    sub, score_json = work / "submissions" / "nnunet_2d", work / "scores" / "nnunet_2d.json"
    run([PY, "export_nnunet.py", "--predictions", str(pred), "--out", str(sub), "--test-data",
         str(data / "YARISMA_2"), "--overwrite"], log)
    run([PY, "score.py", "--phase", "2", "--pred", str(sub), "--truth", str(data / "YARISMA_2" / "MASK"),
         "--out", str(score_json)], log)
    score, nnunet = json.loads(score_json.read_text()), json.loads(result.read_text())
    interval = score["intervals"].get("official_iou", {})
    val = nnunet["val_dice"]
    return {"row": "nnunet_2d", "config": "nnU-Net v2 2d", "set": [f"{k}={v}" for k, v in nnunet.items()
                                                                     if k not in ("val_dice", "output_folder")],
            "kit_slices": slices, "kit_samples": samples,
            "oof_best_dice": sum(val.values()) / len(val), "best_epoch": nnunet["epochs"],
            "hemorrhage_dice": score["strict"]["dice_macro_imagewise_hemorrhagic"],
            "ischemia_dice": score["strict"]["dice_macro_imagewise_ischemic"],
            "official_iou": score["official"]["mean_imagewise"]["iou"],
            "official_iou_95": [interval.get("low"), interval.get("high")],
            "cpu_s": round(cpu_seconds() - cpu), "wall_s": round(time.time() - start)}


def measure(name: str, data: Path, work: Path, args) -> dict:
    config, sets = ROWS[name]
    if config == "nnunet":
        return measure_nnunet(data, work, args)
    sets = [s.format(crop=args.size * 3 // 4 // 32 * 32) for s in sets]
    if config != "tiny_seg":  # the budget: the same side, epochs (x the fold's slices = samples), no workers
        sets += [f"img_size={args.size}", f"oof_size={args.size}", f"epochs={args.epochs}", "num_workers=0"]
    runs, log = work / "runs", work / f"{name}.log"
    log.unlink(missing_ok=True)
    start, cpu = time.time(), cpu_seconds()
    run([PY, "train.py", "--config", f"configs/{config}.yaml", "--fold", args.fold, "--data", str(data),
         "--out", str(runs), "--no-progress", "--overwrite", "--set", f"name={name}", *sets], log)
    spec, sub = work / "ensembles" / f"{name}.yaml", work / "submissions" / name
    run([PY, "ensemble.py", "--task", "seg", str(runs / name), "--data", str(data), "--out", str(spec),
         "--n-boot", "200"], log)
    run([PY, "infer.py", "--phase", "2", "--ensemble", str(spec), "--data", str(data / "YARISMA_2"),
         "--out", str(sub), "--overwrite"], log)
    score_json = work / "scores" / f"{name}.json"
    run([PY, "score.py", "--phase", "2", "--pred", str(sub), "--truth", str(data / "YARISMA_2" / "MASK"),
         "--out", str(score_json)], log)
    score = json.loads(score_json.read_text())
    interval = score["intervals"].get("official_iou", {})
    oof = json.loads((runs / name / f"fold{args.fold}" / "summary.json").read_text())
    return {"row": name, "config": config, "set": sets,
            "oof_best_dice": oof.get("best_metric"), "best_epoch": oof.get("best_epoch"),
            "hemorrhage_dice": score["strict"]["dice_macro_imagewise_hemorrhagic"],
            "ischemia_dice": score["strict"]["dice_macro_imagewise_ischemic"],
            "official_iou": score["official"]["mean_imagewise"]["iou"],
            "official_iou_95": [interval.get("low"), interval.get("high")],
            "cpu_s": round(cpu_seconds() - cpu), "wall_s": round(time.time() - start)}


def previous(setting: dict) -> dict:
    """The last results file, where it was made with the same phantom, side, epochs and fold; else {}."""
    path = ROOT / "bench" / "results" / "seg_from_scratch.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    same = all(old.get(k) == v for k, v in setting.items() if k != "phantom") and \
        {k: old.get("phantom", {}).get(k) for k in ("n", "size")} == {k: setting["phantom"][k] for k in ("n", "size")}
    return old if same else {}


def merged(setting: dict, rows: list[dict]) -> list[dict]:
    """rows, after the previous file's rows this run did not redo (`--only` adds rows to the table)."""
    redone = {r["row"] for r in rows}
    return [r for r in previous(setting).get("rows", []) if r["row"] not in redone] + rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "seg_from_scratch")
    parser.add_argument("--only", default=",".join(ROWS), help=f"rows to run (default all: {', '.join(ROWS)})")
    parser.add_argument("--n", type=int, default=800, help="phantom training slices (default 800)")
    parser.add_argument("--size", type=int, default=128, help="training side in px (default 128)")
    parser.add_argument("--phantom-size", type=int, default=256, help="the phantom's side in px (default 256)")
    parser.add_argument("--epochs", type=int, default=8, help="unet_r34_seg epochs (default 8)")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--data", type=Path, help="an existing phantom with folds.csv (default: made under --work)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; valid: {', '.join(ROWS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data or phantom(args.work, args.n, args.phantom_size)
    rows = []
    for name in names:
        rows.append(measure(name, data, args.work, args))
        print(json.dumps(rows[-1]), flush=True)
    print(table([[r["row"], r["hemorrhage_dice"], r["ischemia_dice"], r["official_iou"],
                  "[{:.3f}, {:.3f}]".format(*r["official_iou_95"]) if None not in r["official_iou_95"] else "-",
                  r["oof_best_dice"], r["cpu_s"]] for r in rows],
                ["row", "hem Dice", "isc Dice", "official IoU", "95 %", "OOF Dice", "CPU s"]))
    setting = {"phantom": {"n": args.n, "size": args.phantom_size, "data": str(data)}, "img_size": args.size,
               "epochs": args.epochs, "fold": args.fold}
    kept = {k: v for k, v in previous(setting).items() if k not in ("machine", "rows", *setting)}  # e.g. a note
    write_result("seg_from_scratch", {"machine": machine(), **kept, **setting, "rows": merged(setting, rows)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
