"""Bad input: every kind of broken file is named with its problem by the readers, the up-front check and the
index; `--on-bad-input fail` stops train.py / infer.py before any work, `skip` leaves the files out and lists
them in skipped.csv; CLI errors print `error: ...` with exit status 2, never a traceback."""
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import small_phantom
from helpers import training_files
import torch
from PIL import Image

import infer
import kfold
import train
from helpers import write_dicom, write_png
from strokekit.models.checkpoint import build_checkpoint, save_atomic
from strokekit.config import load_config
from strokekit.data.check import check_files
from strokekit.data.dataset import SliceDataset
from strokekit.training.loader import make_loader
from strokekit.data.encodings import class_map_to_rgb, encode_overlay
from strokekit.data.index import build_index
from strokekit.data.badinput import BadInputError
from strokekit.data.dicom import check_dicom, read_dicom_hu
from strokekit.data.readers import check_png, read_mask, read_overlay_mask, read_png
from strokekit.ensembling.spec import write_spec
from strokekit.models.registry import build_model

ROOT = Path(__file__).resolve().parents[2]
GREY = np.random.default_rng(0).integers(0, 256, (24, 24), dtype=np.uint8)


def png_chunks(width: int, height: int, idat: bytes) -> bytes:
    """A PNG with valid checksums around whatever IHDR size and IDAT bytes are given."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def edited_dicom(path: Path, **changes) -> Path:
    ds = pydicom.dcmread(write_dicom(path, np.full((24, 24), 1064, np.int16)))
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_bad(tmp_path: Path, kind: str) -> Path:
    good = write_png(tmp_path / "good.png", GREY)
    path = tmp_path / f"{kind}.png"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:70])
    elif kind == "text":
        path.write_text("not an image")
    elif kind == "flipped_idat":  # one bit flipped inside the compressed pixels: the chunk checksum fails
        data = bytearray(good.read_bytes())
        data[data.index(b"IDAT") + 10] ^= 0x10
        path.write_bytes(bytes(data))
    elif kind == "huge_header":  # claims 100000 x 100000 pixels
        path.write_bytes(png_chunks(100_000, 100_000, zlib.compress(b"\0" * 10)))
    elif kind == "bilevel":
        Image.fromarray(GREY > 128).convert("1").save(path)
    elif kind == "missing":
        pass
    return path


PNG_CASES = [("truncated", "damaged PNG: truncated"), ("text", "not a readable image"),
             ("flipped_idat", "damaged PNG: the checksum of chunk IDAT"), ("huge_header", "too large"),
             ("bilevel", "unsupported PNG mode 1"), ("missing", "does not exist")]


@pytest.mark.parametrize("kind,message", PNG_CASES)
def test_bad_pngs_are_named_by_the_reader_and_by_the_header_check(tmp_path, kind, message):
    path = make_bad(tmp_path, kind)
    for fn in (read_png, check_png, read_mask):
        with pytest.raises(BadInputError, match=message) as err:
            fn(path)
        assert err.value.path == str(path)


def test_a_png_with_valid_checksums_but_broken_pixels_is_refused_by_the_check_too(tmp_path):
    path = tmp_path / "bad_zlib.png"
    path.write_bytes(png_chunks(24, 24, b"not a zlib stream"))
    for fn in (check_png, read_png):  # the check inflates the stream as the reader does
        with pytest.raises(BadInputError, match="bad_zlib.png: damaged PNG: damaged compressed image data"):
            fn(path)


@pytest.mark.parametrize("changes,checked,read", [
    ({"Modality": "MR"}, "Modality is 'MR'", "Modality is 'MR'"),
    ({"NumberOfFrames": 3}, "3 frames in one file", "3 frames in one file"),
    ({"PhotometricInterpretation": "RGB", "SamplesPerPixel": 3}, "colour DICOM", "colour DICOM"),
    ({"Rows": 100}, "pixel data holds 1152 bytes, 100x24 at 16 bits needs 4800", "pixel data holds 1152 bytes"),
])
def test_dicoms_the_kit_cannot_read_are_refused_by_name(tmp_path, changes, checked, read):
    path = edited_dicom(tmp_path / "x.dcm", **changes)
    with pytest.raises(BadInputError, match=f"x.dcm: {checked}"):
        check_dicom(path)
    with pytest.raises(BadInputError, match=f"x.dcm: {read}"):
        read_dicom_hu(path)


def test_dicom_rescale_tags_that_are_blank_warn_and_text_is_refused(tmp_path):
    path = write_dicom(tmp_path / "r.dcm", np.full((4, 4), 7, np.int16), slope=1.0, intercept=-1024.0)
    raw = path.read_bytes()
    (tmp_path / "blank.dcm").write_bytes(raw.replace(b"-1024.0", b" " * 7))
    (tmp_path / "text.dcm").write_bytes(raw.replace(b"-1024.0", b"abcdefg"))
    with pytest.warns(UserWarning, match="no RescaleSlope/RescaleIntercept"):
        assert read_dicom_hu(tmp_path / "blank.dcm").tolist() == [[7.0] * 4] * 4
    assert check_dicom(tmp_path / "blank.dcm")[2] == ["no RescaleSlope/RescaleIntercept; assuming stored "
                                                      "values are HU"]
    for fn in (read_dicom_hu, check_dicom):
        with pytest.raises(BadInputError, match="text.dcm: RescaleSlope .* are not numbers"):
            fn(tmp_path / "text.dcm")


def test_masks_and_overlays_with_wrong_content_name_the_file(tmp_path):
    cm = np.zeros((24, 24), np.uint8)
    cm[5:10, 5:10] = 2
    rgb = class_map_to_rgb(cm)
    rgb[5, 5] = (128, 127, 0)  # an anti-aliased pixel
    aliased = write_png(tmp_path / "aliased.png", rgb)
    deep = tmp_path / "deep.png"
    Image.fromarray(cm.astype(np.uint16) * 1000).save(deep)
    small = write_png(tmp_path / "small.png", encode_overlay(GREY[:20, :20], cm[:20, :20]))
    png = write_png(tmp_path / "png.png", GREY)
    with pytest.raises(BadInputError, match="aliased.png: 1 pixels are not one of the official mask colours"):
        read_mask(aliased)
    with pytest.raises(BadInputError, match="deep.png: a 16-bit image; a MASK is 8-bit"):
        read_mask(deep)
    with pytest.raises(BadInputError, match=r"small.png: OVERLAY is \(20, 20\) but its PNG is \(24, 24\)"):
        read_overlay_mask(png, small)
    assert read_overlay_mask(png, write_png(tmp_path / "ov.png", encode_overlay(GREY, cm))).max() == 2


def test_a_bad_file_read_in_a_dataloader_worker_stays_a_bad_input_error(tmp_path):
    rows = pd.DataFrame({"image_id": [1, 2], "png": [str(write_png(tmp_path / "1.png", GREY)),
                                                     str(make_bad(tmp_path, "truncated"))]})
    cfg = load_config(None, ["img_size=32", "num_workers=1", "batch_size=2"])
    loader = make_loader(SliceDataset(rows, cfg, train=False), cfg, torch.device("cpu"))
    with pytest.raises(BadInputError) as err:
        next(iter(loader))
    assert err.value.path == str(tmp_path / "truncated.png") and "damaged PNG: truncated" in err.value.problem


# ---------------------------------------------------------------- the index and the up-front check


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return small_phantom(tmp_path_factory.mktemp("bad"), n=60, seed=5, size=64, n_test1=3, n_test2=2, cache=False)



def test_the_index_reports_empty_folders_and_bad_masks_even_from_its_cache(data):
    shutil.rmtree(data / "TRAINING" / "KANAMA" / "OVERLAY")
    (data / "TRAINING" / "KANAMA" / "OVERLAY").mkdir()
    mask = training_files(data, "ISKEMI/MASK")[0]
    rgb = np.asarray(Image.open(mask).convert("RGB")).copy()
    rgb[0, 0] = (7, 7, 7)
    write_png(mask, rgb)
    (data / "YARISMA_1" / "ASAMA1_Cevaplar.txt").write_text("")  # an empty answer key
    for _ in range(2):  # built, then read back from .strokekit/
        index, report = build_index(data)
        assert report.empty == [str(Path("TRAINING/KANAMA/OVERLAY"))] and "empty folders" in report.summary()
        skipped = dict(report.skipped)
        assert "1 pixels are not one of the official mask colours" in skipped[str(mask)]
        assert "answer key not used" in skipped[str(data / "YARISMA_1" / "ASAMA1_Cevaplar.txt")]
        row = index.set_index("image_id").loc[int(mask.stem)]
        assert row.has_ischemic == -1  # unknown, not guessed
        check = check_files(index[index.split == "train"], masks=True, report=report)
        assert (int(mask.stem), str(mask), skipped[str(mask)]) in check.bad


def test_the_check_pairs_images_masks_and_sizes(data):
    png = training_files(data, "KANAMA/PNG")
    png[0].unlink()  # its MASK / OVERLAY stay: a mask without its image
    training_files(data, "ISKEMI/MASK")[0].unlink()
    training_files(data, "ISKEMI/OVERLAY")[0].unlink()  # an image without its mask
    write_png(png[1], np.zeros((32, 32), np.uint8))  # one image of another size than the rest
    write_png(training_files(data, "KANAMA/MASK")[2], np.zeros((32, 32, 3), np.uint8))  # a mask of another size
    make_bad(png[3].parent, "truncated").replace(png[3])
    index, report = build_index(data)
    check = check_files(index[index.split == "train"], masks=True, report=report)
    bad = {image_id: problem for image_id, _, problem in check.bad}
    assert bad[int(png[0].stem)].startswith(f"no PNG file for image {png[0].stem} (found only ")
    assert bad[int(png[1].stem)] == "MASK is 64x64 but its image is 32x32"
    assert bad[int(training_files(data, 'KANAMA/MASK')[2].stem)] == "MASK is 32x32 but its image is 64x64"
    assert bad[int(png[3].stem)].startswith("damaged PNG: truncated")
    assert len(bad) == 4
    notes = dict(check.warnings)
    assert "unlike the usual 64x64: resized to img_size" in notes[str(png[1])]
    assert "without MASK or OVERLAY" in notes[str(training_files(data, "ISKEMI/PNG")[0])]
    assert check_files(index[index.split == "train"], image_source="dicom").bad == []  # every DICOM is whole


def run_train(data: Path, out: Path, *extra: str) -> int:
    return train.main(["--config", str(ROOT / "configs" / "tiny_stroke.yaml"), "--fold", "0", "--data", str(data),
                       "--out", str(out), "--no-progress", *extra,
                       "--set", "img_size=64", "epochs=1", "num_workers=0"])


def test_train_fails_before_training_or_skips_and_lists_the_bad_files(data, tmp_path, capsys):
    victim = training_files(data, "INMEYOK/PNG")[4]
    make_bad(tmp_path, "truncated").replace(victim)
    assert run_train(data, tmp_path / "runs") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {victim}: damaged PNG: truncated") and "--on-bad-input skip" in err
    assert not (tmp_path / "runs" / "tiny_stroke" / "fold0" / "log.csv").exists()  # nothing trained

    assert run_train(data, tmp_path / "runs", "--on-bad-input", "skip") == 0
    run_dir = tmp_path / "runs" / "tiny_stroke" / "fold0"
    skipped = pd.read_csv(run_dir / "skipped.csv")
    assert skipped.columns.tolist() == ["image_id", "file", "problem"]
    assert skipped["file"].tolist() == [str(victim)] and skipped["image_id"].tolist() == [int(victim.stem)]
    assert int(victim.stem) not in set(pd.read_csv(run_dir / "oof.csv")["image_id"])
    assert "skip" in (run_dir / "config.yaml").read_text()


def tiny_spec(tmp_path: Path) -> Path:
    cfg = load_config(None, ["model=tiny_cnn", "img_size=32"])
    (tmp_path / "ens").mkdir()
    save_atomic(build_checkpoint(build_model(cfg), cfg, 2, epoch=1), tmp_path / "ens" / "m.pt")
    return write_spec({"task": "stroke", "blend": "mean", "tta": ["none"], "threshold": {"value": 0.5},
                       "members": [{"name": "m", "weight": 1.0, "checkpoints": ["m.pt"]}]}, tmp_path / "ens" / "s.yaml")


def test_infer_fails_on_a_bad_test_image_or_leaves_it_out(data, tmp_path, capsys):
    spec = tiny_spec(tmp_path)
    test_dir = data / "YARISMA_1"
    victim = sorted((test_dir / "PNG").iterdir())[0]
    victim.write_bytes(b"GIF89a nonsense")
    args = ["--phase", "1", "--ensemble", str(spec), "--data", str(test_dir), "--device", "cpu"]
    assert infer.main(args + ["--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {victim}: not a readable image")
    assert not (tmp_path / "a").exists()
    assert infer.main(args + ["--out", str(tmp_path / "b"), "--on-bad-input", "skip"]) == 0
    assert pd.read_csv(tmp_path / "b" / "skipped.csv")["file"].tolist() == [str(victim)]
    answered = (tmp_path / "b" / "asama1.txt").read_text(encoding="utf-8").splitlines()[1:]
    assert len(answered) == 2 and not any(line.startswith(victim.stem) for line in answered)


@pytest.mark.parametrize("script", ["train", "kfold", "infer"])
def test_clis_report_a_missing_data_folder_without_a_traceback(script, tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    argv = {"train": ["--config", str(ROOT / "configs" / "tiny_stroke.yaml"), "--data", missing],
            "kfold": ["--data", missing],
            "infer": ["--phase", "1", "--ensemble", str(tmp_path / "s.yaml"), "--data", missing]}[script]
    assert {"train": train, "kfold": kfold, "infer": infer}[script].main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere does not exist" in err


@pytest.mark.parametrize("override,message", [("lrr=1e-3", "unknown config key 'lrr'. Did you mean lr?"),
                                              ("aug={", "not valid YAML"),
                                              ("on_bad_input=ignore", "on_bad_input: must be one of fail, skip")])
def test_a_config_typo_in_set_is_an_error_line(override, message, phantom, capsys):
    assert train.main(["--config", str(ROOT / "configs" / "tiny_stroke.yaml"), "--data", str(phantom),
                       "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_no_warning_noise_from_the_check_on_clean_data(phantom):
    index, report = build_index(phantom)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check = check_files(index[index.split == "train"], masks=True, report=report)
        check_files(index[index.split == "train"], image_source="dicom", report=report)
    assert check.bad == [] and check.warnings == [] and check.n_images == 60


def test_the_real_files_pass_the_header_check(real_samples):
    pngs = sorted((real_samples / "teknofest_aaratsatsangi" / "Test Images").rglob("*.png"))
    assert len(pngs) >= 10
    assert {check_png(path)[:2] for path in pngs} == {(512, 512)}
