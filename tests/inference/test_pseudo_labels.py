"""pseudo.py end to end on the trained phantom loop: no test label ever reaches training, the labels are the
ensemble's decisions, the second round trains on train + pseudo and its OOF never scores a pseudo image, and
bad input is refused.

"No test label is read" is proven two ways: a Python audit hook records every file the labeller opens (none
is under the test set's MASK/), and labelling again with the MASK folder deleted gives byte-identical files.
"""
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from phantom_loop import run_main, run_script_here

PIXEL, IMAGE = 0.5, 0.3   # the loop's 6-epoch tiny U-Nets are unsure: looser filters than the defaults
OPENED: list | None = None


def _audit(event, args):
    if event == "open" and OPENED is not None and args and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # records only while OPENED is a list


def label(spec, data, out, *extra) -> tuple[int, list[str]]:
    global OPENED
    OPENED = []
    try:
        code = run_main("pseudo", "--ensemble", spec, "--data", data, "--out", out, "--device", "cpu",
                        "--pixel-confidence", PIXEL, "--image-confidence", IMAGE, *extra)
    finally:
        opened, OPENED = OPENED, None
    return code, opened


@pytest.fixture(scope="module")
def labelled(loop, seg_spec, tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("pseudo")
    test = Path(shutil.copytree(loop.data / "YARISMA_2", root / "YARISMA_2"))
    assert (test / "MASK").is_dir()  # the truth sits beside the images, as in the released test set
    code, opened = label(seg_spec[0], test, root / "round1")
    assert code == 0
    return SimpleNamespace(root=root, test=test, out=root / "round1", opened=opened,
                           labels=pd.read_csv(root / "round1" / "labels.csv", keep_default_na=False))


def folder_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def test_the_answer_key_is_never_opened(labelled, seg_spec):
    truth = os.path.realpath(labelled.test / "MASK")
    images = [p for p in labelled.opened if Path(p).parent.name in ("PNG", "DICOM")
              and p.startswith(os.path.realpath(labelled.test))]
    assert images, "the audit hook saw no test image opened: it is not recording"
    assert not [p for p in labelled.opened if p.startswith(truth + os.sep)]
    # without the truth at all, the same labels, byte for byte
    shutil.rmtree(labelled.test / "MASK")
    code, _ = label(seg_spec[0], labelled.test, labelled.root / "again")
    assert code == 0
    assert folder_bytes(labelled.root / "again") == folder_bytes(labelled.out)


def test_the_labels_are_the_ensembles_decisions(labelled, seg_spec, loop):
    from strokekit.data.pseudo import read_ignore
    from strokekit.data.readers import read_mask
    from strokekit.inference.pipeline import Pipeline
    from strokekit.inference.predict import EnsemblePredictor
    from strokekit.inference.pseudo_labels import find_unlabelled_rows

    sub = labelled.root / "submission"  # what infer.py --phase 2 submits with the same spec
    assert run_main("infer", "--phase", 2, "--ensemble", seg_spec[0], "--data", loop.data / "YARISMA_2",
                    "--out", sub, "--device", "cpu") == 0
    labels = labelled.labels.set_index("image_id")
    assert sorted(labels.index) == sorted(int(p.stem) for p in (loop.data / "YARISMA_2" / "PNG").glob("*.png"))
    kept = labels[labels["kept"] == 1]
    assert len(kept) >= 1
    pipeline = Pipeline({"seg": EnsemblePredictor(str(seg_spec[0]), device="cpu")})
    rows = find_unlabelled_rows(loop.data / "YARISMA_2")
    for d in pipeline.iter_phase2(rows, keep_probs=True):
        row = labels.loc[d.image_id]
        lesion = d.class_map > 0
        p_lesion = 1 - d.probs[0]
        ignore = np.where(lesion, p_lesion, 1 - p_lesion) < PIXEL
        expected_kept = lesion.any() and p_lesion[lesion].mean() >= IMAGE and (lesion & ~ignore).any()
        assert row["kept"] == int(expected_kept), (d.image_id, row["reason"])
        if not expected_kept:
            assert row["mask"] == "" and not (labelled.out / "MASK" / f"{d.image_id}.png").exists()
            continue
        written = read_mask(labelled.out / row["mask"])
        assert np.array_equal(written, d.class_map)
        assert np.array_equal(written, read_mask(sub / f"{d.image_id}.png"))  # infer.py's mask
        assert np.array_equal(read_ignore(labelled.out / row["ignore"]), ignore)
        assert (written[~ignore] > 0).any()  # never-empty prior: a lesion is labelled on every kept image
        assert (labelled.out / row["png"]).read_bytes() == Path(rows.set_index("image_id").at[d.image_id, "png"]).read_bytes()


def test_round_two_trains_on_train_plus_pseudo_and_its_oof_never_scores_them(labelled, loop, one_thread):
    n_kept = int(labelled.labels["kept"].sum())
    pseudo_ids = set(labelled.labels["image_id"])
    config = loop.root / "configs" / "seg_a.yaml"
    run_script_here("train.py", "--config", config, "--fold", 0, "--out", labelled.root / "runs", "--no-progress",
                    "--set", f"pseudo={labelled.out}", "name=seg_a_round2", "epochs=1", cwd=loop.root)
    round1 = loop.runs / "seg_a" / "fold0"
    round2 = labelled.root / "runs" / "seg_a_round2" / "fold0"
    s1, s2 = (yaml.safe_load((d / "summary.json").read_text()) for d in (round1, round2))
    assert s2["n_train"] == s1["n_train"] + n_kept
    assert s2["n_val"] == s1["n_val"]
    oof1, oof2 = (set(np.load(d / "oof.npz")["image_id"].tolist()) for d in (round1, round2))
    assert oof2 == oof1 and not oof2 & pseudo_ids
    assert yaml.safe_load((round2 / "config.yaml").read_text())["pseudo"] == str(labelled.out)


def test_refusals(labelled, loop, stroke_spec, seg_spec, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        ((stroke_spec[0], labelled.test, out), "is a stroke spec"),
        ((seg_spec[0], loop.data / "YARISMA_1", out), "phase-1 test set"),
        ((seg_spec[0], labelled.test, labelled.out), "already holds pseudo-labels"),
        ((seg_spec[0], labelled.test, labelled.test / "inside"), "overlaps the input data"),
        ((seg_spec[0], labelled.test, loop.runs), "pseudo.py did not write it"),
    ]
    for (spec, data, target), message in cases:
        code, _ = label(spec, data, target)
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (message, err)
    assert not out.exists() and not (labelled.test / "inside").exists()


def test_a_pseudo_folder_of_training_images_is_refused_by_train_py(labelled, loop, seg_spec, tmp_path, capsys,
                                                                   monkeypatch, one_thread):
    fake = tmp_path / "my_test"  # "test" images that are training images of the data set
    kanama = loop.data / "TRAINING" / "KANAMA"
    for kind, ext in (("PNG", ".png"), ("DICOM", ".dcm")):
        (fake / kind).mkdir(parents=True)
        for path in sorted((kanama / kind).glob(f"*{ext}"))[:3]:
            shutil.copy(path, fake / kind / path.name)
    code, _ = label(seg_spec[0], fake, tmp_path / "clash", "--pixel-confidence", 0, "--image-confidence", 0)
    assert code == 0
    capsys.readouterr()
    monkeypatch.chdir(loop.root)  # train.py's main() in this process, from where the scripts run
    code = run_main("train", "--config", loop.root / "configs" / "seg_a.yaml", "--fold", 0, "--out",
                    tmp_path / "runs", "--no-progress", "--set", f"pseudo={tmp_path / 'clash'}", "epochs=1")
    err = capsys.readouterr().err
    assert code == 2 and "are training images of the data set" in err, err
    assert not (tmp_path / "runs" / "seg_a" / "fold0" / "best.pt").exists()
