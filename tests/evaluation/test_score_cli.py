"""score.py end to end, as a user runs it, on tiny hand-made submissions."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from strokekit.data.submission import write_phase1, write_phase2_mask

ROOT = Path(__file__).resolve().parents[2]


def run(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "score.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_help_describes_the_modes(tmp_path):
    out = run("--help", cwd=tmp_path)
    assert out.returncode == 0
    for flag in ("--phase", "--check", "--se-size", "--pixel-rule", "--probs", "--expected-ids", "--data"):
        assert flag in out.stdout


# --------------------------------------------------------------------------- phase 1


@pytest.fixture
def phase1(tmp_path):
    truth = tmp_path / "key.txt"  # the answer key's format: no header, CRLF
    truth.write_bytes(b"1\t1\r\n2\t1\r\n3\t0\r\n4\t0\r\n5\t1\r\n")
    sub = tmp_path / "submissions" / "mine"
    sub.mkdir(parents=True)
    # id 5 (truth 1) left out -> counted as a wrong 0; id 3 wrongly called 1; id 99 is not in the key
    write_phase1(sub, [1, 2, 3, 4, 99], [1, 1, 1, 0, 0])
    probs = tmp_path / "probs.csv"
    probs.write_text("image_id,prob\n1,0.9\n2,0.8\n3,0.85\n4,0.1\n5,0.2\n")
    return tmp_path, sub / "asama1.txt", truth, probs


def test_phase1_scores_missing_ids_as_wrong(phase1):
    cwd, pred, truth, probs = phase1
    out = run("--phase", 1, "--pred", pred, "--truth", truth, "--probs", probs, cwd=cwd)
    assert out.returncode == 0, out.stderr
    result = json.loads((cwd / "scores" / "mine.json").read_text())
    assert result["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert result["missing_ids"] == [5] and result["extra_ids"] == [99]
    assert result["balanced_accuracy"] == pytest.approx(0.5 * (2 / 3 + 1 / 2))
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["specificity"] == pytest.approx(0.5)
    # AUC: positives {0.9, 0.8, 0.2} vs negatives {0.85, 0.1}: 4 of 6 pairs ordered right
    assert result["auc"] == pytest.approx(4 / 6)
    assert (cwd / "scores" / "mine.confusion.png").stat().st_size > 1000
    assert "balanced_accuracy" in out.stdout and "0.5833" in out.stdout


def test_phase1_out_option(phase1):
    cwd, pred, truth, _ = phase1
    out = run("--phase", 1, "--pred", pred, "--truth", truth, "--out", cwd / "elsewhere" / "s.json", cwd=cwd)
    assert out.returncode == 0, out.stderr
    result = json.loads((cwd / "elsewhere" / "s.json").read_text())
    assert result["auc"] is None and (cwd / "elsewhere" / "s.confusion.png").is_file()


# --------------------------------------------------------------------------- phase 2


@pytest.fixture
def phase2(tmp_path):
    truth_dir, pred_dir, images = tmp_path / "MASK", tmp_path / "submissions" / "seg", tmp_path / "PNG"
    truth = {}
    truth[11] = np.zeros((16, 16), np.uint8)
    truth[11][2:7, 2:7] = 2                     # hemorrhage 5x5 (GT3: the 3x3 core)
    truth[12] = np.zeros((16, 16), np.uint8)
    truth[12][8:13, 8:13] = 1                   # ischemia 5x5
    truth[13] = truth[11].copy()
    for id_, class_map in truth.items():
        write_phase2_mask(truth_dir / f"{id_}.png", class_map, size=None)
        images.mkdir(exist_ok=True)
        Image.fromarray(np.full((16, 16), 90, np.uint8)).save(images / f"{id_}.png")
    pred_dir.mkdir(parents=True)
    write_phase2_mask(pred_dir / "11.png", truth[11], size=None)        # perfect
    wrong = np.where(truth[12] > 0, 2, 0).astype(np.uint8)              # right place, wrong class
    write_phase2_mask(pred_dir / "12.png", wrong, size=None)
    Image.fromarray(np.zeros((16, 16, 4), np.uint8), "RGBA").save(pred_dir / "14.png")  # not in truth
    # 13 is missing
    return tmp_path, pred_dir, truth_dir, images


def test_phase2_official_and_strict_scores(phase2):
    cwd, pred_dir, truth_dir, images = phase2
    out = run("--phase", 2, "--pred", pred_dir, "--truth", truth_dir, "--images", images, cwd=cwd)
    assert out.returncode == 0, out.stderr
    result = json.loads((cwd / "scores" / "seg.json").read_text())
    per_image = {r["id"]: r for r in result["per_image"]}
    assert (per_image[11]["tp"], per_image[11]["fp"], per_image[11]["fn"], per_image[11]["iou"]) == (25, 0, 0, 1.0)
    # wrong class: region touches no true hemorrhage -> all 25 FP except the 9 core pixels, which are FN
    assert (per_image[12]["tp"], per_image[12]["fp"], per_image[12]["fn"]) == (0, 16, 9)
    assert per_image[13]["status"] == "missing" and (per_image[13]["tp"], per_image[13]["fn"]) == (0, 9)
    assert result["missing_ids"] == [13] and result["extra_ids"] == [14]
    assert result["official"]["mean_imagewise"]["iou"] == pytest.approx(1 / 3)
    assert result["official"]["micro"]["iou"] == pytest.approx(25 / (25 + 16 + 18))
    strict = result["strict"]
    assert strict["iou_micro_hemorrhagic"] == pytest.approx(25 / (25 + 25 + 25))
    assert strict["iou_micro_ischemic"] == 0.0
    assert strict["iou_macro_imagewise_hemorrhagic"] == pytest.approx((1 + 0 + 0) / 3)
    assert result["type_accuracy"] == pytest.approx(1 / 3)
    assert result["type_confusion_true_by_pred"]["ischemic"]["hemorrhagic"] == 1
    assert (cwd / "scores" / "seg.worst_cases.png").stat().st_size > 1000
    assert "official (tolerant)" in out.stdout


def test_intervals_cover_the_figures_and_the_report_embeds_everything(phase1, phase2):
    from html.parser import HTMLParser

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.sources = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs).get("src", ""))

    for phase, (cwd, pred, truth, extra) in ((1, phase1), (2, phase2)):
        flag = "--probs" if phase == 1 else "--images"
        out = run("--phase", phase, "--pred", pred, "--truth", truth, flag, extra, "--report", "--out",
                  cwd / f"p{phase}.json", cwd=cwd)
        assert out.returncode == 0, out.stderr
        result = json.loads((cwd / f"p{phase}.json").read_text())
        figures = {"balanced_accuracy": result.get("balanced_accuracy"), "auc": result.get("auc")} if phase == 1 \
            else {"official_iou": result["official"]["mean_imagewise"]["iou"],
                  "dice_macro_imagewise_lesion_mean": result["strict"]["dice_macro_imagewise_lesion_mean"]}
        for name, value in figures.items():
            got = result["intervals"][name]
            assert got["estimate"] == pytest.approx(value) and got["low"] <= value <= got["high"], name
            assert got["low"] < got["high"], name  # 3-5 images: the draws differ
        assert "95 % intervals" in out.stdout
        page = Images()
        page.feed(Path(result["report_html"]).read_text(encoding="utf-8"))
        assert page.sources and all(src.startswith("data:image/png;base64,") for src in page.sources)


def test_phase2_invalid_mask_scores_as_background_and_pixel_rule(phase2):
    cwd, pred_dir, truth_dir, _ = phase2
    Image.fromarray(np.zeros((16, 16, 4), np.uint8), "RGBA").save(pred_dir / "11.png")
    out = run("--phase", 2, "--pred", pred_dir, "--truth", truth_dir, "--pixel-rule", "--out", cwd / "p.json",
              cwd=cwd)
    assert out.returncode == 0, out.stderr
    result = json.loads((cwd / "p.json").read_text())
    assert "mode is RGBA" in result["invalid"]["11"]
    per_image = {r["id"]: r for r in result["per_image"]}
    assert (per_image[11]["tp"], per_image[11]["fn"]) == (0, 9)
    assert result["rule"] == "pixel"
    # pixel rule: the wrong-class region's border ring lies in GT2 of ischemia only -> still all FP
    assert (per_image[12]["tp"], per_image[12]["fp"], per_image[12]["fn"]) == (0, 16, 9)


# --------------------------------------------------------------------------- --check


def test_check_valid_and_invalid_phase1(phase1):
    cwd, pred, truth, _ = phase1
    ok = run("--check", pred, "--expected-ids", 1, 2, 3, 4, 99, cwd=cwd)
    assert ok.returncode == 0 and "valid phase-1 file, 5 ids" in ok.stdout
    bad = run("--check", pred.parent, "--expected-ids", truth, cwd=cwd)
    assert bad.returncode == 1
    assert "missing ids: 5" in bad.stderr and "extra ids: 99" in bad.stderr


def test_check_phase2_against_a_test_folder(phase2, tmp_path):
    cwd, pred_dir, _, _ = phase2
    data = tmp_path / "YARISMA_2" / "PNG"
    data.mkdir(parents=True)
    for id_ in (11, 12):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(data / f"{id_}.png")
    (pred_dir / "14.png").unlink()
    ok = run("--check", pred_dir, "--data", data.parent, "--size", 16, 16, cwd=cwd)
    assert ok.returncode == 0, ok.stderr
    ok = run("--check", pred_dir, "--data", data.parent, cwd=cwd)  # each mask against its own image's size
    assert ok.returncode == 0, ok.stderr
    bad = run("--check", pred_dir, "--data", data.parent, "--size", 512, 512, cwd=cwd)
    assert bad.returncode == 1 and "size is 16x16, not 512x512" in bad.stderr
    Image.fromarray(np.zeros((20, 16), np.uint8)).save(data / "12.png")  # 16 wide, 20 high
    bad = run("--check", pred_dir, "--data", data.parent, cwd=cwd)
    assert bad.returncode == 1 and "12.png: size is 16x16, not 16x20" in bad.stderr


def test_phase_needs_pred_and_truth(tmp_path):
    out = run("--phase", 1, "--pred", "x.txt", cwd=tmp_path)
    assert out.returncode == 2 and "needs --pred and --truth" in out.stderr


def test_phase2_intervals_by_patient(tmp_path):
    """--patients: the intervals resample the test set's patients (PatientID of its DICOM headers), not images."""
    import shutil

    from strokekit.data.dicom import read_dicom_header
    from strokekit.phantom.dataset import make_phantom

    test = make_phantom(tmp_path / "data", n=30, seed=5, size=64, n_test1=4, n_test2=14) / "YARISMA_2"
    pred = tmp_path / "pred"
    shutil.copytree(test / "MASK", pred)
    for extra in sorted(pred.glob("*.png"))[::2]:
        extra.unlink()  # half the masks missing: per-image scores of 1 and 0
    patients = {read_dicom_header(p)["PatientID"] for p in (test / "DICOM").glob("*.dcm")}
    assert 1 < len(patients) < len(list((test / "DICOM").glob("*.dcm")))  # patients hold several slices
    by_image = run("--phase", 2, "--pred", pred, "--truth", test / "MASK", "--out", tmp_path / "a.json", cwd=tmp_path)
    assert by_image.returncode == 0, by_image.stderr
    done = run("--phase", 2, "--pred", pred, "--truth", test / "MASK", "--patients", test, "--out",
               tmp_path / "b.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "bootstrap over the scored patients" in done.stdout and f"at {len(patients)} patients" in done.stdout
    a, b = (json.loads((tmp_path / f"{n}.json").read_text())["intervals"]["official_iou"] for n in "ab")
    assert b["patients"] == b["n_patients"] == len(patients) and "patients" not in a
    assert a["estimate"] == b["estimate"] and (a["low"], a["high"]) != (b["low"], b["high"])
    (test / "DICOM" / f"{sorted(p.stem for p in (test / 'MASK').glob('*.png'))[0]}.dcm").unlink()
    refused = run("--phase", 2, "--pred", pred, "--truth", test / "MASK", "--patients", test / "DICOM",
                  "--out", tmp_path / "c.json", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.startswith("error: --patients: 1 of 14")
    assert not (tmp_path / "c.json").exists()
