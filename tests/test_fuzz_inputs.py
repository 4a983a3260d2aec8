"""Fuzz: a few hundred randomly corrupted phantom files (truncated, bit-flipped, zeroed headers, other files'
bytes, RGBA garbage, wrong sizes, absurd headers) through every reader, the header checks, build_index and
the up-front check. The only exception allowed out is BadInputError naming the file (DataLayoutError for a
tree with nothing usable); everything else must come back as a clean value or a clean report entry."""
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import write_dicom
from strokekit.data.check import check_files
from strokekit.data.encodings import class_map_to_rgb, encode_overlay
from strokekit.data.index import DataLayoutError, build_index
from strokekit.data.readers import (BadInputError, check_dicom, check_png, image_size, load_class_map,
                                    load_image, read_dicom_header, read_dicom_hu, read_mask, read_overlay_mask,
                                    read_png)

SIZE = 24
N_FILES = 360
CORRUPTIONS = ("truncate", "flip", "zero_header", "random_bytes", "other_file", "empty", "rgba_garbage",
               "wrong_size", "huge_header")


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    lesion = np.zeros((SIZE, SIZE), np.uint8)
    lesion[6:14, 5:12] = 2
    dicom = write_dicom(tmp_path_factory.mktemp("fuzz") / "x.dcm", grey.astype(np.int16) + 1000)
    return {"png": png_bytes(grey), "rgba": png_bytes(np.dstack([grey] * 3 + [np.full_like(grey, 255)])),
            "png16": png_bytes(grey.astype(np.uint16) * 250), "palette": png_bytes(grey // 64 * 64),
            "mask": png_bytes(class_map_to_rgb(lesion)), "overlay": png_bytes(encode_overlay(grey, lesion)),
            "dicom": dicom.read_bytes()}


def corrupt(data: bytes, kind: str, rng: np.random.Generator, originals: dict) -> bytes:
    raw = bytearray(data)
    if kind == "truncate":
        return bytes(raw[:rng.integers(0, len(raw))])
    if kind == "flip":
        for i in rng.integers(0, len(raw), rng.integers(1, 30)):
            raw[i] ^= 1 << int(rng.integers(0, 8))
        return bytes(raw)
    if kind == "zero_header":
        n = int(rng.integers(4, 300))
        raw[:n] = bytes(min(n, len(raw)))
        return bytes(raw)
    if kind == "random_bytes":
        return rng.integers(0, 256, rng.integers(1, 4000), dtype=np.uint8).tobytes()
    if kind == "other_file":
        return originals[rng.choice(sorted(originals))]
    if kind == "empty":
        return b""
    if kind == "rgba_garbage":
        return png_bytes(rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8))
    if kind == "wrong_size":
        side = int(rng.integers(1, 3 * SIZE))
        return png_bytes(rng.integers(0, 256, (side, int(rng.integers(1, 3 * SIZE)), 3), dtype=np.uint8))
    # huge_header: checksums fine, a size no CT slice has
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    w, h = (int(v) for v in rng.integers(1, 2**31 - 1, 2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 50)) + chunk(b"IEND", b""))


def readers_for(kind: str, good_png: Path):
    if kind == "dicom":
        return {"read_dicom_hu": read_dicom_hu, "read_dicom_header": read_dicom_header, "check_dicom": check_dicom}
    return {"read_png": read_png, "check_png": check_png, "image_size": image_size, "read_mask": read_mask,
            "read_overlay_mask": lambda path: read_overlay_mask(good_png, path)}


def test_corrupted_files_through_every_reader(originals, tmp_path):
    rng = np.random.default_rng(2021)
    good_png = tmp_path / "good.png"
    good_png.write_bytes(originals["png"])
    escaped, outcomes = [], {"value": 0, "bad": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing rescale tags, PIL's size warnings: noted, not failures
        for i in range(N_FILES):
            source = sorted(originals)[i % len(originals)]
            kind = CORRUPTIONS[rng.integers(0, len(CORRUPTIONS))]
            path = tmp_path / f"{i}_{kind}.{'dcm' if source == 'dicom' else 'png'}"
            path.write_bytes(corrupt(originals[source], kind, rng, originals))
            for name, read in readers_for(source, good_png).items():
                try:
                    value = read(path)
                    assert isinstance(value, (np.ndarray, tuple, dict)), (name, path)
                    outcomes["value"] += 1
                except BadInputError as err:
                    assert err.path == str(path) and err.problem, (name, err)
                    outcomes["bad"] += 1
                except Exception as err:  # noqa: BLE001 - what this test exists to catch
                    escaped.append(f"{name}({path.name}): {type(err).__name__}: {err}"[:300])
    assert escaped == [], "\n".join(escaped[:20])
    assert outcomes["bad"] > 300 and outcomes["value"] > 100  # both paths were exercised


def test_a_corrupted_tree_through_the_index_and_the_check(originals, tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "data"
    layout = {"INMEYOK": ("PNG", "DICOM"), "ISKEMI": ("PNG", "DICOM", "MASK", "OVERLAY"),
              "KANAMA": ("PNG", "DICOM", "MASK", "OVERLAY")}
    source = {"PNG": "png", "DICOM": "dicom", "MASK": "mask", "OVERLAY": "overlay"}
    image_id = 100
    for cls, folders in layout.items():
        for _ in range(20):
            image_id += 1
            for folder in folders:
                if rng.random() < 0.1:
                    continue  # a missing partner file
                data = originals[source[folder]]
                if rng.random() < 0.4:
                    data = corrupt(data, CORRUPTIONS[rng.integers(0, len(CORRUPTIONS))], rng, originals)
                path = root / "TRAINING" / cls / folder / f"{image_id}.{'dcm' if folder == 'DICOM' else 'png'}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            index, report = build_index(root, cache=False)
        except DataLayoutError as err:  # the only other way out: a clear message about the tree
            pytest.fail(f"this tree has usable files, yet: {err}")
        assert all(isinstance(p, str) and isinstance(why, str) and why for p, why in report.skipped)
        train = index[index.split == "train"]
        for image_source in ("png", "dicom"):
            check = check_files(train, image_source, masks=True, report=report)
            assert all(isinstance(i, int) and f and problem for i, f, problem in check.bad)
            assert len(check.bad_ids) < len(train)
            # what the check let through, the readers read or refuse by name: never another exception
            cfg = {"image_source": image_source, "windows": [[40, 80]], "in_chans": 1}
            for row in train[~train.image_id.isin(check.bad_ids)].to_dict("records"):
                try:
                    load_image(row, cfg)
                    load_class_map(row)
                except BadInputError as err:
                    assert err.path in (row["png"], row["dicom"], row["mask"], row["overlay"])
