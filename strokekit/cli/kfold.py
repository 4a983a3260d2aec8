"""Write the folds CSV every later stage reads.

    python kfold.py --data data/phantom --folds 5            # -> data/phantom/folds.csv
    python kfold.py --data /data/TEKNOFEST --out folds.csv --seed 7
    python kfold.py --data /data/TEKNOFEST --group-by similarity   # + folds.groups.csv, the groups found

Folds are stratified by class folder x lesion type (none / ischemic / hemorrhagic / both) and grouped, so
slices of one patient never sit on both sides of a split. --group-by chooses the groups:
  auto        (default) DICOM PatientID, else StudyInstanceUID, else SeriesInstanceUID, when every training
              image has one and they group; otherwise image similarity, joined with any header ids there are
  dicom       the header ids only (an image without any is its own group)
  similarity  from the images only: slices link when the head's pose in the image (centre, tilt, width /
              length) agrees within the tolerances, or when their 256-bit dHashes nearly agree; linked
              slices form one group, closest links first, up to --max-group slices (see strokekit/data/grouping.py)
  none        every image alone: the random (stratified) split published results used; for comparison
With similarity groups, the groups found go to <out>.groups.csv (image_id, group, group_size, links, the
pose signature, the dHash) and a summary is printed. The same seed gives the same file.
"""
import argparse
import sys
from pathlib import Path

from strokekit.data.index import build_index
from strokekit.data.folds import GROUP_BY, fold_groups, make_folds, write_folds
from strokekit.data.grouping import SimilarityParams, default_workers, group_summary
from strokekit import progress
from strokekit.errors import SettingError, script_main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data set root (competition or public-release layout)")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=42, help="shuffle seed (default 42)")
    parser.add_argument("--out", help="output CSV (default <data>/folds.csv)")
    parser.add_argument("--group-by", choices=GROUP_BY, default="auto", help="where the groups come from "
                        "(default auto; see above)")
    defaults = SimilarityParams()
    sim = parser.add_argument_group("similarity grouping (auto without usable headers, or --group-by similarity)")
    sim.add_argument("--centre-tol", type=float, default=defaults.centre_tol, help="head centre tolerance, "
                     f"fraction of the image half-width (default {defaults.centre_tol})")
    sim.add_argument("--tilt-tol", type=float, default=defaults.tilt_tol,
                     help=f"head tilt tolerance in radians (default {defaults.tilt_tol})")
    sim.add_argument("--aspect-tol", type=float, default=defaults.aspect_tol,
                     help=f"head width / length tolerance (default {defaults.aspect_tol})")
    sim.add_argument("--nearest", type=float, default=defaults.nearest, help="each slice also joins its nearest "
                     f"neighbour within this many tolerances (default {defaults.nearest}; <= 1: off)")
    sim.add_argument("--dup-bits", type=int, default=defaults.dup_bits, help="near-duplicates: at most this "
                     f"many of 256 dHash bits differ (default {defaults.dup_bits}; -1 = off)")
    sim.add_argument("--max-group", type=int, help="largest group allowed: a link that would make a group larger "
                     "is refused, closest links first (default half a fold; 0 = no cap)")
    sim.add_argument("--work-size", type=int, default=defaults.work_size,
                     help=f"images are reduced to this longest side first (default {defaults.work_size})")
    sim.add_argument("--workers", type=int, default=default_workers(),
                     help="processes reading images (default %(default)s)")
    sim.add_argument("--groups-out", help="groups CSV (default <out>.groups.csv, e.g. folds.groups.csv)")
    progress.add_argument(parser)
    return parser.parse_args(argv)


@script_main
def main(argv=None) -> int:
    args = parse_args(argv)
    progress.set_enabled(not args.no_progress)
    params = SimilarityParams(centre_tol=args.centre_tol, tilt_tol=args.tilt_tol, aspect_tol=args.aspect_tol,
                              nearest=args.nearest, dup_bits=args.dup_bits, work_size=args.work_size)
    if args.folds < 2:
        raise SettingError(f"--folds must be at least 2 (got {args.folds})")
    index, report = build_index(args.data)
    print(report.summary())
    grouping = fold_groups(index, args.group_by, args.folds, params, max(1, args.workers), args.max_group)
    folds = make_folds(index, n_folds=args.folds, seed=args.seed, groups=grouping.groups)
    out = Path(args.out or f"{args.data}/folds.csv")
    write_folds(folds, out)
    print(f"groups: {grouping.source} ({grouping.reason})")
    print(group_summary(folds["group"], args.folds))
    if grouping.table is not None:
        refused = grouping.table.attrs.get("refused_links", 0)
        if refused:
            print(f"  {refused} links refused by the group-size cap (--max-group): a patient may be split there; "
                  "check the largest groups in the groups CSV")
        groups_out = Path(args.groups_out or out.with_suffix(".groups.csv"))
        write_folds(grouping.table, groups_out)
        print(f"groups found -> {groups_out}")
    table = folds.pivot_table(index="stratum", columns="fold", values="image_id", aggfunc="count", fill_value=0)
    print(table.to_string())
    print(f"{len(folds)} images, {folds.group.nunique()} groups, {args.folds} folds -> {out}")
    return 0


def entry_point() -> None:
    """`python kfold.py` and the console command `strokekit-kfold`."""
    sys.exit(main())
