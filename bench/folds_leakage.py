"""How far a random split's OOF figures sit above a grouped split's, on the phantom (which has patients).

    python bench/folds_leakage.py                              # 600-slice 128-px phantom, 5 folds, no training
    python bench/folds_leakage.py --train tiny_type tiny_seg      # + train.py on each split (~45 min CPU)
    python bench/folds_leakage.py --crowd 3000                  # a crowded set: groups and split patients


Three splits of the same images (all stratified by class x lesion type): random (kfold.py --group-by none,
what published results on this data set did), similarity (--group-by similarity: groups from the images,
the headers ignored) and dicom (the phantom's true patients). For each: how many patients straddle a split;
the near-duplicate leakage, i.e. the share of validation slices whose nearest training slice (cosine on 32-px
brain-window thumbnails) is of the same patient; the OOF figures of a 1-nearest-neighbour classifier on those
thumbnails (a model that can only memorise: stroke AUC, type AUC on stroke slices); with --train, the pooled
OOF AUC of a kit config trained by train.py on each split. Also times the similarity grouping and its link
step scaled to 7,000 slices. Writes bench/results/folds_leakage.json.

--crowd N instead makes an N-slice phantom (5x the patients of the default at N = 3000) and reports the
similarity groups with the default group-size cap (half a fold), a quarter of it, and none: how many groups,
the largest, links refused, and how many patients end up split -> bench/results/folds_crowded.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from strokekit.data.index import build_index  # noqa: E402
from strokekit.data.folds import fold_groups, make_folds, write_folds  # noqa: E402
from strokekit.data.grouping import SimilarityParams, capped_groups, hamming_pairs, pose_pairs, slice_grey  # noqa: E402
from strokekit.phantom.dataset import TRUTH_CSV, make_phantom  # noqa: E402


def thumbnails(index: pd.DataFrame, side: int = 32) -> np.ndarray:
    rows = [np.asarray(Image.fromarray(slice_grey(r)).resize((side, side), Image.BOX), np.float32).ravel()
            for r in index.to_dict("records")]
    x = np.stack(rows)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def leakage(folds: pd.DataFrame, x: np.ndarray, patients: np.ndarray, targets: dict) -> dict:
    """Patients split, near-duplicate leakage, and a 1-NN classifier's OOF AUCs under one split."""
    sim = x @ x.T
    fold = folds.fold.to_numpy()
    nearest = np.empty(len(fold), dtype=int)
    for k in np.unique(fold):
        val, train = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        nearest[val] = train[np.argmax(sim[np.ix_(val, train)], axis=1)]
    out = {"patients_split": int((pd.Series(fold).groupby(patients).nunique() > 1).sum()),
           "nn_same_patient": round(float(np.mean(patients[nearest] == patients)), 4)}
    for name, (y, use) in targets.items():  # 1-NN score: the neighbour's label, ties broken by similarity
        score = y[nearest] + 1e-3 * sim[np.arange(len(y)), nearest]
        out[f"nn1_{name}_auc"] = round(float(roc_auc_score(y[use], score[use])), 4)
    return out


def train_metric(config: str, folds_csv: Path, data: Path, folds: str, runs: Path, epochs: int | None) -> dict:
    """Train `config` with this folds file (train.py; `folds` 'all' or '0,1'); each fold's best validation
    metric from summary.json, their mean, and for classifiers the pooled AUC of the oof.csv files."""
    sets = ["--set", f"epochs={epochs}"] if epochs else []
    for k in folds.split(","):
        done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config",
                               str(ROOT / "configs" / f"{config}.yaml"), "--data", str(data), "--folds-csv",
                               str(folds_csv), "--out", str(runs), "--fold", k, *sets], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"train.py {config} fold {k} failed:\n{done.stderr[-2000:]}")
    summaries = [json.loads(p.read_text()) for p in sorted(runs.glob(f"{config}/fold*/summary.json"))]
    per_fold = [round(float(s["best_metric"]), 4) for s in summaries]
    out = {"metric": summaries[0]["metric"], "per_fold": per_fold, "mean": round(float(np.mean(per_fold)), 4)}
    oof_files = sorted(runs.glob(f"{config}/fold*/oof.csv"))
    if oof_files:
        oof = pd.concat(pd.read_csv(p) for p in oof_files)
        out["pooled_auc"] = round(float(roc_auc_score(oof.target, oof.prob)), 4)
    return out


def scaled_link_time(pose: np.ndarray, codes: np.ndarray, n: int = 7000) -> float:
    """Seconds for the link + union-find step on `n` slices (the measured signatures, tiled with jitter)."""
    rng = np.random.default_rng(0)
    reps = -(-n // len(pose))
    big_pose = np.concatenate([pose + rng.normal(0, 0.05, pose.shape) * [1, 1, 1, 0.3] for _ in range(reps)])[:n]
    big_codes = np.concatenate([codes ^ rng.integers(0, 2**63, codes.shape, dtype=np.uint64) for _ in range(reps)])[:n]
    start = time.perf_counter()
    params = SimilarityParams()
    pairs, dist = pose_pairs(big_pose, params)
    dup = hamming_pairs(big_codes, params.dup_bits)
    capped_groups(n, np.concatenate([dup, pairs]), np.concatenate([np.zeros(len(dup)), dist]), n // 10)
    return round(time.perf_counter() - start, 3)


def crowded(args) -> int:
    """Similarity groups of an N-slice phantom under three group-size caps."""
    data = args.work / f"phantom_{args.crowd}_{args.size}_s7"
    if not (data / TRUTH_CSV).is_file():
        make_phantom(data, n=args.crowd, seed=7, size=args.size, n_test1=2, n_test2=2, overwrite=data.exists())
    index, _ = build_index(data)
    train = index[index.split == "train"].reset_index(drop=True)
    patients = train.image_id.map(pd.read_csv(data / TRUTH_CSV).set_index("id")["patient"]).to_numpy()
    half_fold = len(train) // (2 * args.folds)
    result = {"data": str(data), "n_images": len(train), "n_patients": int(len(set(patients))), "folds": args.folds,
              "caps": {}}
    for cap in (half_fold, half_fold // 2, 0):
        start = time.perf_counter()
        grouping = fold_groups(index, "similarity", args.folds, max_group=cap)
        sizes = grouping.groups.value_counts()
        folds = make_folds(index, args.folds, seed=args.seed, groups=grouping.groups)
        row = {"seconds": round(time.perf_counter() - start, 1), "groups": int(len(sizes)),
               "largest": int(sizes.max()), "refused_links": int(grouping.table.attrs["refused_links"]),
               "patients_split": int((pd.Series(folds.fold.to_numpy()).groupby(patients).nunique() > 1).sum())}
        result["caps"][str(cap)] = row
        print(f"max_group {cap}: {row}", flush=True)
    random = make_folds(index, args.folds, seed=args.seed, groups=fold_groups(index, "none").groups)
    result["random_patients_split"] = int((pd.Series(random.fold.to_numpy()).groupby(patients).nunique() > 1).sum())
    _write(args.out.with_name("folds_crowded.json"), result)
    return 0


def _label(group_by: str) -> str:
    return "random" if group_by == "none" else group_by


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a phantom (default: made under --work)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/strokekit_bench/folds_leakage"))
    parser.add_argument("--n", type=int, default=600, help="phantom training slices (default 600)")
    parser.add_argument("--size", type=int, default=128, help="phantom image size (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--train", nargs="*", default=[], help="configs to train on each split (e.g. tiny_type)")
    parser.add_argument("--train-folds", default="all", help="folds to train with --train: all (default) or 0,1")
    parser.add_argument("--epochs", type=int, help="override the trained configs' epochs")
    parser.add_argument("--crowd", type=int, default=0, help="measure grouping on an N-slice phantom instead")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "folds_leakage.json")
    args = parser.parse_args(argv)
    if args.crowd:
        return crowded(args)
    data = args.data or args.work / f"phantom_{args.n}_{args.size}_s{args.seed}"
    if not (data / TRUTH_CSV).is_file():
        make_phantom(data, n=args.n, seed=args.seed, size=args.size, n_test1=4, n_test2=4, overwrite=data.exists())
    index, _ = build_index(data)
    train = index[index.split == "train"].reset_index(drop=True)
    truth = pd.read_csv(data / TRUTH_CSV).set_index("id")
    patients = train.image_id.map(truth["patient"]).to_numpy()
    stroke = (train.class_name != "no_stroke").to_numpy()
    targets = {"stroke": (stroke.astype(int), np.ones(len(train), bool)),
               "type": ((train.class_name == "hemorrhagic").astype(int).to_numpy(), stroke)}
    start = time.perf_counter()
    similarity = fold_groups(index, "similarity", args.folds, workers=1)
    group_seconds = time.perf_counter() - start
    x = thumbnails(train)
    result = {"data": str(data), "n_images": len(train), "n_patients": int(len(set(patients))),
              "folds": args.folds, "grouping_seconds": round(group_seconds, 2),
              "similarity_groups": int(similarity.groups.nunique()),
              "largest_group": int(similarity.groups.value_counts().max()), "splits": {}}
    table = similarity.table
    pose = table[["centre_x", "centre_y", "tilt", "aspect"]].to_numpy()
    codes = np.stack([np.frombuffer(bytes.fromhex(h), ">u8").astype(np.uint64) for h in table.dhash])
    result["link_seconds_7000"] = scaled_link_time(pose, codes)
    folds_files = {}
    for name in ("none", "similarity", "dicom"):
        groups = similarity.groups if name == "similarity" else fold_groups(index, name, args.folds).groups
        folds = make_folds(index, args.folds, seed=args.seed, groups=groups)
        folds_files[name] = args.work / f"folds_{name}.csv"
        write_folds(folds, folds_files[name])
        result["splits"][_label(name)] = leakage(folds, x, patients, targets)
        print(_label(name), result["splits"][_label(name)], flush=True)
    _write(args.out, result)
    for config in args.train:  # each config on every split in turn; the JSON is rewritten after each
        for name, folds_csv in folds_files.items():
            row = train_metric(config, folds_csv, data, args.train_folds, args.work / f"runs_{name}", args.epochs)
            result["splits"][_label(name)][config] = row
            print(_label(name), config, row, flush=True)
            _write(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
