"""Bridge to nnU-Net v2: export the training set with the kit's folds, or turn nnU-Net predictions into a submission.

    python export_nnunet.py --data data/phantom --folds data/phantom/folds.csv --out nnUNet_raw/Dataset501_Stroke
    python export_nnunet.py --data DATA --folds folds.csv --out nnUNet_raw/Dataset501_Stroke --test test2 \
        --preprocessed nnUNet_preprocessed          # also imagesTs, and splits_final.json copied where nnU-Net reads it
    python export_nnunet.py --predictions nnunet_pred/ --out submissions/nnunet --test-data data/YARISMA_2

Export writes imagesTr/<case>_0000.png (8-bit grey slice), labelsTr/<case>.png (0 background, 1 ischemic,
2 hemorrhagic), dataset.json, cases.csv (case, image_id, fold, ...) and splits_final.json (one
{"train", "val"} per kit fold: nnU-Net reads it from nnUNet_preprocessed/<DatasetXXX_Name>/, so copy it there
after nnUNetv2_plan_and_preprocess, or pass --preprocessed). Cases are named <prefix>_<image id>.
--predictions reads nnU-Net's label PNGs (<case>.png) and writes the official colour masks <id>.png plus a
manifest.json, which score.py scores like any submission.
"""
from __future__ import annotations

import argparse
import sys

from strokekit.errors import script_main
from strokekit.inference.nnunet import (DEFAULT_CHANNEL_NAME, DEFAULT_PREFIX, copy_splits, export_dataset,
                                        predictions_to_submission)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--data", help="export: the data set root (any layout the kit reads)")
    mode.add_argument("--predictions", help="convert: a folder of nnU-Net label PNGs <case>.png")
    parser.add_argument("--out", required=True, help="export: nnUNet_raw/Dataset<3 digits>_<name>; "
                                                     "convert: the submission folder to write")
    parser.add_argument("--folds", help="export: folds CSV from kfold.py (default <data>/folds.csv)")
    parser.add_argument("--negatives", type=float, default=1.0,
                        help="export: share of no-stroke slices included, labelled all background (default 1 = all)")
    parser.add_argument("--seed", type=int, default=0, help="export: seed drawing the --negatives share (default 0)")
    parser.add_argument("--test", choices=("test1", "test2"), help="export: also write this test split as imagesTs")
    parser.add_argument("--source", default="png", choices=("png", "dicom"),
                        help="export: slice from the PNG (default) or from the DICOM through --window")
    parser.add_argument("--window", type=float, nargs=2, default=(40.0, 80.0), metavar=("CENTER", "WIDTH"),
                        help="export, --source dicom: HU window to 8 bits (default 40 80, brain)")
    parser.add_argument("--channel-name", default=DEFAULT_CHANNEL_NAME,
                        help=f"export: dataset.json channel name (default {DEFAULT_CHANNEL_NAME}: nnU-Net z-scores it; "
                             "'CT' would apply its CT normalisation, meant for HU)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"export: case name prefix (default {DEFAULT_PREFIX})")
    parser.add_argument("--preprocessed", help="export: also copy splits_final.json to <this>/<dataset name>/")
    parser.add_argument("--test-data", help="convert: test folder (e.g. YARISMA_2) whose ids must all be predicted")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export / submission")
    args = parser.parse_args(argv)
    if args.data and not 0.0 <= args.negatives <= 1.0:
        parser.error("--negatives must lie in [0, 1]")
    return args


def run_export(args) -> None:
    folds = args.folds or f"{args.data}/folds.csv"
    summary = export_dataset(args.data, folds, args.out, negatives=args.negatives, seed=args.seed,
                             test_split=args.test, source=args.source, hu_window=tuple(args.window),
                             channel_name=args.channel_name, prefix=args.prefix, overwrite=args.overwrite)
    print(f"wrote {summary['n_training']} training cases ({summary['n_negatives']} no-stroke) in "
          f"{summary['n_folds']} folds, {summary['n_test']} test images -> {summary['out']}")
    print(summary["cases"].pivot_table(index="class_name", columns="fold", values="case", aggfunc="count",
                                       fill_value=0).to_string())
    if args.preprocessed:
        print(f"splits_final.json -> {copy_splits(args.out, args.preprocessed)}")
    else:
        print(f"copy {summary['out']}/splits_final.json to nnUNet_preprocessed/{summary['out'].name}/ "
              "so nnU-Net trains on the kit's folds")


def run_convert(args) -> None:
    expected = None
    if args.test_data:
        from strokekit.evaluation.score import ids_from_folder
        expected = ids_from_folder(args.test_data)
    summary = predictions_to_submission(args.predictions, args.out, expected, args.overwrite)
    print(f"wrote {summary['n_images']} masks -> {summary['out']}")
    if summary["empty"]:
        print(f"note: {len(summary['empty'])} masks are empty (every phase-2 image holds a lesion): "
              f"{summary['empty'][:10]}")


@script_main
def main(argv=None) -> int:
    args = parse_args(argv)
    run_export(args) if args.data else run_convert(args)
    return 0


def entry_point() -> None:
    """`python export_nnunet.py` and the console command `strokekit-export-nnunet`."""
    sys.exit(main())
