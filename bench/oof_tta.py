"""Tune on what you submit: thresholds / post-processing tuned on plain OOF vs on TTA OOF, each applied to the
same k-fold TTA ensemble on the phantom's own test sets, and how far each OOF estimate sits from the test figure.

    python bench/oof_tta.py                    # 600-slice 128-px phantom, 3 folds, ~20 min on 1 core
    python bench/oof_tta.py --folds 5 --n 800  # a bigger run
    python bench/oof_tta.py --settings tta --no-diagnostics   # the shipped setting only, both interval kinds
    python bench/oof_tta.py --settings tta --no-diagnostics --seed 1   # the same on another phantom

For each setting the k folds of tiny_stroke_aux (phase 1) and tiny_seg (phase 2) are trained on the same
phantom and folds with the same seed, once with `oof_tta: [none]` (the OOF as it was made before issue 17:
one model, no flips) and once with the default `oof_tta` (none + hflip, infer.py's flips). ensemble.py tunes
each: the stroke threshold (--objective f1, bootstrap p10 plateau at the test set's size) and the phase-2
post-processing (--metric official_iou, phase-2 prior). Both specs are applied with the flips infer.py uses
(--tta none,hflip: the plain setting is the old situation, tuned without flips and submitted with them) by
infer.py on the phantom's test sets (YARISMA_1: --n-test1 mixed slices, YARISMA_2: --n-test2 lesion slices),
scored by score.py with 95 % bootstrap intervals. The OOF estimate of each figure is the spec's own (its
interval: 1,000 resamples of the test set's size from the OOF). Each setting is also tuned and submitted
with `ensemble.py --test-patients P` (P: the test set's patient count from its DICOM headers): the OOF
resamples then draw P whole patients, so the interval is the spread a test set of P patients shows (and
score.py --patients resamples the test set's patients). The `nested` rows are the specs' nested OOF estimates
(each fold decided with the threshold / setting tuned on the other folds: ensembling/nested.py). Besides the table, the JSON holds what could explain a gap: each setting's threshold and plateau, its mean OOF probability, the OOF and test positive
shares, the test figure at the threshold the test would have chosen, and whether the two settings' fold
weights are identical (same seed, so the k-fold ensemble applied is the same one).
Writes bench/results/oof_tta.json. Trains one process at a time; OMP_NUM_THREADS=1 and nice it on a shared box.
Runs already finished under --work are reused (train.py skips done folds): delete --work for a fresh measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_WORK, machine, table, write_result  # also puts the repo on sys.path

SETTINGS = {"plain OOF (oof_tta: [none])": ["oof_tta=[none]"], "TTA OOF (oof_tta default)": []}
BY_PATIENT = ", patient bootstrap"  # the setting's rows with ensemble.py --test-patients
SUBMIT_TTA = "none,hflip"  # infer.py's default flips: what both settings are submitted with
PHASE1 = ("balanced_accuracy", "f1", "recall")
PHASE2 = (("official_iou", "official_iou", "official_iou"),               # (row, spec objective, score interval)
          ("strict Dice", "dice", "dice_macro_imagewise_lesion_mean"))


def cli(name: str, argv: list[str]) -> None:
    """One of the kit's commands in this process (strokekit.cli.<name>.main); a non-zero exit stops the bench."""
    import importlib

    print(f"$ {name}.py {' '.join(argv)}", flush=True)
    code = importlib.import_module(f"strokekit.cli.{name}").main(argv)
    if code:
        raise SystemExit(f"{name}.py failed ({code}): {' '.join(argv)}")


def phantom(work: Path, n: int, size: int, n_test1: int, n_test2: int, folds: int, seed: int = 0) -> Path:
    """The phantom (seed 0 by default, like the tests') with its own test sets and `folds` folds (seed 42), made
    once."""
    from strokekit.data.folds import make_folds, write_folds
    from strokekit.data.index import build_index
    from strokekit.phantom.dataset import make_phantom

    data = work / (f"phantom_{n}_{size}_{n_test1}_{n_test2}" + (f"_seed{seed}" if seed else ""))
    if not (data / f"folds{folds}.csv").is_file():
        if not (data / "phantom_truth.csv").is_file():
            make_phantom(data, n=n, seed=seed, size=size, n_test1=n_test1, n_test2=n_test2, overwrite=data.exists())
        index, _ = build_index(data)
        write_folds(make_folds(index, n_folds=folds, seed=42), data / f"folds{folds}.csv")
    return data


def same_weights(run_a: Path, run_b: Path) -> bool:
    """Whether every fold's best.pt holds the same weights in the two runs."""
    import torch

    from strokekit.models.checkpoint import read_checkpoint

    for best in sorted(run_a.glob("fold*/best.pt")):
        a, b = read_checkpoint(best), read_checkpoint(run_b / best.parent.name / "best.pt")
        key = "ema" if a.get("ema") else "model"
        if any(not torch.equal(a[key][k], b[key][k]) for k in a[key]):
            return False
    return True


def oof_mean_prob(run: Path) -> float:
    from strokekit.ensembling.selection import load_oof

    return float(np.mean(load_oof(run)["prob"]))


def test_threshold_best(submission: Path, truth_file: Path, metric: str) -> dict:
    """The test figure at the threshold the test itself would pick (from probs.csv), against the tuned one."""
    import pandas as pd

    from strokekit.data.submission import read_labels
    from strokekit.evaluation import metrics

    probs = pd.read_csv(submission / "probs.csv")
    truth = read_labels(truth_file)
    y = np.array([truth[int(i)] for i in probs["image_id"]])
    p = probs["prob"].to_numpy(float)
    grid = np.round(np.arange(0.02, 0.99, 0.01), 2)
    values = [getattr(metrics, {"f1": "f1_score"}.get(metric, metric))(y, p, t) for t in grid]
    best = int(np.argmax(values))
    return {"threshold": float(grid[best]), metric: float(values[best]), "test_prior": float(y.mean())}


def test_patients(data: Path, split: str) -> int:
    """Patients in a phantom test set (its DICOM headers' PatientID)."""
    from strokekit.data.index import build_index

    index = build_index(data)[0]
    return int(index.loc[index["split"] == split, "patient_id"].nunique())


def phase1(setting: str, sets: list[str], data: Path, work: Path, args, patients: int | None = None) -> dict:
    """patients: tune with ensemble.py --test-patients (the run is trained once: train.py skips done folds)."""
    run_name = f"stroke_{'plain' if sets else 'tta'}"
    name = run_name + ("_patients" if patients else "")
    runs = work / "runs"
    cli("train", ["--config", "configs/tiny_stroke_aux.yaml", "--fold", "all", "--data", str(data),
                  "--folds-csv", str(data / f"folds{args.folds}.csv"), "--out", str(runs),
                  "--no-progress", "--set", f"name={run_name}", "seed=42", *sets, *args.set])
    spec = work / "ensembles" / f"{name}.yaml"
    by = ["--test-patients", str(patients), "--data", str(data)] if patients else []
    cli("ensemble", ["--task", "stroke", str(runs / run_name), "--objective", "f1", "--tta", SUBMIT_TTA,
                     "--test-size", str(args.n_test1), *by, "--out", str(spec)])
    sub = work / "submissions" / name
    cli("infer", ["--phase", "1", "--ensemble", str(spec), "--data", str(data / "YARISMA_1"), "--out", str(sub),
                  "--overwrite"])
    score = work / "scores" / f"{name}.json"
    key = data / "YARISMA_1" / "ASAMA1_Cevaplar.txt"
    cli("score", ["--phase", "1", "--pred", str(sub / "asama1.txt"), "--truth", str(key),
                  "--probs", str(sub / "probs.csv"), "--out", str(score),
                  *(["--patients", str(data / "YARISMA_1")] if patients else [])])
    return {"run": str(runs / run_name), "spec": read_yaml(spec), "score": json.loads(score.read_text()),
            "oof_mean_prob": oof_mean_prob(runs / run_name),
            "test_best": {m: test_threshold_best(sub, key, m) for m in ("f1", "balanced_accuracy")}}


def phase2(setting: str, sets: list[str], data: Path, work: Path, args, name: str | None = None,
           patients: int | None = None) -> dict:
    """name given: that run exists already under work/runs (remade_oof), nothing is trained; patients: tune
    with ensemble.py --test-patients."""
    runs = work / "runs"
    if name is None:
        name = f"seg_{'plain' if sets else 'tta'}"
        cli("train", ["--config", "configs/tiny_seg.yaml", "--fold", "all", "--data", str(data),
                      "--folds-csv", str(data / f"folds{args.folds}.csv"), "--out", str(runs),
                      "--no-progress", "--set", f"name={name}", "seed=42", *sets, *args.set])
    run_name, name = name, name + ("_patients" if patients else "")
    spec = work / "ensembles" / f"{name}.yaml"
    by = ["--test-patients", str(patients)] if patients else []
    cli("ensemble", ["--task", "seg", str(runs / run_name), "--metric", "official_iou", "--tta", SUBMIT_TTA,
                     "--test-size", str(args.n_test2), *by, "--out", str(spec)])
    sub = work / "submissions" / name
    cli("infer", ["--phase", "2", "--ensemble", str(spec), "--data", str(data / "YARISMA_2"), "--out", str(sub),
                  "--overwrite"])
    score = work / "scores" / f"{name}.json"
    cli("score", ["--phase", "2", "--pred", str(sub), "--truth", str(data / "YARISMA_2" / "MASK"),
                  "--out", str(score), *(["--patients", str(data / "YARISMA_2")] if patients else [])])
    return {"run": str(runs / run_name), "spec": read_yaml(spec), "score": json.loads(score.read_text())}


def remade_oof(run: Path, out: Path, **changes) -> Path:
    """A copy of a finished run (the same best.pt per fold) whose OOF the loop's final pass predicts again
    under changed config keys (engine.setup + finish_fold, as training ends), e.g. oof_size = img_size."""
    import shutil

    from strokekit.config import folds_path, save_config
    from strokekit.data.folds import read_folds
    from strokekit.data.index import build_index
    from strokekit.training.engine import setup
    from strokekit.training.fold_end import finish_fold

    folds = sorted(run.glob("fold*/done"))
    if all((out / f.parent.name / "done").is_file() for f in folds):
        return out
    shutil.rmtree(out, ignore_errors=True)
    for done in folds:
        cfg = {**read_yaml(done.parent / "config.yaml"), **changes, "name": out.name, "topk_average": 0}
        index = build_index(cfg["data"])[0]
        fold, target = int(done.parent.name[4:]), out / done.parent.name
        target.mkdir(parents=True)
        shutil.copy2(done.parent / "best.pt", target / "best.pt")
        save_config(cfg, target / "config.yaml")
        tr = setup(cfg, index, read_folds(folds_path(cfg), index), fold)
        tr.best = float("nan")
        finish_fold(tr, fold, target, time.time())
    return out


def one_fold_figures(spec_path: Path, phase: int, data: Path, work: Path) -> list[dict]:
    """Each fold's model alone (the spec's threshold / post-processing and flips): the test figures a single
    model earns, which is what one model per OOF image estimates; their gap to the k-fold figure is the
    ensemble's own gain, which no OOF of single models can foresee."""
    import yaml

    from strokekit.atomic import write_text_atomic

    spec, out = read_yaml(spec_path), []
    for ckpt, fold in zip(spec["members"][0]["checkpoints"], spec["members"][0]["folds"]):
        one = spec_path.with_name(f"{spec_path.stem}.fold{fold}.yaml")
        member = {**spec["members"][0], "checkpoints": [ckpt], "folds": [fold]}
        write_text_atomic(one, yaml.safe_dump({**spec, "members": [member]}, sort_keys=False))
        sub, score = work / "submissions" / one.stem, work / "scores" / f"{one.stem}.json"
        test = data / ("YARISMA_1" if phase == 1 else "YARISMA_2")
        cli("infer", ["--phase", str(phase), "--ensemble", str(one), "--data", str(test), "--out", str(sub),
                      "--overwrite"])
        truth = ["--pred", str(sub / "asama1.txt"), "--truth", str(test / "ASAMA1_Cevaplar.txt")] if phase == 1 \
            else ["--pred", str(sub), "--truth", str(test / "MASK")]
        cli("score", ["--phase", str(phase), *truth, "--out", str(score), "--n-boot", "0"])
        result = json.loads(score.read_text())
        out.append({"fold": fold, **({m: result[m] for m in PHASE1} if phase == 1 else
                                     {"official_iou": result["official"]["mean_imagewise"]["iou"],
                                      "strict Dice": result["strict"]["dice_macro_imagewise_lesion_mean"]})})
    return out


def read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def rows_phase1(setting: str, r: dict) -> list[dict]:
    oof, score = r["spec"]["oof"]["intervals"], r["score"]
    return [row(setting, "phase 1", m, oof[m], score[m], score["intervals"][m]) for m in PHASE1]


def rows_phase2(setting: str, r: dict) -> list[dict]:
    oof, score = r["spec"]["oof"], r["score"]
    test = {"official_iou": score["official"]["mean_imagewise"]["iou"],
            "dice_macro_imagewise_lesion_mean": score["strict"]["dice_macro_imagewise_lesion_mean"]}
    out = []
    for label, objective, key in PHASE2:  # the submitted setting's OOF figure under each rule
        out.append(row(setting, "phase 2", label, oof["objective_intervals"][objective], test[key],
                       score["intervals"][key]))
    return out


def rows_nested(setting: str, r1: dict, r2: dict) -> list[dict]:
    """The nested OOF estimates (each fold decided with the choice made on the other folds) against the test."""
    nested1, score1 = r1["spec"]["oof"].get("nested"), r1["score"]
    out = [row(f"{setting}, nested", "phase 1", m, nested1["figures"][m], score1[m], score1["intervals"][m])
           for m in PHASE1] if nested1 else []
    nested2, score2 = r2["spec"]["oof"].get("nested"), r2["score"]
    test2 = {"official_iou": score2["official"]["mean_imagewise"]["iou"],
             "dice_macro_imagewise_lesion_mean": score2["strict"]["dice_macro_imagewise_lesion_mean"]}
    for label, objective, key in PHASE2 if nested2 else ():
        out.append(row(f"{setting}, nested", "phase 2", label, nested2["objectives"][objective], test2[key],
                       score2["intervals"][key]))
    return out


def row(setting: str, phase: str, metric: str, oof: dict, test: float, test_interval: dict) -> dict:
    gap = test - oof["estimate"]
    return {"setting": setting, "phase": phase, "metric": metric, "oof": oof["estimate"],
            "oof_95": [oof["low"], oof["high"]], "test": test, "test_95": [test_interval["low"], test_interval["high"]],
            "gap": gap, "inside": bool(oof["low"] <= test <= oof["high"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "oof_tta")
    parser.add_argument("--n", type=int, default=600, help="phantom training slices (default 600)")
    parser.add_argument("--size", type=int, default=128, help="phantom side in px (default 128)")
    parser.add_argument("--n-test1", type=int, default=192, help="phase-1 test slices (default 192, the real set's)")
    parser.add_argument("--n-test2", type=int, default=97, help="phase-2 test slices (default 97, the real set's)")
    parser.add_argument("--folds", type=int, default=3, help="folds (default 3)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the phantom's seed (default 0); another seed is another data set: its runs go under "
                             "--work/seedN and its figures to oof_tta[_tta]_seedN.json")
    parser.add_argument("--set", nargs="*", default=[], help="extra config values for every run (e.g. epochs=2)")
    parser.add_argument("--settings", choices=("all", "tta"), default="all",
                        help="all: plain and TTA OOF (default); tta: the shipped TTA OOF only")
    parser.add_argument("--no-diagnostics", action="store_true",
                        help="skip the OOF remade at full size and the one-fold-model test figures")
    parser.add_argument("--no-write", action="store_true",
                        help="do not write bench/results/oof_tta.json (oof_tta_tta.json with --settings tta)")
    args = parser.parse_args(argv)
    if args.seed:
        args.work = args.work / f"seed{args.seed}"
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    data = phantom(args.work, args.n, args.size, args.n_test1, args.n_test2, args.folds, args.seed)
    patients = {1: test_patients(data, "test1"), 2: test_patients(data, "test2")}
    print(f"test sets: phase 1 {args.n_test1} slices from {patients[1]} patients, phase 2 {args.n_test2} from "
          f"{patients[2]}")
    results, rows = {}, []
    chosen = SETTINGS if args.settings == "all" else dict(list(SETTINGS.items())[1:])
    for setting, sets in chosen.items():
        results[setting] = {"phase1": phase1(setting, sets, data, args.work, args),
                            "phase2": phase2(setting, sets, data, args.work, args)}
        rows += rows_phase1(setting, results[setting]["phase1"]) + rows_phase2(setting, results[setting]["phase2"])
        by = setting + BY_PATIENT
        results[by] = {"phase1": phase1(by, sets, data, args.work, args, patients=patients[1]),
                       "phase2": phase2(by, sets, data, args.work, args, patients=patients[2])}
        rows += rows_phase1(by, results[by]["phase1"]) + rows_phase2(by, results[by]["phase2"])
        rows += rows_nested(setting, results[setting]["phase1"], results[setting]["phase2"])
        rows += rows_nested(by, results[by]["phase1"], results[by]["phase2"])
    if args.no_diagnostics:
        return report(rows, results, {}, None, data, patients, start, args)
    (plain, _, tta, _) = results.values()
    # the OOF of tiny_seg is stored at oof_size 64 and upsampled to 128 px for the search, the test predicted at
    # 128: the same TTA fold models with their OOF made again at the test's resolution
    fine = f"TTA OOF at oof_size {args.size} (phase 2)"
    remade_oof(Path(tta["phase2"]["run"]), args.work / "runs" / "seg_tta_full", oof_size=args.size)
    results[fine] = {"phase2": phase2(fine, [], data, args.work, args, name="seg_tta_full")}
    rows += rows_phase2(fine, results[fine]["phase2"])
    same = {task: same_weights(Path(plain[task]["run"]), Path(tta[task]["run"])) for task in ("phase1", "phase2")}
    diagnostics = {}
    for setting, r in ((k, v) for k, v in results.items() if "phase1" in v):
        t = r["phase1"]["spec"]["threshold"]
        diagnostics[setting] = {
            "stroke_threshold": t["value"], "stroke_plateau": t.get("plateau"), "oof_prior": t.get("oof_prior"),
            "oof_mean_prob": r["phase1"]["oof_mean_prob"], "test_best": r["phase1"]["test_best"],
            "oof_auc": r["phase1"]["spec"]["oof"]["intervals"].get("auc"),
            "test_auc": r["phase1"]["score"].get("auc"),
            "seg_postprocess": r["phase2"]["spec"]["postprocess"]}
        print(f"{setting}: {json.dumps(diagnostics[setting], default=str)}")
    for setting, r in ((k, v) for k, v in results.items() if not k.endswith(BY_PATIENT)):
        # each fold's model alone on the test sets, tuned as the setting
        diagnostics.setdefault(setting, {})["seg_postprocess"] = r["phase2"]["spec"]["postprocess"]
        diagnostics[setting]["one_fold_test"] = {
            phase: one_fold_figures(args.work / "ensembles" / f"{Path(r[phase]['run']).name}.yaml", int(phase[-1]),
                                    data, args.work) for phase in ("phase1", "phase2") if phase in r}
        for phase, folds in list(diagnostics[setting]["one_fold_test"].items()):
            means = {k: round(float(np.mean([f[k] for f in folds])), 4) for k in folds[0] if k != "fold"}
            diagnostics[setting]["one_fold_test"][f"{phase}_mean"] = means
            print(f"{setting}, {phase}, one fold model alone (mean of {len(folds)}): {means}")
    print(f"same fold weights in both settings: {same}")
    return report(rows, results, diagnostics, same, data, patients, start, args)


MIMICS = "old_infarct|streaks"  # phantom findings that look like a lesion (phantom/lesions.py)


def mimic_breakdown(score: dict, data: Path) -> dict:
    """Phase 2: the test's official IoU on slices with and without a lesion mimic, and each set's mimic share
    (the phantom's truth table): how much of a gap the test's patient mix explains."""
    import pandas as pd

    truth = pd.read_csv(data / "phantom_truth.csv").set_index("id")
    mimic = truth["findings"].fillna("").str.contains(MIMICS)
    per_image = pd.DataFrame(score["per_image"]).set_index("id")
    per_image["mimic"] = mimic.loc[per_image.index].to_numpy()
    lesion_train = truth[(truth["split"] == "train") & (truth["class"] != "no_stroke")].index
    return {"test_iou_with_mimic": float(per_image.loc[per_image["mimic"], "iou"].mean()),
            "test_iou_without_mimic": float(per_image.loc[~per_image["mimic"], "iou"].mean()),
            "test_mimic_share": float(per_image["mimic"].mean()),
            "train_lesion_mimic_share": float(mimic.loc[lesion_train].mean()),
            "test_iou_at_train_share": float(mimic.loc[lesion_train].mean()
                                             * per_image.loc[per_image["mimic"], "iou"].mean()
                                             + (1 - mimic.loc[lesion_train].mean())
                                             * per_image.loc[~per_image["mimic"], "iou"].mean())}


def report(rows, results, diagnostics, same, data: Path, patients: dict, start: float, args) -> int:
    """Print the table and write the JSON."""
    for setting, r in results.items():
        diagnostics.setdefault(setting, {})["phase2_mimics"] = mimic_breakdown(r["phase2"]["score"], data)
        print(f"{setting}, phase 2 by lesion mimics: {diagnostics[setting]['phase2_mimics']}")
    interval = lambda v: f"{v[0]:.3f}, {v[1]:.3f}"
    print(table([[r["setting"], r["phase"], r["metric"], f"{r['oof']:.3f} [{interval(r['oof_95'])}]",
                  f"{r['test']:.3f} [{interval(r['test_95'])}]", f"{r['gap']:+.3f}", "yes" if r["inside"] else "NO"]
                 for r in rows], ["setting", "phase", "figure", "OOF estimate [95 %]", "test [95 %]", "gap",
                                  "inside OOF interval"]))
    print(f"{time.time() - start:.0f} s")
    if not args.no_write:
        name = ("oof_tta" if args.settings == "all" else "oof_tta_tta") + (f"_seed{args.seed}" if args.seed else "")
        write_result(name, {
            "machine": machine(), "phantom": {"n": args.n, "size": args.size, "seed": args.seed, "n_test1": args.n_test1,
                                              "n_test2": args.n_test2, "folds": args.folds, "data": str(data),
                                              "test_patients": {f"phase{k}": v for k, v in patients.items()}},
            "set": args.set, "submit_tta": SUBMIT_TTA, "rows": rows, "diagnostics": diagnostics,
            "thresholds": {k: v["phase1"]["spec"]["threshold"]["value"] for k, v in results.items() if "phase1" in v},
            "postprocess": {k: v["phase2"]["spec"]["postprocess"] for k, v in results.items()},
            "same_fold_weights": same, "wall_s": round(time.time() - start)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
