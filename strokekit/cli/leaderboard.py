"""Rank every config's out-of-fold figures per task, with the chosen ensembles beside them.

    python leaderboard.py runs/*
    python leaderboard.py runs --ensembles ensembles/*.yaml --out leaderboard
    python leaderboard.py runs --ensembles ensembles/*.yaml --scores scores/    # CV vs LB

Per task (stroke, type, seg): each config's OOF metrics per fold and mean ± std over folds (from
runs/<config>/fold<k>/summary.json; classifiers also the AUC of all folds' oof.csv together), then each
ensemble spec's OOF figures (metric, threshold, recall / precision / F1 ..., seg post-processed Dice or IoU; a seg
spec's segmentation-based classifier is listed under its task). Prints the Markdown and writes
<out>/leaderboard.md, leaderboard.png (bar chart) and leaderboard.csv (one row per config and fold).
Unfinished and pruned folds are left out and listed. With --scores, each scored submission (score.py's
JSON) is joined through the manifest.json infer.py wrote beside it with the spec it was made from: CV (the
spec's OOF figure and 95 % interval) beside LB (the test score and its interval), the submission's git
commit and time, flagged where LB falls outside the CV interval; also written to <out>/cv_vs_lb.csv.
Each run read gets its merged runs/<config>/oof.csv (or oof.npz) of all folds, refreshed when a fold changes.
"""
from __future__ import annotations

import argparse
import sys

from strokekit.errors import script_main
from strokekit.report.leaderboard import build


@script_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run folders runs/<config> (or a folder of them, e.g. runs)")
    parser.add_argument("--ensembles", nargs="*", default=[], help="ensemble spec YAMLs from ensemble.py")
    parser.add_argument("--scores", nargs="*", default=[],
                        help="score.py JSON files (or a folder of them, e.g. scores) to set beside the CV figures")
    parser.add_argument("--out", default="leaderboard", help="output folder (default leaderboard)")
    args = parser.parse_args(argv)
    if not args.runs and not args.ensembles and not args.scores:
        parser.error("give run folders, --ensembles spec files and/or --scores files")
    result = build(args.runs, args.ensembles, args.out, args.scores)
    print(result["markdown"])
    written = ["leaderboard.md", "leaderboard.csv"] + ["leaderboard.png"] * bool(result["png"]) \
        + ["cv_vs_lb.csv"] * bool(result["cv_vs_lb"])
    print(f"\nwrote {args.out}/" + ", ".join(written))
    return 0


def entry_point() -> None:
    """`python leaderboard.py` and the console command `strokekit-leaderboard`."""
    sys.exit(main())
