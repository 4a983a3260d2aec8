"""The published systems (configs/recipes/) scaled to the CPU and run end to end on a phantom: do they learn?

    OMP_NUM_THREADS=1 nice -n 10 python bench/recipes.py                  # all four systems + tiny_seg
    python bench/recipes.py --only dpn_unet,tiny_seg --seg-epochs 12      # some of them
    # variant rows: the documented from-scratch overrides, or what a classifier needs here
    python bench/recipes.py --only vgg_unet,deep_ensemble --seg-set 'class_weights=[1,30,30]' --tag +wce
    python bench/recipes.py --only dpn_unet --seg-set loss=bce 'class_weights=[1,30,30]' --tag +bce_w30
    python bench/recipes.py --only multitask --classifiers-only --multitask-stroke simple_cnn --cls-size 128 \
        --cls-set image_source=dicom 'windows=[[40,80],[80,200],[35,20]]' in_chans=3 aux_seg=1.0 \
        --tag +simple_cnn+dicom_aux

Each system trains its recipes as shipped except for the CPU scaling (`--set`): smaller images (classifiers
96 px, U-Nets 128 px), fewer epochs, batch 8 (the DPN-U-Net keeps 12), no ImageNet weights (offline; the
DPN-U-Net trains from scratch anyway), one epoch = one pass (epoch_steps off). Architecture family, losses,
optimiser, schedule, freezing, sampling and post-processing are the recipe's. Then the documented commands
(docs/recipes.md): every fold of a 3-fold phantom (the DPN-U-Net: its own N seeded runs on fold 0, the best
k kept), ensemble.py, infer.py on both phases' held-out test sets, score.py with 95 % bootstrap intervals.
The figures: phase 1 held-out ROC AUC (and F1 at the tuned threshold), phase 2 official IoU; `tiny_seg`
(the CPU smoke U-Net) on the same phantom and epochs is the segmentation reference. The issue's bar: AUC >=
0.8 and IoU >= tiny_seg's. Each row is merged into bench/results/recipes.json as soon as its system is done
(rows of another phantom are dropped; a row of the same name is replaced).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import sys
import time
from pathlib import Path

from common import DEFAULT_WORK, ROOT, machine, run, children_cpu_seconds as cpu_seconds, table, write_result  # also puts the repo on sys.path

PY = sys.executable
RECIPES = "configs/recipes"
ARGMAX, THRESHOLDS = ROOT / "configs/grids/argmax.yaml", ROOT / "configs/grids/threshold_only.yaml"
SYSTEMS = {  # name -> (configs trained, ensemble.py arguments per spec: {spec: (run names, args)})
    "multitask": (["multitask/stroke_effnetv2b0", "multitask/type_simple_cnn", "multitask/seg_unet_r50"],
                  {"stroke": (["multitask_stroke_effnetv2b0"], ["--objective", "recall", "--target-recall", "0.88"]),
                   "type": (["multitask_type_simple_cnn"], ["--threshold-range", "0.5", "0.5"]),
                   "seg": (["multitask_seg_unet_r50"], ["--metric", "iou", "--grid", ARGMAX])}),
    "vgg_unet": (["vgg_unet/stroke_vgg16", "vgg_unet/seg_unet_scse"],
                 {"stroke": (["vgg_unet_stroke_vgg16"], []),
                  "seg": (["vgg_unet_seg_unet_scse"], ["--metric", "iou", "--grid", THRESHOLDS])}),
    "deep_ensemble": ([f"deep_ensemble/stroke_{m}" for m in ("resnet50", "resnet34", "densenet121", "vgg19",
                                                             "mobilenet")] + ["deep_ensemble/seg_unet_r34"],
                      {"stroke": ([f"deep_ensemble_stroke_{m}" for m in ("resnet50", "resnet34", "densenet121",
                                                                         "vgg19", "mobilenet")],
                                  ["--blend", "vote", "--keep-blend", "--vote-threshold", "0.5",
                                   "--threshold-range", "0.5", "0.5"]),
                       "seg": (["deep_ensemble_seg_unet_r34"], ["--metric", "iou", "--grid", ARGMAX])}),
    "dpn_unet": (["dpn_unet/seg_dpn92_hypercolumn"], {}),   # its own N runs and seg-based specs: run_dpn
    "tiny_seg": (["../tiny_seg"], {"seg": (["tiny_seg"], [])}),
}






def phantom(work: Path, n: int, size: int) -> Path:
    root = work / f"phantom_{n}_{size}"
    if not (root / "folds.csv").is_file():
        run([PY, "make_phantom.py", "--out", root, "--n", n, "--size", size, "--seed", "7", "--n-test1", "100",
             "--n-test2", "40", "--overwrite"], work / "phantom.log")
        run([PY, "kfold.py", "--data", root, "--folds", "3"], work / "phantom.log")
    return root


def scaled(config: str, args) -> list[str]:
    """The CPU scaling of one recipe: sizes, epochs, batch, no pretrained weights; all else as shipped."""
    from strokekit.config import load_config

    cfg = load_config(ROOT / RECIPES / f"{config}.yaml")
    seg = cfg["task"] == "seg"
    size = args.seg_size if seg else (args.cls_size if "inception" not in cfg["model"] else max(96, args.cls_size))
    batch = cfg["batch_size"] if config.startswith("dpn_unet") else 8
    return [f"img_size={size}", f"oof_size={size}", f"epochs={args.seg_epochs if seg else args.cls_epochs}",
            f"batch_size={batch}", "pretrained=false", "num_workers=0", "epoch_steps=null"]


def runs_root(work: Path, args) -> Path:
    """Where the runs are: this row's own, or an earlier row's with --reuse-runs."""
    return work / "runs" if args.reuse_runs is None else args.work / args.reuse_runs / "runs"


def train(config: str, data: Path, work: Path, log: Path, args, flags: list, sets: list = ()) -> None:
    if args.reuse_runs is not None:  # ensemble and score the runs of an earlier bench (runs_root)
        return
    from strokekit.config import load_config

    seg = load_config(ROOT / RECIPES / f"{config}.yaml")["task"] == "seg"
    extra = args.seg_set if seg else args.cls_set
    run([PY, "train.py", "--config", ROOT / RECIPES / f"{config}.yaml", "--data", data, "--out", work / "runs",
         "--no-progress", "--overwrite", *flags, "--set", *scaled(config, args), *sets, *extra], log)


def score(data: Path, work: Path, name: str, log: Path, phase1: Path | None, phase2: Path | None,
          type_spec: Path | None = None, outside: bool = False) -> dict:
    """infer.py + score.py on the held-out test sets: phase-1 AUC / F1 and phase-2 official IoU, 95 % intervals.
    outside: the specs name another row's runs (--reuse-runs), which infer.py allows only when told."""
    out = {}
    trust = ["--allow-outside"] if outside else []
    if phase1 is not None:
        sub = work / "submissions" / name / "phase1"
        run([PY, "infer.py", "--phase", "1", "--ensemble", phase1, "--data", data / "YARISMA_1", "--out", sub,
             "--overwrite", *trust], log)
        js = work / "scores" / f"{name}_phase1.json"
        run([PY, "score.py", "--phase", "1", "--pred", sub / "asama1.txt", "--probs", sub / "probs.csv",
             "--truth", data / "YARISMA_1" / "ASAMA1_Cevaplar.txt", "--out", js], log)
        s = json.loads(js.read_text())
        out.update(phase1_auc=s["auc"], phase1_auc_95=_interval(s, "auc"), phase1_f1=s.get("f1"),
                   phase1_f1_95=_interval(s, "f1"), **level_diagnostic(data, sub / "probs.csv"))
    if phase2 is not None:
        sub = work / "submissions" / name / "phase2"
        run([PY, "infer.py", "--phase", "2", "--ensemble", phase2, *(["--type-ensemble", type_spec] if type_spec
                                                                      else []),
             "--data", data / "YARISMA_2", "--out", sub, "--overwrite", *trust], log)
        js = work / "scores" / f"{name}_phase2.json"
        run([PY, "score.py", "--phase", "2", "--pred", sub, "--truth", data / "YARISMA_2" / "MASK", "--out", js], log)
        s = json.loads(js.read_text())
        out.update(official_iou=s["official"]["mean_imagewise"]["iou"], official_iou_95=_interval(s, "official_iou"))
        if type_spec is not None:  # the U-Net's own colours too: what the type classifier adds or costs
            out.update(seg_alone(data, work, name, log, phase2, trust))
    return out


def seg_alone(data: Path, work: Path, name: str, log: Path, seg_spec: Path, trust: list = ()) -> dict:
    """Phase 2 from the seg spec alone (the lesion classes the U-Net draws, no type classifier)."""
    sub = work / "submissions" / name / "phase2_seg_alone"
    run([PY, "infer.py", "--phase", "2", "--ensemble", seg_spec, "--data", data / "YARISMA_2", "--out", sub,
         "--overwrite", *trust], log)
    js = work / "scores" / f"{name}_phase2_seg_alone.json"
    run([PY, "score.py", "--phase", "2", "--pred", sub, "--truth", data / "YARISMA_2" / "MASK", "--out", js], log)
    s = json.loads(js.read_text())
    return {"official_iou_seg_alone": s["official"]["mean_imagewise"]["iou"],
            "official_iou_seg_alone_95": _interval(s, "official_iou")}


def level_diagnostic(data: Path, probs_csv: Path) -> dict:
    """What a phase-1 classifier tracks on test 1: the correlation of its probability with the slice's level in
    the head (the phantom's truth table), beside the label's own. A classifier that learnt the lesion follows
    the label; one that learnt the anatomy (stroke slices lie mid-brain in training) follows the level."""
    import numpy as np
    import pandas as pd

    probs = pd.read_csv(probs_csv)[["image_id", "prob"]]
    truth = pd.read_csv(data / "phantom_truth.csv").rename(columns={"id": "image_id"})
    table = probs.merge(truth[truth["split"] == "test1"], on="image_id")
    label = (table["class"] != "no_stroke").astype(float)
    corr = lambda a, b: round(float(np.corrcoef(a, b)[0, 1]), 3)
    return {"phase1_prob_level_corr": corr(table["prob"], table["level"]),
            "phase1_label_level_corr": corr(label, table["level"]),
            "phase1_prob_label_corr": corr(table["prob"], label)}


def _interval(scored: dict, key: str) -> list | None:
    found = (scored.get("intervals") or {}).get(key)
    return [found.get("low"), found.get("high")] if isinstance(found, dict) else None


def run_system(name: str, data: Path, work: Path, args) -> dict:
    configs, specs = SYSTEMS[name]
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"{name}.log"
    log.unlink(missing_ok=True)
    start, cpu = time.time(), cpu_seconds()
    if name == "dpn_unet":
        return {"system": name, **run_dpn(data, work, log, args), "cpu_s": round(cpu_seconds() - cpu),
                "wall_s": round(time.time() - start)}
    if args.classifiers_only:  # phase 1 (and the type spec) only: a classifier variant row
        configs = [c for c in configs if "/seg_" not in c]
        specs = {k: v for k, v in specs.items() if k != "seg"}
    elif args.seg_only:        # phase 2 only (without the type spec): a U-Net variant row
        configs = [c for c in configs if "/seg_" in c or c.endswith("tiny_seg")]
        specs = {k: v for k, v in specs.items() if k == "seg"}
    for config in configs:
        train(config, data, work, log, args, ["--fold", args.fold])
    paths = {}
    for spec, (runs, extra) in specs.items():
        paths[spec] = work / "ensembles" / f"{name}_{spec}.yaml"
        run([PY, "ensemble.py", "--task", spec, *[runs_root(work, args) / r for r in runs], *extra,
             *(["--data", data] if spec == "seg" else []), "--n-boot", "200", "--out", paths[spec]], log)
    figures = score(data, work, name, log, paths.get("stroke"), paths.get("seg"), paths.get("type"),
                    outside=args.reuse_runs is not None)
    return {"system": name, **figures, "cpu_s": round(cpu_seconds() - cpu), "wall_s": round(time.time() - start)}


def run_dpn(data: Path, work: Path, log: Path, args) -> dict:
    """N seeded runs on fold 0, the best k by OOF IoU, the paper's threshold + closing, seg-based classifiers."""
    config = "dpn_unet/seg_dpn92_hypercolumn"
    seeds = ",".join(str(s) for s in range(args.dpn_runs))
    train(config, data, work, log, args, ["--fold", "0", "--seeds", seeds], [f"encoder={args.dpn_encoder}"])
    runs = sorted(runs_root(work, args).glob("dpn_unet_seg_dpn92_hypercolumn_s*"))[:args.dpn_runs]
    paths = {}
    for target in ("stroke", "type"):
        paths[target] = work / "ensembles" / f"dpn_{target}.yaml"
        run([PY, "ensemble.py", "--task", "seg", *runs, "--top-runs", args.dpn_top, "--keep-blend", "--metric", "iou", "--tta", "none",
             "--grid", ROOT / f"configs/grids/dpn_unet_{args.dpn_grid}.yaml", "--seg-classifier", target,
             "--seg-feature", "mean",
             "--data", data, "--n-boot", "200", "--out", paths[target]], log)
    return {"runs": args.dpn_runs, "kept": args.dpn_top, "encoder": args.dpn_encoder, "grid": args.dpn_grid,
            **score(data, work, "dpn_unet", log, paths["stroke"], paths["type"], outside=args.reuse_runs is not None)}


ROW_SETTINGS = ("cls_size", "seg_size", "cls_epochs", "seg_epochs", "dpn_runs", "dpn_top", "dpn_encoder", "fold")


def save(row: dict, setting: dict) -> None:
    """Merge one system's row into bench/results/recipes.json now (a killed bench keeps what it finished; two
    benches on other systems may run side by side): rows of another setting are dropped, a redone row replaced."""
    import fcntl

    from common import RESULTS

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "strokekit_recipes_bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = RESULTS / "recipes.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        same = all(old.get(k) == v for k, v in setting.items())
        file_wide = {k: old[k] for k in ROW_SETTINGS if k in old}  # older files kept the scaling file-wide
        earlier = [{**file_wide, **r} for r in (old.get("rows", []) if same else [])]
        rows = [r for r in earlier if r["row"] != row["row"]] + [row]
        kept = {k: v for k, v in old.items() if same and k not in ("machine", "rows", *setting)}
        write_result("recipes", {"machine": machine(), **kept, **setting, "rows": rows})


def rediagnose(work: Path, data: Path) -> int:
    """level_diagnostic and seg_alone for rows scored before they existed (their submissions and specs are still
    under `work`)."""
    import fcntl

    from common import RESULTS

    path = RESULTS / "recipes.json"
    with open(Path(tempfile.gettempdir()) / "strokekit_recipes_bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # benches still running wait for this to finish
        result = json.loads(path.read_text())
        for row in result["rows"]:
            _rediagnose_row(row, work, data)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def _rediagnose_row(row: dict, work: Path, data: Path) -> None:
    tag = row["row"][len(row["system"]):]
    where = work / tag if tag else work
    probs = where / "submissions" / row["system"] / "phase1" / "probs.csv"
    if "phase1_auc" in row and "phase1_prob_level_corr" not in row and probs.is_file():
        row.update(level_diagnostic(data, probs))
        print(row["row"], {k: v for k, v in row.items() if "level" in k or "label_corr" in k})
    seg_spec = where / "ensembles" / f"{row['system']}_seg.yaml"
    typed = (where / "ensembles" / f"{row['system']}_type.yaml").is_file()
    if "official_iou" in row and typed and "official_iou_seg_alone" not in row and seg_spec.is_file():
        row.update(seg_alone(data, where, row["system"], work / "rediagnose.log", seg_spec))
        print(row["row"], "seg alone", row["official_iou_seg_alone"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "recipes")
    parser.add_argument("--only", default=",".join(SYSTEMS), help=f"systems (default all: {', '.join(SYSTEMS)})")
    parser.add_argument("--n", type=int, default=600, help="phantom training slices (default 600)")
    parser.add_argument("--phantom-size", type=int, default=256, help="the phantom's side (default 256)")
    parser.add_argument("--cls-size", type=int, default=96, help="classifier input side (default 96)")
    parser.add_argument("--seg-size", type=int, default=128, help="U-Net input side (default 128)")
    parser.add_argument("--cls-epochs", type=int, default=6)
    parser.add_argument("--seg-epochs", type=int, default=10)
    parser.add_argument("--dpn-runs", type=int, default=3, help="DPN-U-Net: N seeded runs (the paper: ~40)")
    parser.add_argument("--dpn-top", type=int, default=2, help="DPN-U-Net: the best k kept (the paper: 6)")
    parser.add_argument("--dpn-encoder", default="dpn68", help="DPN-U-Net encoder at CPU scale (default dpn68)")
    parser.add_argument("--fold", default="all",
                        help="the folds the systems train (default all; e.g. 0: one model, for a budget row)")
    parser.add_argument("--dpn-grid", default="paper", choices=("paper", "closing"),
                        help="DPN-U-Net post-processing: the paper's fixed threshold 0.47 + closing 3 (default), or "
                             "the searched grid configs/grids/dpn_unet_closing.yaml")
    parser.add_argument("--reuse-runs", metavar="TAG",
                        help="train nothing: ensemble and score the runs an earlier bench with this --tag left under "
                             "--work ('' for none)")
    parser.add_argument("--data", type=Path, help="an existing phantom with folds.csv (default: made under --work)")
    parser.add_argument("--cls-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every classifier after the CPU scaling (a variant row: give --tag)")
    parser.add_argument("--seg-set", nargs="*", default=[], metavar="KEY=VALUE", help="the same for every U-Net")
    parser.add_argument("--multitask-stroke", default="effnetv2b0",
                        choices=("effnetv2b0", "resnet50", "simple_cnn", "effnetb0", "mobilenetv2"),
                        help="the multi-task system's phase-1 model (Table I's five; default its best, effnetv2b0)")
    parser.add_argument("--classifiers-only", action="store_true",
                        help="train and score the systems' classifiers only (phase 1), e.g. for a --cls-set variant")
    parser.add_argument("--seg-only", action="store_true",
                        help="train and score the systems' U-Nets only (phase 2), e.g. for a --seg-set variant")
    parser.add_argument("--tag", default="", help="appended to each row's name, e.g. '+dicom_aux'")
    parser.add_argument("--rediagnose", action="store_true",
                        help="add the phase-1 level diagnostic to the rows of bench/results/recipes.json that lack "
                             "it, from their submissions under --work, and stop")
    args = parser.parse_args(argv)
    if args.rediagnose:
        return rediagnose(args.work, args.data or args.work / f"phantom_{args.n}_{args.phantom_size}")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; valid: {', '.join(SYSTEMS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data or phantom(args.work, args.n, args.phantom_size)
    if args.multitask_stroke != "effnetv2b0":
        configs, specs = SYSTEMS["multitask"]
        stroke = f"multitask/stroke_{args.multitask_stroke}"
        SYSTEMS["multitask"] = ([stroke, *configs[1:]],
                                {**specs, "stroke": ([stroke.replace("/", "_")], specs["stroke"][1])})
    if args.seg_only and (args.classifiers_only or "dpn_unet" in names):
        parser.error("--seg-only: not with --classifiers-only, and the DPN-U-Net is all U-Net anyway")
    if args.classifiers_only and "dpn_unet" in names:
        parser.error("the DPN-U-Net's classifiers are its U-Nets: leave it out of --classifiers-only")
    if (args.cls_set or args.seg_set) and not args.tag:
        parser.error("--cls-set / --seg-set change the recipes: name the variant rows with --tag")
    setting = {"n": args.n, "phantom_size": args.phantom_size}  # the phantom: rows of another one are dropped
    scaling = {k: getattr(args, k) for k in ROW_SETTINGS}
    rows = []
    for name in names:
        row = run_system(name, data, args.work / args.tag if args.tag else args.work, args)
        rows.append({"row": name + args.tag, **row, **scaling, "cls_set": args.cls_set, "seg_set": args.seg_set})
        print(json.dumps(rows[-1]), flush=True)
        save(rows[-1], setting)

    def cell(r, key):
        v, ci = r.get(key), r.get(f"{key}_95")
        return "-" if v is None else f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "")
    print(table([[r["row"], cell(r, "phase1_auc"), cell(r, "phase1_f1"), cell(r, "official_iou"), r["cpu_s"]]
                 for r in rows], ["system", "phase-1 AUC", "phase-1 F1", "official IoU", "CPU s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
