"""The full loop on the phantom, through the real scripts: train.py (two tiny configs x 2 folds per task)
-> ensemble.py picks folds, members and thresholds / post-processing on OOF -> infer.py writes both
phases' submissions for the phantom's test folders -> score.py scores them.

The decisions written in the spec are checked against the OOF files independently (blend recomputed,
recall at the threshold recounted), the submissions against the test folders' ids and the validators.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from strokekit import metrics
from strokekit.data.index import build_index
from strokekit.decide import phase2_class_map, type_class
from strokekit.ensemble_spec import combine, read_spec, write_spec
from strokekit.phantom import make_phantom
from strokekit.predict import EnsemblePredictor
from strokekit.selection import align_members, classifier_score, load_oof
from strokekit.submission import mask_files, read_labels, read_phase2_mask, validate_phase1, validate_phase2

ROOT = Path(__file__).resolve().parents[1]
TARGET_RECALL = 0.9
TINY = {"num_workers": 0, "batch_size": 16, "lr": 3.0e-3, "aug": {"shift_scale_rotate": 0.0}}
CONFIGS = {  # two configs per task with different preprocessing, so inference reads images two ways
    "stroke_a": {"task": "stroke", "model": "tiny_cnn", "img_size": 64, "epochs": 8, "seed": 1},
    "stroke_b": {"task": "stroke", "model": "tiny_cnn", "img_size": 48, "mean": 0.45, "epochs": 8,
                 "lr": 1.0e-3, "seed": 2},
    "seg_a": {"task": "seg", "model": "tiny_unet", "img_size": 64, "oof_size": 64, "epochs": 10, "loss": "ce",
              "class_weights": [1, 5, 5], "batch_size": 8, "seed": 1},
    "seg_b": {"task": "seg", "model": "tiny_unet", "img_size": 32, "oof_size": 32, "epochs": 10, "loss": "ce",
              "class_weights": [1, 5, 5], "batch_size": 8, "lr": 2.0e-3, "seed": 2},
    "type_a": {"task": "type", "model": "tiny_cnn", "img_size": 64, "epochs": 10, "lr": 2.0e-3, "seed": 1},
}


def run_script(script: str, *args, cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == expect, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def train_all(root: Path, data: Path, parallel: int = 2) -> Path:
    """train.py --fold all for every config, `parallel` at a time with one thread each (2 CPU cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    (root / "configs").mkdir()
    pending, running = list(CONFIGS.items()), []
    while pending or running:
        while pending and len(running) < parallel:
            name, cfg = pending.pop(0)
            path = root / "configs" / f"{name}.yaml"
            path.write_text(yaml.safe_dump({**TINY, **cfg, "data": str(data)}), encoding="utf-8")
            command = [sys.executable, str(ROOT / "train.py"), "--config", str(path), "--fold", "all",
                       "--out", str(root / "runs"), "--no-progress"]
            running.append(subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True))
        proc = running.pop(0)
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{proc.args}\n{output}"
    return root / "runs"


@pytest.fixture(scope="session")
def loop(tmp_path_factory) -> SimpleNamespace:
    """One phantom, its folds, and every config trained on 2 folds (shared by all tests here)."""
    root = tmp_path_factory.mktemp("loop")
    data = make_phantom(root / "data", n=240, seed=3, size=64, n_test1=60, n_test2=16)
    run_script("kfold.py", "--data", data, "--folds", 2, cwd=root)
    return SimpleNamespace(root=root, data=data, runs=train_all(root, data))


@pytest.fixture(scope="session")
def stroke_spec(loop) -> tuple[Path, str]:
    out = loop.root / "ensembles" / "stroke.yaml"
    proc = run_script("ensemble.py", "--task", "stroke", loop.runs / "stroke_a", loop.runs / "stroke_b",
                      "--top-k", 1, "--greedy", "--blend", "auto", "--objective", "recall",
                      "--target-recall", TARGET_RECALL, "--out", out, cwd=loop.root)
    return out, proc.stdout


@pytest.fixture(scope="session")
def seg_spec(loop) -> tuple[Path, str]:
    out = loop.root / "ensembles" / "seg.yaml"
    proc = run_script("ensemble.py", "--task", "seg", loop.runs / "seg_a", loop.runs / "seg_b", "--greedy",
                      "--seg-classifier", "type", "--out", out, cwd=loop.root)
    return out, proc.stdout


@pytest.fixture(scope="session")
def type_spec(loop) -> Path:
    out = loop.root / "ensembles" / "type.yaml"
    run_script("ensemble.py", "--task", "type", loop.runs / "type_a", "--objective", "youden", "--out", out,
               cwd=loop.root)
    return out


def test_stroke_spec_decisions_hold_on_the_oof_files(loop, stroke_spec):
    path, stdout = stroke_spec
    spec = read_spec(path)
    assert "ENSEMBLE" in stdout and "threshold" in stdout
    assert all(len(m["folds"]) == len(m["checkpoint_paths"]) == 1 for m in spec["members"])  # --top-k 1
    # recompute the blended OOF from the run folders, with the spec's members, weights and blend
    oofs = {name: load_oof(loop.runs / name) for name in ("stroke_a", "stroke_b")}
    aligned = align_members(oofs)
    names = [m["name"] for m in spec["members"]]
    probs = np.stack([aligned[n].to_numpy() for n in names])
    member_t = [m["threshold"] for m in spec["members"]]
    blended = combine(probs, spec["blend"], [m["weight"] for m in spec["members"]], member_t)
    y = aligned["target"].to_numpy()
    singles = {n: classifier_score(y, aligned[n], "auc") for n in oofs}
    assert classifier_score(y, blended, "auc") == pytest.approx(spec["oof"]["ensemble"])
    assert spec["oof"]["ensemble"] >= max(singles.values()) - 1e-12   # never below its best member
    recall = metrics.recall(y, blended, spec["threshold"]["value"])
    assert recall >= TARGET_RECALL and recall == pytest.approx(spec["threshold"]["oof"]["recall"])
    assert spec["threshold"]["target_recall"] == TARGET_RECALL
    assert (path.parent / spec["oof"]["folds_table"]).is_file()


def test_inference_reproduces_the_validation_pass(loop, tmp_path):
    """infer's path (predict.py) on a fold's own validation images gives that fold's OOF probabilities:
    preprocessing, model rebuild and softmax at inference are exactly what training validated with."""
    index = build_index(loop.data)[0].set_index("image_id")
    for name in ("stroke_b", "seg_a"):
        fold_dir = loop.runs / name / "fold0"
        task = CONFIGS[name]["task"]
        decision = {"postprocess": {}} if task == "seg" else {"threshold": {"value": 0.5}}
        spec = write_spec({"task": task, "blend": "mean", "tta": ["none"], **decision, "members": [
            {"name": name, "checkpoints": [str(fold_dir / "best.pt")], "weight": 1.0}]}, tmp_path / f"{name}.yaml")
        predictor = EnsemblePredictor(spec, device="cpu", batch_size=7)
        if task == "seg":
            with np.load(fold_dir / "oof.npz") as oof:
                ids, expected = oof["image_id"], oof["probs"].astype(np.float32)
            got = dict(predictor.iter_seg(index.loc[ids].reset_index()))
            np.testing.assert_allclose(np.stack([got[i] for i in ids]), expected, atol=2e-3)  # OOF is float16
        else:
            oof = pd.read_csv(fold_dir / "oof.csv")
            got = predictor.predict_classifier(index.loc[oof["image_id"]].reset_index())
            np.testing.assert_allclose(got["prob"], oof["prob"], atol=1e-5)


def test_phase1_submission_is_valid_and_scored(loop, stroke_spec):
    spec_path, _ = stroke_spec
    out = loop.root / "submissions" / "p1"
    proc = run_script("infer.py", "--phase", 1, "--ensemble", spec_path, "--data", loop.data / "YARISMA_1",
                      "--out", out, "--batch-size", 8, cwd=loop.root)
    assert "forward passes" in proc.stdout and "images/s" in proc.stdout
    key = loop.data / "YARISMA_1" / "ASAMA1_Cevaplar.txt"
    truth = read_labels(key)
    labels = validate_phase1(out / "asama1.txt", expected_ids=sorted(truth))
    assert sorted(labels) == sorted(truth)
    probs = pd.read_csv(out / "probs.csv").set_index("image_id")
    threshold = read_spec(spec_path)["threshold"]["value"]
    assert sorted(probs.index) == sorted(truth) and probs["prob"].between(0, 1).all()
    assert all(labels[i] == int(probs.at[i, "prob"] >= threshold) for i in labels)  # the spec's threshold
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["path"] == str(spec_path.resolve()) and manifest["tta"] == ["none", "hflip"]
    assert manifest["threshold"] == pytest.approx(threshold) and manifest["n_images"] == len(truth)
    score_json = loop.root / "scores" / "p1.json"
    run_script("score.py", "--phase", 1, "--pred", out / "asama1.txt", "--truth", key, "--probs",
               out / "probs.csv", "--out", score_json, cwd=loop.root)
    scores = json.loads(score_json.read_text())
    ids = sorted(truth)
    y, pred = np.array([truth[i] for i in ids]), np.array([labels[i] for i in ids])
    assert scores["n_images"] == len(truth) and not scores["missing_ids"] and not scores["format_problems"]
    assert scores["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy(y, pred))
    assert scores["auc"] == pytest.approx(metrics.roc_auc(y, probs.loc[ids, "prob"].to_numpy()))
    print(f"phase 1 on the phantom: balanced accuracy {scores['balanced_accuracy']:.3f}, AUC {scores['auc']:.3f}")


def test_phase1_from_data_root_with_split_matches_and_refuses_overwrite(loop, stroke_spec):
    spec_path, _ = stroke_spec
    first, second = loop.root / "submissions" / "root_a", loop.root / "submissions" / "root_b"
    for out in (first, second):
        run_script("infer.py", "--phase", 1, "--ensemble", spec_path, "--data", loop.data, "--split", "test1",
                   "--out", out, "--batch-size", 5, "--tta", "none", cwd=loop.root)
    assert (first / "asama1.txt").read_bytes() == (second / "asama1.txt").read_bytes()
    before = (first / "asama1.txt").stat().st_mtime_ns
    proc = run_script("infer.py", "--phase", 1, "--ensemble", spec_path, "--data", loop.data, "--split", "test1",
                      "--out", first, cwd=loop.root, expect=2)
    assert "--overwrite" in proc.stderr and (first / "asama1.txt").stat().st_mtime_ns == before


def test_seg_spec_post_processing_was_searched_on_oof(seg_spec):
    path, stdout = seg_spec
    spec = read_spec(path)
    table = pd.read_csv(path.parent / spec["postprocess_search"]["table"])
    assert len(table) == spec["postprocess_search"]["rows"] > 100
    assert table["score"].max() == pytest.approx(spec["oof"]["postprocessed_best"])
    assert spec["oof"]["ensemble_neutral_postprocess"] >= spec["oof"]["best_member"] - 1e-12
    assert spec["seg_classifier"]["target"] == "type"
    assert "post-processing grid" in stdout


def test_phase2_submission_is_valid_with_no_empty_mask(loop, seg_spec, type_spec):
    spec_path, _ = seg_spec
    out = loop.root / "submissions" / "p2"
    proc = run_script("infer.py", "--phase", 2, "--ensemble", spec_path, "--type-ensemble", type_spec,
                      "--data", loop.data / "YARISMA_2", "--out", out, "--save-probs", cwd=loop.root)
    assert "type ensemble:" in proc.stdout
    truth_dir = loop.data / "YARISMA_2" / "MASK"
    ids = sorted(mask_files(truth_dir))
    files = validate_phase2(out, expected_ids=ids, size=(64, 64))
    masks = {i: read_phase2_mask(p) for i, p in files.items()}
    assert sorted(masks) == ids and all(m.any() for m in masks.values())  # the fallback leaves none empty
    types = pd.read_csv(out / "types.csv").set_index("image_id")
    type_t = read_spec(type_spec)["threshold"]["value"]
    assert sorted(types.index) == ids and (types["type_source"] == "type_ensemble").all()
    assert ((types["p_hemorrhagic"] >= type_t) == (types["type"] == "hemorrhagic")).all()
    spec = read_spec(spec_path)
    with np.load(out / "probs.npz") as saved:  # the masks are the spec's post-processing of these
        assert sorted(saved["image_id"]) == ids
        redo = {i: phase2_class_map(saved[str(i)].astype(np.float32), spec["postprocess"],
                                    lesion_class=type_class(types.at[i, "p_hemorrhagic"], type_t))[0] for i in ids}
    agree = np.mean([np.mean(redo[i] == masks[i]) for i in ids])
    assert agree > 0.99, f"only {agree:.4f} of pixels agree with post-processing the saved probabilities"
    score_json = loop.root / "scores" / "p2.json"
    run_script("score.py", "--phase", 2, "--pred", out, "--truth", truth_dir, "--out", score_json, cwd=loop.root)
    scores = json.loads(score_json.read_text())
    assert scores["n_images"] == len(ids) and not scores["missing_ids"] and not scores["invalid"]
    official = scores["official"]["mean_imagewise"]
    assert 0.0 <= official["iou"] <= official["dice"] <= 1.0
    print(f"phase 2 on the phantom: official IoU {official['iou']:.3f}, Dice {official['dice']:.3f}")


def test_ensemble_refuses_runs_of_another_task(loop):
    proc = run_script("ensemble.py", "--task", "stroke", loop.runs / "seg_a", "--out", loop.root / "x.yaml",
                      cwd=loop.root, expect=2)
    assert "trained another task" in proc.stderr and not (loop.root / "x.yaml").exists()
