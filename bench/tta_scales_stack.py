"""Multi-scale TTA and stacking against the plain loop on the phantom, with 95 % bootstrap intervals.

    OMP_NUM_THREADS=1 nice -n 10 python bench/tta_scales_stack.py        # ~10-15 min on 2 shared cores
    python bench/tta_scales_stack.py --scales 0.75,1,1.25 --epochs 6

One phantom (128 px, 3 folds), three runs trained one after the other through train.py: two tiny stroke
classifiers (`configs/tiny_stroke_aux.yaml` at 128 and 96 px) and one tiny U-Net (`configs/tiny_seg.yaml`, with
`seg_val_negatives: true` so its OOF covers the no-stroke slices the stroke stack needs). Then:

  TTA      the same specs run by infer.py with flips only (none,hflip; the OOF's) and with flips x --scales
           (infer.py --tta-scales): phase 1 (stroke ensemble, mean blend) scored by ROC AUC and balanced
           accuracy at the OOF threshold, phase 2 (seg spec) by the official IoU; paired differences per image
  stack    ensemble.py --blend mean (the plain loop), --blend stack (level-2 model on the two classifiers'
           OOF probabilities, nested CV) and --blend stack --stack-seg-runs (plus the U-Net's lesion area and
           peak probability per class), each with --keep-blend, run by infer.py --phase 1 and scored on the
           phantom's phase-1 test set; the OOF column is each spec's own OOF figure (nested CV for stacks)

The OOF (and so the thresholds / post-processing) is made with flips only: the multi-scale rows apply what was
tuned at scale 1, as a user overriding --tta-scales at inference would; retrain with oof_tta_scales to tune
on multi-scale OOF. Writes bench/results/tta_scales_stack.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from common import DEFAULT_WORK, machine, run, table, write_result  # also puts the repo on sys.path

PY = sys.executable
RUNS = {  # name -> (config, --set values)
    "stroke_a": ("configs/tiny_stroke_aux.yaml", ["img_size=128", "seed=1"]),
    "stroke_b": ("configs/tiny_stroke_aux.yaml", ["img_size=96", "seed=2"]),
    "seg": ("configs/tiny_seg.yaml", ["img_size=128", "seed=1", "seg_val_negatives=true"]),
}




def phantom(work: Path, args, log: Path) -> Path:
    root = work / f"phantom_{args.n}_{args.size}"
    if not (root / "folds.csv").is_file():
        run([PY, "make_phantom.py", "--out", str(root), "--n", str(args.n), "--size", str(args.size), "--seed", "5",
             "--n-test1", str(args.n_test1), "--n-test2", str(args.n_test2), "--overwrite"], log)
        run([PY, "kfold.py", "--data", str(root), "--folds", str(args.folds)], log)
    return root


def train(data: Path, work: Path, args, log: Path) -> dict[str, float]:
    seconds = {}
    for name, (config, sets) in RUNS.items():  # one training process at a time
        if (work / "runs" / name / f"fold{args.folds - 1}" / "done").is_file() and not args.retrain:
            continue
        seconds[name] = run([PY, "train.py", "--config", config, "--fold", "all", "--data", str(data), "--out",
                             str(work / "runs"), "--no-progress", "--overwrite", "--set", f"name={name}",
                             f"epochs={args.epochs}", *sets], log)
    return seconds


def fold_summaries(run: Path) -> list[dict]:
    """Each trained fold's summary.json (its OOF metric and training seconds, also when this call trained nothing)."""
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(run.glob("fold*/summary.json"))]


def ensemble(work: Path, name: str, task: str, runs: list[str], log: Path, *extra: str) -> dict:
    out = work / "ensembles" / f"{name}.yaml"
    run([PY, "ensemble.py", "--task", task, *(str(work / "runs" / r) for r in runs), "--out", str(out),
         "--n-boot", "200", *extra], log)
    spec = yaml.safe_load(out.read_text(encoding="utf-8"))
    return {"path": out, "spec": spec}


def infer(work: Path, spec: Path, data: Path, phase: int, name: str, log: Path, *extra: str) -> tuple[Path, float]:
    out = work / "submissions" / name
    seconds = run([PY, "infer.py", "--phase", str(phase), "--ensemble", str(spec), "--data",
                   str(data / f"YARISMA_{phase}"), "--out", str(out), "--overwrite", "--device", "cpu", *extra], log)
    return out, seconds


def phase1(sub: Path, data: Path) -> dict:
    from strokekit.evaluation.score import read_probs_csv, score_phase1

    truth = data / "YARISMA_1" / "ASAMA1_Cevaplar.txt"
    result = score_phase1(sub / "asama1.txt", truth, sub / "probs.csv", n_boot=1000)
    probs = read_probs_csv(sub / "probs.csv")
    return {"auc": result["auc"], "auc_95": _ci(result["intervals"].get("auc")),
            "balanced_accuracy": result["balanced_accuracy"],
            "balanced_accuracy_95": _ci(result["intervals"].get("balanced_accuracy")),
            "probs": probs}


def phase2(sub: Path, data: Path) -> dict:
    from strokekit.evaluation.score import score_phase2

    result = score_phase2(sub, data / "YARISMA_2" / "MASK", n_boot=1000)
    return {"official_iou": result["official"]["mean_imagewise"]["iou"],
            "official_iou_95": _ci(result["intervals"].get("official_iou")),
            "per_image": {r["id"]: r["iou"] for r in result["per_image"]}}


def _ci(value: dict | None) -> list | None:
    return None if not value else [round(value["low"], 4), round(value["high"], 4)]


def paired_auc(data: Path, base: dict, other: dict) -> dict:
    """other - base ROC AUC on the same phase-1 images, resampled together."""
    from sklearn.metrics import roc_auc_score

    from strokekit.data.submission import read_labels
    from strokekit.evaluation.bootstrap import interval

    truth = read_labels(data / "YARISMA_1" / "ASAMA1_Cevaplar.txt")
    ids = sorted(truth)
    y = np.array([truth[i] for i in ids])
    a, b = (np.array([r["probs"][i] for i in ids]) for r in (base, other))

    def diff(yy, aa, bb):
        return roc_auc_score(yy, bb) - roc_auc_score(yy, aa) if 0 < yy.sum() < len(yy) else np.nan

    return interval((y, a, b), statistic=diff, n_boot=1000)


def paired_iou(base: dict, other: dict) -> dict:
    from strokekit.evaluation.bootstrap import interval

    ids = sorted(base["per_image"])
    return interval(np.array([other["per_image"][i] - base["per_image"][i] for i in ids]), n_boot=2000)


def fmt(ci) -> str:
    return "" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def fmt_diff(d: dict) -> str:
    return f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "tta_scales_stack")
    parser.add_argument("--n", type=int, default=300, help="phantom training slices (default 300)")
    parser.add_argument("--n-test1", type=int, default=192, help="phase-1 test slices (default 192, the real count)")
    parser.add_argument("--n-test2", type=int, default=60, help="phase-2 test slices (default 60)")
    parser.add_argument("--size", type=int, default=128, help="phantom side in px (default 128)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--scales", default="0.75,1,1.25", help="the multi-scale rows' TTA scales")
    parser.add_argument("--retrain", action="store_true", help="train again even if the runs are there")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "bench.log"
    log.unlink(missing_ok=True)
    start = time.time()
    data = phantom(args.work, args, log)
    train_s = train(data, args.work, args, log)

    # ---- multi-scale TTA: same specs, flips only vs flips x scales
    mean = ensemble(args.work, "stroke_mean", "stroke", ["stroke_a", "stroke_b"], log)
    seg = ensemble(args.work, "seg", "seg", ["seg"], log, "--data", str(data))
    tta = {}
    for label, extra in (("flips", []), ("flips x scales", ["--tta-scales", args.scales])):
        sub1, s1 = infer(args.work, mean["path"], data, 1, f"p1_{len(extra)}", log, *extra)
        sub2, s2 = infer(args.work, seg["path"], data, 2, f"p2_{len(extra)}", log, *extra)
        tta[label] = {"phase1": phase1(sub1, data), "phase2": phase2(sub2, data), "infer_s": [round(s1, 1),
                                                                                               round(s2, 1)]}
    tta_diff = {"auc": paired_auc(data, tta["flips"]["phase1"], tta["flips x scales"]["phase1"]),
                "official_iou": paired_iou(tta["flips"]["phase2"], tta["flips x scales"]["phase2"])}

    # ---- stacking: mean blend vs stack vs stack + seg features, on phase 1
    stack = ensemble(args.work, "stroke_stack", "stroke", ["stroke_a", "stroke_b"], log, "--blend", "stack",
                     "--keep-blend")
    stack_seg = ensemble(args.work, "stroke_stack_seg", "stroke", ["stroke_a", "stroke_b"], log, "--blend", "stack",
                         "--keep-blend", "--stack-seg-runs", str(args.work / "runs" / "seg"))
    blends = {"mean": (mean, tta["flips"]["phase1"])}
    for label, ens in (("stack", stack), ("stack + seg features", stack_seg)):
        sub, _ = infer(args.work, ens["path"], data, 1, f"p1_{label.replace(' ', '_').replace('+', 'and')}", log)
        blends[label] = (ens, phase1(sub, data))
    blend_diff = {label: paired_auc(data, blends["mean"][1], scored) for label, (_, scored) in blends.items()
                  if label != "mean"}

    rows = [[f"TTA {label}", r["phase1"]["auc"], fmt(r["phase1"]["auc_95"]), r["phase1"]["balanced_accuracy"],
             r["phase2"]["official_iou"], fmt(r["phase2"]["official_iou_95"]), f"{r['infer_s'][0]} / {r['infer_s'][1]}"]
            for label, r in tta.items()]
    print(table(rows, ["row", "test AUC", "95 %", "bal. acc", "official IoU", "95 %", "infer s (p1 / p2)"]))
    print(f"flips x scales - flips, paired: AUC {fmt_diff(tta_diff['auc'])}, official IoU "
          f"{fmt_diff(tta_diff['official_iou'])}\n")
    rows = [[f"blend {label}", ens["spec"]["oof"]["ensemble"], ens["spec"].get("stack", {}).get("chosen", ""),
             scored["auc"], fmt(scored["auc_95"]), scored["balanced_accuracy"], fmt(scored["balanced_accuracy_95"]),
             "" if label == "mean" else fmt_diff(blend_diff[label])] for label, (ens, scored) in blends.items()]
    print(table(rows, ["row", "OOF AUC", "level-2", "test AUC", "95 %", "bal. acc", "95 %", "AUC - mean (paired)"]))

    drop = lambda scored: {k: v for k, v in scored.items() if k not in ("probs", "per_image")}
    result = {"machine": machine("OMP_NUM_THREADS=1 nice -n 10 on a shared 2-core box"),
              "phantom": {"n": args.n, "n_test1": args.n_test1, "n_test2": args.n_test2, "size": args.size,
                          "seed": 5, "folds": args.folds},
              "runs": {name: {"config": c, "set": s, "epochs": args.epochs} for name, (c, s) in RUNS.items()},
              "train_s_this_call": {k: round(v) for k, v in train_s.items()}, "scales": args.scales,
              "folds": {name: [{k: summary.get(k) for k in ("fold", "best_metric", "metric", "time_s")}
                               for summary in fold_summaries(args.work / "runs" / name)] for name in RUNS},
              "tta": {label: {"phase1": drop(r["phase1"]), "phase2": drop(r["phase2"]), "infer_s": r["infer_s"]}
                      for label, r in tta.items()},
              "tta_paired_difference": tta_diff,
              "blends": {label: {"oof_auc": ens["spec"]["oof"]["ensemble"],
                                 "oof_best_member": ens["spec"]["oof"]["best_member"],
                                 "level2": ens["spec"].get("stack", {}).get("chosen"),
                                 "level2_inner_scores": ens["spec"].get("stack", {}).get("inner_scores"),
                                 "threshold": ens["spec"]["threshold"]["value"], **drop(scored)}
                         for label, (ens, scored) in blends.items()},
              "blend_paired_auc_difference_vs_mean": blend_diff, "wall_s": round(time.time() - start)}
    write_result("tta_scales_stack", json.loads(json.dumps(result, default=float)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
