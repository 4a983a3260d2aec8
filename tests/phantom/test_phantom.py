"""The phantom data set: layouts, file formats, determinism, lesion realism, and likeness to the real files."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from strokekit.data.encodings import decode_overlay, rgb_to_class_map
from strokekit.data.dicom import read_dicom_hu, window
from strokekit.phantom.dataset import (ANSWER_KEY, LAYOUTS, STROKE_SHARE, TRUTH_CSV, draw_slice, make_phantom,
                                       plan_dataset)

SMALL = dict(n=80, n_test1=12, n_test2=8, size=128, seed=0, workers=1)
KEY_LINE = re.compile(rb"(\d+)\t([01])\r\n")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    return {"competition": make_phantom(root / "competition", **SMALL),
            "public": make_phantom(root / "public", layout="public", **SMALL),
            "public_nfd": make_phantom(root / "public_nfd", layout="public", nfd=True, **SMALL)}


@pytest.fixture(scope="module")
def competition(phantoms) -> Path:
    return phantoms["competition"]


def truth(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / TRUTH_CSV)


def folder(root: Path, layout: str, key: str, sub: str = "", nfd: bool = False) -> Path:
    path = root / LAYOUTS[layout][key][0] / sub
    return Path(unicodedata.normalize("NFD", str(path))) if nfd else path


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))[..., 0]


# ---- determinism ---------------------------------------------------------------------------------------

def test_same_seed_gives_the_same_bytes(tmp_path, competition):
    again = make_phantom(tmp_path / "again", **{**SMALL, "workers": 2})  # worker count must not matter
    first, second = all_files(competition), all_files(again)
    assert sorted(first) == sorted(second)
    different = [name for name in first if first[name] != second[name]]
    assert not different, f"{len(different)} files differ between two runs with seed 0, e.g. {different[:3]}"


def test_another_seed_gives_other_data(tmp_path, competition):
    other = make_phantom(tmp_path / "other", **{**SMALL, "seed": 1})
    first, second = all_files(competition), all_files(other)
    assert first[TRUTH_CSV] != second[TRUTH_CSV]
    shared = [name for name in first if name.endswith(".dcm") and name in second]
    assert shared and all(first[name] != second[name] for name in shared[:10])


# ---- layout ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["competition", "public", "public_nfd"])
def test_folders_follow_the_layout_table(phantoms, name):
    root, layout, nfd = phantoms[name], name.split("_")[0], name.endswith("nfd")
    expected = {unicodedata.normalize("NFD" if nfd else "NFC", f"{path}/{sub}")
                for path, subs in LAYOUTS[layout].values() for sub in subs}
    leaves = {str(p.relative_to(root)) for p in root.rglob("*")
              if p.is_dir() and not any(c.is_dir() for c in p.iterdir())}
    assert leaves == expected
    for key in ("no_stroke", "ischemic", "hemorrhagic", "test1", "test2"):
        assert any(folder(root, layout, key, "PNG", nfd).iterdir()), f"{key} PNG folder is empty"
    if layout == "public":
        assert not list(folder(root, layout, "ischemic", nfd=nfd).glob("MASK*")), "public training has no MASK"
        assert any(folder(root, layout, "test2", "MASKS", nfd).iterdir())
    if nfd:
        names = {part for p in root.rglob("*") if p.is_dir() for part in p.relative_to(root).parts}
        assert all(unicodedata.is_normalized("NFD", part) for part in names)
        assert "İnme Yok" not in names and unicodedata.normalize("NFD", "İnme Yok") in names


@pytest.mark.parametrize("name", ["competition", "public_nfd"])
def test_answer_key_is_byte_like_the_released_key(phantoms, name, real_samples):
    real = (real_samples / "teknofest_husnaksk" / ANSWER_KEY).read_bytes()
    assert KEY_LINE.sub(b"", real) == b"", "the pattern must describe the released key itself"
    root, layout, nfd = phantoms[name], name.split("_")[0], name.endswith("nfd")
    key = (folder(root, layout, "test1", nfd=nfd) / ANSWER_KEY).read_bytes()
    assert KEY_LINE.sub(b"", key) == b"", "no header, <id>\\t<0|1> CRLF lines only"
    labels = {int(i): int(y) for i, y in KEY_LINE.findall(key)}
    t = truth(root).set_index("id")
    png_ids = {int(p.stem) for p in folder(root, layout, "test1", "PNG", nfd).iterdir()}
    assert set(labels) == png_ids
    assert all(labels[i] == int(t.at[i, "class"] != "no_stroke") for i in labels)
    assert set(labels.values()) == {0, 1}


# ---- file formats ---------------------------------------------------------------------------------------

def test_dicom_carries_real_ct_tags(competition):
    import pydicom

    t = truth(competition)
    image_id = int(t.id[t.split == "train"].iloc[0])
    path = next(competition.rglob(f"DICOM/{image_id}.dcm"))
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage
    assert ds.Modality == "CT" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept) == (16, 1, 1, -1024)
    assert ds.pixel_array.dtype == np.int16 and ds.pixel_array.shape == (128, 128)
    assert (ds.WindowCenter, ds.WindowWidth) == (40, 80)
    assert float(ds.PixelSpacing[0]) > 0 and float(ds.SliceThickness) > 0 and len(ds.ImagePositionPatient) == 3
    assert ds.PatientID == t.set_index("id").at[image_id, "patient"]
    assert all(ds.get(tag) for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                       "InstanceNumber"))
    assert not any(keyword.endswith(("Date", "Time")) for keyword in ds.dir()), "no timestamps in files"


def test_png_is_rgba_grey_and_the_brain_window_of_the_dicom(competition):
    pngs = sorted(competition.rglob("PNG/*.png"))
    for png in pngs[::7]:
        with Image.open(png) as im:
            assert im.mode == "RGBA" and im.size == (128, 128)
            rgba = np.asarray(im)
        assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all()
        assert (rgba[..., 3] == 255).all()
        hu = read_dicom_hu(png.parent.parent / "DICOM" / f"{png.stem}.dcm")
        assert np.array_equal(rgba[..., 0], window(hu, 40, 80))


@pytest.mark.parametrize("name", ["competition", "public"])
def test_masks_and_overlays_hold_the_same_class_map(phantoms, name):
    root, layout = phantoms[name], name
    t = truth(root).set_index("id")
    checked = 0
    for key in ("ischemic", "hemorrhagic", "test2"):
        subs = LAYOUTS[layout][key][1]
        mask_sub = next((s for s in subs if s.startswith("MASK")), None)
        for png in sorted(folder(root, layout, key, "PNG").iterdir()):
            image_id = int(png.stem)
            maps = []
            if mask_sub:
                with Image.open(folder(root, layout, key, mask_sub) / png.name) as im:
                    assert im.mode == "RGB"
                    maps.append(rgb_to_class_map(np.asarray(im), strict=True))  # only the 3 official colours
            if "OVERLAY" in subs:
                overlay = np.asarray(Image.open(folder(root, layout, key, "OVERLAY") / png.name))
                maps.append(decode_overlay(np.asarray(Image.open(png)), overlay))
            assert all(np.array_equal(m, maps[0]) for m in maps), f"{png.name}: MASK and OVERLAY disagree"
            class_map = maps[0]
            assert class_map.any(), f"{png.name}: a stroke image without lesion pixels"
            assert int((class_map == 1).any()) == t.at[image_id, "has_ischemic"]
            assert int((class_map == 2).any()) == t.at[image_id, "has_hemorrhagic"]
            if key != "test2":  # an image with both kinds sits in the folder of the larger one
                dominant = "hemorrhagic" if (class_map == 2).sum() >= (class_map == 1).sum() else "ischemic"
                assert dominant == key
            checked += 1
    assert checked == ((t["class"] != "no_stroke") & (t.split != "test1")).sum()


# ---- content --------------------------------------------------------------------------------------------

def test_lesion_contrast_is_realistic():
    """Hemorrhage well above parenchyma; ischemia 3-12 HU below the same tissue drawn without it."""
    seen = {1: 0, 2: 0}
    for item in plan_dataset(150, 0, 20, seed=3):
        if not item.stroke:
            continue
        with_lesion, without = draw_slice(item, 128, 3), draw_slice(item, 128, 3, lesions=False)
        parenchyma = without.hu[without.parenchyma].mean()
        unchanged = with_lesion.class_map == 0
        assert (with_lesion.hu[unchanged] == without.hu[unchanged]).mean() > 0.9
        hem, isc = with_lesion.class_map == 2, with_lesion.class_map == 1
        if hem.any():
            assert with_lesion.hu[hem].mean() > parenchyma + 25
            seen[2] += 1
        tissue = isc & without.parenchyma  # not the sulci the swelling effaced
        if tissue.any():
            drop = with_lesion.hu[tissue].mean() - without.hu[tissue].mean()
            assert -12 <= drop <= -3, f"ischemia changes the tissue by {drop:.1f} HU"
            seen[1] += 1
    assert min(seen.values()) >= 20


def test_hu_values_in_the_files_are_plausible(competition):
    t = truth(competition)
    for row in t[t.split == "train"].to_dict("records"):
        cls_folder = folder(competition, "competition", row["class"])
        hu = read_dicom_hu(cls_folder / "DICOM" / f"{row['id']}.dcm")
        corners = np.concatenate([hu[:8, :8].ravel(), hu[:8, -8:].ravel()])
        assert abs(np.median(corners) + 1000) < 20, "air outside the head"
        assert (hu > 700).mean() > 0.01 and hu.max() > 1200, "a skull of dense bone"
        if row["class"] == "no_stroke":
            continue
        class_map = rgb_to_class_map(np.asarray(Image.open(cls_folder / "MASK" / f"{row['id']}.png")))
        if (class_map == 2).any():
            assert hu[class_map == 2].mean() > 55
        if (class_map == 1).any():
            assert 5 < hu[class_map == 1].mean() < 38


def test_class_mix_and_both_kinds():
    plan = plan_dataset(2000, 0, 0, seed=5)
    assert sum(item.stroke for item in plan) == round(STROKE_SHARE * 2000)
    both = [item for item in plan if item.stroke and
            len({les.label for les in item.head.lesions if les.label and les.scale_at(item.level)}) == 2]
    assert 0.04 < len(both) / sum(item.stroke for item in plan) < 0.12
    kinds = pd.Series([les.kind for item in plan for les in item.head.lesions])
    assert {"ich", "sdh", "territory", "lacune", "old_infarct"} <= set(kinds)


def test_phase2_images_all_hold_lesions_and_phase1_is_mixed(competition):
    t = truth(competition)
    assert (t[t.split == "test2"]["class"] != "no_stroke").all()
    assert len(t[t.split == "test2"]) == SMALL["n_test2"]
    for mask in folder(competition, "competition", "test2", "MASK").iterdir():
        assert rgb_to_class_map(np.asarray(Image.open(mask))).any(), mask.name
    test1 = t[t.split == "test1"]["class"]
    assert len(test1) == SMALL["n_test1"] and (test1 == "no_stroke").any() and (test1 != "no_stroke").any()


def test_ids_are_unique_and_test_ids_in_their_own_range(competition):
    ids = [int(p.stem) for p in competition.rglob("PNG/*.png")]
    assert len(ids) == len(set(ids)) == SMALL["n"] + SMALL["n_test1"] + SMALL["n_test2"]
    t = truth(competition)
    train, test1, test2 = (t.id[t.split == s] for s in ("train", "test1", "test2"))
    assert train.min() >= 10000 and train.max() < test1.min() and test1.max() < test2.min()


def test_patients_have_several_slices_some_in_two_class_folders(competition):
    import pydicom

    t = truth(competition)
    train = t[t.split == "train"]
    per_patient = train.groupby("patient").size()
    assert per_patient.median() >= 3 and per_patient.max() <= 8
    mixed = train.groupby("patient")["class"].nunique()
    assert (mixed > 1).sum() >= 3, "stroke patients also have clear slices, so grouping by patient matters"
    assert not set(t.patient[t.split == "train"]) & set(t.patient[t.split != "train"])
    patient = mixed.idxmax()
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for i in train.id[train.patient == patient]
               for p in competition.rglob(f"DICOM/{i}.dcm")]
    assert len({(h.StudyInstanceUID, h.SeriesInstanceUID, h.PatientID) for h in headers}) == 1
    assert len({int(h.InstanceNumber) for h in headers}) == len(headers)


@pytest.mark.parametrize("name", ["competition", "public_nfd"])
def test_the_kit_index_reads_the_phantom_like_its_truth(phantoms, name):
    from strokekit.data.index import build_index

    root = phantoms[name]
    index, _ = build_index(root, cache=False)
    index = index.set_index("image_id")
    t = truth(root).set_index("id").loc[index.index]
    train = index.split == "train"
    assert (index.split == t.split).all()
    assert (index.class_name[train] == t["class"][train]).all()
    assert (index.stroke == (t["class"] != "no_stroke").astype(int)).all()
    assert (index.patient_id == t.patient).all()
    known = index.has_ischemic >= 0
    assert (index.has_ischemic[known] == t.has_ischemic[known]).all()
    assert (index.has_hemorrhagic[known] == t.has_hemorrhagic[known]).all()


# ---- likeness to the real files, full size --------------------------------------------------------------

def test_full_size_png_looks_like_a_real_one(tmp_path, real_samples):
    real = Image.open(real_samples / "teknofest_husnaksk" / "17026.png")
    root = make_phantom(tmp_path / "p512", n=8, n_test1=0, n_test2=0, seed=0)
    pngs = sorted(root.rglob("PNG/*.png"))
    for png in pngs:
        with Image.open(png) as im:
            assert (im.mode, im.size) == (real.mode, real.size) == ("RGBA", (512, 512))
            assert im.info.get("gamma") == real.info.get("gamma") and im.info.get("dpi") == real.info.get("dpi")

    def stats(image) -> tuple[float, float, float]:
        rgba = np.asarray(image)
        assert (rgba[..., 0] == rgba[..., 2]).all() and (rgba[..., 3] == 255).all()
        g = rgba[..., 0]
        return (g <= 5).mean(), (g == 255).mean(), float(np.median(g[(g > 5) & (g < 255)]))

    real_bg, real_bright, real_mid = stats(real)
    bg, bright, mid = np.median([stats(Image.open(p)) for p in pngs], axis=0)
    assert abs(bg - real_bg) < 0.12, f"background share {bg:.2f} vs real {real_bg:.2f}"
    assert real_bright / 3 < bright < real_bright * 3, f"skull (255) share {bright:.3f} vs real {real_bright:.3f}"
    assert 80 < mid < 160 and 80 < real_mid < 160, f"brain tissue (25-50 HU) grey {mid}, real {real_mid}"


# ---- command line ---------------------------------------------------------------------------------------

def test_command_line_writes_and_refuses_to_clobber(tmp_path, capsys):
    import make_phantom as cli

    out = tmp_path / "cli"
    cli.main(["--out", str(out), "--n", "10", "--n-test1", "4", "--n-test2", "2", "--size", "64"])
    assert "wrote 16 slices" in capsys.readouterr().out
    assert cli.main(["--out", str(out), "--n", "10", "--size", "64"]) == 2  # an error line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1
    cli.main(["--out", str(out), "--n", "12", "--n-test1", "0", "--n-test2", "0", "--size", "64", "--overwrite"])
    assert len(truth(out)) == 12
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a phantom"):
        make_phantom(stranger, n=4, size=64, overwrite=True)
    with pytest.raises(ValueError, match="competition, public"):
        make_phantom(tmp_path / "bad", layout="kaggle")
