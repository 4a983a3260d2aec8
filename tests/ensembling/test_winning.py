"""Issue 10 items 2-4. On constructed OOF: the joint search under the organisers' counting and the
never-empty rule equals an image-by-image evaluation with infer.py's and score.py's functions; the triplet
rule; prior shift. On the phantom, through the scripts: ensemble.py's reported score is what infer.py +
score.py give on the same images, and a phase-2 submission has no empty mask. (Bootstrap: test_bootstrap.py.)
"""
import contextlib
import importlib
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import ndimage

from strokekit.evaluation import metrics, prior
from strokekit.postprocess.decide import fill_region, phase2_class_map
from strokekit.postprocess.steps import resize_probs
from strokekit.ensembling.selection import tune_classifier_threshold
from strokekit.data.submission import read_phase2_mask
from strokekit.ensembling.seg_search import choose_postprocess, evaluate_objectives, row_to_spec, run_search
from conftest import small_phantom
from helpers import random_seg_oof

ROOT = Path(__file__).resolve().parents[2]

GRID = {"threshold": [None, 0.3, 0.6, 0.95], "overlap": ["argmax", "hemorrhagic"], "closing": [0, 1],
        "min_area": [0, 8], "keep_largest": [False, True], "gate": [None, 0.5],
        "triplet": [None, {"high": 0.8, "min_pixels": 6}]}


@pytest.mark.parametrize("never_empty", [False, True])
@pytest.mark.parametrize("reduction", ["macro-imagewise", "micro"])
def test_joint_search_equals_exact_evaluation_under_every_objective(never_empty, reduction):
    oof, masks = random_seg_oof(n=8)
    masks[7] = np.zeros_like(masks[7])                      # a slice without lesion: official empty rule
    image_probs = np.linspace(0.1, 0.9, 8)
    search = run_search(oof, masks, GRID, "official_iou", reduction, image_probs=image_probs,
                        never_empty=never_empty)
    table = search.table
    assert len(table) == (4 * 2) ** 2 * 2 * (2 * 2 * 4) ** 2
    rows = pd.concat([table.head(2), table.sample(10, random_state=1), table.tail(2),
                      table[table["threshold.ischemic"] == 0.95].head(2)])     # settings that leave nothing
    emptied = 0
    for _, row in rows.iterrows():
        spec = row_to_spec(row, never_empty)
        exact = evaluate_objectives(oof, masks, spec, image_probs, phase2=True, reduction=reduction)
        for name, value in exact.items():
            assert row[f"score.{name}"] == pytest.approx(value, nan_ok=True), (name, spec)
        emptied += sum(not phase2_class_map(resize_probs(p, 40), spec, fallback=False,
                                            image_prob=image_probs[i])[0].any() for i, p in enumerate(oof["probs"]))
    assert table["score"].equals(table["score.official_iou"])
    if never_empty:
        assert emptied > 0                                   # the fill was exercised, and counted right


def two_component_probs(size=32):
    """Ischemic components peaking at 0.45 and 0.55, a hemorrhagic one at 0.5, all below a 0.6 threshold."""
    probs = np.zeros((3, size, size), np.float32)
    probs[1, 2:6, 2:6], probs[1, 4, 4] = 0.40, 0.45
    probs[1, 20:24, 20:24], probs[1, 22, 22] = 0.40, 0.55
    probs[2, 10:13, 25:28] = 0.5
    probs[0] = 1 - probs[1:].sum(0)
    return probs


def test_never_empty_keeps_the_most_probable_component_of_the_more_likely_class():
    probs = two_component_probs()
    spec = {"threshold": 0.35, "min_area": 1000}
    class_map, used = phase2_class_map(probs, spec)
    assert used and set(np.unique(class_map)) == {0, 1}
    assert class_map[22, 22] == 1 and class_map[20:24, 20:24].all() and class_map.sum() == 16
    assert not phase2_class_map(probs, {**spec, "never_empty": False})[0].any()
    assert not phase2_class_map(probs, spec, fallback=False)[0].any()           # infer.py --no-fallback
    hem = fill_region(probs, spec, lesion_class=2)            # a type classifier's decision wins
    assert (hem == 2).sum() == 9 and hem[11, 26] == 2
    peak = fill_region(probs, {"threshold": 0.9})             # nothing passes: the region around the peak
    assert peak[22, 22] == 1 and peak.any()
    wide = fill_region(probs, {"threshold": 0.3}, max_area=0.01)  # a component over 1 % of 1024 px is cut
    assert wide[22, 22] == 1 and (wide == 1).sum() == 10 and not (wide == 2).any()


def triplet_oof(n=16, size=40, seed=0):
    """Lesion slices: a core of 0.9 inside a rim of 0.55; lesion-free slices: mimics of 0.6 with no core.
    Threshold 0.5 draws rims and mimics; only the triplet rule (>= 6 px at 0.8) tells them apart."""
    rng = np.random.default_rng(seed)
    probs, masks = np.zeros((n, 3, size, size), np.float32), {}
    for i in range(n):
        true = np.zeros((size, size), np.uint8)
        y, x = rng.integers(5, size - 15, 2)
        blob = np.zeros((size, size), bool)
        blob[y:y + 9, x:x + 9] = True
        p = np.where(blob, 0.6, 0.02).astype(np.float32)
        if i % 2 == 0:
            true[blob] = 1
            p[blob] = 0.55
            p[ndimage.binary_erosion(blob, iterations=3)] = 0.9
        probs[i, 1], probs[i, 2] = p, 0.01
        probs[i, 0] = 1 - probs[i, 1:].sum(0)
        masks[i] = true
    return {"image_id": np.arange(n), "probs": probs, "fold": np.arange(n) % 2}, masks


def test_triplet_rule_is_found_by_the_search_and_draws_with_the_low_threshold():
    oof, masks = triplet_oof()
    grid = {"threshold": [0.5, 0.7], "triplet": [None, {"high": 0.8, "min_pixels": 6},
                                                 {"high": 0.8, "min_pixels": 100}]}
    table = run_search(oof, masks, grid, "official_iou").table
    best = choose_postprocess(table, tolerance=0.0)
    assert best["spec"]["threshold"]["ischemic"] == 0.5
    assert best["spec"]["triplet"]["min_pixels"]["ischemic"] == 6 and best["score"] == pytest.approx(1.0)
    no_triplet = table[(table["triplet_min_pixels.ischemic"] == 0) & (table["threshold.ischemic"] == 0.5)]
    assert no_triplet["score"].max() < 0.75                   # the mimics cost half the slices
    drawn = phase2_class_map(oof["probs"][0], best["spec"])[0]
    assert (drawn == 1).sum() == 81                            # the whole 9x9 rim, not the 3x3 core


def test_prior_shift_reweights_like_a_resampled_test_set():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.5).astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
    # a test share of 1/3 from an OOF share of ~1/2 weighs negatives ~twice as much as positives
    weights = prior.prior_weights(y, 1 / 3)
    assert np.average(y, weights=weights) == pytest.approx(1 / 3)
    doubled = np.r_[y, y[y == 0]], np.r_[p, p[y == 0]]
    exact_share = doubled[0].mean()
    table = prior.threshold_table(y, p, prior.prior_weights(y, exact_share))
    plain = metrics.threshold_table(*doubled)
    np.testing.assert_allclose(table["precision"], plain["precision"])
    np.testing.assert_allclose(table["recall"], plain["recall"])
    low = tune_classifier_threshold(y, p, "f1", test_prior=0.1, tolerance=0.0)
    same = tune_classifier_threshold(y, p, "f1", tolerance=0.0)
    assert low["threshold"] > same["threshold"]                # rarer positives: a stricter threshold
    assert low["oof"]["recall"] == pytest.approx(metrics.recall(y, p, low["threshold"]))
    assert low["oof"]["precision"] < low["oof_unweighted"]["precision"]
    assert low["test_prior"] == 0.1 and low["oof_prior"] == pytest.approx(y.mean())
    recall = tune_classifier_threshold(y, p, "recall", 0.9, test_prior=0.1)
    assert metrics.recall(y, p, recall["threshold"]) >= 0.9     # the recall target holds under any prior
    shifted = prior.shift_probs(p, y.mean(), 0.1)
    assert np.allclose(prior.shift_probs(shifted, 0.1, y.mean()), p, atol=1e-9)
    assert prior.shift_probs([0.5], 0.5, 0.2)[0] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="test prior"):
        prior.prior_weights(y, 1.5)


# --------------------------------------------------------------------------- the phantom, through the scripts


def run_main(script: str, *args) -> str:
    """A script's main() in this process (no interpreter start-up); what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = importlib.import_module(script).main([str(a) for a in args])
    assert status == 0, f"{script} exited {status}\n{printed.getvalue()}"
    return printed.getvalue()


@pytest.fixture(scope="module")
def one_fold(tmp_path_factory, one_thread) -> SimpleNamespace:
    """A tiny U-Net trained briefly on fold 1 of a phantom: its OOF (fold 0) is exactly what its checkpoint
    predicts for those images, so infer.py on them must reproduce the OOF search's figures. (Two epochs
    learn little; the check is that the figures agree, on masks the search made non-trivial.)"""
    root = tmp_path_factory.mktemp("winning")
    data = small_phantom(root, n=60, seed=4, size=64, n_test1=2, n_test2=6)
    config = {"task": "seg", "model": "tiny_unet", "img_size": 64, "oof_size": 64, "epochs": 2, "loss": "ce",
              "class_weights": [1, 10, 10], "batch_size": 8, "num_workers": 0, "lr": 3.0e-3, "seed": 1,
              "aug": {"shift_scale_rotate": 0.0}, "data": str(data), "name": "seg_w"}
    (root / "seg_w.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    run_main("train", "--config", root / "seg_w.yaml", "--fold", 0, "--out", root / "runs", "--no-progress")
    spec = root / "ens" / "seg.yaml"
    stdout = run_main("ensemble", "--task", "seg", root / "runs" / "seg_w", "--data", data, "--metric",
                      "official_iou", "--n-boot", 200, "--out", spec)   # --tta: the OOF's own flips
    return SimpleNamespace(root=root, data=data, spec=spec, stdout=stdout)


def test_searched_score_is_what_infer_and_score_give_on_the_same_images(one_fold):
    spec = yaml.safe_load(one_fold.spec.read_text(encoding="utf-8"))
    assert spec["postprocess"]["never_empty"] and spec["postprocess_search"]["lesion_only"]
    assert "best by official_iou" in one_fold.stdout and "best by dice" in one_fold.stdout
    with np.load(one_fold.root / "runs" / "seg_w" / "fold0" / "oof.npz") as oof:
        ids = oof["image_id"].tolist()
    same = one_fold.root / "YARISMA_2"                # the searched OOF images, laid out as a phase-2 test set
    masks = sorted((one_fold.data).glob("**/MASK/*.png"))
    lesion = {}
    for path in masks:
        if int(path.stem) in ids and np.asarray(read_phase2_mask(path)).any():
            lesion[int(path.stem)] = path
    assert len(lesion) == spec["oof"]["n_images_searched"] >= 5
    for image_id, mask in lesion.items():
        for kind, source in (("MASK", mask), ("PNG", mask.parent.parent / "PNG" / f"{image_id}.png")):
            (same / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, same / kind / f"{image_id}.png")
    sub = one_fold.root / "sub_same"
    run_main("infer", "--phase", 2, "--ensemble", one_fold.spec, "--data", same, "--out", sub)
    run_main("score", "--phase", 2, "--pred", sub, "--truth", same / "MASK", "--out", one_fold.root / "s.json")
    scored = json.loads((one_fold.root / "s.json").read_text())
    reported = spec["oof"]
    assert reported["postprocessed"] > 0 and reported["objectives"]["dice"] > 0   # not empty against empty
    official = scored["official"]["mean_imagewise"]
    assert official["iou"] == pytest.approx(reported["postprocessed"], rel=1e-3)
    assert official["dice"] == pytest.approx(reported["objectives"]["official_dice"], rel=1e-3)
    strict = scored["strict"]["dice_macro_imagewise_lesion_mean"]
    assert strict == pytest.approx(reported["objectives"]["dice"], rel=1e-3)
    interval = reported["postprocessed_interval"]
    assert interval["low"] <= reported["postprocessed"] <= interval["high"] and interval["size"] == 97


def test_phase2_submission_never_holds_an_empty_mask(one_fold):
    spec = yaml.safe_load(one_fold.spec.read_text(encoding="utf-8"))
    spec["postprocess"]["min_area"] = {"ischemic": 10**6, "hemorrhagic": 10**6}   # removes every lesion
    harsh = one_fold.spec.with_name("harsh.yaml")
    harsh.write_text(yaml.safe_dump(spec), encoding="utf-8")
    out = one_fold.root / "sub_p2"
    run_main("infer", "--phase", 2, "--ensemble", harsh, "--data", one_fold.data / "YARISMA_2", "--out", out)
    files = sorted(out.glob("*.png"))
    assert len(files) == 6 and all(read_phase2_mask(f).any() for f in files)
    types = pd.read_csv(out / "types.csv")
    assert (types["fallback"] == 1).all() and (types["lesion_pixels"] < 64 * 64 * 0.2).all()
