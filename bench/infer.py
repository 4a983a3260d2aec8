"""Inference speed: the kit's infer.py (an ensemble of 2 models x 4 TTA flips) against a naive loop written
here (read one image, run each model on each flip one at a time), on a 100-image test set, with outputs
checked equal; and the models' raw forward passes alone (batches already preprocessed in memory) as the floor.

    python bench/infer.py                       # phase 1: resnet18 @224 on YARISMA_1 (100 images)
    python bench/infer.py --task seg            # phase 2: Unet-resnet34 @256 on YARISMA_2
    python bench/infer.py --images 40 --note "CI box"

The kit is timed end to end as a user runs it: infer.main() loading the checkpoints, reading, predicting,
writing and validating the submission. Goals: >= 3x faster than the naive loop on 2 CPU cores, within 1.5x
of the floor. Writes bench/results/infer_<task>_<device>.json.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import DEFAULT_WORK, Timer, bench_config, machine, phantom, save_checkpoints, table, write_bench_spec
from common import write_result

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import infer  # noqa: E402
from strokekit.data.dataset import preprocess  # noqa: E402
from strokekit.data.readers import load_image, read_mask  # noqa: E402
from strokekit.decide import phase2_class_map  # noqa: E402
from strokekit.engine import autocast, pick_device  # noqa: E402
from strokekit.ensemble_spec import read_spec  # noqa: E402
from strokekit.models import load_checkpoint  # noqa: E402
from strokekit.postprocess import normalise_spec  # noqa: E402
from strokekit.submit import find_test_rows  # noqa: E402
from strokekit.tta import apply_flip  # noqa: E402

FLIPS = ["none", "hflip", "vflip", "hvflip"]
SETUPS = {"stroke": ("resnet18@224", 1, "YARISMA_1"), "seg": ("unet_r34@256", 2, "YARISMA_2")}


@torch.no_grad()
def naive(checkpoints: list[str], rows: pd.DataFrame, device, seg: bool) -> list:
    """What a first script does: per image, read it, then one forward pass per model and flip."""
    models = [load_checkpoint(path, device) for path in checkpoints]
    out = []
    for row in rows.to_dict("records"):
        image = load_image(row, models[0][1])
        x = preprocess(image, models[0][1])[None].to(device)
        members = []
        for model, cfg in models:
            total = 0
            for flip in FLIPS:
                with autocast(cfg, device):
                    probs = torch.softmax(model(apply_flip(x, flip)).float(), dim=1)
                total = total + (apply_flip(probs, flip) if seg else probs)
            mean = total / len(FLIPS)
            members.append(F.interpolate(mean, size=image.shape[:2], mode="bilinear", align_corners=False)[0]
                           if seg else mean[0, 1])
        out.append(torch.stack(members).cpu().numpy())  # (M,) or (M, 3, H, W)
    return out


@torch.no_grad()
def forward_floor(checkpoints: list[str], rows: pd.DataFrame, device, batch_size: int) -> float:
    """Seconds of the models' forward passes alone on the kit's batches (flips stacked), inputs in memory."""
    models = [load_checkpoint(path, device) for path in checkpoints]
    cfg = models[0][1]
    images = torch.stack([preprocess(load_image(r, cfg), cfg) for r in rows.to_dict("records")])
    seconds = 0.0
    for model, cfg in models:
        cl = device.type == "cuda" or next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
        model = model.to(memory_format=torch.channels_last) if cl else model
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            stacked = torch.cat([apply_flip(batch, f) for f in FLIPS]).to(device)
            stacked = stacked.contiguous(memory_format=torch.channels_last) if cl else stacked
            with Timer() as t, autocast(cfg, device):
                model(stacked).float().cpu()
            seconds += t.seconds
    return seconds


def kit(spec: str, data: Path, out: Path, phase: int, device, batch_size: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    args = ["--phase", str(phase), "--ensemble", spec, "--data", str(data), "--out", str(out),
            "--batch-size", str(batch_size), "--device", device.type]
    with Timer() as t:
        assert infer.main(args) == 0, "infer.py failed"
    return t.seconds


def check_equal(task: str, naive_out: list, rows: pd.DataFrame, out: Path, spec: str) -> dict:
    """Kit vs naive: classifier member probabilities (probs.csv), or the seg masks the kit wrote."""
    if task == "stroke":
        table_ = pd.read_csv(out / "probs.csv").set_index("image_id").loc[rows["image_id"]]
        kit_members = table_[[c for c in table_.columns if c.startswith("prob:")]].to_numpy()
        diff = float(np.abs(kit_members - np.stack(naive_out)).max())
        return {"compared": "member probabilities (probs.csv)", "max_abs_diff": diff, "equal": diff < 1e-4}
    post, wrong = normalise_spec(read_spec(spec)["postprocess"]), 0
    for image_id, members in zip(rows["image_id"], naive_out):
        class_map, _ = phase2_class_map(members.mean(axis=0), post)
        wrong += int((read_mask(out / f"{image_id}.png") != class_map).sum())
    return {"compared": "phase-2 masks (<id>.png)", "pixels_differing": wrong, "equal": wrong == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--task", choices=list(SETUPS), default="stroke")
    parser.add_argument("--images", type=int, default=100, help="test images (phantom YARISMA folder)")
    parser.add_argument("--batch-size", type=int, default=16, help="infer.py --batch-size")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"phantom etc. (default {DEFAULT_WORK})")
    parser.add_argument("--note", default="", help="what else ran on the machine, for the JSON")
    args = parser.parse_args()
    device = pick_device()
    info = machine(args.note)
    model, phase, folder = SETUPS[args.task]
    root = phantom(args.work, n_test=max(args.images, 100))
    cfg = bench_config(model)
    checkpoints = save_checkpoints(cfg, args.work / "checkpoints")
    spec = write_bench_spec(args.task, checkpoints, FLIPS, args.work / f"spec_{args.task}.yaml")
    data = args.work / f"test_{args.task}_{args.images}"
    if not data.is_dir():  # the first --images files of the phantom's test folder
        for kind in ("PNG", "DICOM"):
            (data / kind).mkdir(parents=True, exist_ok=True)
            for src in sorted((root / folder / kind).iterdir())[:args.images]:
                shutil.copy2(src, data / kind / src.name)
    rows, _ = find_test_rows(data, phase=phase)
    print(f"{len(rows)} images, {len(checkpoints)} x {model} x {len(FLIPS)} flips on {device}")

    out = args.work / f"submission_{args.task}"
    kit_s = kit(spec, data, out, phase, device, args.batch_size)
    with Timer() as t:
        naive_out = naive(checkpoints, rows, device, seg=args.task == "seg")
    naive_s = t.seconds
    floor_s = forward_floor(checkpoints, rows, device, args.batch_size)
    check = check_equal(args.task, naive_out, rows, out, spec)
    n = len(rows)
    result = {"task": args.task, "model": model, "images": n, "models": len(checkpoints), "flips": FLIPS,
              "batch_size": args.batch_size, "forward_images": n * len(FLIPS) * len(checkpoints),
              "kit_s": kit_s, "naive_s": naive_s, "floor_s": floor_s, "speedup_vs_naive": naive_s / kit_s,
              "kit_over_floor": kit_s / floor_s, "outputs": check}
    print(table([["kit (infer.py)", kit_s, n / kit_s, 1.0], ["naive loop", naive_s, n / naive_s, naive_s / kit_s],
                 ["forward floor", floor_s, n / floor_s, floor_s / kit_s]],
                ["run", "seconds", "images/s", "x kit time"]))
    print(f"kit {result['speedup_vs_naive']:.2f}x faster than the naive loop (goal >= 3), "
          f"{result['kit_over_floor']:.2f}x the forward floor (goal <= 1.5); outputs equal: {check['equal']} "
          f"({check['compared']})")
    write_result(f"infer_{args.task}_{device.type}", {"machine": info, "device": str(device), **result})


if __name__ == "__main__":
    main()
