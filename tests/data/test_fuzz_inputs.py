"""Fuzz: a seeded corpus of corrupted phantom DICOM / PNG / MASK / OVERLAY files through the index, the up-front
check (data/check.py) and the readers, the way train.py / infer.py meet them.

Every variant must end one of three ways:
  refused     the up-front check lists its image as bad, naming the damaged file (or, for a size mismatch, the
              MASK / OVERLAY paired with it);
  exact       the check passes it, and the readers return exactly the original pixels / class map;
  undetectable  the check passes it and the pixels differ, for a change on this short list, which no check can
              see because the format has no checksum over it:
                - `dicom pixel bit flip`: a bit flipped inside a DICOM's pixel data;
                - `dicom plausible rescale`: a bit flipped in a RescaleSlope / RescaleIntercept digit that leaves
                  a plausible value (-1024 -> -1025), the slice's HU still inside dicom.HU_RANGE.
A reader that fails on a file the check passed (what used to kill epoch 1), any exception other than
BadInputError / DataLayoutError, or a file that takes longer than PER_FILE_S, fails the test.
Rows without a MASK / OVERLAY partner are left out of the size-change kinds: a slice of another size is a valid
image (warned and resized, data/check.py), not damage.
"""
import io
import signal
import struct
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from strokekit.data.check import check_files
from strokekit.data.index import build_index
from strokekit.data.badinput import BadInputError
from strokekit.data.dicom import check_dicom, read_dicom_header, read_dicom_hu
from strokekit.data.readers import (check_png, image_size, load_class_map, load_image, read_mask, read_overlay_mask,
                                    read_png)
from strokekit.phantom.dataset import make_phantom

SIZE = 64
PER_KIND = 130  # x 4 file kinds = 520 variants
PER_FILE_S = 5.0
PNG_MUTATIONS = ("flip", "truncate", "chunk_drop", "chunk_dup", "ihdr_edit", "idat_split", "tail", "zero_run",
                 "idat_garbage", "idat_short", "wrong_size", "text_chunk")
DICOM_MUTATIONS = ("flip_header", "flip_pixels", "truncate", "delete_any", "delete_pixel_tag", "edit", "zero_run",
                   "tail")
PIXEL_TAGS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
              "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept", "PixelData", "SamplesPerPixel")
EDITS = (("Rows", 0), ("Rows", 32), ("Rows", 65), ("Columns", 128), ("BitsAllocated", 8), ("BitsAllocated", 12),
         ("BitsStored", 20), ("BitsStored", 0), ("HighBit", 3), ("PixelRepresentation", 3),
         ("PhotometricInterpretation", "RGB"), ("PhotometricInterpretation", "PALETTE COLOR"),
         ("RescaleSlope", "0"), ("RescaleSlope", "1e38"), ("RescaleSlope", "-1e38"), ("RescaleSlope", "40"),
         ("RescaleIntercept", "-1e6"), ("RescaleIntercept", "32767"), ("SamplesPerPixel", 3),
         ("NumberOfFrames", 2), ("Modality", "MR"))
UNDETECTABLE = ("dicom pixel bit flip", "dicom plausible rescale")


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def timed(fn, *args):
    """fn(*args) under a PER_FILE_S wall-clock limit (Hang past it)."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, PER_FILE_S)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ PNG chunks


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = 8, []
    while pos + 8 <= len(data):
        length, tag = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((tag, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def build(parts) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(struct.pack(">I", len(body)) + tag + body
                                           + struct.pack(">I", zlib.crc32(tag + body)) for tag, body in parts)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def flip(raw: bytearray, low: int, high: int, rng) -> list[int]:
    where = sorted({int(i) for i in rng.integers(low, high, int(rng.integers(1, 9)))})
    for i in where:
        raw[i] ^= 1 << int(rng.integers(0, 8))
    return where


def mutate_png(data: bytes, kind: str, rng) -> tuple[bytes, str]:
    raw, parts = bytearray(data), chunks(data)
    if kind == "flip":
        flip(raw, 0, len(raw), rng)
        return bytes(raw), ""
    if kind == "truncate":
        return data[:int(rng.integers(0, len(data)))], ""
    if kind == "zero_run":
        start = int(rng.integers(0, len(raw)))
        end = min(len(raw), start + int(rng.integers(1, 64)))
        raw[start:end] = bytes(end - start)
        return bytes(raw), ""
    if kind == "tail":  # bytes after IEND: ignored by every reader
        return data + rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes(), ""
    if kind == "chunk_drop":
        i = int(rng.integers(0, len(parts)))
        return build(parts[:i] + parts[i + 1:]), parts[i][0].decode()
    if kind == "chunk_dup":
        i, j = int(rng.integers(0, len(parts))), int(rng.integers(0, len(parts) + 1))
        return build(parts[:j] + [parts[i]] + parts[j:]), f"{parts[i][0].decode()} at {j}"
    if kind == "idat_split":  # one IDAT as two: the same pixels
        i = next(k for k, (tag, _) in enumerate(parts) if tag == b"IDAT")
        body = parts[i][1]
        cut = int(rng.integers(1, len(body)))
        return build(parts[:i] + [(b"IDAT", body[:cut]), (b"IDAT", body[cut:])] + parts[i + 1:]), ""
    if kind == "text_chunk":  # an ancillary chunk added: the same pixels
        i = int(rng.integers(1, len(parts)))
        return build(parts[:i] + [(b"tEXt", b"Comment\0fuzz")] + parts[i:]), ""
    if kind == "ihdr_edit":
        fields = list(struct.unpack(">IIBBBBB", parts[0][1]))
        field = int(rng.integers(0, 7))
        options = {0: [fields[0] // 2, fields[0] + 1, fields[0] * 2, 0, 2**31 + 5],
                   1: [fields[1] // 2, fields[1] - 1, fields[1] * 2, 0],
                   2: [1, 2, 4, 16, 7], 3: [0, 2, 3, 4, 6, 5], 4: [1], 5: [1], 6: [1]}[field]
        fields[field] = int(rng.choice(options))
        return build([(b"IHDR", struct.pack(">IIBBBBB", *fields))] + parts[1:]), f"field {field}={fields[field]}"
    idat = b"".join(body for tag, body in parts if tag == b"IDAT")
    others = [p for p in parts if p[0] != b"IDAT"]
    if kind == "idat_garbage":  # valid checksum around bytes that are not the image
        body = rng.integers(0, 256, len(idat), dtype=np.uint8).tobytes()
    else:  # idat_short: a valid zlib stream of too few bytes
        body = zlib.compress(zlib.decompress(idat)[:int(rng.integers(0, len(zlib.decompress(idat))))])
    return build(others[:-1] + [(b"IDAT", body)] + others[-1:]), ""


def wrong_size(array: np.ndarray, rng) -> bytes:
    h, w = array.shape[:2]
    new = (int(rng.choice([h // 2, h + 1, h * 2])), int(rng.choice([w // 2, w, w * 2])))
    return png_bytes(np.asarray(Image.fromarray(array).resize(new[::-1], Image.NEAREST)))


# ------------------------------------------------------------------ DICOM


def mutate_dicom(data: bytes, kind: str, rng) -> tuple[bytes, str]:
    raw = bytearray(data)
    pixel_start = len(data) - len(pydicom.dcmread(io.BytesIO(data)).PixelData)
    if kind == "flip_header":
        flip(raw, 0, pixel_start, rng)
        return bytes(raw), ""
    if kind == "flip_pixels":
        flip(raw, pixel_start, len(raw), rng)
        return bytes(raw), "pixels"
    if kind == "truncate":
        return data[:int(rng.integers(0, len(data)))], ""
    if kind == "zero_run":
        start = int(rng.integers(0, pixel_start))
        raw[start:min(start + 32, pixel_start)] = bytes(len(raw[start:min(start + 32, pixel_start)]))
        return bytes(raw), ""
    if kind == "tail":
        return data + rng.integers(0, 256, int(rng.integers(2, 40)) // 2 * 2, dtype=np.uint8).tobytes(), ""
    ds = pydicom.dcmread(io.BytesIO(data))
    if kind == "delete_pixel_tag":
        key = str(rng.choice(PIXEL_TAGS))
        delattr(ds, key)
        note = key
    elif kind == "delete_any":
        key = str(rng.choice([e.keyword for e in ds if e.keyword]))
        delattr(ds, key)
        note = key
    else:  # edit
        key, value = EDITS[int(rng.integers(0, len(EDITS)))]
        setattr(ds, key, value)
        note = f"{key}={value}"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue(), note


def rescale_only(original: bytes, variant: bytes) -> bool:
    """True when the variant's header differs from the original's only in RescaleSlope / RescaleIntercept."""
    try:
        a, b = pydicom.dcmread(io.BytesIO(original), force=True), pydicom.dcmread(io.BytesIO(variant), force=True)
        changed = {e.keyword for e in a if e.keyword != "PixelData" and (e.tag not in b or b[e.tag].value != e.value)}
        changed |= {e.keyword for e in b if e.tag not in a}
        return bool(changed) and changed <= {"RescaleSlope", "RescaleIntercept"}
    except Exception:  # noqa: BLE001 - not parseable: not this kind
        return False


# ------------------------------------------------------------------ the corpus


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """One phantom stroke slice with all four files (64 px), its bytes, pixels and class map."""
    root = make_phantom(tmp_path_factory.mktemp("fuzz_src") / "data", n=12, seed=1, size=SIZE, n_test1=0,
                        n_test2=0, workers=1)
    index, _ = build_index(root, cache=False)
    row = index[(index["mask"] != "") & (index["overlay"] != "") & (index["dicom"] != "")].iloc[0].to_dict()
    files = {kind: Path(row[kind]).read_bytes() for kind in ("png", "dicom", "mask", "overlay")}
    arrays = {kind: np.asarray(Image.open(io.BytesIO(files[kind]))) for kind in ("png", "mask", "overlay")}
    return {"files": files, "arrays": arrays, "class_name": row["class_name"]}


def make_corpus(source: dict, root: Path) -> pd.DataFrame:
    """PER_KIND corrupted variants of each file kind, each in its own image id beside pristine partners:
    PNG / DICOM variants with a MASK, MASK variants with a MASK only, OVERLAY variants with an OVERLAY only."""
    rng = np.random.default_rng(2021)
    folder = root / "TRAINING" / {"ischemic": "ISKEMI", "hemorrhagic": "KANAMA"}[source["class_name"]]
    records, image_id = [], 10000
    for target in ("png", "dicom", "mask", "overlay"):
        mutations = DICOM_MUTATIONS if target == "dicom" else PNG_MUTATIONS
        for n in range(PER_KIND):
            image_id += 1
            kind = mutations[n % len(mutations)]
            original = source["files"][target]
            if kind == "wrong_size":
                data, note = wrong_size(source["arrays"][target], rng), ""
            elif target == "dicom":
                data, note = mutate_dicom(original, kind, rng)
            else:
                data, note = mutate_png(original, kind, rng)
            partner = "overlay" if target == "overlay" else "mask"
            paths = {}
            for kind_of_file in ("png", "dicom", partner):
                sub = {"png": "PNG", "dicom": "DICOM", "mask": "MASK", "overlay": "OVERLAY"}[kind_of_file]
                path = folder / sub / f"{image_id}.{'dcm' if kind_of_file == 'dicom' else 'png'}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data if kind_of_file == target else source["files"][kind_of_file])
                paths[kind_of_file] = str(path)
            records.append({"image_id": image_id, "target": target, "mutation": kind, "note": note,
                            "file": paths[target], "changed": data != original,
                            "rescale_only": target == "dicom" and kind == "flip_header"
                            and rescale_only(original, data), **paths})
    return pd.DataFrame(records)


def test_every_corrupted_file_is_refused_by_name_read_exactly_or_a_documented_blind_spot(source, tmp_path):
    started = time.time()
    root = tmp_path / "data"
    corpus = make_corpus(source, root)
    assert len(corpus) >= 500
    failures, outcomes = [], Counter()

    # 1. every variant alone through every check and reader: BadInputError naming it or a value, in PER_FILE_S
    good_png = tmp_path / "good.png"
    good_png.write_bytes(source["files"]["png"])
    dicom_readers = (("check_dicom", check_dicom), ("read_dicom_hu", read_dicom_hu),
                     ("read_dicom_header", read_dicom_header))
    png_readers = (("check_png", check_png), ("read_png", read_png), ("image_size", image_size),
                   ("read_mask", read_mask), ("read_overlay_mask", lambda path: read_overlay_mask(good_png, path)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in corpus.itertuples():
            for name, fn in dicom_readers if case.target == "dicom" else png_readers:
                try:
                    timed(fn, case.file)
                except BadInputError as err:
                    if err.path != case.file or not err.problem:
                        failures.append(f"{name} {case.mutation}: names {err.path!r}: {err.problem}")
                except Hang:
                    failures.append(f"{name} {case.mutation} {case.note}: HANG past {PER_FILE_S}s on {case.file}")
                except Exception as err:  # noqa: BLE001 - what this test exists to catch
                    failures.append(f"{name} {case.mutation} {case.note}: {type(err).__name__}: {err}"[:300])

        # 2. the tree as train.py meets it: the index, the up-front check, then the loader's reads
        index, report = build_index(root, cache=False)
        pristine = {"png": None, "dicom": None}
        rows = index.set_index("image_id")
        for source_kind in ("png", "dicom"):
            cfg = {"image_source": source_kind, "windows": [[40, 80], [80, 200]], "in_chans": 2}
            targets = ("png", "mask", "overlay") if source_kind == "png" else ("dicom",)
            part = corpus[corpus.target.isin(targets)]
            check = check_files(index[index.image_id.isin(part.image_id)], source_kind, masks=True, report=report)
            bad = {image_id: (path, problem) for image_id, path, problem in check.bad}
            for case in part.itertuples():
                row = rows.loc[case.image_id].to_dict()
                if case.image_id in bad:
                    path, problem = bad[case.image_id]
                    size_clash = problem.startswith(("MASK is", "OVERLAY is"))
                    if path != case.file and not (size_clash and path in (row["mask"], row["overlay"])):
                        failures.append(f"check {case.mutation} {case.note}: names {path}, not {case.file}")
                    outcomes["refused"] += 1
                    continue
                try:
                    image = timed(load_image, row, cfg)
                    class_map = timed(load_class_map, row)
                    hu = timed(read_dicom_hu, row["dicom"]) if source_kind == "dicom" else None
                except Hang:
                    failures.append(f"read {case.mutation} {case.note}: HANG on {case.file}")
                    continue
                except BadInputError as err:
                    failures.append(f"check passed {case.file} ({case.mutation} {case.note}), the reader "
                                    f"refused it: {err.problem}")
                    continue
                except Exception as err:  # noqa: BLE001
                    failures.append(f"read {case.mutation} {case.note}: {type(err).__name__}: {err}"[:300])
                    continue
                if pristine[source_kind] is None:
                    pristine_row = {**row, "png": str(tmp_path / "p.png"), "dicom": str(tmp_path / "p.dcm"),
                                    "mask": str(tmp_path / "m.png"), "overlay": ""}
                    for kind in ("png", "dicom", "mask"):
                        Path(pristine_row[kind]).write_bytes(source["files"][kind])
                    pristine[source_kind] = (load_image(pristine_row, cfg), load_class_map(pristine_row),
                                             read_dicom_hu(pristine_row["dicom"]))
                want_image, want_map, want_hu = pristine[source_kind]
                same = (image.dtype == want_image.dtype and np.array_equal(image, want_image)
                        and np.array_equal(class_map, want_map)
                        and (hu is None or np.array_equal(hu, want_hu)))
                if same:
                    outcomes["exact"] += 1
                elif case.target == "dicom" and case.mutation == "flip_pixels":
                    outcomes[UNDETECTABLE[0]] += 1
                elif case.rescale_only:
                    outcomes[UNDETECTABLE[1]] += 1
                else:
                    failures.append(f"check passed {case.file} ({case.target} {case.mutation} {case.note}) and it "
                                    "reads to other pixels than the original")
    seconds = time.time() - started
    print(f"\nfuzz: {len(corpus)} variants ({dict(Counter(corpus.target))}), "
          f"{int((~corpus.changed).sum())} unchanged by their mutation; outcomes {dict(outcomes)}; "
          f"{len(failures)} failures; {seconds:.1f}s")
    assert failures == [], f"{len(failures)} failures:\n" + "\n".join(failures[:25])
    assert sum(outcomes.values()) == len(corpus)
    assert outcomes["refused"] > 250 and outcomes["exact"] > 50  # both ends exercised
    assert outcomes[UNDETECTABLE[0]] <= PER_KIND // len(DICOM_MUTATIONS) + 1  # only the pixel flips
