"""The full loop on the phantom, through the real scripts: train.py (two tiny configs x 2 folds per task)
-> ensemble.py picks folds, members and thresholds / post-processing on OOF -> infer.py writes both
phases' submissions for the phantom's test folders -> score.py scores them.

The decisions written in the spec are checked against the OOF files independently (blend recomputed,
recall at the threshold recounted), the submissions against the test folders' ids and the validators.
The phase-1 test runs infer.py and score.py as processes; the other script calls run their main() in this
process from the same working directory (`run_here`), which spares an interpreter start-up each.
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from phantom_loop import CONFIGS, TARGET_RECALL, run_main, run_script  # session fixtures: through conftest.py

from strokekit.evaluation import metrics
from strokekit.data.index import build_index
from strokekit.postprocess.decide import phase2_class_map, type_class
from strokekit.ensembling.spec import combine, read_spec, write_spec
from strokekit.inference.predict import EnsemblePredictor
from strokekit.ensembling.selection import align_members, classifier_score, load_oof
from strokekit.data.submission import mask_files, read_labels, read_phase2_mask, validate_phase1, validate_phase2

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the in-process scripts on a busy 2-core runner


@pytest.fixture
def run_here(capsys):
    """run_script's twin without a new interpreter: the script's main() in this process, from `cwd`, giving its
    exit status and output as a CompletedProcess."""
    def run(script: str, *args, cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
        capsys.readouterr()
        before = os.getcwd()
        os.chdir(cwd)
        try:
            code = run_main(script.removesuffix(".py"), *args)
        finally:
            os.chdir(before)
        out = capsys.readouterr()
        assert code == expect, f"{script} exited {code}\n{out.out}\n{out.err}"
        return subprocess.CompletedProcess([script, *map(str, args)], code, out.out, out.err)
    return run


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


def one_fold_predictor(fold_dir, task: str, flips, path) -> EnsemblePredictor:
    decision = {"postprocess": {}} if task == "seg" else {"threshold": {"value": 0.5}}
    spec = write_spec({"task": task, "blend": "mean", "tta": list(flips), **decision, "members": [
        {"name": fold_dir.parent.name, "checkpoints": [str(fold_dir / "best.pt")], "weight": 1.0}]}, path)
    return EnsemblePredictor(spec, device="cpu", batch_size=7)


def test_inference_reproduces_the_validation_pass(loop, tmp_path):
    """infer's path (predict.py) on a fold's own validation images gives that fold's OOF probabilities:
    preprocessing, model rebuild, softmax and the TTA flips (config oof_tta, default none + hflip, which
    ensemble.py passes on to the spec) are exactly what the fold's final OOF pass used. Without the flips the
    figures differ, so the check can tell."""
    index = build_index(loop.data)[0].set_index("image_id")
    for name in ("stroke_b", "seg_a"):
        fold_dir = loop.runs / name / "fold0"
        task = CONFIGS[name]["task"]
        flips = json.loads((fold_dir / "summary.json").read_text())["oof_tta"]
        assert flips == ["none", "hflip"]
        predictor = one_fold_predictor(fold_dir, task, flips, tmp_path / f"{name}.yaml")
        plain = one_fold_predictor(fold_dir, task, ["none"], tmp_path / f"{name}_plain.yaml")
        if task == "seg":
            with np.load(fold_dir / "oof.npz") as oof:
                ids, expected = oof["image_id"], oof["probs"].astype(np.float32)
            got = dict(predictor.iter_seg(index.loc[ids].reset_index()))
            np.testing.assert_allclose(np.stack([got[i] for i in ids]), expected, atol=2e-3)  # OOF is float16
            without = dict(plain.iter_seg(index.loc[ids].reset_index()))
            assert np.abs(np.stack([without[i] for i in ids]) - expected).max() > 1e-2
        else:
            oof = pd.read_csv(fold_dir / "oof.csv")
            rows = index.loc[oof["image_id"]].reset_index()
            np.testing.assert_allclose(predictor.predict_classifier(rows)["prob"], oof["prob"], atol=1e-5)
            assert np.abs(plain.predict_classifier(rows)["prob"] - oof["prob"]).max() > 1e-4


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


def test_phase1_from_data_root_with_split_matches_and_refuses_overwrite(loop, stroke_spec, run_here):
    spec_path, _ = stroke_spec
    first, second = loop.root / "submissions" / "root_a", loop.root / "submissions" / "root_b"
    for out in (first, second):
        run_here("infer.py", "--phase", 1, "--ensemble", spec_path, "--data", loop.data, "--split", "test1",
                   "--out", out, "--batch-size", 5, "--tta", "none", cwd=loop.root)
    assert (first / "asama1.txt").read_bytes() == (second / "asama1.txt").read_bytes()
    before = (first / "asama1.txt").stat().st_mtime_ns
    proc = run_here("infer.py", "--phase", 1, "--ensemble", spec_path, "--data", loop.data, "--split", "test1",
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


def test_phase2_submission_is_valid_with_no_empty_mask(loop, seg_spec, type_spec, run_here):
    spec_path, _ = seg_spec
    out = loop.root / "submissions" / "p2"
    proc = run_here("infer.py", "--phase", 2, "--ensemble", spec_path, "--type-ensemble", type_spec,
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
    run_here("score.py", "--phase", 2, "--pred", out, "--truth", truth_dir, "--out", score_json, cwd=loop.root)
    scores = json.loads(score_json.read_text())
    assert scores["n_images"] == len(ids) and not scores["missing_ids"] and not scores["invalid"]
    official = scores["official"]["mean_imagewise"]
    assert 0.0 <= official["iou"] <= official["dice"] <= 1.0
    print(f"phase 2 on the phantom: official IoU {official['iou']:.3f}, Dice {official['dice']:.3f}")


def test_gated_seg_spec_needs_its_classifier_and_gates_as_it_says(loop, seg_spec, stroke_spec, type_spec,
                                                                  run_here):
    """A seg spec whose post-processing gates the lesion classes (ensemble.py --gate-runs): infer.py refuses it
    without the classifier. A stroke gate: a mask is the ungated mask where P(stroke) >= the gate, empty below.
    A type gate (type-conditioned segmentation): each class is kept only where its type probability reaches
    the gate, so at 0.5 a mask keeps the class the type ensemble chose and loses the other."""
    import yaml

    test_dir, tmp = loop.data / "YARISMA_2", loop.root / "gate"
    run_here("infer.py", "--phase", 1, "--ensemble", stroke_spec[0], "--data", loop.data, "--split", "test2",
               "--out", tmp / "p1", cwd=loop.root)
    p_stroke = pd.read_csv(tmp / "p1" / "probs.csv").set_index("image_id")["prob"]
    spec = yaml.safe_load(seg_spec[0].read_text(encoding="utf-8"))
    spec["postprocess"] = {"threshold": 0.02}  # permissive: the tiny U-Net's masks are not empty

    def write(name: str, gate: float | None, kind: str = "stroke") -> Path:
        path = seg_spec[0].with_name(f"{name}.yaml")
        search = {**spec["postprocess_search"], "gate_kind": kind}
        path.write_text(yaml.safe_dump({**spec, "postprocess": {**spec["postprocess"], "gate": gate},
                                        "postprocess_search": search}), encoding="utf-8")
        return path

    def masks(name: str, *source) -> dict:
        run_here("infer.py", "--phase", 2, "--ensemble", *source, "--data", test_dir, "--out", tmp / name,
                   "--no-fallback", cwd=loop.root)
        return {i: read_phase2_mask(f) for i, f in mask_files(tmp / name).items()}

    plain = masks("plain", write("seg_plain", None))
    drawn = sorted(p_stroke[i] for i, m in plain.items() if m.any())
    assert len(drawn) >= 2, "the permissive spec should draw lesions on several test images"
    gate = float((drawn[len(drawn) // 2 - 1] + drawn[len(drawn) // 2]) / 2)  # some drawn masks on either side
    gated = write("seg_gated", gate)
    refused = run_here("infer.py", "--phase", 2, "--ensemble", gated, "--data", test_dir, "--out", tmp / "no",
                         cwd=loop.root, expect=2)
    assert "--gate-ensemble" in refused.stderr and not (tmp / "no").exists()
    kept = masks("gated", gated, "--gate-ensemble", stroke_spec[0])
    below = [i for i in plain if p_stroke[i] < gate]
    assert any(plain[i].any() for i in below) and len(below) < len(plain)
    assert all(not kept[i].any() for i in below)
    assert all(np.array_equal(kept[i], plain[i]) for i in plain if p_stroke[i] >= gate)
    # type-conditioned: ensemble.py tunes a type gate on the type runs' OOF; infer.py applies it per class
    tuned = run_here("ensemble.py", "--task", "seg", loop.runs / "seg_a", "--gate-runs", loop.runs / "type_a",
                       "--out", tmp / "seg_type_gate.yaml", cwd=loop.root)
    assert yaml.safe_load((tmp / "seg_type_gate.yaml").read_text())["postprocess_search"]["gate_kind"] == "type"
    assert "gate" in tuned.stdout
    by_type = masks("type_gated", write("seg_type_gated", 0.5, "type"), "--type-ensemble", type_spec)
    types = pd.read_csv(tmp / "type_gated" / "types.csv").set_index("image_id")
    dropped = {i: 1 if types.at[i, "p_hemorrhagic"] >= 0.5 else 2 for i in plain}
    assert len(set(dropped.values())) == 2 or len(plain) < 4  # both types chosen somewhere
    assert any((plain[i] == dropped[i]).any() for i in plain)   # the gate has something to remove
    assert all(np.array_equal(by_type[i], np.where(plain[i] == dropped[i], 0, plain[i])) for i in plain)


def test_ensemble_refuses_runs_of_another_task(loop, run_here):
    proc = run_here("ensemble.py", "--task", "stroke", loop.runs / "seg_a", "--out", loop.root / "x.yaml",
                      cwd=loop.root, expect=2)
    assert "trained another task" in proc.stderr and not (loop.root / "x.yaml").exists()
