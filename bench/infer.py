"""Inference speed: the kit's infer.py (an ensemble of 2 models x 4 TTA flips) against a naive loop written
here (read one image, run each model on each flip one at a time), on a 100-image test set, with outputs
checked equal; and the models' raw forward passes alone (batches already preprocessed in memory) as the floor.

    python bench/infer.py                       # phase 1: resnet18 @224 on YARISMA_1 (100 images)
    python bench/infer.py --task seg            # phase 2: Unet-resnet34 @256 on YARISMA_2
    python bench/infer.py --images 40 --note "CI box"

The kit is timed end to end as a user runs it: infer.main() loading the checkpoints, reading, predicting,
writing and validating the submission. The three runs alternate for --rounds rounds and each keeps its
fastest; on a shared machine --quiet-load makes each wait for the load average to fall first. Process CPU
seconds are recorded beside wall seconds, and the load each run started at.
Goals: >= 3x faster than the naive loop on 2 CPU cores, within 1.5x of the floor.
Writes bench/results/infer_<task>_<device>.json.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

from common import DEFAULT_WORK, bench_config, machine, phantom, save_checkpoints, table, wait_for_quiet
from common import write_bench_spec, write_result

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import infer  # noqa: E402
from strokekit.data.dataset import preprocess  # noqa: E402
from strokekit.data.readers import load_image, read_mask  # noqa: E402
from strokekit.postprocess.decide import phase2_class_map  # noqa: E402
from strokekit.models.precision import autocast  # noqa: E402
from strokekit.training.engine import pick_device  # noqa: E402
from strokekit.ensembling.spec import read_spec  # noqa: E402
from strokekit.models.registry import load_checkpoint  # noqa: E402
from strokekit.config.postprocess import normalise_spec  # noqa: E402
from strokekit.inference.predict import EnsemblePredictor, default_batch_size  # noqa: E402
from strokekit.inference.submit import find_test_rows  # noqa: E402
from strokekit.models.tta import apply_flip  # noqa: E402

FLIPS = ["none", "hflip", "vflip", "hvflip"]
SETUPS = {"stroke": ("resnet18@224", 1, "YARISMA_1"), "seg": ("unet_r34@256", 2, "YARISMA_2")}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args) -> tuple:
    """(fn's result, wall seconds, CPU seconds of this process: all its threads)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn(*args)
    return out, time.perf_counter() - wall, cpu_seconds() - cpu


def quiet(args) -> dict:
    return wait_for_quiet(args.quiet_load)


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
                with autocast(device, cfg["amp"]):
                    probs = torch.softmax(model(apply_flip(x, flip)).float(), dim=1)
                total = total + (apply_flip(probs, flip) if seg else probs)
            mean = total / len(FLIPS)
            members.append(F.interpolate(mean, size=image.shape[:2], mode="bilinear", align_corners=False)[0]
                           if seg else mean[0, 1])
        out.append(torch.stack(members).cpu().numpy())  # (M,) or (M, 3, H, W)
    return out


@torch.no_grad()
def forward_floor(checkpoints: list[str], rows: pd.DataFrame, device, batch_size: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the models' forward passes alone on the kit's batches (flips stacked, in the
    memory format predict.py uses), inputs preprocessed in memory beforehand."""
    models = [load_checkpoint(path, device) for path in checkpoints]
    cfg = models[0][1]
    images = torch.stack([preprocess(load_image(r, cfg), cfg) for r in rows.to_dict("records")])
    wall = cpu = 0.0
    for model, cfg in models:
        cl = cfg.get("channels_last", True)  # as strokekit.inference.predict.load_member
        model = model.to(memory_format=torch.channels_last) if cl else model
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            stacked = torch.cat([apply_flip(batch, f) for f in FLIPS]).to(device)
            stacked = stacked.contiguous(memory_format=torch.channels_last) if cl else stacked
            with autocast(device, cfg["amp"]):
                _, w, c = timed(lambda: model(stacked).float().cpu())
            wall, cpu = wall + w, cpu + c
    return wall, cpu


def kit(spec: str, data: Path, out: Path, phase: int, device, batch_size: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    args = ["--phase", str(phase), "--ensemble", spec, "--data", str(data), "--out", str(out),
            "--batch-size", str(batch_size), "--device", device.type]
    assert infer.main(args) == 0, "infer.py failed"


def check_equal(task: str, naive_out: list, rows: pd.DataFrame, out: Path, spec: str, device, batch: int) -> dict:
    """Kit vs naive: classifier member probabilities (probs.csv); seg: the blended probabilities (the kit's
    predictor run once more, untimed) and the masks infer.py wrote vs masks decided from the naive ones."""
    if task == "stroke":
        table_ = pd.read_csv(out / "probs.csv").set_index("image_id").loc[rows["image_id"]]
        kit_members = table_[[c for c in table_.columns if c.startswith("prob:")]].to_numpy()
        diff = float(np.abs(kit_members - np.stack(naive_out)).max())
        return {"compared": "member probabilities (probs.csv)", "max_abs_diff": diff, "equal": diff < 1e-4}
    kit_probs = dict(EnsemblePredictor(spec, device=device.type, batch_size=batch).iter_seg(rows))
    post, diff, wrong = normalise_spec(read_spec(spec)["postprocess"]), 0.0, 0
    for image_id, members in zip(rows["image_id"], naive_out):
        diff = max(diff, float(np.abs(kit_probs[image_id] - members.mean(axis=0)).max()))
        class_map, _ = phase2_class_map(members.mean(axis=0), post)
        wrong += int((read_mask(out / f"{image_id}.png") != class_map).sum())
    return {"compared": "blended probabilities; masks", "max_abs_diff": diff, "mask_pixels_differing": wrong,
            "mask_pixels": int(sum(p.shape[-2] * p.shape[-1] for p in kit_probs.values())), "equal": diff < 1e-4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--task", choices=list(SETUPS), default="stroke")
    parser.add_argument("--images", type=int, default=100, help="test images (phantom YARISMA folder)")
    parser.add_argument("--batch-size", type=int, help="infer.py --batch-size (default: infer.py's)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"phantom etc. (default {DEFAULT_WORK})")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; each run keeps its best")
    parser.add_argument("--quiet-load", type=float, help="wait until the 1-min load average is <= this "
                                                         "before each timed run (shared machines)")
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

    out, batch = args.work / f"submission_{args.task}", args.batch_size or default_batch_size(device, len(FLIPS))
    runs = {"kit": [], "naive": [], "floor": []}
    for _ in range(args.rounds):
        load = quiet(args)
        runs["kit"].append((*timed(kit, spec, data, out, phase, device, batch)[1:], load))
        load = quiet(args)
        runs["floor"].append((*forward_floor(checkpoints, rows, device, batch), load))
        load = quiet(args)
        naive_out, *seconds = timed(naive, checkpoints, rows, device, args.task == "seg")
        runs["naive"].append((*seconds, load))
    check = check_equal(args.task, naive_out, rows, out, spec, device, batch)
    best = {name: {"wall_s": min(w for w, _, _ in r), "cpu_s": min(c for _, c, _ in r),
                   "rounds": [{"wall_s": w, "cpu_s": c, **load} for w, c, load in r]}
            for name, r in runs.items()}
    kit_s, naive_s, floor_s = (best[k]["wall_s"] for k in ("kit", "naive", "floor"))
    n = len(rows)
    result = {"task": args.task, "model": model, "images": n, "models": len(checkpoints), "flips": FLIPS,
              "batch_size": batch, "forward_images": n * len(FLIPS) * len(checkpoints), "runs": best,
              "kit_s": kit_s, "naive_s": naive_s, "floor_s": floor_s, "speedup_vs_naive": naive_s / kit_s,
              "kit_over_floor": kit_s / floor_s, "cpu_speedup_vs_naive": best["naive"]["cpu_s"] / best["kit"]["cpu_s"],
              "outputs": check}
    print(table([[name, b["wall_s"], n / b["wall_s"], b["wall_s"] / kit_s, b["cpu_s"]] for name, b in
                 (("kit (infer.py)", best["kit"]), ("naive loop", best["naive"]), ("forward floor", best["floor"]))],
                ["run", "seconds", "images/s", "x kit time", "CPU seconds"]))
    print(f"kit {result['speedup_vs_naive']:.2f}x faster than the naive loop (goal >= 3), "
          f"{result['kit_over_floor']:.2f}x the forward floor (goal <= 1.5); outputs equal: {check['equal']} "
          f"({check['compared']})")
    write_result(f"infer_{args.task}_{device.type}", {"machine": info, "device": str(device), **result})


if __name__ == "__main__":
    main()
