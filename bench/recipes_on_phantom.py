"""The published-system recipes (configs/recipes/) shrunken and run on the phantom: the figures docs/recipes.md's
"Recipes" table calls "kit on the phantom". They show that each recipe runs through the whole loop, nothing
about real CT: tiny images, a few epochs from scratch on CPU, one fold of a small synthetic data set.

    python bench/recipes_on_phantom.py                       # ~30 min on 2 busy CPU cores
    python bench/recipes_on_phantom.py --only deep_ensemble  # one system

Each recipe trains fold 0 of 2 with --set img_size=64 (96 for the Inception stems; seg 128) epochs=4 (seg 10)
batch_size=8 pretrained=false, then the figure of the kind the paper published is read from the run's
summary.json (accuracy, IoU) or from the ensemble.py step the recipe documents (recall-tuned F1, the
majority vote's sensitivity, the DPN-U-Net's post-processed Dice). Writes bench/results/recipes_phantom.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

from common import DEFAULT_WORK, ROOT, machine, write_result  # also puts the repo on sys.path

import ensemble  # noqa: E402
import train  # noqa: E402

RECIPES = ROOT / "configs" / "recipes"
SIZE = {"inception_v3": 96, "inception_resnet_v2": 96}


def shrink(cfg: dict) -> list[str]:
    seg = cfg["task"] == "seg"
    size = 128 if seg else SIZE.get(cfg["model"], 64)
    return [f"img_size={size}", f"oof_size={size}", f"epochs={10 if seg else 4}", "batch_size=8",
            "pretrained=false", "num_workers=0"]


def train_recipe(path: Path, data: Path, runs: Path) -> Path:
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg.setdefault("task", "stroke")
    code = train.main(["--config", str(path), "--fold", "0", "--out", str(runs), "--no-progress", "--overwrite",
                       "--set", *shrink(cfg), f"data={data}"])
    assert code == 0, f"{path} failed"
    return runs / cfg["name"]


def summary(run: Path) -> dict:
    return json.loads((run / "fold0" / "summary.json").read_text())["final_metrics"]


def spec_of(runs: list[Path], out: Path, *flags) -> dict:
    task = json.loads((runs[0] / "fold0" / "summary.json").read_text())["task"]
    assert ensemble.main(["--task", task, *map(str, runs), "--out", str(out), *map(str, flags)]) == 0
    return yaml.safe_load(out.read_text())


def measure(system: str, data: Path, work: Path) -> list[dict]:
    runs_dir, specs = work / "runs", work / "ensembles"
    runs = {p.stem: train_recipe(p, data, runs_dir) for p in sorted((RECIPES / system).glob("*.yaml"))}
    rows = []
    for stem, run in runs.items():
        m = summary(run)
        if stem.startswith("seg_"):
            rows.append({"recipe": f"{system}/{stem}", "figure": "IoU (OOF, per image, lesion classes)",
                         "value": m["iou_macro_imagewise_lesion_mean"]})
        elif system in ("vgg_unet", "deep_ensemble"):
            rows.append({"recipe": f"{system}/{stem}", "figure": "accuracy (OOF, threshold 0.5)",
                         "value": m["accuracy_at_05"]})
    if system == "multitask":
        s = spec_of([runs["stroke_effnetv2b0"]], specs / "mt_stroke.yaml", "--objective", "recall",
                    "--target-recall", 0.97)
        rows.append({"recipe": "multitask/stroke_effnetv2b0", "figure": "F1 at the recall >= 0.97 threshold (OOF)",
                     "value": s["threshold"]["oof"]["f1"]})
        s = spec_of([runs["type_simple_cnn"]], specs / "mt_type.yaml", "--objective", "f1")
        rows.append({"recipe": "multitask/type_simple_cnn", "figure": "type F1 at the tuned threshold (OOF)",
                     "value": s["threshold"]["oof"]["f1"]})
    if system == "deep_ensemble":
        members = [r for stem, r in runs.items() if stem.startswith("stroke_")]
        s = spec_of(members, specs / "de_vote.yaml", "--blend", "vote", "--objective", "f1")
        rows.append({"recipe": "deep_ensemble (5-CNN vote)", "figure": "sensitivity of the majority vote (OOF)",
                     "value": s["threshold"]["oof"]["recall"]})
    if system == "dpn_unet":
        s = spec_of([runs["seg_dpn92_hypercolumn"]], specs / "dpn.yaml", "--top-k", 1, "--metric", "dice",
                    "--tta", "none,hflip,vflip,hvflip", "--grid", ROOT / "configs/grids/dpn_unet_closing.yaml",
                    "--data", data)
        rows.append({"recipe": "dpn_unet/seg_dpn92_hypercolumn", "figure": "3-class DSC after TTA + closing (OOF)",
                     "value": s["oof"]["postprocessed"]})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=["multitask", "vgg_unet", "deep_ensemble", "dpn_unet"])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "recipes")
    parser.add_argument("--n", type=int, default=240, help="phantom training slices (default 240)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared, loaded box: more threads only spin-wait
    from strokekit.data.index import build_index
    from strokekit.data.folds import make_folds, write_folds
    from strokekit.phantom.dataset import make_phantom

    data = args.work / f"phantom_{args.n}"
    if not (data / "folds.csv").is_file():
        make_phantom(data, n=args.n, seed=0, size=128, n_test1=4, n_test2=4, overwrite=True)
        index, _ = build_index(data)
        write_folds(make_folds(index, n_folds=2, seed=42), data / "folds.csv")
    rows, started = [], time.time()
    for system in args.only:
        rows += measure(system, data, args.work)
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine(), "phantom": {"n": args.n, "size": 128, "folds": 2, "trained": "fold 0"},
              "time_s": round(time.time() - started), "rows": rows}
    earlier = ROOT / "bench" / "results" / "recipes_phantom.json"
    if earlier.is_file():  # --only: keep the other systems' rows
        kept = [r for r in json.loads(earlier.read_text())["rows"] if r["recipe"].split("/")[0].split()[0]
                not in args.only]
        result["rows"] = kept + rows
    write_result("recipes_phantom", result)
    for row in result["rows"]:
        print(f"{row['recipe']:<40} {row['figure']:<45} {row['value']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
