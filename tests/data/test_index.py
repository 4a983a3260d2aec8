"""The index: folder names in every layout / normalisation / case, stray files, duplicate ids, labels."""
import unicodedata

import numpy as np
import pytest

from helpers import write_dicom, write_png
from strokekit.data.encodings import class_map_to_rgb, encode_overlay
from strokekit.data.index import DataLayoutError, build_index, group_ids
from strokekit.data.layout import class_of, describe_path, fold_name
from strokekit.data.layout import test_split_of as split_of

GREY = np.full((16, 16), 90, np.uint8)


def lesion(cls: int) -> np.ndarray:
    cm = np.zeros((16, 16), np.uint8)
    cm[4:9, 4:9] = cls
    return cm


def make_tree(root, names: dict, nfd: bool = False, overlays: bool = False, masks: bool = True):
    """names: {'none'|'isc'|'hem'|'t1'|'t2': folder path} with ids 1.., a PNG (and MASK/OVERLAY) each."""
    norm = (lambda s: unicodedata.normalize("NFD", s)) if nfd else (lambda s: s)
    ids = {"none": [10, 11], "isc": [20, 21], "hem": [30], "t1": [40, 41], "t2": [50]}
    cls = {"isc": 1, "hem": 2, "t2": 1}
    for key, folder in names.items():
        for i in ids[key]:
            write_png(root / norm(folder) / "PNG" / f"{i}.png", GREY)
            if key in cls and masks:
                write_png(root / norm(folder) / norm(masks if isinstance(masks, str) else "MASK") / f"{i}.png",
                          class_map_to_rgb(lesion(cls[key])))
            if key in cls and overlays:
                write_png(root / norm(folder) / "OVERLAY" / f"{i}.png", encode_overlay(GREY, lesion(cls[key])))
    return root


COMPETITION = {"none": "TRAINING/INMEYOK", "isc": "TRAINING/ISKEMI", "hem": "TRAINING/KANAMA",
               "t1": "YARISMA_1", "t2": "YARISMA_2"}
PUBLIC = {"none": "İNME VERİSETİ/İnme Yok", "isc": "İNME VERİSETİ/İskemi", "hem": "İNME VERİSETİ/Kanama",
          "t1": "İNME VERİSETİ/YarısmaVeriSeti_1_Oturum", "t2": "İNME VERİSETİ/YarısmaVeriSeti_2_Oturum"}


def check_standard_index(index):
    by_id = index.set_index("image_id")
    assert sorted(by_id.index) == [10, 11, 20, 21, 30, 40, 41, 50]
    assert by_id.loc[[10, 11, 20, 21, 30], "class_name"].tolist() == ["no_stroke"] * 2 + ["ischemic"] * 2 + ["hemorrhagic"]
    assert by_id.loc[[10, 20, 30], "stroke"].tolist() == [0, 1, 1]
    assert by_id.loc[[40, 41, 50], "split"].tolist() == ["test1", "test1", "test2"]
    assert by_id.loc[20, "has_ischemic"] == 1 and by_id.loc[20, "has_hemorrhagic"] == 0
    assert by_id.loc[30, "has_hemorrhagic"] == 1 and by_id.loc[10, "has_ischemic"] == 0
    assert by_id.loc[50, "has_ischemic"] == 1


@pytest.mark.parametrize("nfd", [False, True])
def test_competition_layout(tmp_path, nfd):
    index, report = build_index(make_tree(tmp_path, COMPETITION, nfd=nfd), cache=False)
    check_standard_index(index)


@pytest.mark.parametrize("nfd", [False, True])
def test_public_layout_with_turkish_names_and_overlays_only(tmp_path, nfd):
    root = make_tree(tmp_path, PUBLIC, nfd=nfd, overlays=True, masks=False)
    write_png(root / unicodedata.normalize("NFD" if nfd else "NFC", PUBLIC["t2"]) / "MASKS" / "50.png",
              class_map_to_rgb(lesion(1)))
    index, report = build_index(root, cache=False)
    check_standard_index(index)
    assert index.set_index("image_id").loc[20, "overlay"].endswith("20.png")
    assert any("train/ischemic/overlay" in v for v in report.mapped.values())


def test_stray_files_are_skipped_and_reported(tmp_path):
    root = make_tree(tmp_path, COMPETITION)
    (root / "TRAINING" / "KANAMA" / "PNG" / "Thumbs.db").write_bytes(b"x")
    (root / "TRAINING" / ".DS_Store").write_bytes(b"x")
    (root / "TRAINING" / "ISKEMI" / "PNG" / "notes.txt").write_text("hello")
    write_png(root / "TRAINING" / "ISKEMI" / "PNG" / "copy of 20.png", GREY)
    (root / "misc").mkdir()
    (root / "misc" / "readme.md").write_text("x")
    index, report = build_index(root, cache=False)
    check_standard_index(index)
    skipped = dict(report.skipped)
    assert any("notes.txt" in p for p in skipped) and any("copy of 20.png" in p for p in skipped)
    assert any("Thumbs.db" in p for p in skipped)
    assert "misc" in report.ignored
    assert "skipped" in report.summary()


def test_duplicate_ids_across_class_folders_are_refused(tmp_path):
    root = make_tree(tmp_path, COMPETITION)
    write_png(root / "TRAINING" / "KANAMA" / "PNG" / "20.png", GREY)
    with pytest.raises(DataLayoutError, match=r"id 20: train/hemorrhagic, train/ischemic"):
        build_index(root, cache=False)


def test_missing_and_empty_roots_are_clear_errors(tmp_path):
    with pytest.raises(DataLayoutError, match="does not exist"):
        build_index(tmp_path / "nope")
    (tmp_path / "empty" / "TRAINING" / "KANAMA" / "PNG").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match="no .png/.dcm files"):
        build_index(tmp_path / "empty")


def test_answer_key_labels_phase1(tmp_path):
    root = make_tree(tmp_path, COMPETITION)
    (root / "YARISMA_1" / "ASAMA1_Cevaplar.txt").write_bytes(b"40\t1\r\n41\t0\r\n")
    index, _ = build_index(root, cache=False)
    assert index.set_index("image_id").loc[[40, 41], "stroke"].tolist() == [1, 0]


def test_dicom_headers_give_groups(tmp_path):
    root = make_tree(tmp_path, COMPETITION)
    write_dicom(root / "TRAINING" / "ISKEMI" / "DICOM" / "20.dcm", np.zeros((16, 16), np.int16), patient="PX")
    write_dicom(root / "TRAINING" / "INMEYOK" / "DICOM" / "10.dcm", np.zeros((16, 16), np.int16), patient="PX")
    index, _ = build_index(root, cache=False)
    groups = group_ids(index).set_axis(index.image_id)
    assert groups[20] == groups[10] == "PX" and groups[11] == "image-11"


def test_cache_is_reused_and_invalidated(tmp_path):
    root = make_tree(tmp_path, COMPETITION)
    first, _ = build_index(root)
    assert (root / ".strokekit" / "index.csv").is_file()
    again, _ = build_index(root)
    assert again.equals(first)
    write_png(root / "TRAINING" / "KANAMA" / "PNG" / "31.png", GREY)
    third, _ = build_index(root)
    assert 31 in set(third.image_id)


@pytest.mark.parametrize("name,cls", [("İnme Yok", "no_stroke"), ("INMEYOK", "no_stroke"), ("Normal", "no_stroke"),
                                      ("İnme Yok_kronik süreç_diğer Veri Set_PNG", "no_stroke"),
                                      ("İskemi Veri Seti", "ischemic"), ("Ischemia", "ischemic"),
                                      ("Kanama", "hemorrhagic"), ("Bleeding", "hemorrhagic"),
                                      ("İNME VERİSETİ", None), ("TRAINING", None)])
def test_class_names(name, cls):
    assert class_of(name) == cls
    assert class_of(unicodedata.normalize("NFD", name)) == cls
    assert class_of(name.upper()) == cls


@pytest.mark.parametrize("name,split", [("YARISMA_1", "test1"), ("YarısmaVeriSeti_2_Oturum", "test2"),
                                        ("YarısmaVeriSeti_1.Oturum", "test1"), ("Test Veri Seti_1", "test1"),
                                        ("External_Test", "test2"), ("Kanama", None)])
def test_test_folder_names(name, split):
    assert split_of(unicodedata.normalize("NFD", name)) == split


def test_fold_name_is_normalisation_free():
    assert fold_name("YARIŞMA") == fold_name("yarisma") == fold_name(unicodedata.normalize("NFD", "Yarışma"))
    assert describe_path(("TRAINING", "KANAMA", "MASK")) == {"split": "train", "class_name": "hemorrhagic",
                                                             "modality": "mask"}


def test_a_test_folder_can_be_the_root(tmp_path):
    root = make_tree(tmp_path, COMPETITION)
    (root / "YARISMA_1" / "ASAMA1_Cevaplar.txt").write_bytes(b"40\t1\r\n41\t0\r\n")
    index, _ = build_index(root / "YARISMA_1", cache=False)
    assert index.split.tolist() == ["test1", "test1"] and index.stroke.tolist() == [1, 0]
