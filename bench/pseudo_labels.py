"""Pseudo-labels from the phase-2 test images: round 1 vs round 2 on the phantom, scored against its truth.

    OMP_NUM_THREADS=1 nice -n 10 python bench/pseudo_labels.py            # ~12 min on 2 cores
    python bench/pseudo_labels.py --pixel-confidence 0.6 --image-confidence 0.4

Round 1: `configs/tiny_seg.yaml` on every fold of a phantom -> ensemble.py -> infer.py --phase 2 on the
phantom's phase-2 test set -> score.py. Then pseudo.py labels those test images with the round-1 spec (reading
the images only), and round 2 trains the same config, same seed and folds, with `pseudo=<that folder>`, ->
ensemble.py -> infer.py -> score.py. Both submissions are scored against the phantom's MASK truth (which only
this script reads, after pseudo.py has run): the organisers' official IoU with its 95 % bootstrap interval,
and the paired per-image difference round 2 - round 1 with its interval. It also scores the pseudo-labels
themselves (kept vs dropped images, against the truth) and reports each round's OOF Dice (round 2's is
optimistic: the pseudo-labels come from models that saw every fold's images). Writes
bench/results/pseudo_labels.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from common import DEFAULT_WORK, machine, run, table, write_result  # also puts the repo on sys.path

PY = sys.executable




def phantom(work: Path, args, log: Path) -> Path:
    root = work / f"phantom_{args.n}_{args.size}_{args.n_test2}"
    if not (root / "folds.csv").is_file():
        run([PY, "make_phantom.py", "--out", str(root), "--n", str(args.n), "--size", str(args.size), "--seed",
             str(args.phantom_seed), "--n-test1", "4", "--n-test2", str(args.n_test2), "--overwrite"], log)
        run([PY, "kfold.py", "--data", str(root), "--folds", str(args.folds)], log)
    return root


def train_and_submit(name: str, data: Path, work: Path, args, log: Path, extra: list[str]) -> dict:
    runs, spec, sub = work / "runs", work / "ensembles" / f"{name}.yaml", work / "submissions" / name
    start = time.time()
    run([PY, "train.py", "--config", "configs/tiny_seg.yaml", "--fold", "all", "--data", str(data), "--out",
         str(runs), "--no-progress", "--overwrite", "--set", f"name={name}", f"img_size={args.size}",
         f"oof_size={min(args.size, 128)}", f"epochs={args.epochs}", *extra], log)
    run([PY, "ensemble.py", "--task", "seg", str(runs / name), "--data", str(data), "--out", str(spec),
         "--n-boot", "200"], log)
    train_s = time.time() - start
    run([PY, "infer.py", "--phase", "2", "--ensemble", str(spec), "--data", str(data / "YARISMA_2"), "--out",
         str(sub), "--overwrite", "--device", "cpu"], log)
    summaries = [json.loads(p.read_text()) for p in sorted((runs / name).glob("fold*/summary.json"))]
    return {"spec": spec, "sub": sub, "train_s": round(train_s),
            "oof_dice": float(np.mean([s["best_metric"] for s in summaries])),
            "n_train": [s["n_train"] for s in summaries], "n_val": [s["n_val"] for s in summaries],
            "oof_ids": sorted({int(i) for p in sorted((runs / name).glob("fold*/oof.npz"))
                               for i in np.load(p)["image_id"]})}


def score(sub: Path, truth: Path) -> dict:
    from strokekit.evaluation.score import score_phase2

    result = score_phase2(sub, truth, n_boot=1000)
    return {"per_image": {r["id"]: r["iou"] for r in result["per_image"]},
            "official_iou": result["official"]["mean_imagewise"]["iou"],
            "official_iou_95": [result["intervals"]["official_iou"]["low"], result["intervals"]["official_iou"]["high"]],
            "hem_dice": result["strict"]["dice_macro_imagewise_hemorrhagic"],
            "isc_dice": result["strict"]["dice_macro_imagewise_ischemic"]}


def pseudo_quality(folder: Path, truth: Path) -> dict:
    """The pseudo-labels scored against the truth (bench only): official IoU of the kept images' masks
    (ignored pixels counted as background) and of the round-1 decisions on the dropped ones."""
    import pandas as pd

    from strokekit.data.submission import read_phase2_mask
    from strokekit.evaluation.score import score_image

    labels = pd.read_csv(folder / "labels.csv", keep_default_na=False)
    kept = labels[labels["kept"] == 1]
    ious = []
    for row in kept.itertuples():
        pred = read_phase2_mask(folder / row.mask, strict=False)
        ious.append(score_image(pred, read_phase2_mask(truth / f"{row.image_id}.png", strict=False))["iou"])
    return {"n_images": len(labels), "n_kept": len(kept), "kept_official_iou": float(np.mean(ious)) if ious else None,
            "labelled_lesion_share": float(kept["labelled_lesion_pixels"].sum() / max(1, kept["lesion_pixels"].sum())),
            "dropped": labels.loc[labels["kept"] == 0, "reason"].value_counts().to_dict()}


def by_subset(folder: Path, s1: dict, s2: dict) -> dict:
    """Each round's mean official IoU on the images pseudo.py kept and on those it dropped."""
    import pandas as pd

    labels = pd.read_csv(folder / "labels.csv", keep_default_na=False)
    out = {}
    for name, ids in (("kept", labels.loc[labels["kept"] == 1, "image_id"]),
                      ("dropped", labels.loc[labels["kept"] == 0, "image_id"])):
        for k, s in (("round1", s1), ("round2", s2)):
            values = [s["per_image"][int(i)] for i in ids]
            out[f"{k}_official_iou_on_{name}"] = float(np.mean(values)) if values else None
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "pseudo_labels")
    parser.add_argument("--n", type=int, default=400, help="phantom training slices (default 400)")
    parser.add_argument("--n-test2", type=int, default=97, help="phase-2 test slices (default 97, the real count)")
    parser.add_argument("--size", type=int, default=128, help="phantom side = training size in px (default 128)")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--phantom-seed", type=int, default=11)
    parser.add_argument("--pixel-confidence", type=float, default=0.75)
    parser.add_argument("--image-confidence", type=float, default=0.5)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "bench.log"
    log.unlink(missing_ok=True)
    data = phantom(args.work, args, log)
    truth = data / "YARISMA_2" / "MASK"
    start = time.time()
    r1 = train_and_submit("round1", data, args.work, args, log, [])
    folder = args.work / "pseudo" / "round1"
    pseudo_start = time.time()
    run([PY, "pseudo.py", "--ensemble", str(r1["spec"]), "--data", str(data / "YARISMA_2"), "--out", str(folder),
         "--overwrite", "--device", "cpu", "--pixel-confidence", str(args.pixel_confidence),
         "--image-confidence", str(args.image_confidence)], log)
    pseudo_s = round(time.time() - pseudo_start)
    r2 = train_and_submit("round2", data, args.work, args, log, [f"pseudo={folder}"])
    s1, s2 = score(r1["sub"], truth), score(r2["sub"], truth)
    quality = pseudo_quality(folder, truth)
    quality.update(by_subset(folder, s1, s2))

    from strokekit.evaluation.bootstrap import interval

    ids = sorted(s1["per_image"])
    diff = interval(np.array([s2["per_image"][i] - s1["per_image"][i] for i in ids]), n_boot=2000)
    test_ids = set(ids)
    leaks = sorted(test_ids & set(r2["oof_ids"]))
    rows = []
    for name, r, s in (("round 1 (train)", r1, s1), ("round 2 (train + pseudo)", r2, s2)):
        rows.append([name, sum(r["n_train"]) / len(r["n_train"]), s["official_iou"],
                     "[{:.3f}, {:.3f}]".format(*s["official_iou_95"]), s["hem_dice"], s["isc_dice"], r["oof_dice"],
                     r["train_s"]])
    print(table(rows, ["round", "train rows/fold", "official IoU", "95 %", "hem Dice", "isc Dice", "OOF Dice",
                       "train s"]))
    print(f"round 2 - round 1, paired per image: {diff['estimate']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]")
    print(f"pseudo-labels: kept {quality['n_kept']} of {quality['n_images']} (official IoU of the kept labels vs "
          f"truth {quality['kept_official_iou']}), dropped {quality['dropped']}; test ids in round 2's OOF: {leaks}")
    result = {"machine": machine("OMP_NUM_THREADS=1 nice -n 10 on a shared 2-core box"),
              "phantom": {"n": args.n, "n_test2": args.n_test2, "size": args.size, "seed": args.phantom_seed,
                          "folds": args.folds},
              "config": "configs/tiny_seg.yaml", "epochs": args.epochs,
              "pixel_confidence": args.pixel_confidence, "image_confidence": args.image_confidence,
              "rounds": [{"round": k + 1, "train_rows_per_fold": r["n_train"], "val_rows_per_fold": r["n_val"],
                          "official_iou": s["official_iou"], "official_iou_95": s["official_iou_95"],
                          "hemorrhage_dice": s["hem_dice"], "ischemia_dice": s["isc_dice"],
                          "oof_dice_mean_of_folds": r["oof_dice"], "train_and_ensemble_s": r["train_s"]}
                         for k, (r, s) in enumerate(((r1, s1), (r2, s2)))],
              "paired_difference_official_iou": diff, "pseudo_labels": quality, "pseudo_s": pseudo_s,
              "test_ids_in_round2_oof": leaks, "wall_s": round(time.time() - start)}
    write_result("pseudo_labels", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
