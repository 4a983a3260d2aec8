"""Write the folds CSV every later stage reads.

    python kfold.py --data data/phantom --folds 5            # -> data/phantom/folds.csv
    python kfold.py --data /data/TEKNOFEST --out folds.csv --seed 7

Folds are stratified by class folder x lesion type (none / ischemic / hemorrhagic / both) and grouped by
patient (DICOM PatientID, else StudyInstanceUID, else SeriesInstanceUID, else the image itself), so slices
of one patient never sit on both sides of a split. The same seed gives the same file.
"""
import argparse
import sys

from strokekit.data.index import DataLayoutError, build_index
from strokekit.folds import FoldsError, make_folds, write_folds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data set root (competition or public-release layout)")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=42, help="shuffle seed (default 42)")
    parser.add_argument("--out", help="output CSV (default <data>/folds.csv)")
    args = parser.parse_args(argv)
    try:
        index, report = build_index(args.data)
        folds = make_folds(index, n_folds=args.folds, seed=args.seed)
    except (DataLayoutError, FoldsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    out = args.out or f"{args.data}/folds.csv"
    write_folds(folds, out)
    table = folds.pivot_table(index="stratum", columns="fold", values="image_id", aggfunc="count", fill_value=0)
    print(table.to_string())
    print(f"{len(folds)} images, {folds.group.nunique()} groups, {args.folds} folds -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
