"""Never lose a byte: files that used to give silently wrong pixels, or that passed the up-front check and
died in epoch 1, or that crashed the index, are refused by name (and left out with --on-bad-input skip)."""
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import small_phantom
from helpers import training_files

import infer
import kfold
import score
import train
from helpers import write_dicom, write_png
from strokekit.cli import train as strokekit_train
from strokekit.config import load_config
from strokekit.data.check import apply_policy, check_files
from strokekit.data.index import build_index
from strokekit.data.badinput import BadInputError
from strokekit.data.dicom import HU_RANGE, check_dicom, read_dicom_hu
from strokekit.data.readers import check_png, read_png
from strokekit.data.submission import write_phase2_mask
from strokekit.ensembling.spec import write_spec
from strokekit.inference.submit import scan_test_folder
from strokekit.models.checkpoint import build_checkpoint, save_atomic
from strokekit.models.registry import build_model

ROOT = Path(__file__).resolve().parents[2]
STORED = np.full((16, 16), 1064, np.int16)  # 40 HU with slope 1, intercept -1024


def dicom_with(path: Path, delete=(), **changes) -> Path:
    ds = pydicom.dcmread(write_dicom(path, STORED))
    for key, value in changes.items():
        setattr(ds, key, value)
    for key in delete:
        delattr(ds, key)
    ds.save_as(path, enforce_file_format=True)
    return path


def refused_by_check_and_reader(path: Path, message: str) -> None:
    for fn in (check_dicom, read_dicom_hu):
        with pytest.raises(BadInputError, match=message) as err:
            fn(path)
        assert err.value.path == str(path)


# ------------------------------------------------------------------ 4: silent wrong pixels


@pytest.mark.parametrize("slope,intercept,message", [
    ("0", "-1024", "the slope must be a non-zero number"),
    ("1e38", "-1024", "Hounsfield units .* a CT slice holds"),
    ("-1e38", "-1024", "Hounsfield units .* a CT slice holds"),
    ("25", "-1024", "Hounsfield units 25576 .. 25576"),
    ("1", "-40000", "Hounsfield units"),
])
def test_rescale_tags_that_give_wrong_pixels_are_refused(tmp_path, slope, intercept, message):
    path = dicom_with(tmp_path / "x.dcm", RescaleSlope=slope, RescaleIntercept=intercept)
    refused_by_check_and_reader(path, message)


@pytest.mark.parametrize("text", [b"nan    ", b"inf    ", b"-inf   "])
def test_non_finite_intercepts_are_refused(tmp_path, text):
    raw = write_dicom(tmp_path / "r.dcm", STORED, slope=1.0, intercept=-1024.0).read_bytes()
    path = tmp_path / "x.dcm"
    path.write_bytes(raw.replace(b"-1024.0", text))
    refused_by_check_and_reader(path, "both finite")


def test_real_scanner_padding_is_not_refused(tmp_path):
    stored = STORED.copy()
    stored[0, :4] = -2000  # GE pads outside the field of view: -3024 HU
    assert read_dicom_hu(write_dicom(tmp_path / "ge.dcm", stored))[0, 0] == -3024
    stored[0, :4] = -30000  # far outside HU_RANGE ...
    path = write_dicom(tmp_path / "pad.dcm", stored)
    with pytest.raises(BadInputError, match="Hounsfield units -31024"):
        check_dicom(path)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00280120, "SS", -30000)  # ... but the file says it is padding
    ds.save_as(path)
    assert check_dicom(path)[:2] == (16, 16)
    assert HU_RANGE[0] <= -3024 and HU_RANGE[1] >= 3071  # 12-bit CT's whole scale fits


def test_the_hu_range_is_a_config_key_the_check_and_the_loader_share(tmp_path):
    from strokekit.data.readers import load_image
    from strokekit.config import DEFAULTS

    assert tuple(DEFAULTS["hu_range"]) == HU_RANGE
    stored = STORED.copy()
    stored[0, 0] = 9000 + 1024  # an extended-HU-scale scanner: dental metal at 9000 HU
    path = write_dicom(tmp_path / "metal.dcm", stored)
    rows = pd.DataFrame({"image_id": [1], "dicom": [str(path)], "png": "", "split": "train",
                         "class_name": "no_stroke"})
    assert [p for _, _, p in check_files(rows, "dicom").bad][0].startswith("Hounsfield units 40 .. 9000")
    cfg = load_config(None, ["image_source=dicom", "in_chans=1", "hu_range=[-3100, 12000]"])
    assert cfg["hu_range"] == [-3100.0, 12000.0]
    assert check_files(rows, "dicom", hu_range=cfg["hu_range"]).bad == []
    assert load_image(rows.iloc[0].to_dict(), cfg).shape == (16, 16, 1)
    with pytest.raises(BadInputError, match="a CT slice holds -3100 .. 5000"):
        load_image(rows.iloc[0].to_dict(), {**cfg, "hu_range": None})
    for bad in ("hu_range=[5, 1]", "hu_range=[0, nan]", "hu_range=7"):
        with pytest.raises(Exception, match="hu_range"):
            load_config(None, [bad])


@pytest.mark.parametrize("delete,changes,message", [
    (("BitsStored",), {}, "no BitsStored"),
    (("BitsAllocated",), {}, "no BitsAllocated"),
    (("PixelRepresentation",), {}, "no PixelRepresentation"),
    (("PhotometricInterpretation",), {}, "no PhotometricInterpretation"),
    ((), {"BitsStored": 20}, "BitsAllocated 16 / BitsStored 20"),
    ((), {"HighBit": 3}, "HighBit 3 do not fit"),
    ((), {"PixelRepresentation": 2}, "PixelRepresentation 2"),
    ((), {"Rows": 0}, "Rows x Columns is 0 x 16"),
    ((), {"Rows": 8}, "more than 8x16 at 16 bits needs"),  # would read half the slice
    (("RescaleIntercept",), {}, "one without the other"),  # stored values would pass for HU
])
def test_pixel_headers_missing_or_incoherent_are_refused_up_front(tmp_path, delete, changes, message):
    path = dicom_with(tmp_path / "x.dcm", delete, **changes)
    refused_by_check_and_reader(path, message)


def test_a_compressed_dicom_whose_stream_is_corrupt_fails_the_check_not_epoch_1(tmp_path):
    """RLE stands in for JPEG 2000 (pydicom decodes RLE itself): the check now decodes compressed pixel data."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    path = dicom_with(tmp_path / "rle.dcm")
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path)
    assert np.array_equal(read_dicom_hu(path), STORED - 1024.0) and check_dicom(path)[:2] == (16, 16)
    header = struct.pack("<16I", 1, 64, *[0] * 14)  # one segment ...
    ds.PixelData = encapsulate([header + b"\x7f\x01" * 4])  # ... that holds 8 of the 512 bytes
    ds.save_as(path)
    refused_by_check_and_reader(path, "cannot decode pixel data")


def test_the_up_front_check_lists_bad_dicoms_so_skip_leaves_them_out(tmp_path):
    folder = tmp_path / "d"
    good = write_dicom(folder / "1.dcm", STORED)
    zero = dicom_with(folder / "2.dcm", RescaleSlope="0")
    nobits = dicom_with(folder / "3.dcm", ("BitsStored",))
    rows = pd.DataFrame({"image_id": [1, 2, 3], "dicom": [str(good), str(zero), str(nobits)], "png": "",
                         "split": "test1", "class_name": ""})
    check = check_files(rows, "dicom")
    assert [f for _, f, _ in check.bad] == [str(zero), str(nobits)]
    assert apply_policy(rows, check, "skip")["image_id"].tolist() == [1]


# ------------------------------------------------------------------ shared phantom for the CLIs


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return small_phantom(tmp_path_factory.mktemp("bytes"), n=40, seed=3, size=48, n_test1=3, n_test2=3, cache=False)



# ------------------------------------------------------------------ 5: a truncated DICOM header


def test_a_truncated_dicom_header_is_listed_and_kfold_says_why_its_grouping_changed(data, capsys):
    victim = training_files(data, "INMEYOK/DICOM")[0]
    victim.write_bytes(victim.read_bytes()[:300])
    _, report = build_index(data, cache=False)
    assert str(victim) in dict(report.skipped) and "cut short" in dict(report.skipped)[str(victim)]
    assert kfold.main(["--data", str(data), "--folds", "2", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{victim}: patient id unknown: no pixel data element" in out
    groups_line = next(line for line in out.splitlines() if line.startswith("groups: "))
    assert f"none for image {victim.stem} " in groups_line and "could not be read" in groups_line


# ------------------------------------------------------------------ 6: a PNG without its IDAT chunk


def png_without_idat(path: Path) -> Path:
    data, pos, kept = path.read_bytes(), 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        if data[pos + 4:pos + 8] != b"IDAT":
            kept.append(data[pos:pos + 12 + length])  # the other chunks, checksums intact
        pos += 12 + length
    path.write_bytes(data[:8] + b"".join(kept))
    return path


def test_a_png_without_idat_is_a_named_refusal(tmp_path):
    path = png_without_idat(write_png(tmp_path / "x.png", np.zeros((8, 8), np.uint8)))
    for fn in (check_png, read_png):
        with pytest.raises(BadInputError, match="x.png: damaged PNG: no IDAT chunk"):
            fn(path)


def run_train(data: Path, out: Path, *extra: str) -> int:
    return train.main(["--config", str(ROOT / "configs" / "tiny_stroke.yaml"), "--fold", "0", "--data", str(data),
                       "--out", str(out), "--no-progress", *extra,
                       "--set", "img_size=32", "epochs=1", "num_workers=0", "batch_size=16"])


def test_train_names_a_png_without_idat_or_skips_it(data, tmp_path, capsys, one_thread):
    victim = png_without_idat(training_files(data, "INMEYOK/PNG")[2])
    assert run_train(data, tmp_path / "runs") == 2
    assert capsys.readouterr().err.startswith(f"error: {victim}: damaged PNG: no IDAT chunk")
    assert run_train(data, tmp_path / "runs", "--on-bad-input", "skip") == 0
    skipped = pd.read_csv(tmp_path / "runs" / "tiny_stroke" / "fold0" / "skipped.csv")
    assert skipped["file"].tolist() == [str(victim)]


def tiny_spec(tmp_path: Path) -> Path:
    cfg = load_config(None, ["model=tiny_cnn", "img_size=32"])
    (tmp_path / "ens").mkdir()
    save_atomic(build_checkpoint(build_model(cfg), cfg, 2, epoch=1), tmp_path / "ens" / "m.pt")
    return write_spec({"task": "stroke", "blend": "mean", "tta": ["none"], "threshold": {"value": 0.5},
                       "members": [{"name": "m", "weight": 1.0, "checkpoints": ["m.pt"]}]},
                      tmp_path / "ens" / "s.yaml")


def infer_args(spec: Path, test_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--phase", "1", "--ensemble", str(spec), "--data", str(test_dir), "--device", "cpu",
            "--out", str(out), *extra]


def test_infer_names_a_png_without_idat_or_skips_it(data, tmp_path, capsys):
    spec, test_dir = tiny_spec(tmp_path), data / "YARISMA_1"
    victim = png_without_idat(sorted((test_dir / "PNG").iterdir())[0])
    assert infer.main(infer_args(spec, test_dir, tmp_path / "a")) == 2
    assert capsys.readouterr().err.startswith(f"error: {victim}: damaged PNG: no IDAT chunk")
    assert infer.main(infer_args(spec, test_dir, tmp_path / "b", "--on-bad-input", "skip")) == 0
    assert pd.read_csv(tmp_path / "b" / "skipped.csv")["file"].tolist() == [str(victim)]


# ------------------------------------------------------------------ 7: symlinks and Unicode digits


def break_links(folder: Path) -> tuple[Path, Path]:
    """The first two files of a folder become a dangling symlink and a symlink loop."""
    dangling, loop = sorted(folder.iterdir())[:2]
    dangling.unlink()
    dangling.symlink_to(folder / "gone.png")
    loop.unlink()
    loop.symlink_to(loop.name)
    return dangling, loop


def test_broken_symlinks_are_named_by_the_index_check_and_clis(data, tmp_path, capsys):
    dangling, loop = break_links(data / "TRAINING" / "INMEYOK" / "PNG")
    index, _ = build_index(data)  # the cache signature used to raise FileNotFoundError / OSError here
    check = check_files(index[index.split == "train"], "png")
    problems = {f: p for _, f, p in check.bad}
    assert problems[str(dangling)].startswith("a dangling symlink: its target")
    assert problems[str(loop)].startswith("a symlink loop")
    assert kfold.main(["--data", str(data), "--folds", "2", "--group-by", "similarity", "--workers", "1"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {dangling}: a dangling symlink")

    spec, test_dir = tiny_spec(tmp_path), data / "YARISMA_1"
    dangling, loop = break_links(test_dir / "PNG")
    assert infer.main(infer_args(spec, test_dir, tmp_path / "a")) == 2
    assert capsys.readouterr().err.startswith(f"error: {dangling}: a dangling symlink")
    assert infer.main(infer_args(spec, test_dir, tmp_path / "b", "--on-bad-input", "skip")) == 0
    assert sorted(pd.read_csv(tmp_path / "b" / "skipped.csv")["file"]) == sorted([str(dangling), str(loop)])


def test_kfold_lists_broken_links_even_when_it_reads_no_image(data, capsys):
    dangling, loop = break_links(data / "TRAINING" / "INMEYOK" / "PNG")
    assert kfold.main(["--data", str(data), "--folds", "2", "--workers", "1"]) == 0  # header groups: no read
    out = capsys.readouterr().out
    assert f"{dangling.relative_to(data)}: unreadable, a dangling symlink: its target" in out
    assert f"{loop.relative_to(data)}: unreadable, a symlink loop" in out


def test_linked_folders_are_indexed_and_a_folder_loop_is_listed(data, tmp_path):
    elsewhere = tmp_path / "disk2" / "PNG"
    (data / "TRAINING" / "INMEYOK" / "PNG").rename(elsewhere.parent.mkdir() or elsewhere)
    (data / "TRAINING" / "INMEYOK" / "PNG").symlink_to(elsewhere, target_is_directory=True)
    (data / "TRAINING" / "INMEYOK" / "again").symlink_to("..", target_is_directory=True)  # a folder loop
    index, report = build_index(data, cache=False)
    no_stroke = index[index.class_name == "no_stroke"]
    assert (no_stroke["png"] != "").all() and len(no_stroke)  # used to be skipped silently: no PNG at all
    assert any(path == str(Path("TRAINING/INMEYOK/again")) and "already indexed" in why
               for path, why in report.skipped)


def test_image_ids_are_ascii_digits_only(data):
    folder = data / "TRAINING" / "INMEYOK" / "PNG"
    first = sorted(folder.iterdir())[0]
    shutil.copy(first, folder / "².png")
    shutil.copy(first, folder / "１００１２.png")  # full-width digits: int() reads 10012
    index, report = build_index(data, cache=False)
    assert not any("１" in p or "²" in p for p in index.png)
    skipped = dict(report.skipped)
    for name in ("².png", "１００１２.png"):
        assert skipped[str(Path("TRAINING/INMEYOK/PNG") / name)].startswith("file name is not an integer image id")
    test_dir = data / "YARISMA_1" / "PNG"
    shutil.copy(sorted(test_dir.iterdir())[0], test_dir / "².png")
    shutil.copy(sorted(test_dir.iterdir())[0], test_dir / "１００１２.png")
    rows = scan_test_folder(data / "YARISMA_1")  # used to raise ValueError on '²'
    assert not any("１" in p or "²" in p for p in rows.png)


# ------------------------------------------------------------------ 10: score.py --check with --data


def test_score_check_with_data_compares_each_mask_with_its_own_image(tmp_path, capsys):
    test_dir, sub = tmp_path / "YARISMA_2", tmp_path / "sub"
    sizes = {101: (64, 48), 102: (40, 56)}  # (height, width): not 512x512
    for image_id, (h, w) in sizes.items():
        write_png(test_dir / "PNG" / f"{image_id}.png", np.zeros((h, w), np.uint8))
        write_phase2_mask(sub / f"{image_id}.png", np.zeros((h, w), np.uint8), size=None)
    assert score.main(["--check", str(sub), "--data", str(test_dir)]) == 0
    assert "valid phase-2 folder, 2 masks" in capsys.readouterr().out
    write_phase2_mask(sub / "102.png", np.zeros((64, 48), np.uint8), size=None)  # 101's size, not 102's
    assert score.main(["--check", str(sub), "--data", str(test_dir)]) == 1
    assert "102.png: size is 48x64, not 56x40" in capsys.readouterr().err
    assert score.main(["--check", str(sub), "--data", str(test_dir), "--size", "40", "56"]) == 1  # --size: all


def test_ids_in_text_and_on_the_command_line_are_ascii_digits_only(tmp_path, capsys):
    from strokekit.data.folds import FoldsError
    from strokekit.data.submission import PHASE1_HEADER, SubmissionError, read_labels

    key = tmp_path / "key.txt"
    key.write_text("10011\t0\n１００１２\t1\n", encoding="utf-8")  # full-width digits: int() reads 10012
    with pytest.raises(SubmissionError, match="ids that are not integers"):
        read_labels(key)
    pred = tmp_path / "asama1.txt"
    pred.write_text(f"{PHASE1_HEADER}\n10011\t0\n²\t1\n", encoding="utf-8")
    with pytest.raises(SubmissionError, match="ids that are not integers"):
        read_labels(pred)
    assert score.main(["--check", str(pred), "--expected-ids", "10011", "²"]) == 2  # used to be a ValueError
    assert "are not image ids" in capsys.readouterr().err
    with pytest.raises(FoldsError, match="--fold ²"):
        strokekit_train.fold_list("²", pd.DataFrame({"fold": [0, 1, 2]}))
