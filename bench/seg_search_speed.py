"""How long the joint post-processing search takes on OOF of a 5-fold run's size, against exact evaluation.

    python bench/seg_search_speed.py                                   # 2,200 images, 128 -> 512 px
    python bench/seg_search_speed.py --images 300 --objective dice --no-never-empty

Synthetic OOF (blobs of both lesion classes with noisy probabilities at --oof-size, true masks at --size;
the real data set's ~2,200 lesion slices are what a 5-fold seg run leaves as OOF) scored on
ensembling.segmenters.DEFAULT_GRID (9,216 settings: threshold / argmax, closing, min area, keep-largest per class)
under every objective at once — strict Dice / IoU and the organisers' tolerant counting — with the
phase-2 never-empty rule; then the robust choice (bootstrap 10th percentile at n = 97, --n-boot
resamples) and, for comparison, one exact image-by-image evaluation of one setting (seg_search.
evaluate_objectives: what a loop over settings would cost per setting). Prints a table and writes
bench/results/seg_search_cpu.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, table, write_result  # noqa: E402
from strokekit.evaluation import bootstrap  # noqa: E402
from strokekit.ensembling import robust
from strokekit.ensembling.segmenters import DEFAULT_GRID  # noqa: E402
from strokekit.ensembling.seg_objectives import OBJECTIVES  # noqa: E402
from strokekit.ensembling.seg_search import evaluate_objectives, run_search  # noqa: E402


def synthetic_oof(n: int, oof_size: int, size: int, seed: int = 0) -> tuple[dict, dict]:
    """OOF probabilities (float16, as train.py stores them) and true class maps of n lesion slices."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks, probs = {}, np.zeros((n, 3, oof_size, oof_size), np.float32)
    step = size // oof_size
    for i in range(n):
        true = np.zeros((size, size), np.uint8)
        for cls in rng.choice([1, 2], size=rng.integers(1, 3)):
            cy, cx, r = rng.integers(size // 5, 4 * size // 5, 2).tolist() + [int(rng.integers(8, size // 10))]
            true[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = cls
        small = true[step // 2::step, step // 2::step]
        for cls in (1, 2):
            probs[i, cls] = np.where(small == cls, rng.uniform(0.5, 0.95, small.shape),
                                     rng.uniform(0.0, 0.35, small.shape) ** 2)
        probs[i, 1:] /= np.maximum(probs[i, 1:].sum(0), 1.0)
        probs[i, 0] = 1 - probs[i, 1:].sum(0)
        masks[i] = true
    return {"image_id": np.arange(n), "probs": probs.astype(np.float16), "fold": np.arange(n) % 5}, masks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2200, help="OOF lesion slices (default 2200)")
    parser.add_argument("--oof-size", type=int, default=128, help="OOF probability size (default 128)")
    parser.add_argument("--size", type=int, default=512, help="true mask size (default 512)")
    parser.add_argument("--objective", default="official_iou", choices=OBJECTIVES)
    parser.add_argument("--no-never-empty", dest="never_empty", action="store_false")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--note", default="", help="free text stored with the machine's description")
    parser.add_argument("--no-write", action="store_true", help="print only, write no JSON")
    args = parser.parse_args(argv)
    if min(args.images, args.oof_size, args.size, args.n_boot) < 1:
        print("error: --images, --oof-size, --size and --n-boot must be >= 1", file=sys.stderr)
        return 2
    info = machine(args.note)
    oof, masks = synthetic_oof(args.images, args.oof_size, args.size)
    start = time.perf_counter()
    search = run_search(oof, masks, DEFAULT_GRID, args.objective, never_empty=args.never_empty)
    searched = time.perf_counter() - start
    settings = len(search.table)
    start = time.perf_counter()
    chosen = robust.robust_choice(search, "p10", 97, args.n_boot)
    booted = time.perf_counter() - start
    start = time.perf_counter()
    exact = evaluate_objectives(oof, masks, chosen["spec"], phase2=True)
    one_exact = time.perf_counter() - start
    agree = all(np.isclose(exact[k], chosen["objectives"][k]) for k in OBJECTIVES)
    rows = [["joint search (all objectives)", searched, 1e3 * searched / settings],
            [f"bootstrap p10 choice ({args.n_boot} x 97)", booted, 1e3 * booted / settings],
            ["one exact evaluation", one_exact, 1e3 * one_exact],
            ["exact loop over the grid (extrapolated)", one_exact * settings, 1e3 * one_exact]]
    print(f"{args.images} images, OOF {args.oof_size} px -> {args.size} px, {settings} settings, objective "
          f"{args.objective}, never-empty {args.never_empty}")
    print(table(rows, ["step", "seconds", "ms per setting"]))
    print(f"chosen: {bootstrap.format_interval(chosen['interval'])}; exact evaluation agrees: {agree}")
    if not args.no_write:
        write_result("seg_search_cpu", {
            "machine": info, "settings": {"images": args.images, "oof_size": args.oof_size, "size": args.size,
                                          "objective": args.objective, "never_empty": args.never_empty,
                                          "grid": DEFAULT_GRID, "grid_settings": settings, "n_boot": args.n_boot},
            "seconds": {"search": searched, "bootstrap_choice": booted, "one_exact_evaluation": one_exact,
                        "exact_loop_extrapolated": one_exact * settings},
            "speedup_vs_exact_loop": one_exact * settings / (searched + booted),
            "chosen": {"spec": chosen["spec"], "objectives": chosen["objectives"],
                       "interval": chosen["interval"]},
            "exact_agrees": bool(agree)})
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
