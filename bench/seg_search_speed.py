"""How long the segmentation post-processing grid search takes on OOF of a realistic size.

    python bench/seg_search_speed.py [--images 300] [--oof-size 128] [--size 512]

Synthetic OOF (blobs of both lesion classes with noisy probabilities at --oof-size, true masks at --size);
prints the grid's size, the search time, and the time of one exact evaluation for comparison.
Measured on 2 CPU cores: 300 images, 128 -> 512 px, 6,400 settings: 2.5 s (one exact evaluation of a
single setting, upsampling included: 0.7 s).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from strokekit.seg_search import choose_postprocess, evaluate_postprocess, search_postprocess  # noqa: E402

GRID = {"threshold": [None, 0.3, 0.4, 0.5, 0.6], "closing": [0, 2], "min_area": [0, 25, 100, 400],
        "keep_largest": [False, True]}


def synthetic_oof(n: int, oof_size: int, size: int, seed: int = 0) -> tuple[dict, dict]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--oof-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    oof, masks = synthetic_oof(args.images, args.oof_size, args.size)
    start = time.perf_counter()
    table = search_postprocess(oof, masks, GRID)
    searched = time.perf_counter() - start
    chosen = choose_postprocess(table)
    start = time.perf_counter()
    evaluate_postprocess(oof, masks, chosen["spec"])
    exact = time.perf_counter() - start
    print(f"{args.images} images, OOF {args.oof_size} px -> {args.size} px, {len(table)} settings: "
          f"search {searched:.1f} s ({1e3 * searched / len(table):.2f} ms per setting); "
          f"one exact evaluation {exact:.1f} s")
    print(f"chosen: score {chosen['score']:.4f} (best {chosen['best_score']:.4f}) {chosen['spec']}")


if __name__ == "__main__":
    main()
