"""The whole competition loop on the built-in phantom data set, on CPU, in a few minutes.

    python demo.py                 # phantom -> folds -> train (2 folds x 2 models) -> ensemble -> infer -> score
    python demo.py --n 200 --epochs 2  # faster, to see the loop run (the models learn little)

Each stage is the same command a competitor runs on the real data set; the demo prints every command
before it runs it, so you can copy them. Outputs: data/phantom/, runs/, ensembles/, submissions/, scores/.
"""
import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from strokekit.config.settings import FILENAME as SETTINGS, write_settings

PY = sys.executable
CONFIGS = ("tiny_stroke_aux", "tiny_seg")


def run(cmd: list[str]) -> None:
    print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    print(f"  ({time.time() - start:.0f} s)", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/phantom", help="where the phantom goes (default data/phantom)")
    parser.add_argument("--n", type=int, default=600, help="training slices in the phantom (default 600; with "
                        "300 the stroke classifier sees too few patients to generalise)")
    parser.add_argument("--epochs", type=int, default=None, help="override the tiny configs' epochs")
    parser.add_argument("--folds", default="0,1", help="folds to train (default 0,1)")
    args = parser.parse_args(argv)
    start = time.time()
    data = Path(args.data)
    extra = ["--set", f"epochs={args.epochs}"] if args.epochs else []
    sub = Path("submissions")

    if not (data / "TRAINING").is_dir():
        run([PY, "make_phantom.py", "--out", str(data), "--n", str(args.n), "--seed", "0"])
    run([PY, "kfold.py", "--data", str(data), "--folds", "5"])
    for config in CONFIGS:
        for fold in args.folds.split(","):
            run([PY, "train.py", "--config", f"configs/{config}.yaml", "--fold", fold, "--data", str(data),
                 "--no-progress", *extra])
    run([PY, "ensemble.py", "--task", "stroke", "runs/tiny_stroke_aux", "--data", str(data),
         "--objective", "recall", "--target-recall", "0.95", "--out", "ensembles/demo_stroke.yaml"])
    run([PY, "ensemble.py", "--task", "seg", "runs/tiny_seg", "--data", str(data),
         "--out", "ensembles/demo_seg.yaml"])
    run([PY, "infer.py", "--phase", "1", "--ensemble", "ensembles/demo_stroke.yaml",
         "--data", str(data / "YARISMA_1"), "--out", str(sub / "demo_phase1"), "--overwrite"])
    run([PY, "infer.py", "--phase", "2", "--ensemble", "ensembles/demo_seg.yaml",
         "--data", str(data / "YARISMA_2"), "--out", str(sub / "demo_phase2"), "--overwrite"])
    run([PY, "score.py", "--phase", "1", "--pred", str(sub / "demo_phase1" / "asama1.txt"),
         "--truth", str(data / "YARISMA_1" / "ASAMA1_Cevaplar.txt"),
         "--probs", str(sub / "demo_phase1" / "probs.csv")])
    run([PY, "score.py", "--phase", "2", "--pred", str(sub / "demo_phase2"),
         "--truth", str(data / "YARISMA_2" / "MASK"), "--images", str(data / "YARISMA_2" / "PNG")])
    settings = Path(SETTINGS)
    if not settings.exists():   # what `python train.py --fold 0` / `python infer.py --phase 2` use from now on
        write_settings({"data": str(data), "train": [f"configs/{c}.yaml" for c in CONFIGS],
                        "ensembles": {"stroke": "ensembles/demo_stroke.yaml", "seg": "ensembles/demo_seg.yaml"},
                        "submissions": "submissions"}, settings)
        print(f"\nwrote {settings}: now `python train.py --fold 2` trains the next fold of both configs and "
              "`python infer.py --phase 2` writes submissions/phase2 (docs/inference.md)")
    print(f"\ndemo finished in {time.time() - start:.0f} s: see runs/, ensembles/, submissions/, scores/")
    return 0


def entry_point() -> None:
    """`python demo.py` and the console command `strokekit-demo`."""
    sys.exit(main())
