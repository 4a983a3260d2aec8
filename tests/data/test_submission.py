"""Submission files: byte-exact phase 1, round-tripping phase-2 masks, validators that name the problem."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from strokekit.data.submission import (PHASE1_HEADER, SubmissionError, read_labels, read_phase2_mask,
                                       validate_phase1, validate_phase2, write_phase1, write_phase2,
                                       write_phase2_mask)

EXAMPLE = "teknofest_official_docs/docs/ASAMA1_örnek.txt"
ANSWER_KEY = "teknofest_husnaksk/ASAMA1_Cevaplar.txt"


# --------------------------------------------------------------------------- phase 1


def test_answer_key_reads_to_200_ids(real_samples):
    key = read_labels(real_samples / ANSWER_KEY)
    assert len(key) == 200
    assert sum(v == 0 for v in key.values()) == 130 and sum(v == 1 for v in key.values()) == 70
    assert key[10029] == 1 and key[10189] == 0  # a hemorrhage and a no-stroke id (see SOURCE.md)


def test_writer_reproduces_the_organisers_example_bytes(real_samples, tmp_path):
    example = (real_samples / EXAMPLE).read_bytes()
    rows = read_labels(real_samples / EXAMPLE)
    assert list(rows) == [1, 2, 3, 5, 6]  # id 4 deliberately left out by the organisers
    path = write_phase1(tmp_path / "asama1.txt", rows.keys(), rows.values())
    assert path.read_bytes() == example
    # the facts the bytes encode: no BOM, CRLF, no line end after the last row
    assert not example.startswith(b"\xef\xbb\xbf") and example.endswith(b"6\t0")
    assert example.count(b"\r\n") == 5 and example.count(b"\n") == 5


def test_example_validates_and_its_missing_id_is_reported(real_samples):
    assert validate_phase1(real_samples / EXAMPLE) == {1: 1, 2: 0, 3: 0, 5: 1, 6: 0}
    with pytest.raises(SubmissionError, match=r"1 missing ids: 4"):
        validate_phase1(real_samples / EXAMPLE, expected_ids=range(1, 7))


def test_write_phase1_into_a_folder_and_against_expected_ids(tmp_path):
    path = write_phase1(tmp_path, [7, 3], [1, 0], expected_ids=[3, 7])
    assert path == tmp_path / "asama1.txt"
    assert path.read_bytes().decode("utf-8") == f"{PHASE1_HEADER}\r\n7\t1\r\n3\t0"
    with pytest.raises(SubmissionError, match="missing ids: 9"):
        write_phase1(tmp_path / "b.txt", [7, 3], [1, 0], expected_ids=[3, 7, 9])


@pytest.mark.parametrize("ids, labels, message", [
    ([1, 1], [0, 1], "duplicate ids: 1"),
    ([1, 2], [0, 2], "labels other than 0/1: 2=2"),
    ([1, "x"], [0, 1], "not integers"),
])
def test_write_phase1_refuses_bad_rows_and_writes_nothing(tmp_path, ids, labels, message):
    with pytest.raises(SubmissionError, match=message):
        write_phase1(tmp_path / "asama1.txt", ids, labels)
    assert list(tmp_path.iterdir()) == []


def test_read_labels_accepts_lf_and_bom(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbf" + f"{PHASE1_HEADER}\n5\t1\n6\t0\n".encode())
    assert read_labels(path) == {5: 1, 6: 0}


def _write(tmp_path, text: str, raw: bytes = b""):
    path = tmp_path / "asama1.txt"
    path.write_bytes(raw + text.replace("\n", "\r\n").encode("utf-8"))
    return path


@pytest.mark.parametrize("text, expected, message", [
    (f"{PHASE1_HEADER}\n1\t1\n2\t0", [1, 2, 3], "missing ids: 3"),
    (f"{PHASE1_HEADER}\n1\t1\n2\t0\n9\t0", [1, 2], "extra ids: 9"),
    (f"{PHASE1_HEADER}\n1\t1\n1\t0\n2\t0", [1, 2], "duplicate ids: 1"),
    (f"{PHASE1_HEADER}\n1\t1\n2\tyes", [1, 2], "labels other than 0/1: 2='yes'"),
    ("Image Id\tInme Var mi?\n1\t1\n2\t0", [1, 2], "header is 'Image Id\\\\tInme Var mi\\?'"),
    ("1\t1\n2\t0", [1, 2], "header is None"),
    (f"{PHASE1_HEADER}\n1 1\n2\t0", [1, 2], "not separated by a tab, at lines: 2"),
    (f"{PHASE1_HEADER}\n1\t1\t0\n2\t0", [1, 2], "not '<id><TAB><label>'"),
])
def test_validate_phase1_rejects_bad_files(tmp_path, text, expected, message):
    with pytest.raises(SubmissionError, match=message):
        validate_phase1(_write(tmp_path, text), expected)


def test_validate_phase1_rejects_a_bom_and_lists_every_problem(tmp_path):
    path = _write(tmp_path, f"{PHASE1_HEADER}\n1\t1\n1\t3", raw=b"\xef\xbb\xbf")
    with pytest.raises(SubmissionError) as err:
        validate_phase1(path, [1, 2])
    text = str(err.value)
    for part in ("byte-order mark", "duplicate ids: 1", "labels other than 0/1", "missing ids: 2"):
        assert part in text
    assert isinstance(err.value, ValueError)


# --------------------------------------------------------------------------- phase 2


def _class_maps():
    a = np.zeros((512, 512), np.uint8)
    a[100:140, 200:260], a[300:310, 50:52] = 1, 2
    b = np.zeros((512, 512), np.uint8)
    b[0:5, 0:512] = 2
    return {101: a, 202: b}


def test_two_image_submission_round_trips_exactly(tmp_path):
    masks = _class_maps()
    files = write_phase2(tmp_path / "sub", masks)
    assert sorted(files) == [101, 202]
    for id_, class_map in masks.items():
        np.testing.assert_array_equal(read_phase2_mask(files[id_]), class_map)
        with Image.open(files[id_]) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (512, 512))
            colours = {tuple(c) for c in np.asarray(image).reshape(-1, 3)}
        assert colours <= {(0, 0, 0), (0, 0, 255), (0, 255, 0)}
    assert np.asarray(Image.open(files[101]))[120, 220].tolist() == [0, 0, 255]  # ischemia is blue
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["101.png", "202.png"]  # no temp left
    assert validate_phase2(tmp_path / "sub", [101, 202]) == files


def test_write_phase2_mask_refuses_labels_outside_the_classes(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        write_phase2_mask(tmp_path / "1.png", np.full((512, 512), 3, np.uint8))
    assert not (tmp_path / "1.png").exists()


def test_write_phase2_mask_checks_the_size(tmp_path):
    with pytest.raises(SubmissionError, match="size is 64x32"):
        write_phase2_mask(tmp_path / "1.png", np.zeros((32, 64), np.uint8))
    assert write_phase2_mask(tmp_path / "2.png", np.zeros((32, 64), np.uint8), size=None).is_file()


def _good_folder(tmp_path):
    write_phase2(tmp_path / "sub", _class_maps())
    return tmp_path / "sub"


def test_validate_phase2_missing_and_extra(tmp_path):
    folder = _good_folder(tmp_path)
    with pytest.raises(SubmissionError, match=r"1 missing ids: 303.*1 extra ids: 202"):
        validate_phase2(folder, [101, 303])


@pytest.mark.parametrize("make, message", [
    (lambda: Image.fromarray(np.zeros((512, 512, 4), np.uint8), "RGBA"), "mode is RGBA"),
    (lambda: Image.fromarray(np.zeros((512, 512), np.uint8), "L"), "mode is L"),
    (lambda: Image.fromarray(np.zeros((256, 256, 3), np.uint8), "RGB"), "size is 256x256"),
    (lambda: Image.fromarray(np.full((512, 512, 3), 255, np.uint8), "RGB"), "262144 pixels are not"),
])
def test_validate_phase2_rejects_bad_masks(tmp_path, make, message):
    folder = _good_folder(tmp_path)
    make().save(folder / "202.png")
    with pytest.raises(SubmissionError, match=message) as err:
        validate_phase2(folder, [101, 202])
    assert "202.png" in str(err.value)


def test_validate_phase2_rejects_odd_names_and_non_png(tmp_path):
    folder = _good_folder(tmp_path)
    (folder / "0101.png").write_bytes((folder / "101.png").read_bytes())
    with pytest.raises(SubmissionError, match="not named <id>.png: 0101.png"):
        validate_phase2(folder)
    (folder / "0101.png").unlink()
    Image.fromarray(np.zeros((512, 512, 3), np.uint8)).save(folder / "202.png", format="JPEG")
    with pytest.raises(SubmissionError, match="format is JPEG"):
        validate_phase2(folder)


def test_read_phase2_mask_strict_and_lenient(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[2, 2, :3] = (0, 250, 3)  # nearly hemorrhage green
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    with pytest.raises(SubmissionError, match="not 24-bit RGB"):
        read_phase2_mask(tmp_path / "m.png")
    lenient = read_phase2_mask(tmp_path / "m.png", strict=False)
    assert lenient[2, 2] == 2 and lenient.sum() == 2
