"""Pseudo-label the released phase-2 test images with a seg ensemble, for a second round of training.

    python pseudo.py --ensemble ensembles/seg.yaml --data data/phantom/YARISMA_2 --out pseudo/round1
    python train.py --config configs/tiny_seg.yaml --fold all --set pseudo=pseudo/round1 name=tiny_seg_r2

--data is the phase-2 test folder (PNG/ and/or DICOM/) or a data root (its test2 split); only the image files
are read, never a MASK, OVERLAY or answer key. Each image's label is the ensemble's phase-2 decision (the
spec's post-processing and the never-empty fill: what infer.py --phase 2 would submit), as hard labels with
an ignore mask:
  a pixel is ignored where the ensemble's probability of its decision (lesion or not) is below
  --pixel-confidence (default 0.75); the losses skip it;
  an image is dropped where the mean P(lesion) over its decided lesion pixels is below --image-confidence
  (default 0.5), or where no lesion pixel is left: every phase-2 image holds a lesion, so none is taught
  as lesion-free.
Writes <out>/: labels.csv (every image: kept or dropped and why, its confidence, pixel counts), MASK/<id>.png
(official colours), IGNORE/<id>.png (255 = ignored), PNG/ and DICOM/ copies of the kept images, and
manifest.json (spec, settings, the test inputs' sha256, every file's sha256). The folder is built beside
<out> and moved there when complete; an existing one is only replaced when pseudo.py wrote it, with
--overwrite.

A seg config's `pseudo: <out>` (train.py --set pseudo=<out>) adds the kept images to every fold's training
rows, never to a validation set, so the OOF files and ensemble.py's choices stay on the training images.
Their ids must not be training ids (refused). See docs/training.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from strokekit.errors import script_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ensemble", "--model", dest="ensemble", required=True,
                        help="seg spec YAML from ensemble.py, or a model folder from export.py (its seg ensemble)")
    parser.add_argument("--data", required=True, help="the phase-2 test folder (YARISMA_2 ...) or a data root")
    parser.add_argument("--split", default="test2", choices=("test2",),
                        help="with a data root: the test split (phase 2 only: its images all hold a lesion)")
    parser.add_argument("--out", help="pseudo-label folder (default pseudo/<spec name>_test2)")
    parser.add_argument("--pixel-confidence", type=float, default=0.75,
                        help="ignore a pixel whose decision (lesion or not) the ensemble gives a lower "
                             "probability (default 0.75; 0 ignores none)")
    parser.add_argument("--image-confidence", type=float, default=0.5,
                        help="drop an image whose mean P(lesion) over its decided lesion pixels is lower "
                             "(default 0.5; 0 keeps every image with a labelled lesion)")
    parser.add_argument("--gate-ensemble", help="the classifier spec a gated seg spec needs (as infer.py's)")
    parser.add_argument("--tta", help="override the spec's flips, comma-separated: none,hflip,vflip,hvflip")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default as infer.py)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: CUDA when available)")
    parser.add_argument("--amp", choices=("bf16", "fp16", "none"), help="CUDA autocast (default: each member's)")
    parser.add_argument("--fallback-fraction", type=float, default=0.5,
                        help="the never-empty fill: region = pixels >= this fraction of the peak P(lesion)")
    parser.add_argument("--fallback-max-area", type=float, default=0.02,
                        help="the never-empty fill: at most this share of the image's pixels (default 0.02)")
    parser.add_argument("--on-bad-input", choices=("fail", "skip"), default="fail",
                        help="a bad test image stops the run (fail, default) or is left out (skip)")
    parser.add_argument("--overwrite", action="store_true", help="replace a folder pseudo.py wrote earlier")
    parser.add_argument("--allow-outside", action="store_true",
                        help="let a spec name checkpoints outside its folder, the folder above and the cwd")
    return parser.parse_args(argv)


def load_pipeline(args):
    """The seg ensemble (a spec of another task is refused before any model is loaded) and its gate."""
    from strokekit.data.pseudo import PseudoLabelError
    from strokekit.inference.pipeline import Pipeline, gate_kind, needs_gate
    from strokekit.inference.predict import EnsemblePredictor, open_spec

    spec = open_spec(args.ensemble, "seg", args.allow_outside)
    if spec.get("task") != "seg":
        raise PseudoLabelError(f"{args.ensemble} is a {spec.get('task')} spec; pseudo-labels are masks: pass a "
                               "seg spec (ensemble.py --task seg) or a model folder with a seg ensemble")
    flips = args.tta.split(",") if args.tta else None
    seg = EnsemblePredictor(spec, device=args.device, flips=flips, batch_size=args.batch_size, amp=args.amp,
                            allow_outside=args.allow_outside, role="seg")
    gate = None
    if needs_gate(seg.spec) and args.gate_ensemble:
        gate = EnsemblePredictor(args.gate_ensemble, device=args.device, flips=flips, batch_size=args.batch_size,
                                 amp=args.amp, allow_outside=args.allow_outside, role=gate_kind(seg.spec))
    return Pipeline({"seg": seg}, True, args.fallback_fraction, args.fallback_max_area, gate=gate)


def run(args) -> int:
    from strokekit.inference import manifest, submit
    from strokekit.inference.pseudo_labels import (Confidence, check_out_dir, find_unlabelled_rows,
                                                   replace_folder, write_folder)
    from strokekit.locks import hold_folder

    confidence = Confidence(args.pixel_confidence, args.image_confidence)
    rows = find_unlabelled_rows(args.data, args.split)
    out = Path(args.out or f"pseudo/{Path(args.ensemble).stem}_{args.split}")
    inputs = submit.input_folders(args.data, rows)
    check_out_dir(out, args.overwrite, inputs)  # before loading anything
    pipeline = load_pipeline(args)
    seg = pipeline.roles["seg"]
    rows, check = submit.check_test_rows(rows, pipeline.predictors(), args.on_bad_input)
    print(check.summary())
    out.parent.mkdir(parents=True, exist_ok=True)
    hold_folder(out, what="pseudo.py run", beside=True)
    check_out_dir(out, args.overwrite, inputs)  # again, now that no other run writes there
    print(f"{len(rows)} test images from {args.data}; ensemble {args.ensemble} ({len(seg.members)} members, "
          f"{seg.n_checkpoints} checkpoints, flips {','.join(seg.flips)}) on {seg.device}")
    built = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        table = write_folder(pipeline, rows, built, confidence)
        kept = table[table["kept"] == 1]
        sources = sorted({m.cfg["image_source"] for m in seg.members})
        info = {"written_by": "pseudo.py", "data": str(Path(args.data).resolve()), "split": args.split,
                "n_images": len(table), "n_kept": len(kept),
                "pixel_confidence": confidence.pixel, "image_confidence": confidence.image,
                "dropped": {str(r.image_id): r.reason for r in table.itertuples() if not r.kept},
                "skipped_images": sorted(check.bad_ids), "spec": manifest.ensemble_record(seg), "tta": seg.flips,
                "fallback": True, "fallback_fraction": pipeline.fallback_fraction,
                "fallback_max_area": pipeline.fallback_max_area,
                "test_inputs": {"read": sources, "files_sha256": manifest.inputs_sha256(rows, sources)}}
        manifest.write_manifest(built, info, command=args.command)
        replace_folder(built, out)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    print(f"kept {len(kept)} of {len(table)} images ({int(table['fallback'].sum())} of the {len(table)} masks drawn "
          f"by the never-empty fill); in the kept ones {int(kept['labelled_lesion_pixels'].sum())} of "
          f"{int(kept['lesion_pixels'].sum())} lesion pixels labelled, {int(kept['ignored_pixels'].sum())} pixels "
          "ignored")
    for reason, n in table.loc[table["kept"] == 0, "reason"].value_counts().items():
        print(f"  dropped {n}: {reason}")
    print(f"pseudo-labels: {out}  (train on them: python train.py --config <seg config> --fold all "
          f"--set pseudo={out} name=<round-2 name>)")
    return 0


@script_main
def main(argv=None) -> int:
    args = parse_args(argv)
    args.command = list(sys.argv) if argv is None else ["pseudo.py", *map(str, argv)]
    return run(args)


def entry_point() -> None:
    """`python pseudo.py` and the console command `strokekit-pseudo`."""
    sys.exit(main())
