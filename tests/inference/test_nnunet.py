"""The nnU-Net bridge: the export matches nnU-Net v2's documented raw layout and the kit's folds exactly, and
nnU-Net-style label PNGs come back as a submission that score.py scores like any other (truth -> perfect)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from strokekit.data.index import build_index
from strokekit.data.readers import load_class_map, read_png
from strokekit.inference.nnunet import (case_name, image_id_of, predictions_to_submission, read_predictions,
                                        write_label_pngs)
from strokekit.data.submission import mask_files, read_phase2_mask
from conftest import small_phantom

import export_nnunet
import score

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args, cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    """The script as a user runs it (one process: the end-to-end export)."""
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == expect, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def main(module, *args, capsys, expect: int = 0) -> str:
    """A script's main() in this process (saves interpreter start-ups); returns its stderr."""
    code = module.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == expect, err
    return err


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return small_phantom(tmp_path_factory.mktemp("nnunet"), n=60, seed=4, size=64, n_test1=4, n_test2=6,
                         n_folds=3)


@pytest.fixture(scope="module")
def exported(phantom) -> Path:
    out = phantom.parent / "nnUNet_raw" / "Dataset501_Stroke"
    run("export_nnunet.py", "--data", phantom, "--folds", phantom / "folds.csv", "--out", out, "--test", "test2",
        "--preprocessed", phantom.parent / "nnUNet_preprocessed", cwd=phantom.parent)
    return out


def test_export_follows_the_documented_raw_layout(phantom, exported):
    meta = json.loads((exported / "dataset.json").read_text())
    assert {"channel_names", "labels", "numTraining", "file_ending"} <= set(meta)
    assert meta["labels"] == {"background": 0, "ischemic": 1, "hemorrhagic": 2}
    assert meta["file_ending"] == ".png" and list(meta["channel_names"]) == ["0"]
    images = sorted(p.name for p in (exported / "imagesTr").iterdir())
    labels = sorted(p.name for p in (exported / "labelsTr").iterdir())
    assert all(re.fullmatch(r"stroke_\d+_0000\.png", n) for n in images)
    assert all(re.fullmatch(r"stroke_\d+\.png", n) for n in labels)
    assert [n.replace("_0000", "") for n in images] == labels and meta["numTraining"] == len(labels)
    index = build_index(phantom)[0].set_index("image_id")
    train = index[index["split"] == "train"]
    assert len(labels) == len(train)  # every labelled stroke slice and (default) every no-stroke slice
    seen = set()
    for name in labels:
        image_id = image_id_of(name[:-4])
        row = index.loc[image_id].to_dict()
        label = Image.open(exported / "labelsTr" / name)
        image = Image.open(exported / "imagesTr" / name.replace(".png", "_0000.png"))
        assert label.mode == "L" and image.mode == "L" and label.size == image.size
        truth = load_class_map(row)
        expected = truth if truth is not None else np.zeros_like(read_png(row["png"]))
        np.testing.assert_array_equal(np.asarray(label), expected)
        np.testing.assert_array_equal(np.asarray(image), read_png(row["png"]))
        seen.update(np.unique(np.asarray(label)).tolist())
    assert seen == {0, 1, 2}
    test_ids = sorted(index.index[index["split"] == "test2"])
    assert sorted(p.name for p in (exported / "imagesTs").iterdir()) == [f"stroke_{i}_0000.png" for i in test_ids]


def test_splits_are_the_kit_folds(phantom, exported):
    splits = json.loads((exported / "splits_final.json").read_text())
    folds = pd.read_csv(phantom / "folds.csv")
    assert len(splits) == folds["fold"].nunique() == 3
    cases = {p.name[:-4] for p in (exported / "labelsTr").iterdir()}
    vals = [case for split in splits for case in split["val"]]
    assert sorted(vals) == sorted(cases) and len(vals) == len(set(vals))  # each case in exactly one val split
    for k, split in enumerate(splits):
        expected = {case_name(i) for i in folds.loc[folds["fold"] == k, "image_id"]}
        assert set(split["val"]) == expected
        assert set(split["train"]) == cases - expected
    copied = phantom.parent / "nnUNet_preprocessed" / "Dataset501_Stroke" / "splits_final.json"
    assert json.loads(copied.read_text()) == splits


def test_negatives_share_and_refusals(phantom, tmp_path, capsys):
    out = tmp_path / "Dataset502_Stroke"
    main(export_nnunet, "--data", phantom, "--out", out, "--negatives", 0, capsys=capsys)
    cases = pd.read_csv(out / "cases.csv")
    assert (cases["class_name"] != "no_stroke").all() and len(cases) > 0
    err = main(export_nnunet, "--data", phantom, "--out", out, capsys=capsys, expect=2)
    assert "--overwrite" in err
    err = main(export_nnunet, "--data", phantom, "--out", tmp_path / "Stroke", capsys=capsys, expect=2)
    assert "Dataset<3 digits>_<name>" in err


def test_truth_through_nnunet_labels_scores_perfectly(phantom, tmp_path, capsys):
    truth_dir = phantom / "YARISMA_2" / "MASK"
    truth = {i: read_phase2_mask(p) for i, p in mask_files(truth_dir).items()}
    assert any((m > 0).any() for m in truth.values())
    predictions = tmp_path / "nnunet_pred"
    write_label_pngs(truth, predictions)
    (predictions / "plans.json").write_text("{}")  # nnU-Net's side files sit beside its predictions
    sub = tmp_path / "submissions" / "nnunet"
    main(export_nnunet, "--predictions", predictions, "--out", sub, "--test-data", phantom / "YARISMA_2",
         capsys=capsys)
    assert (sub / "manifest.json").is_file()
    main(score, "--check", sub, "--data", phantom / "YARISMA_2", "--size", 64, 64, capsys=capsys)
    out = tmp_path / "scores" / "nnunet.json"
    main(score, "--phase", 2, "--pred", sub, "--truth", truth_dir, "--out", out, capsys=capsys)
    result = json.loads(out.read_text())
    assert result["missing_ids"] == [] and result["invalid"] == {}
    assert result["official"]["micro"]["fp"] == result["official"]["micro"]["fn"] == 0
    assert result["official"]["mean_imagewise"]["iou"] == 1.0
    assert result["strict"]["dice_micro_lesion_mean"] == 1.0 and result["type_accuracy"] == 1.0


def test_exported_labels_convert_back_exactly(exported, tmp_path):
    summary = predictions_to_submission(exported / "labelsTr", tmp_path / "sub")
    labels = read_predictions(exported / "labelsTr")
    assert summary["n_images"] == len(labels)
    for image_id, path in mask_files(tmp_path / "sub").items():
        np.testing.assert_array_equal(read_phase2_mask(path), labels[image_id])


def test_bad_predictions_are_refused(phantom, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.fromarray(np.full((8, 8), 3, np.uint8), "L").save(bad / "stroke_1.png")
    assert "label values [3]" in main(export_nnunet, "--predictions", bad, "--out", tmp_path / "s1",
                                      capsys=capsys, expect=2)
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(rgb / "stroke_1.png")
    assert "single-channel" in main(export_nnunet, "--predictions", rgb, "--out", tmp_path / "s2",
                                    capsys=capsys, expect=2)
    missing = tmp_path / "few"
    write_label_pngs({10: np.zeros((64, 64), np.uint8)}, missing)
    assert "no prediction for" in main(export_nnunet, "--predictions", missing, "--out", tmp_path / "s3",
                                       "--test-data", phantom / "YARISMA_2", capsys=capsys, expect=2)
