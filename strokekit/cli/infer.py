"""Run an ensemble spec on the released test images and write a validated TEKNOFEST submission.

    python infer.py --phase 1 --ensemble ensembles/stroke.yaml --data data/YARISMA_1
    python infer.py --phase 1 --ensemble ensembles/stroke.yaml --data data --split test1 --out submissions/s1
    python infer.py --phase 2 --ensemble ensembles/seg.yaml --type-ensemble ensembles/type.yaml --data data/YARISMA_2
    python infer.py --phase 2 --model models/full --data data/YARISMA_2       # a model folder from export.py
    python infer.py --phase 2          # the specs and data root strokekit.yaml names -> submissions/phase2

--data is one test folder (with PNG/ and/or DICOM/; each member reads what its config needs) or a data root
with --split (default test1 for phase 1, test2 for phase 2). Writes submissions/<name>/:
  phase 1: asama1.txt (official format) + probs.csv (image_id, prob, label, one column per member)
  phase 2: <id>.png masks at each image's size + types.csv (per-image stroke type and its source)
           + probs.npz with --save-probs (side files are not <id>.png, so the validator ignores them)
  both:    manifest.json (spec or model folder, members with checkpoint hashes and configs as resolved,
           seeds, data index / folds / test-input hashes, TTA, decisions, kit version, git commit, package
           versions, command, time, and the sha256 of every file: `score.py --check` verifies them)
--ensemble (alias --model) is an ensemble spec YAML or a model folder from export.py: phase 1 runs its
stroke ensemble, phase 2 its seg ensemble and, unless --type-ensemble is given, its type ensemble. A
model folder whose files do not match their recorded sha256, or without its manifest.json, is refused (exit
2; the check export.py --verify makes); --expect-sha256 pins its manifest.json. These hashes are integrity
checks (a damaged, edited or partly copied folder), not signatures: whoever can write the folder can rewrite
them, so take the pinned hash from somewhere else than the folder.
A seg spec whose post-processing gates the lesion classes (ensemble.py --gate-runs) needs that classifier at
inference: --gate-ensemble (a stroke spec; or a type spec for type-conditioned masks, where --type-ensemble
also serves), or the model folder's ensemble of that task.
Every phase-2 image holds a lesion, so when post-processing leaves a mask empty the most probable lesion
region is drawn instead (--no-fallback turns this off). The submission is validated before it is
reported. An existing folder is only replaced when its manifest.json says infer.py wrote it, with
--overwrite (only the files that manifest lists are removed); --out is never inside, equal to or holding the
--data folder or the images' folders (paths resolved, symlinks too). Nothing is written before the specs,
their roles and the test folder are checked. Every test image is checked from its header
first: --on-bad-input fail (default) stops at a bad file; skip leaves it out of the submission and lists it in
skipped.csv (the organisers score a missing phase-1 id as wrong, a missing phase-2 mask as empty).
Checkpoint paths in a spec must stay inside the spec's folder, the folder above it or the current directory
(--allow-outside lifts this for a spec you trust). The decisions are strokekit.inference.pipeline's (the
ones strokekit.Predictor returns); strokekit.inference.submit finds the inputs and writes the files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from strokekit.data.submission import SubmissionError
from strokekit.config.settings import in_project
from strokekit import progress
from strokekit.errors import script_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=int, required=True, choices=(1, 2))
    parser.add_argument("--ensemble", "--model", dest="ensemble",
                        help="spec YAML from ensemble.py (stroke for phase 1, seg for phase 2; a seg spec with a "
                             "stroke seg_classifier also serves phase 1) or a model folder from export.py "
                             "(default: strokekit.yaml's, else the newest spec of that task in ensembles/)")
    parser.add_argument("--type-ensemble", help="phase 2: type spec (or model folder) deciding each image's "
                                                "stroke type")
    parser.add_argument("--gate-ensemble", help="phase 2: the classifier spec (or model folder) a gated seg spec "
                                                "compares with its gate (ensemble.py --gate-runs): a stroke spec, "
                                                "or a type spec for type-conditioned masks (default: the "
                                                "--type-ensemble / model folder's ensemble of that task)")
    parser.add_argument("--data", help="test folder (YARISMA_1 ...) or data root with --split (default: "
                                       "strokekit.yaml's data root)")
    parser.add_argument("--split", choices=("test1", "test2"), help="with a data root: which test set")
    parser.add_argument("--out", help="submission folder (default submissions/<spec name>_<split>; "
                                      "submissions/phase<N> when the spec comes from strokekit.yaml)")
    parser.add_argument("--tta", help="override the spec's flips, comma-separated: none,hflip,vflip,hvflip")
    parser.add_argument("--tta-scales", help="override the spec's TTA scales (factors of img_size, 0.5-2), "
                                              "comma-separated, e.g. 0.75,1,1.25: one forward pass per scale")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (x flips); default 16 on CUDA, "
                                                       "8 // flips on CPU (where ~8-image passes run fastest)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: CUDA when available)")
    parser.add_argument("--amp", choices=("bf16", "fp16", "none"), help="CUDA autocast (default: each "
                                                                        "member's config)")
    parser.add_argument("--no-fallback", dest="fallback", action="store_false",
                        help="phase 2: leave a mask empty when post-processing removes everything")
    parser.add_argument("--fallback-fraction", type=float, default=0.5,
                        help="phase 2 fallback: region = pixels >= this fraction of the peak lesion probability")
    parser.add_argument("--fallback-max-area", type=float, default=0.02,
                        help="phase 2 fallback: at most this share of the image's pixels (default 0.02)")
    parser.add_argument("--save-probs", action="store_true", help="phase 2: also write probs.npz (float16)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a submission folder infer.py wrote earlier (its manifest.json says so)")
    progress.add_argument(parser)
    parser.add_argument("--on-bad-input", choices=("fail", "skip"), default="fail",
                        help="a bad test image stops the run (fail, default) or is left out (skip)")
    parser.add_argument("--allow-outside", action="store_true",
                        help="let a spec name checkpoints outside its folder, the folder above and the cwd")
    parser.add_argument("--expect-sha256", metavar="HEX", type=sha256_hex,
                        help="refuse the --model folder unless its manifest.json has this sha256 (e.g. the one "
                             "export.py printed). An integrity check against a hash you keep elsewhere, not "
                             "a signature")
    return parser.parse_args(argv)


ROLE = {1: "stroke", 2: "seg"}


def apply_settings(args) -> None:
    """Fill what was not typed from strokekit.yaml (strokekit/config/settings.py), else from ensembles/, and
    print what was picked and from where; a missing spec is named with the command that makes it."""
    from strokekit.config.settings import read_settings
    from strokekit.ensembling.spec import SpecError

    settings = read_settings()
    source = settings["path"] if settings else "ensembles/"
    role = ROLE[args.phase]
    if args.ensemble is None:
        args.ensemble = (settings or {}).get("ensembles", {}).get(role) or newest_spec(role)
        if args.ensemble is None:
            raise SpecError(f"no --ensemble, no {role} spec in strokekit.yaml and none in ensembles/: make one "
                            f"with `python ensemble.py --task {role} runs/<config> --out ensembles/{role}.yaml` "
                            "(demo.py makes one and writes strokekit.yaml)")
        if not Path(args.ensemble).exists():
            raise SpecError(f"{args.ensemble} (the {role} spec {source} names) does not exist yet: make it with "
                            f"`python ensemble.py --task {role} runs/<config> --out {args.ensemble}`")
        print(f"--ensemble {args.ensemble} (from {source})")
        if args.out is None and settings:
            args.out = str(Path(settings["submissions"]) / f"phase{args.phase}")
        type_spec = (settings or {}).get("ensembles", {}).get("type")
        if args.phase == 2 and args.type_ensemble is None and type_spec and Path(type_spec).exists():
            args.type_ensemble = type_spec
            print(f"--type-ensemble {type_spec} (from {source})")
    if args.data is None:
        if not (settings and settings["data"]):
            raise SpecError("no --data and no data root in strokekit.yaml: pass --data <test folder or data root>")
        args.data = settings["data"]
        print(f"--data {args.data} (from {settings['path']}), split {args.split or ('test1', 'test2')[args.phase - 1]}")


def newest_spec(task: str) -> str | None:
    """The most recently written ensembles/*.yaml (in the project folder) whose task is `task` (not the search
    tables beside them)."""
    import yaml

    found = []
    for path in in_project("ensembles").glob("*.yaml"):
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(spec, dict) and spec.get("task") == task:
            found.append((path.stat().st_mtime, str(path)))
    return max(found)[1] if found else None


def sha256_hex(text: str) -> str:
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a sha256 (64 hex digits)")
    return value


def model_folder(source: str, args) -> dict | None:
    """A model folder's {role: spec}, read and verified once per run (--expect-sha256 pins --model's);
    None for a spec YAML."""
    from strokekit.inference.modelfolder import is_model_folder, read_model_folder

    folders = vars(args).setdefault("_model_folders", {})
    if source not in folders:
        pin = args.expect_sha256 if source == args.ensemble else None
        folders[source] = read_model_folder(source, expect_sha256=pin) if is_model_folder(source) else None
    return folders[source]


def load(source: str, args, role: str):
    """An EnsemblePredictor of a spec YAML, or of a model folder's `role` ensemble."""
    from strokekit.ensembling.spec import SpecError
    from strokekit.inference.predict import EnsemblePredictor

    spec, roles = source, model_folder(source, args)
    if roles is not None:
        if role not in roles:
            raise SpecError(f"model folder {source} holds the ensembles {sorted(roles)}, not {role!r}")
        spec = roles[role]
    flips = args.tta.split(",") if args.tta else None
    return EnsemblePredictor(spec, device=args.device, flips=flips, batch_size=args.batch_size, amp=args.amp,
                             allow_outside=args.allow_outside, role=role, scales=args.tta_scales or None)


def load_type(args):
    """Phase 2's type ensemble: --type-ensemble, else the model folder's own type ensemble, else none."""
    if args.type_ensemble:
        return load(args.type_ensemble, args, "type")
    if args.phase == 2 and "type" in (model_folder(args.ensemble, args) or {}):
        return load(args.ensemble, args, "type")
    return None


def load_gate(args, predictor, type_predictor):
    """Phase 2's gate ensemble for a gated seg spec: --gate-ensemble, else the model folder's ensemble of the
    gate's task (stroke or type); a type gate reuses the type ensemble when one is loaded."""
    from strokekit.inference.pipeline import gate_kind, needs_gate

    if args.phase != 2 or predictor.task != "seg" or not needs_gate(predictor.spec):
        return None
    role = gate_kind(predictor.spec)
    if args.gate_ensemble:
        return load(args.gate_ensemble, args, role)
    if role == "type" and type_predictor is not None:
        return type_predictor
    if role in (model_folder(args.ensemble, args) or {}):
        return load(args.ensemble, args, role)
    return None  # the Pipeline says what is missing


def load_pipeline(args):
    """The pipeline of this phase's roles: phase 1 the stroke ensemble; phase 2 the seg ensemble, the type
    ensemble and a gated seg spec's gate ensemble. Every role is checked here, before any image is read."""
    from strokekit.ensembling.spec import SpecError
    from strokekit.inference.pipeline import Pipeline

    if args.expect_sha256 and model_folder(args.ensemble, args) is None:
        raise SpecError(f"--expect-sha256 pins a model folder's manifest.json; {args.ensemble} is not a model "
                        "folder")
    if args.phase == 1:
        return Pipeline({"stroke": load(args.ensemble, args, "stroke")})
    predictor = load(args.ensemble, args, "seg")
    type_predictor = load_type(args)
    return Pipeline({"seg": predictor, "type": type_predictor}, args.fallback, args.fallback_fraction,
                    args.fallback_max_area, gate=load_gate(args, predictor, type_predictor))


def amp_used(predictor, amp: str | None) -> str:
    """What autocast ran: none on the CPU, else --amp or each member's config `amp`."""
    if predictor.device.type != "cuda":
        return "none"
    return amp or ", ".join(sorted({str(m.cfg.get("amp")) for m in predictor.members}))


def run(args) -> int:
    from strokekit.inference import manifest, submit

    apply_settings(args)
    rows, split = submit.find_test_rows(args.data, args.split, args.phase)
    out = Path(args.out) if args.out else in_project("submissions", f"{Path(args.ensemble).stem}_{split}")
    submit.check_out_dir(out, args.overwrite, submit.input_folders(args.data, rows))  # before loading anything
    pipeline = load_pipeline(args)  # every spec and role checked: nothing is written before this
    for p in pipeline.predictors():
        p.progress = True  # a bar over the images, on a terminal and without --no-progress
    role = "stroke" if args.phase == 1 else "seg"
    predictor = pipeline.roles[role]
    type_predictor, gate_predictor = pipeline.roles.get("type"), pipeline.gate
    extra = [p for p in pipeline.predictors() if p is not predictor]
    rows, check = submit.check_test_rows(rows, pipeline.predictors(), args.on_bad_input)
    print(check.summary())
    out = submit.prepare_out_dir(out, args.overwrite, submit.input_folders(args.data, rows))
    if check.bad:  # only reached with --on-bad-input skip
        check.write_skipped(out / "skipped.csv")
        print(f"{len(check.bad_ids)} bad images left out of the submission, listed in {out / 'skipped.csv'}")
    print(f"{len(rows)} {split} images from {args.data}; ensemble {args.ensemble} ({predictor.task}, "
          f"{len(predictor.members)} members, {predictor.n_checkpoints} checkpoints) on {predictor.device}")
    for name, p in (("ensemble", predictor), ("type ensemble", type_predictor), ("gate ensemble", gate_predictor)):
        if p is not None and (name != "gate ensemble" or p is not type_predictor):
            cost = p.cost(len(rows))
            print(f"{name}: {cost['forward_passes']} forward passes (batch {p.batch_size}, flips "
                  f"{','.join(cost['flips'])}, scales {','.join(f'{s:g}' for s in cost['scales'])}), "
                  f"{cost['images_through_models']} images through models")
    if args.phase == 1:
        decided, seconds = submit.timed(submit.run_phase1, pipeline, rows, out)
        print(f"phase 1: {decided['n_stroke']} of {len(rows)} images stroke at threshold {decided['threshold']:.4f}")
    else:
        decided, seconds = submit.timed(submit.run_phase2, pipeline, rows, out, args.save_probs)
        print(f"phase 2: {len(rows)} masks, fallback drew {decided['fallback_images']}; types from "
              f"{decided['type_source']}")
    speed = len(rows) / max(seconds, 1e-9)
    print(f"{seconds:.1f}s, {speed:.1f} images/s")
    info = {"written_by": "infer.py", "phase": args.phase, "data": str(Path(args.data).resolve()), "split": split,
            "n_images": len(rows), "spec": manifest.ensemble_record(predictor), "tta": predictor.flips,
            "tta_scales": predictor.scales,
            "batch_size": predictor.batch_size, "device": str(predictor.device), "amp": amp_used(predictor, args.amp),
            "seconds": seconds, "images_per_s": speed, "skipped_images": sorted(check.bad_ids), **decided}
    if type_predictor is not None:
        info["type_spec"] = manifest.ensemble_record(type_predictor)
    if gate_predictor is not None:
        info["gate_spec"] = manifest.ensemble_record(gate_predictor)
    info.update(manifest.run_record(args.data, rows, [predictor, *extra]))
    manifest.write_manifest(out, info, command=args.command)
    print(f"valid submission: {out}")
    return 0


@script_main
def main(argv=None) -> int:
    args = parse_args(argv)
    progress.set_enabled(not args.no_progress)
    args.command = list(sys.argv) if argv is None else ["infer.py", *map(str, argv)]
    try:
        return run(args)
    except SubmissionError as err:  # the written submission fails the organisers' checks: a verdict, exit 1
        print(f"INVALID submission {err.source}:", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1


def entry_point() -> None:
    """`python infer.py` and the console command `strokekit-infer`."""
    sys.exit(main())
