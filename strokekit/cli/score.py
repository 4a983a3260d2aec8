"""Score or check a TEKNOFEST-2021 stroke submission.

    python score.py --phase 1 --pred submissions/x/asama1.txt --truth ASAMA1_Cevaplar.txt [--probs probs.csv]
    python score.py --phase 2 --pred submissions/x/ --truth data/YARISMA_2/MASK [--se-size 3] [--pixel-rule]
    python score.py --check submissions/x/ [--expected-ids 1 2 3 | --expected-ids ids.txt | --data YARISMA_1]
    python score.py --phase 2 --pred submissions/x/ --truth data/YARISMA_2/MASK --patients data/YARISMA_2/DICOM

Prints a table with 95 % bootstrap intervals, writes scores/<name>.json (--out) and, beside it,
<name>.confusion.png (phase 1) or <name>.worst_cases.png (phase 2), and with --report <name>.report.html
(one static page: report.py's figures for a scored submission). The logic lives in strokekit.evaluation.score,
the figures in strokekit.report.figures.

--check also verifies the submission against the manifest.json infer.py wrote beside it: every file it
lists must be there with the same sha256, and no file may have been added (exit status 1 otherwise).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from strokekit.atomic import write_json
from strokekit.config.settings import in_project
from strokekit.evaluation import score as scoring
from strokekit.data.submission import SubmissionError, mask_files, read_labels
from strokekit.errors import SettingError, script_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--phase", type=int, choices=(1, 2), help="score a phase-1 or phase-2 submission")
    mode.add_argument("--check", metavar="DIR_OR_FILE",
                      help="validate an asama1.txt, a folder of <id>.png masks, or a folder holding either, and "
                           "its files against the manifest.json beside them; exit status 1 when invalid")
    parser.add_argument("--pred", help="phase 1: the asama1.txt; phase 2: the folder of <id>.png masks")
    parser.add_argument("--truth", help="phase 1: the answer key (with or without header); "
                                        "phase 2: the folder of true MASK <id>.png files (every id is scored)")
    parser.add_argument("--probs", help="phase 1: CSV with columns image_id, prob, for ROC AUC")
    parser.add_argument("--se-size", type=int, default=3,
                        help="phase 2: side of the square structuring element for the tolerance band "
                             "(default 3: the organisers' worked 3x3 example; the size they used on 512x512 "
                             "images was not published)")
    parser.add_argument("--pixel-rule", action="store_true",
                        help="phase 2: pure per-pixel rule; default is the region rule the organisers' worked "
                             "examples imply (a region touching no true pixel of its class is all FP)")
    parser.add_argument("--empty-score", type=float, default=1.0,
                        help="phase 2: official score of an image with TP+FP+FN = 0 (default 1.0; "
                             "'nan' leaves it out of the means)")
    parser.add_argument("--n-boot", type=int, default=1000,
                        help="bootstrap resamples of the scored images for the 95 %% intervals (default 1000; 0 = "
                             "none): with ~100-200 test images a figure moves by several points between draws")
    parser.add_argument("--patients", metavar="DICOM_DIR",
                        help="resample whole patients for the intervals (the slices of one patient are not "
                             "independent): their PatientID from the test set's <id>.dcm headers in DICOM_DIR (or "
                             "its DICOM/ folder); an id without a readable header is refused")
    parser.add_argument("--report", action="store_true",
                        help="also write <name>.report.html: one static page with the figures, per-image "
                             "table and worst cases (phase 1 adds ROC / PR curves with --probs)")
    parser.add_argument("--images", help="phase 2: folder of <id>.png CT slices to show in the worst-cases grid")
    parser.add_argument("--worst", type=int, default=8, help="images in the worst-cases grid / report (default 8)")
    parser.add_argument("--out", help="score JSON (default scores/<submission name>.json); PNGs go beside it")
    parser.add_argument("--expected-ids", nargs="+", metavar="ID",
                        help="--check: the ids the submission must hold: integers, or one answer-key / "
                             "asama1.txt file, or one folder of <id>.png|.dcm files")
    parser.add_argument("--data", help="--check: a test folder (e.g. YARISMA_1 with PNG/ or DICOM/) "
                                       "whose image ids the submission must hold")
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"),
                        help="--check: mask size in pixels (default: with --data each mask its own image's size, "
                             "else 512 512)")
    args = parser.parse_args(argv)
    if args.phase and not (args.pred and args.truth):
        parser.error("--phase needs --pred and --truth")
    return args


def expected_ids(args: argparse.Namespace) -> list[int] | None:
    if args.data:
        return scoring.ids_from_folder(args.data)
    if not args.expected_ids:
        return None
    if len(args.expected_ids) == 1 and Path(args.expected_ids[0]).exists():
        source = Path(args.expected_ids[0])
        return scoring.ids_from_folder(source) if source.is_dir() else sorted(read_labels(source))
    tokens = [token.strip() for item in args.expected_ids for token in item.split(",") if token.strip()]
    bad = [token for token in tokens if not (token.isascii() and token.isdigit())]  # not '²', '１２'
    if bad:
        raise SettingError(f"--expected-ids: {bad[:5]} are not image ids (give ids, or a file or folder that exists)")
    return [int(token) for token in tokens]


def patients_of(folder: str, ids: list[int]) -> dict[int, str]:
    """image id -> PatientID from the DICOM headers of `ids` in `folder` (or folder/DICOM)."""
    from strokekit.data.dicom import read_dicom_header
    from strokekit.data.badinput import BadInputError

    root = Path(folder) / "DICOM" if (Path(folder) / "DICOM").is_dir() else Path(folder)
    out, problems = {}, []
    for id_ in ids:
        path = root / f"{id_}.dcm"
        try:
            out[id_] = read_dicom_header(path)["PatientID"] if path.is_file() else ""
        except BadInputError as err:
            problems.append(f"{path}: {err.problem}")
            continue
        if not out[id_]:
            problems.append(f"{path}: {'no such file' if not path.is_file() else 'no PatientID'}")
    if problems:
        raise SettingError(f"--patients: {len(problems)} of {len(ids)} scored images have no patient id, e.g. "
                           + "; ".join(problems[:3]))
    return out


def mask_sizes(args: argparse.Namespace):
    """--size for every mask; else with --data each mask its own test image's size; else 512x512."""
    if args.size:
        return tuple(args.size)
    return scoring.image_sizes_from_folder(args.data) if args.data else (512, 512)


def run_check(args: argparse.Namespace) -> int:
    status = 0
    try:
        for line in scoring.check_submission(args.check, expected_ids(args), mask_sizes(args)):
            print(line)
    except SubmissionError as err:
        print(f"INVALID {err.source}", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        status = 1
    return max(status, check_manifest(args.check))


def check_manifest(target: str) -> int:
    """The submission's files against the manifest.json beside them (1 when they differ)."""
    from strokekit.inference.manifest import verify_folder

    folder = Path(target) if Path(target).is_dir() else Path(target).parent
    manifest, problems = verify_folder(folder)
    if manifest is None:
        print(f"{folder}: no manifest.json beside the submission, file hashes not checked")
        return 0
    if problems:
        print(f"INVALID {folder}: its files do not match manifest.json", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"{folder}: all {len(manifest['files'])} files match manifest.json (written {manifest.get('time')})")
    return 0


def run_score(args: argparse.Namespace) -> int:
    from strokekit.report import figures  # matplotlib and pandas load only when scoring

    out = Path(args.out) if args.out else in_project("scores", f"{scoring.submission_name(args.pred)}.json")
    stem = out.with_suffix("")
    if args.phase == 1:
        patients = patients_of(args.patients, sorted(read_labels(args.truth))) if args.patients else None
        result = scoring.score_phase1(args.pred, args.truth, args.probs, args.n_boot, patients)
        print(scoring.phase1_table(result))
        c = result["confusion"]
        result["confusion_png"] = str(figures.save(figures.confusion(
            [[c["tn"], c["fp"]], [c["fn"], c["tp"]]], ["no stroke", "stroke"], title=f"{out.stem}: phase 1"),
            f"{stem}.confusion.png"))
    else:
        patients = (patients_of(args.patients, sorted(mask_files(args.truth)))
                    if args.patients else None)
        result = scoring.score_phase2(args.pred, args.truth, args.se_size, not args.pixel_rule,
                                      args.empty_score, args.n_boot, patients)
        print(scoring.phase2_table(result))
        from strokekit.report.galleries import worst_cases

        result["worst_cases_png"] = str(figures.save(worst_cases(result, args.worst, args.images),
                                                     f"{stem}.worst_cases.png"))
    if result.get("intervals"):
        print("\n" + scoring.intervals_table(result))
    if args.report:
        from strokekit.report.submission import write_submission_report

        result["report_html"] = str(write_submission_report(result, f"{stem}.report.html", args.images,
                                                            args.probs, args.worst))
    print(f"\nwrote {write_json(out, result)}")
    return 0


@script_main
def main(argv=None) -> int:
    args = parse_args(argv)
    return run_check(args) if args.check else run_score(args)


def entry_point() -> None:
    """`python score.py` and the console command `strokekit-score`."""
    sys.exit(main())
