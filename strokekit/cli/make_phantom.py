"""Write the phantom data set: synthetic head-CT slices in the TEKNOFEST-2021 layout, for the demo and tests.

    python make_phantom.py --out data/phantom                          # 600 training slices, competition layout
    python make_phantom.py --out data/phantom_public --layout public --nfd
    python make_phantom.py --out /tmp/tiny --n 40 --size 128           # small and fast, for trying things out
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from strokekit import progress
from strokekit.errors import script_main
from strokekit.phantom.dataset import ANSWER_KEY, LAYOUTS, TRUTH_CSV, make_phantom


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Besides the images it writes the phase-1 answer key ({ANSWER_KEY}, in the test-1 folder, "
               f"no header, '<id>\\t<0|1>' CRLF lines) and {TRUTH_CSV} at the root: the generator's own "
               "labels, for tests only (the kit never reads it). Same --seed, same bytes.")
    parser.add_argument("--out", required=True, help="output folder (must be empty or an earlier phantom "
                                                     "with --overwrite)")
    parser.add_argument("--n", type=int, default=600, help="training slices (default 600; ~65%% no stroke, "
                                                           "~35%% ischemic or hemorrhagic)")
    parser.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="competition",
                        help="competition: the organisers' TRAINING/INMEYOK..., YARISMA_1, YARISMA_2, with "
                             "training MASKs; public: the public release's İNME VERİSETİ/İnme Yok..., no "
                             "training MASKs (folder names: strokekit.phantom.dataset.LAYOUTS; default competition)")
    parser.add_argument("--n-test1", type=int, default=40, help="phase-1 test slices, mixed (default 40)")
    parser.add_argument("--n-test2", type=int, default=20,
                        help="phase-2 test slices, all with lesions (default 20)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512 like the "
                                                              "real data; 128 for quick tests)")
    parser.add_argument("--nfd", action="store_true", help="write folder names in Unicode NFD, as macOS zips do")
    parser.add_argument("--workers", type=int, default=None, help="processes drawing slices (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier phantom at --out")
    progress.add_argument(parser)
    return parser.parse_args(argv)


@script_main
def main(argv=None) -> int:
    args = parse_args(argv)
    progress.set_enabled(not args.no_progress)
    start = time.perf_counter()
    root = make_phantom(args.out, n=args.n, seed=args.seed, layout=args.layout, n_test1=args.n_test1,
                        n_test2=args.n_test2, size=args.size, nfd=args.nfd, workers=args.workers,
                        overwrite=args.overwrite, progress=True)
    seconds = time.perf_counter() - start
    with open(root / TRUTH_CSV, encoding="utf-8") as f:
        next(f)
        counts = Counter(tuple(line.split(",")[1:3]) for line in f)
    total = sum(counts.values())
    print(f"wrote {total} slices ({args.size}x{args.size}, {args.layout} layout) to {root} in {seconds:.1f} s")
    for (split, cls), count in sorted(counts.items()):
        print(f"  {split:6s} {cls:12s} {count}")
    return 0


def entry_point() -> None:
    """`python make_phantom.py` and the console command `strokekit-make-phantom`."""
    sys.exit(main())
