"""The whole competition loop on the built-in phantom data set, on CPU, in a few minutes.

    python demo.py                 # phantom -> folds -> train (2 folds x 2 models) -> ensemble -> infer -> score
    python demo.py --n 200 --epochs 2  # faster, to see the loop run (the models learn little)

Each stage is the same command a competitor runs on the real data set; the demo prints every command
before it runs it, so you can copy them. Outputs: data/phantom/, runs/, ensembles/, submissions/, scores/, in
the project folder (the folder of the nearest strokekit.yaml from here upward, else this one; see
docs/training.md "Where paths resolve"). The commands and configs come from the kit's checkout (an editable
install: pip install -e .), wherever the demo is started.
"""
import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from strokekit.config.settings import FILENAME, project_dir, settings_path, write_settings
from strokekit.errors import UserError, script_main

PY = sys.executable
CONFIGS = ("tiny_stroke_aux", "tiny_seg")
KIT = Path(__file__).resolve().parents[2]  # the checkout: root scripts and configs/ (not package data)


def kit_path(*parts: str, project: Path) -> str:
    """A file of the checkout, as short as it can be written from the project folder."""
    path = KIT.joinpath(*parts)
    return os.path.relpath(path, project) if path.is_relative_to(project) else str(path)


def command(name: str, project: Path) -> list[str]:
    """python <script>.py from the checkout, else the console command strokekit-<name> installed beside Python."""
    if (KIT / f"{name}.py").is_file():
        return [PY, kit_path(f"{name}.py", project=project)]
    installed = Path(PY).parent / f"strokekit-{name.replace('_', '-')}"
    if installed.is_file():
        return [str(installed)]
    raise UserError(f"demo: neither {KIT / (name + '.py')} nor {installed} exists; install the kit from its "
                    "checkout (pip install -e .)")


def run(cmd: list[str], project: Path) -> None:
    print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=project)
    print(f"  ({time.time() - start:.0f} s)", flush=True)


@script_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/phantom", help="where the phantom goes (default data/phantom in the "
                        "project folder)")
    parser.add_argument("--n", type=int, default=600, help="training slices in the phantom (default 600; with "
                        "300 the stroke classifier sees too few patients to generalise)")
    parser.add_argument("--epochs", type=int, default=None, help="override the tiny configs' epochs")
    parser.add_argument("--folds", default="0,1", help="folds to train (default 0,1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars in the steps (they are "
                        "drawn only on a terminal anyway; training draws none in the demo)")
    args = parser.parse_args(argv)
    start = time.time()
    project = project_dir()
    if project != Path.cwd():
        print(f"project folder {project} (its strokekit.yaml): the demo's outputs go there")
    data = Path(args.data) if args.data == "data/phantom" else Path(args.data).resolve()  # typed: from here
    extra = ["--set", f"epochs={args.epochs}"] if args.epochs else []
    sub = Path("submissions")
    configs = {c: kit_path("configs", f"{c}.yaml", project=project) for c in CONFIGS}
    missing = [p for p in configs.values() if not (project / p).is_file()]
    if missing:
        raise UserError(f"demo: the kit's configs {missing} are missing; the demo runs from the kit's checkout "
                        "(git clone, then pip install -e .)")

    def step(name: str, *cmd_args) -> None:
        quiet = ["--no-progress"] if args.no_progress and name != "score" and "--no-progress" not in cmd_args else []
        run([*command(name, project), *map(str, cmd_args), *quiet], project)

    if not (project / data / "TRAINING").is_dir():
        step("make_phantom", "--out", data, "--n", args.n, "--seed", 0)
    step("kfold", "--data", data, "--folds", 5)
    for config in CONFIGS:
        for fold in args.folds.split(","):
            step("train", "--config", configs[config], "--fold", fold, "--data", data, "--no-progress", *extra)
    step("ensemble", "--task", "stroke", "runs/tiny_stroke_aux", "--data", data,
         "--objective", "recall", "--target-recall", "0.95", "--out", "ensembles/demo_stroke.yaml")
    step("ensemble", "--task", "seg", "runs/tiny_seg", "--data", data, "--out", "ensembles/demo_seg.yaml")
    step("infer", "--phase", 1, "--ensemble", "ensembles/demo_stroke.yaml",
         "--data", data / "YARISMA_1", "--out", sub / "demo_phase1", "--overwrite")
    step("infer", "--phase", 2, "--ensemble", "ensembles/demo_seg.yaml",
         "--data", data / "YARISMA_2", "--out", sub / "demo_phase2", "--overwrite")
    step("score", "--phase", 1, "--pred", sub / "demo_phase1" / "asama1.txt",
         "--truth", data / "YARISMA_1" / "ASAMA1_Cevaplar.txt", "--probs", sub / "demo_phase1" / "probs.csv")
    step("score", "--phase", 2, "--pred", sub / "demo_phase2",
         "--truth", data / "YARISMA_2" / "MASK", "--images", data / "YARISMA_2" / "PNG")
    settings = project / FILENAME
    if not settings_path().is_file():   # what `python train.py --fold 0` / `python infer.py --phase 2` use from now on
        write_settings({"data": str(data), "train": list(configs.values()),
                        "ensembles": {"stroke": "ensembles/demo_stroke.yaml", "seg": "ensembles/demo_seg.yaml"},
                        "submissions": "submissions"}, settings)
        print(f"\nwrote {settings}: now `python train.py --fold 2` trains the next fold of both configs and "
              "`python infer.py --phase 2` writes submissions/phase2 (docs/inference.md)")
    print(f"\ndemo finished in {time.time() - start:.0f} s: see runs/, ensembles/, submissions/, scores/ in {project}")
    return 0


def entry_point() -> None:
    """`python demo.py` and the console command `strokekit-demo`."""
    sys.exit(main())
