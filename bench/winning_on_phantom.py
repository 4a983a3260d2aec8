"""What the post-processing moves of issue 10 buy on a segmentation run's OOF, with 95 % intervals.

    python bench/winning_on_phantom.py --run runs/seg_phantom --data data/phantom

Rows (each scored on the OOF slices that hold a lesion, as the phase-2 test set does, by the organisers'
tolerant counting and by strict Dice; intervals from 1,000 resamples of 97 images):
  plain                      argmax decoding, no post-processing
  joint search, all slices   ensembling.segmenters.DEFAULT_GRID searched for official IoU on every OOF slice (the
                             lesion-free ones too, as a loop unaware of phase 2's make-up would), bootstrap p10
  joint search, lesion only  the same search on the lesion-bearing slices only
  + never empty              ... scoring the never-empty rule too (the full phase-2 prior, the default)
  (strict-Dice pick)         the phase-2 search's best setting by strict Dice: the rules pick differently
  + type gate                with --type-runs: the phase-2 search with each lesion class gated on the type
                             classifiers' OOF probability (type-conditioned segmentation, ensemble.py
                             --gate-runs <type runs>)
Prints a Markdown table and writes bench/results/winning_phantom.json.

    python bench/winning_on_phantom.py --run runs/tiny_seg --type-runs runs/tiny_type --data data/phantom
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, write_result  # noqa: E402
from strokekit.ensembling import robust, selection  # noqa: E402
from strokekit.ensembling.segmenters import DEFAULT_GRID, gate_probs, lesion_subset, load_masks  # noqa: E402
from strokekit.ensembling.seg_search import _matches, run_search, setting_columns  # noqa: E402
from strokekit.errors import script_main  # noqa: E402

SCORED = ("official_iou", "official_dice", "dice")


def same_setting(search, row):
    """The row of `search`'s table with `row`'s setting."""
    columns = setting_columns(search.table)
    return search.table[_matches(search.table, {c: row[c] for c in columns})].iloc[0]


def figures(search, row, n_boot: int) -> dict:
    return {name: robust.chosen_interval(search, row, 97, n_boot, objective=name) for name in SCORED}


@script_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a seg run folder (fold<k>/oof.npz)")
    parser.add_argument("--data", required=True, help="the data set it was trained on")
    parser.add_argument("--type-runs", nargs="+", help="type classifier run folders: adds the type-gated row")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    oof = selection.load_oof(args.run)
    masks = load_masks(args.data, oof["image_id"])
    oof = {"image_id": oof["image_id"], "probs": oof["probs"].astype(np.float32), "fold": oof["fold"]}
    lesion = lesion_subset(oof, masks)
    plain_grid = {"threshold": [None]}
    on_lesion = run_search(lesion, masks, DEFAULT_GRID, "official_iou", never_empty=False)
    on_all = run_search(oof, masks, DEFAULT_GRID, "official_iou", never_empty=False)
    phase2 = run_search(lesion, masks, DEFAULT_GRID, "official_iou", never_empty=True)
    plain = run_search(lesion, masks, plain_grid, "official_iou", never_empty=False)
    joint = robust.robust_choice(on_all, "p10", 97, args.n_boot)
    prior = robust.robust_choice(phase2, "p10", 97, args.n_boot)
    strict = phase2.table.loc[phase2.table["score.dice"].idxmax()]
    lesion_only = robust.robust_choice(on_lesion, "p10", 97, args.n_boot)
    rows = {"plain 3-class U-Net (argmax)": figures(plain, plain.table.iloc[0], args.n_boot),
            "joint search on all OOF slices": figures(on_lesion, same_setting(on_lesion, joint["row"]), args.n_boot),
            "joint search on lesion slices only": figures(on_lesion, lesion_only["row"], args.n_boot),
            "+ never-empty rule (phase-2 prior)": figures(phase2, prior["row"], args.n_boot),
            "(phase-2 search, best by strict Dice)": figures(phase2, strict, args.n_boot)}
    specs = {"all_slices": joint["spec"], "lesion_only": lesion_only["spec"], "phase2": prior["spec"]}
    if args.type_runs:
        kind, type_probs = gate_probs(args.type_runs)
        gated = run_search(lesion, masks, {**DEFAULT_GRID, "gate": [None, 0.2, 0.3, 0.5]}, "official_iou",
                           image_probs=type_probs, never_empty=True)
        by_type = robust.robust_choice(gated, "p10", 97, args.n_boot)
        rows[f"+ {kind} gate (type-conditioned), phase-2 prior"] = figures(gated, by_type["row"], args.n_boot)
        specs["type_gate"] = by_type["spec"]
    cell = lambda r: f"{r['estimate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
    print(f"{len(lesion['image_id'])} lesion-bearing OOF slices of {len(oof['image_id'])}; 95 % intervals at n = 97")
    print("| post-processing | official IoU (DEIoU) | official Dice | strict Dice |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(cell(values[k]) for k in SCORED) + " |")
    print(f"phase-2 choice: {prior['spec']}")
    if not args.no_write:
        write_result("winning_phantom", {
            "machine": machine(), "run": str(args.run), "n_oof": len(oof["image_id"]),
            "n_lesion": len(lesion["image_id"]), "rows": rows, "type_runs": args.type_runs, "specs": specs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
