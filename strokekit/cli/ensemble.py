"""Choose an ensemble on out-of-fold predictions and write the spec infer.py runs.

    python ensemble.py --task stroke runs/cfgA runs/cfgB --top-k 3 --greedy --objective recall --target-recall 0.97
    python ensemble.py --task type runs/typeA --objective f1 --out ensembles/type.yaml
    python ensemble.py --task seg runs/unetA runs/unetB --greedy --seg-classifier type --out ensembles/seg.yaml
    python ensemble.py --task seg runs/unetA --metric official_iou --robust p10 --test-size 97
    python ensemble.py --task stroke runs/cfgA --objective f1 --test-prior 0.5 --test-size 192

Reads every fold's OOF (runs/<config>/fold<k>/oof.csv | oof.npz), scores each (fold, config), keeps the
--top-k folds of each config for inference, picks configs and blend weights (--greedy: forward selection
on OOF), and tunes on OOF only: the decision threshold (stroke / type) or the post-processing grid (seg;
the table is saved as <out>.postprocess.csv). Writes the spec YAML (members, checkpoints relative to the
spec, weights, TTA, thresholds / post-processing, the OOF figures that chose them) and prints the tables.
The ensemble's OOF score is never below its best member's (unless --keep-blend): a blend that scores lower is replaced by that
member alone. A member's OOF joins all its folds; at test time it averages its kept folds' checkpoints.
Seg post-processing is searched jointly on --metric (strict dice / iou, or the organisers' tolerant
official_iou / official_dice), for phase 2 by default (never-empty masks, lesion-bearing OOF slices only),
and picked by a bootstrap statistic at the test set's size. Headline figures carry 95 % intervals from
resamples of --test-size images, or with --test-patients N of N whole patients (the slices of one patient
are not independent: a test set of 97 slices from 21 patients varies as 21 patients do).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from strokekit.ensembling.classifiers import build_classifier_spec, format_report, read_runs
from strokekit.ensembling.spec import CLASSIFIER_BLENDS, write_spec
from strokekit.ensembling.stacking import STACK
from strokekit.ensembling.seg_objectives import OBJECTIVES
from strokekit.ensembling.selection import CLASSIFIER_METRICS
from strokekit import progress
from strokekit.errors import SettingError, missing_file, script_main
from strokekit.vocabulary import resolve_flips, resolve_scales


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders runs/<config> (each with fold<k>/ inside)")
    parser.add_argument("--task", required=True, choices=("stroke", "type", "seg"))
    parser.add_argument("--out", help="spec YAML to write (default ensembles/<task>.yaml)")
    parser.add_argument("--top-k", type=int, help="folds kept per config for inference (default: all)")
    parser.add_argument("--top-runs", type=int, help="runs kept before blending: the K best of the given runs by "
                                                       "OOF --metric (top-k of N, e.g. one config trained with "
                                                       "train.py --seeds; default: all)")
    parser.add_argument("--blend", default="mean", choices=(*CLASSIFIER_BLENDS, STACK, "auto"),
                        help="mean | weighted | vote | rank | stack (classifiers), mean | weighted (seg); auto "
                             "tries mean, weighted, vote and rank and keeps the best on OOF (default mean); stack: "
                             "a level-2 logistic regression or gradient boosting on the members' OOF "
                             "probabilities, chosen and scored by nested CV over the folds")
    parser.add_argument("--stack-seg-runs", nargs="+", metavar="RUN",
                        help="with --blend stack: seg run folders whose OOF lesion area and peak probability per "
                             "class join the level-2 features (a stroke stack needs their OOF of no-stroke slices: "
                             "seg_val_negatives: true); infer.py then runs them too")
    parser.add_argument("--stack-models", default="logistic,gbm",
                        help="with --blend stack: the level-2 model kinds the inner CV chooses among, "
                             "comma-separated: logistic (C in 0.01-10), gbm (depth 2-3, 50 trees); default both")
    parser.add_argument("--keep-blend", action="store_true",
                        help="keep the asked --blend (a published majority vote; the DPN-U-Net's average of its "
                             "best runs) even when the best member alone scores higher on OOF (default: keep that "
                             "member)")
    parser.add_argument("--vote-threshold", type=float, metavar="P",
                        help="classifiers, --blend vote: every member votes at probability P (0.5: each model's "
                             "argmax, as fastai's models vote) instead of at its own tuned OOF threshold")
    parser.add_argument("--greedy", action="store_true",
                        help="greedy forward selection of configs (with replacement: weights) on OOF")
    parser.add_argument("--metric", help="what ranks folds and members: classifiers "
                        f"{'/'.join(CLASSIFIER_METRICS)} (default auc); seg: the post-processing objective "
                        f"{'/'.join(OBJECTIVES)} (default dice; official_* = score.py's tolerant counting; "
                        "folds and members are ranked by its strict kind)")
    parser.add_argument("--min-precision", type=float, default=0.9,
                        help="precision floor of --metric recall_at_precision (default 0.9)")
    parser.add_argument("--objective", default="f1", choices=("f1", "recall", "youden"),
                        help="threshold tuning: best F1, best precision at --target-recall, or Youden's J")
    parser.add_argument("--target-recall", type=float, default=0.97, help="for --objective recall (default 0.97)")
    parser.add_argument("--threshold-range", type=float, nargs=2, metavar=("LO", "HI"),
                        help="classifiers: search every decision threshold in [LO, HI] only (the multi-task paper's "
                             "recall-tuned threshold fell in 0.45-0.6); with --objective recall, where none in the "
                             "range reaches the target, the range's lowest is taken and the spec says so. LO = HI "
                             "pins the threshold (0.5 0.5: a softmax's argmax; with --blend vote, a majority)")
    parser.add_argument("--tolerance", type=float, default=0.005,
                        help="near-best band (relative) whose middle gives thresholds / post-processing")
    parser.add_argument("--tta", help="flips infer.py applies, comma-separated: none,hflip,vflip,hvflip (default: "
                                       "the flips the runs' OOF was made with, config oof_tta, so what is tuned on OOF "
                                       "is applied the same way; none,hflip for runs without it)")
    parser.add_argument("--tta-scales", help="TTA scales infer.py applies, factors of img_size, comma-separated, "
                                              "e.g. 0.75,1,1.25 (default: those the runs' OOF was made with, "
                                              "config oof_tta_scales)")
    parser.add_argument("--data", help="data set the runs were trained on: seg's true masks, --test-patients' "
                                       "folds.csv (default: the runs' config `data`)")
    parser.add_argument("--grid", help="seg: YAML file with the post-processing grid (keys threshold, closing, "
                                       "min_area, keep_largest, overlap, gate, triplet)")
    parser.add_argument("--seg-classifier", choices=("stroke", "type"),
                        help="seg: also tune a segmentation-based classifier (stroke needs OOF negatives: "
                             "seg_val_negatives: true)")
    parser.add_argument("--seg-feature", default="area", choices=("area", "max", "mean"),
                        help="seg classifier feature: lesion area, max or mean lesion probability")
    parser.add_argument("--no-phase2-prior", dest="phase2", action="store_false",
                        help="seg: do not assume every test image holds a lesion (no never-empty rule in the "
                             "search, all OOF slices searched)")
    parser.add_argument("--all-slices", action="store_true",
                        help="seg: search on every OOF slice, not only the lesion-bearing ones (the "
                             "never-empty rule stays)")
    parser.add_argument("--gate-runs", nargs="+", metavar="RUN",
                        help="seg: classifier run folders whose mean OOF probability gates the lesion classes: "
                             "stroke runs gate both on P(stroke); type runs gate each class on its own type "
                             "probability (type-conditioned segmentation). Gate candidates join the grid unless "
                             "--grid names them; infer.py then needs --gate-ensemble (a spec of that task); a "
                             "segmentation-based gate is the grid's `triplet` rule")
    parser.add_argument("--robust", default="p10", choices=("p10", "p25", "median", "mean", "off"),
                        help="bootstrap statistic whose plateau picks the seg post-processing setting or the "
                             "classifier threshold (default p10: the 10th percentile at --test-size); off = the "
                             "OOF figure itself")
    parser.add_argument("--test-size", type=int,
                        help="images per bootstrap resample (default: the test set's size, 192 for stroke, 97 "
                             "for type and seg)")
    parser.add_argument("--test-patients", type=int, metavar="N",
                        help="resample N whole patients (the test set's patient count) instead of --test-size "
                             "images, for the intervals and the robust statistic; patients are folds.csv's groups "
                             "(DICOM patient ids), refused where it has none")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--test-prior", type=float,
                        help="stroke (or --seg-classifier stroke): positive share expected in the test set; the "
                             "threshold is tuned for it (OOF reweighted), besides --objective / --target-recall")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint per fold")
    parser.add_argument("--absolute-paths", action="store_true", help="store absolute checkpoint paths")
    parser.add_argument("--soup", metavar="RUN_DIR",
                        help="model soup: average the given runs' weights fold by fold into the run folder RUN_DIR "
                             "(runs of one config fine-tuned from the same `weights:` under several seeds; other "
                             "architectures, inputs, folds or initialisations are refused), predict its OOF, and "
                             "ensemble that one run")
    progress.add_argument(parser)
    args = parser.parse_args(argv)
    if args.task == "seg" and args.blend in ("vote", "rank", STACK):
        parser.error("--blend vote/rank/stack are for classifiers; seg blends probabilities (mean | weighted | auto)")
    if args.stack_seg_runs and args.blend != STACK:
        parser.error("--stack-seg-runs goes with --blend stack")
    if args.top_k is not None and args.top_k < 1:
        parser.error("--top-k must be >= 1")
    if args.top_runs is not None and args.top_runs < 1:
        parser.error("--top-runs must be >= 1")
    if args.task == "seg" and args.metric and args.metric not in OBJECTIVES:
        parser.error(f"--metric for seg: one of {', '.join(OBJECTIVES)}")
    if args.test_prior is not None and not 0 < args.test_prior < 1:
        parser.error("--test-prior must be a share between 0 and 1 (exclusive)")
    if (args.test_size is not None and args.test_size < 1) or args.n_boot < 1:
        parser.error("--test-size and --n-boot must be >= 1")
    if args.vote_threshold is not None and not (0 < args.vote_threshold < 1 and args.blend in ("vote", "auto")):
        parser.error("--vote-threshold goes with --blend vote (or auto) and is a probability between 0 and 1")
    if args.threshold_range is not None and (args.task == "seg" or not 0 <= args.threshold_range[0]
                                             <= args.threshold_range[1] <= 1):
        parser.error("--threshold-range LO HI: classifiers only (stroke / type), 0 <= LO <= HI <= 1")
    if args.test_patients is not None and args.test_patients < 1:
        parser.error("--test-patients must be >= 1")
    return args


def build(args) -> tuple[dict, dict, Path]:
    out = Path(args.out or f"ensembles/{args.task}.yaml")
    wanted = resolve_flips(args.tta.split(",")) if args.tta else None
    wanted_scales = resolve_scales(args.tta_scales) if args.tta_scales else None
    grid = read_grid(args.grid) if args.grid else None  # the flags before the runs
    if args.soup:  # torch loads only here: ensemble.py stays light otherwise
        from strokekit.training.soup import soup_runs

        args.runs, args.checkpoint = [str(soup_runs(args.runs, args.soup, args.checkpoint))], "best"  # its best.pt
    runs = read_runs(args.runs, args.task, args.checkpoint)
    tta = submission_flips(runs, wanted)
    common = dict(top_k=args.top_k, top_runs=args.top_runs, greedy=args.greedy, tolerance=args.tolerance, tta=tta,
                  tta_scales=submission_scales(runs, wanted_scales),
                  absolute=args.absolute_paths, test_size=args.test_size, n_boot=args.n_boot,
                  test_prior=args.test_prior, test_patients=args.test_patients,
                  group_of=patient_groups(runs, args.data) if args.test_patients else None)
    if args.task != "seg":
        options = {"min_precision": args.min_precision} if args.metric == "recall_at_precision" else {}
        seg_runs = read_runs(args.stack_seg_runs, "seg", args.checkpoint) if args.stack_seg_runs else None
        spec, report = build_classifier_spec(runs, args.task, out, metric=args.metric or "auc", blend=args.blend,
                                             objective=args.objective, target_recall=args.target_recall,
                                             metric_options=options, keep_blend=args.keep_blend,
                                             robust=None if args.robust == "off" else args.robust,
                                             stack_seg_runs=seg_runs, stack_models=args.stack_models.split(","),
                                             vote_threshold=args.vote_threshold,
                                             threshold_range=args.threshold_range, **common)
        return spec, report, out
    from strokekit.ensembling.segmenters import build_seg_spec

    spec, report = build_seg_spec(runs, out, args.data or runs[0].cfg["data"], metric=args.metric or "dice",
                                  blend=args.blend, grid=grid, seg_classifier=args.seg_classifier,
                                  seg_feature=args.seg_feature, objective=args.objective,
                                  target_recall=args.target_recall, phase2=args.phase2,
                                  lesion_only=args.phase2 and not args.all_slices,
                                  robust=None if args.robust == "off" else args.robust,
                                  gate_runs=args.gate_runs, keep_blend=args.keep_blend, **common)
    return spec, report, out


def patient_groups(runs, data: str | None) -> dict:
    """image_id -> patient from the runs' folds.csv (its `group` column), for --test-patients."""
    from strokekit.config import folds_path
    from strokekit.data.folds import read_folds
    from strokekit.errors import SettingError

    path = folds_path({**runs[0].cfg, **({"data": data} if data else {})})
    folds = read_folds(path)
    if folds["group"].astype(str).str.startswith("image-").all():
        raise SettingError(f"--test-patients: {path} groups images one by one (no DICOM patient ids), so there "
                           "are no patients to resample; leave --test-patients out")
    return dict(zip(folds["image_id"].astype(int), folds["group"].astype(str)))


def submission_flips(runs, wanted: list[str] | None) -> list[str]:
    """The flips infer.py will apply: --tta, else those the runs' OOF was made with; a mismatch is said, since
    thresholds and post-processing tuned on one flip set sit on another probability scale than the other's."""
    return submitted_tta(runs, wanted, "oof_tta", "flips", "--tta", lambda v: list(v or ["none"]),
                         ["none", "hflip"], ",".join)


def submission_scales(runs, wanted: list[float] | None) -> list[float]:
    """The TTA scales infer.py will apply: --tta-scales, else those the runs' OOF was made with (config
    oof_tta_scales; [1.0] for runs from before it); a mismatch is said, as for the flips."""
    return submitted_tta(runs, wanted, "oof_tta_scales", "TTA scales", "--tta-scales", resolve_scales, [1.0],
                         lambda scales: ",".join(f"{s:g}" for s in scales))


def submitted_tta(runs, wanted, key: str, what: str, flag: str, read, default: list, show) -> list:
    """wanted, else the one setting of config `key` the runs' OOF was made with (else `default`); each run
    whose OOF was made otherwise is warned about."""
    made = {tuple(read(run.cfg.get(key))) for run in runs}
    if wanted is None:
        wanted = list(next(iter(made))) if len(made) == 1 else default
    for got in sorted(made):
        if list(got) != wanted:
            print(f"warning: OOF made with {what} {show(got)} (config {key}), submissions will use {show(wanted)}: "
                  f"what is tuned on OOF may not transfer; retrain with --set {key}={show(wanted)} or pass "
                  f"{flag} {show(got)}")
    return wanted


def read_grid(path: str) -> dict:
    """The --grid YAML: a mapping of post-processing keys to candidate lists (checked by the search)."""
    if not Path(path).is_file():
        raise missing_file(path, "--grid file")
    try:
        grid = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise SettingError(f"--grid {path}: not readable YAML ({err})") from None
    if not isinstance(grid, dict):
        raise SettingError(f"--grid {path}: not a mapping of post-processing keys to candidate lists")
    return grid


def save_tables(spec: dict, report: dict, out: Path) -> None:
    """Per-fold scores (and the seg post-processing grid) as CSV beside the spec, named in it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    report["folds"].to_csv(out.with_suffix(".folds.csv"), index=False)
    spec["oof"]["folds_table"] = out.with_suffix(".folds.csv").name
    if "grid" in report:
        report["grid"].to_csv(out.with_suffix(".postprocess.csv"), index=False)
        spec["postprocess_search"]["table"] = out.with_suffix(".postprocess.csv").name


@script_main
def main(argv=None) -> int:
    args = parse_args(argv)
    progress.set_enabled(not args.no_progress)
    spec, report, out = build(args)
    if args.task == "seg":
        from strokekit.ensembling.segmenters import format_seg_report
        print(format_seg_report(report))
    else:
        print(format_report(report))
    save_tables(spec, report, out)
    write_spec(spec, out)
    print(f"\nwrote {out}")
    return 0


def entry_point() -> None:
    """`python ensemble.py` and the console command `strokekit-ensemble`."""
    sys.exit(main())
