"""Rank every config's out-of-fold figures per task, with the chosen ensembles beside them.

    python leaderboard.py runs/*
    python leaderboard.py runs --ensembles ensembles/*.yaml --out leaderboard

Per task (stroke, type, seg): each config's OOF metrics per fold and mean ± std over folds (from
runs/<config>/fold<k>/summary.json; classifiers also the AUC of all folds' oof.csv together), then each
ensemble spec's OOF figures (metric, threshold, recall / precision / F1 ..., seg post-processed Dice or IoU; a seg
spec's segmentation-based classifier is listed under its task). Prints the Markdown and writes
<out>/leaderboard.md, leaderboard.png (bar chart) and leaderboard.csv (one row per config and fold).
Unfinished and pruned folds are left out and listed.
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
    parser.add_argument("--out", default="leaderboard", help="output folder (default leaderboard)")
    args = parser.parse_args(argv)
    if not args.runs and not args.ensembles:
        parser.error("give run folders and/or --ensembles spec files")
    result = build(args.runs, args.ensembles, args.out)
    print(result["markdown"])
    print(f"\nwrote {args.out}/leaderboard.md, leaderboard.png, leaderboard.csv")
    return 0


def entry_point() -> None:
    """`python leaderboard.py` and the console command `strokekit-leaderboard`."""
    sys.exit(main())
