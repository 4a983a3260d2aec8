"""Write one static HTML report (figures embedded, opens with no server) for runs or ensembles.

    python report.py runs/tiny_stroke                                # -> runs/tiny_stroke/report.html
    python report.py ensembles/seg.yaml --data data/phantom          # -> ensembles/seg.report.html
    python report.py runs/cfgA runs/cfgB ensembles/ --out reports/all.html

Each path is a run folder (runs/<config> with fold<k>/), an ensemble spec YAML from ensemble.py, or a folder
of either. Per run / ensemble: training curves per fold (loss, metric and its moving average, LR, epoch
time), OOF metrics per fold with mean ± std, an ensemble's members against the blend (weights, runs kept by
--top-runs, leave-one-out deltas) and its bootstrap intervals, the confusion matrix, ROC and precision-
recall curves, OOF probability histograms and calibration (classifiers), the threshold-search surfaces,
per-class results by lesion-size bin, the false-positive rate on no-stroke slices and the worst OOF cases
(seg: cropped around the lesion with truth, prediction and TP / FP / FN map; classifiers: false negatives
and false positives apart; on screen ischemia light blue, hemorrhage green). True masks and slices come
from the data set the runs trained on (the config's `data`, or --data). The logic lives in
strokekit.report.runs.
"""
from __future__ import annotations

import argparse
import sys

from strokekit import progress
from strokekit.errors import script_main
from strokekit.report.runs import write_report
from strokekit.report.evaluate import SIZE_BINS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run folders, ensemble spec YAMLs, or folders holding them")
    parser.add_argument("--out", help="HTML file (default: <run>/report.html, <spec>.report.html, or "
                                      "report.html for several)")
    parser.add_argument("--data", help="data set the runs trained on (default: the runs' config `data`)")
    parser.add_argument("--worst", type=int, default=8, help="cases in the worst-case gallery (default 8)")
    parser.add_argument("--size-bins", type=float, nargs=2, default=SIZE_BINS, metavar=("SMALL", "LARGE"),
                        help="lesion-size bin edges as a share of the slice (default 0.005 0.02: small < 0.5 %%, "
                             "large >= 2 %%)")
    progress.add_argument(parser)
    args = parser.parse_args(argv)
    if args.worst < 1:
        parser.error("--worst must be >= 1")
    if not 0 < args.size_bins[0] < args.size_bins[1] < 1:
        parser.error("--size-bins needs 0 < SMALL < LARGE < 1")
    return args


@script_main
def main(argv=None) -> int:
    args = parse_args(argv)
    progress.set_enabled(not args.no_progress)
    path = write_report(args.paths, args.out, args.data, args.worst, tuple(args.size_bins))
    print(f"wrote {path}")
    return 0


def entry_point() -> None:
    """`python report.py` and the console command `strokekit-report`."""
    sys.exit(main())
