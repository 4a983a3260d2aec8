"""Export ensemble specs to a self-contained model folder that runs anywhere (no runs/, no pickle).

    python export.py ensembles/stroke.yaml --out models/stroke
    python export.py ensembles/seg.yaml ensembles/type.yaml ensembles/stroke.yaml --out models/full
    python export.py --verify models/full

Writes models/<name>/: weights/*.safetensors (one per checkpoint: the weights inference uses), model.json
(per role — stroke, seg, type — the members' architecture, input size, channels, HU windows and
normalisation, configs, blend weights, TTA, thresholds and post-processing; the kit version; the sha256 of
every weights file) and manifest.json (provenance: source specs and checkpoints with their hashes, configs
as resolved, seeds, data index / folds hashes where found, package versions, git commit, command, time;
the sha256 of every file). A spec's role: a stroke spec, or a seg spec whose seg_classifier targets stroke,
answers phase 1 (stroke); a seg spec phase 2's masks (seg); a type spec the type (type). One spec per role.

Use it with `python infer.py --model models/full ...` (or --ensemble) and `strokekit.Predictor("models/full")`.
A folder whose files no longer match their hashes, or without its manifest.json, is refused. --verify checks
a folder and exits 1 if not. The export prints manifest.json's sha256: kept apart from the folder, it pins
the folder (infer.py --expect-sha256). These hashes are integrity checks, not signatures.
"""
from __future__ import annotations

import argparse
import json
import sys

from strokekit.errors import UserError, script_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="*", metavar="ENSEMBLE_SPEC", help="spec YAMLs from ensemble.py, one per role")
    parser.add_argument("--out", help="the model folder to write (e.g. models/<name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model folder at --out")
    parser.add_argument("--allow-outside", action="store_true",
                        help="let a spec name checkpoints outside its folder, the folder above and the cwd")
    parser.add_argument("--verify", metavar="MODEL_DIR", help="check a model folder's hashes instead of exporting")
    args = parser.parse_args(argv)
    if args.verify and args.specs:
        parser.error("--verify takes a model folder alone, no specs")
    if not args.verify and not (args.specs and args.out):
        parser.error("give one or more ENSEMBLE_SPEC files and --out (or --verify MODEL_DIR)")
    return args


def verify(folder: str) -> int:
    from strokekit.inference.manifest import verify_folder
    from strokekit.inference.modelfolder import read_model_folder

    try:
        ensembles = read_model_folder(folder)
        manifest, problems = verify_folder(folder)
    except UserError as err:  # a verdict on the folder (exit 1), not a usage error
        print(f"INVALID model folder: {err}", file=sys.stderr)
        return 1
    if problems or manifest is None:
        print(f"INVALID model folder {folder}:", file=sys.stderr)
        for problem in problems or ["no manifest.json"]:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    roles = ", ".join(f"{role} ({spec['task']}, {len(spec['members'])} members)" for role, spec in ensembles.items())
    print(f"valid model folder {folder}: {roles}; {len(manifest['files'])} files match manifest.json")
    return 0


def run(args) -> int:
    from strokekit.inference.manifest import MANIFEST, sha256
    from strokekit.inference.modelfolder import MODEL_JSON, export_model

    out = export_model(args.specs, args.out, overwrite=args.overwrite, allow_outside=args.allow_outside,
                       command=args.command)
    model = json.loads((out / MODEL_JSON).read_text(encoding="utf-8"))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    for role, entry in model["ensembles"].items():
        members = ", ".join(f"{m['name']} x{len(m['checkpoints'])}" for m in entry["members"])
        print(f"{role}: {entry['task']} ensemble, blend {entry['blend']}, tta {','.join(entry['tta'])}; {members}")
    print(f"wrote {out} ({len(model['files'])} weights files, {size / 1e6:.1f} MB); verify with "
          f"`python export.py --verify {out}`")
    print(f"manifest.json sha256 {sha256(out / MANIFEST)}: keep it apart from the folder and pin it with "
          "`infer.py --expect-sha256` / Predictor(expect_sha256=...) (an integrity check, not a signature)")
    return 0


@script_main
def main(argv=None) -> int:
    args = parse_args(argv)
    args.command = list(sys.argv) if argv is None else ["export.py", *map(str, argv)]
    if args.verify:
        return verify(args.verify)
    return run(args)


def entry_point() -> None:
    """`python export.py` and the console command `strokekit-export`."""
    sys.exit(main())
