"""The phantom data set: synthetic head-CT slices in the TEKNOFEST-2021 folder layouts (demo and tests).

`make_phantom()` plans patients (3-8 slices each; stroke patients also have clear slices, so a patient can
sit in two class folders), draws every slice (phantom_anatomy.py) and writes DICOM / PNG / MASK / OVERLAY
files in the competition's or the public release's layout, plus the phase-1 answer key. The generator's
own labels go to `phantom_truth.csv` at the root, for tests only: the kit's readers never use it.
Same seed, same bytes: every slice draws from its own seed (master seed, slice index), UIDs are derived
from the seed and no file holds a timestamp.
"""
from __future__ import annotations

import csv
import multiprocessing
import os
import shutil
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from strokekit.data.encodings import class_map_to_rgb, encode_overlay

from strokekit.errors import OutputExistsError, SettingError
from strokekit.vocabulary import HEMORRHAGIC, ISCHEMIC
from strokekit.data.dicom import window
from strokekit.data.readers import BRAIN_WINDOW
from strokekit.phantom.anatomy import Head, Slice, random_head, render_slice
from strokekit.phantom.lesions import random_lesion

# Folder of each part of the data set and the sub-folders written there, per layout. Training parts are
# named by class (as strokekit.data.layout.CLASS_NAMES), test parts by phase. Readers may import this.
LAYOUTS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "competition": {  # the organisers' FTP in 2021
        "no_stroke": ("TRAINING/INMEYOK", ("DICOM", "PNG")),
        "ischemic": ("TRAINING/ISKEMI", ("DICOM", "PNG", "OVERLAY", "MASK")),
        "hemorrhagic": ("TRAINING/KANAMA", ("DICOM", "PNG", "OVERLAY", "MASK")),
        "test1": ("YARISMA_1", ("DICOM", "PNG")),
        "test2": ("YARISMA_2", ("DICOM", "PNG", "MASK")),
    },
    "public": {  # the public release: Turkish names, no training masks
        "no_stroke": ("İNME VERİSETİ/İnme Yok", ("DICOM", "PNG")),
        "ischemic": ("İNME VERİSETİ/İskemi", ("DICOM", "PNG", "OVERLAY")),
        "hemorrhagic": ("İNME VERİSETİ/Kanama", ("DICOM", "PNG", "OVERLAY")),
        "test1": ("İNME VERİSETİ/YarısmaVeriSeti_1_Oturum", ("DICOM", "PNG")),
        "test2": ("İNME VERİSETİ/YarısmaVeriSeti_2_Oturum", ("DICOM", "PNG", "MASKS", "OVERLAY")),
    },
}
ANSWER_KEY = "ASAMA1_Cevaplar.txt"  # phase-1 labels, inside the test1 folder
TRUTH_CSV = "phantom_truth.csv"
TRUTH_COLUMNS = ["id", "split", "class", "has_ischemic", "has_hemorrhagic", "patient", "level", "findings"]

STROKE_SHARE = 0.35          # training and phase 1: share of stroke slices (the real set: ~34%)
BOTH_TYPES_CHANCE = 0.3      # chance a stroke patient also has a small lesion of the other type (~7% of slices)
OLD_INFARCT_CHANCE = 0.18    # chronic infarct (a mimic) in any patient
SERIES_SLICES, SLICE_MM, FOV_MM = 28, 5.0, 250.0   # a head series: 28 slices of 5 mm from base to vertex
SALT_PLAN, SALT_PATIENT, SALT_SLICE = 11, 23, 37   # keep the random streams of plan, patients, slices apart


@dataclass
class SlicePlan:
    """One image to write: where it comes from (patient, level) and where it goes (split, id)."""
    index: int              # position in the plan: the slice's random stream
    image_id: int
    split: str              # train | test1 | test2
    patient: int
    head: Head
    series_index: int       # 0..SERIES_SLICES-1, base to vertex
    stroke: bool            # planned to hold a lesion

    @property
    def level(self) -> float:
        return (self.series_index + 0.5) / SERIES_SLICES

    @property
    def patient_id(self) -> str:
        return f"PH{self.patient:05d}"


def make_phantom(out: str | os.PathLike, n: int = 600, seed: int = 0, layout: str = "competition",
                 n_test1: int = 40, n_test2: int = 20, size: int = 512, nfd: bool = False,
                 workers: int | None = None, overwrite: bool = False, progress: bool = False) -> Path:
    """Write a phantom data set of `n` training slices plus two test sets under `out`; returns `out`.

    layout: 'competition' (TRAINING/INMEYOK ...) or 'public' (İNME VERİSETİ/İnme Yok ...), see LAYOUTS.
    nfd=True writes folder names in Unicode NFD (as macOS zips do). workers: processes drawing slices
    (default 2, or 1 for small sets). overwrite=True replaces an earlier phantom at `out`.
    """
    if layout not in LAYOUTS:
        raise SettingError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if n < 1 or n_test1 < 0 or n_test2 < 0 or size < 32:
        raise SettingError(f"need n >= 1, n_test1 >= 0, n_test2 >= 0, size >= 32 (got {n}, {n_test1}, "
                           f"{n_test2}, {size})")
    root = _prepare(Path(out), overwrite)
    plan = plan_dataset(n, n_test1, n_test2, seed)
    for key, (_, subdirs) in LAYOUTS[layout].items():
        for sub in subdirs:
            _folder(root, layout, key, sub, nfd).mkdir(parents=True, exist_ok=True)
    jobs = [(item, str(root), layout, size, seed, nfd) for item in plan]
    workers = workers or (1 if len(jobs) < 64 else min(2, os.cpu_count() or 1))
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            rows = list(_progress(pool.imap(_write_slice, jobs, chunksize=4), len(jobs), progress))
    else:
        rows = [_write_slice(job) for job in _progress(jobs, len(jobs), progress)]
    _write_answer_key(_folder(root, layout, "test1", None, nfd) / ANSWER_KEY, rows)
    _write_truth(root / TRUTH_CSV, rows)
    return root


def _prepare(root: Path, overwrite: bool) -> Path:
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{root} is not empty; pass overwrite=True (--overwrite) to replace it")
        if not (root / TRUTH_CSV).is_file():
            raise OutputExistsError(f"{root} holds no {TRUTH_CSV}: not a phantom, refusing to delete it")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _folder(root: Path, layout: str, key: str, sub: str | None, nfd: bool) -> Path:
    folder, _ = LAYOUTS[layout][key]
    parts = folder.split("/") + ([sub] if sub else [])
    form = "NFD" if nfd else "NFC"
    return root.joinpath(*(unicodedata.normalize(form, part) for part in parts))


def _progress(items, total: int, show: bool):
    from strokekit.progress import bar

    return bar(items, total=total, desc="phantom", unit="slice", show=show)  # on a terminal only


# ---------------------------------------------------------------------------------------------------------
# Plan: patients, their slices and lesions, image ids
# ---------------------------------------------------------------------------------------------------------

def plan_dataset(n: int, n_test1: int, n_test2: int, seed: int) -> list[SlicePlan]:
    """Every slice of the data set, in a fixed order; test patients are separate from training ones."""
    rng = np.random.default_rng([seed, SALT_PLAN])
    plan: list[SlicePlan] = []
    patient = 0
    next_id = 10000  # training ids from 10000 like the real table; each test set starts a fresh 10000 block
    for split, count, share in (("train", n, STROKE_SHARE), ("test1", n_test1, STROKE_SHARE),
                                ("test2", n_test2, 1.0)):
        slices = []
        for kind, n_lesion, n_clear in _patient_shapes(count, share, rng):
            slices += _patient_slices(patient, kind, n_lesion, n_clear, split,
                                      np.random.default_rng([seed, SALT_PATIENT, patient]))
            patient += 1
        ids = np.sort(rng.choice(np.arange(next_id, next_id + int(count * 1.5) + 8), count, replace=False))
        for item, image_id in zip(slices, rng.permutation(ids)):  # neighbouring ids: not the same patient
            item.image_id = int(image_id)
        next_id = (int(ids.max(initial=next_id)) // 10000 + 1) * 10000
        plan += slices
    for index, item in enumerate(plan):
        item.index = index
    return plan


def _patient_shapes(count: int, stroke_share: float, rng: np.random.Generator):
    """(lesion class or None, lesion slices, clear slices) per patient, meeting the class quotas exactly."""
    n_stroke = count if stroke_share >= 1 else int(round(count * stroke_share))
    quota = {"ischemic": n_stroke // 2, "hemorrhagic": n_stroke - n_stroke // 2}
    clear_left = count - n_stroke
    while quota["ischemic"] + quota["hemorrhagic"] > 0:
        kind = max(quota, key=lambda k: (quota[k], rng.random()))
        k = int(rng.integers(3, 9))
        n_lesion = min(quota[kind], k if stroke_share >= 1 else int(rng.integers(max(1, k // 2), k + 1)))
        n_clear = min(k - n_lesion, clear_left)
        quota[kind] -= n_lesion
        clear_left -= n_clear
        yield kind, n_lesion, n_clear
    while clear_left > 0:
        k = min(int(rng.integers(3, 9)), clear_left)
        clear_left -= k
        yield None, 0, k


def _patient_slices(patient: int, kind: str | None, n_lesion: int, n_clear: int, split: str,
                    rng: np.random.Generator) -> list[SlicePlan]:
    """A patient's head and slices; the lesion spans a run of neighbouring slices, mostly mid-brain."""
    head = random_head(rng)
    k = n_lesion + n_clear
    stride = int(rng.choice((1, 2, 2, 3))) if k > 1 else 1
    stride = min(stride, max(1, (SERIES_SLICES - 1) // max(k - 1, 1)))
    first_lesion = int(rng.integers(0, n_clear + 1))           # clear slices above and below the lesion
    centre = rng.uniform(0.25, 0.85) if kind else rng.uniform(0.1, 0.9)
    start = round(centre * SERIES_SLICES - 0.5 - stride * (first_lesion + (max(n_lesion, 1) - 1) / 2))
    start = int(min(max(start, 0), SERIES_SLICES - 1 - stride * (k - 1)))
    series = [start + stride * j for j in range(k)]
    levels = [(i + 0.5) / SERIES_SLICES for i in series]
    step = stride / SERIES_SLICES
    if kind:
        lesion_levels = levels[first_lesion:first_lesion + n_lesion]
        primary = random_lesion(_lesion_kind(kind, rng), rng, lesion_levels[0], lesion_levels[-1], step)
        head.lesions.append(primary)
        if rng.random() < BOTH_TYPES_CHANCE:
            other = "hemorrhagic" if kind == "ischemic" else "ischemic"
            span = int(rng.integers(1, max(1, n_lesion // 2) + 1))
            at = int(rng.integers(0, n_lesion - span + 1))
            head.lesions.append(random_lesion(_lesion_kind(other, rng), rng, lesion_levels[at],
                                              lesion_levels[at + span - 1], step, side=-primary.side, small=True))
    if rng.random() < OLD_INFARCT_CHANCE:
        span = int(rng.integers(1, k + 1))
        at = int(rng.integers(0, k - span + 1))
        head.lesions.append(random_lesion("old_infarct", rng, levels[at], levels[at + span - 1], step))
    return [SlicePlan(index=-1, image_id=-1, split=split, patient=patient, head=head, series_index=i,
                      stroke=bool(kind) and first_lesion <= j < first_lesion + n_lesion)
            for j, i in enumerate(series)]


def _lesion_kind(lesion_class: str, rng: np.random.Generator) -> str:
    if lesion_class == "hemorrhagic":
        return "ich" if rng.random() < 0.72 else "sdh"
    return "territory" if rng.random() < 0.75 else "lacune"


# ---------------------------------------------------------------------------------------------------------
# Writing one slice (runs in worker processes)
# ---------------------------------------------------------------------------------------------------------

def draw_slice(item: SlicePlan, size: int, seed: int, lesions: bool = True) -> Slice:
    """Render one planned slice (lesions=False: the same slice without its acute lesions)."""
    head = item.head if lesions else replace(item.head, lesions=[x for x in item.head.lesions if not x.label])
    return render_slice(head, item.level, size, np.random.default_rng([seed, SALT_SLICE, item.index]))


def _write_slice(job) -> dict:
    item, root, layout, size, seed, nfd = job
    drawn = draw_slice(item, size, seed)
    counts = {cls: int((drawn.class_map == cls).sum()) for cls in (ISCHEMIC, HEMORRHAGIC)}
    if item.stroke != any(counts.values()):
        raise RuntimeError(f"phantom slice {item.image_id}: planned stroke={item.stroke} but drew {counts}")
    cls = "no_stroke"  # a slice with both kinds goes to the folder of the larger one
    if item.stroke:
        cls = "hemorrhagic" if counts[HEMORRHAGIC] >= counts[ISCHEMIC] else "ischemic"
    key = cls if item.split == "train" else item.split
    grey = window(drawn.hu, *BRAIN_WINDOW)
    for sub in LAYOUTS[layout][key][1]:
        folder = _folder(Path(root), layout, key, sub, nfd)
        if sub == "DICOM":
            write_dicom(folder / f"{item.image_id}.dcm", drawn.hu, item, seed)
        elif sub == "PNG":
            rgba = np.empty(grey.shape + (4,), dtype=np.uint8)
            rgba[..., :3], rgba[..., 3] = grey[..., None], 255
            _save_png(rgba, "RGBA", folder / f"{item.image_id}.png")
        elif sub.startswith("MASK"):
            _save_png(class_map_to_rgb(drawn.class_map), "RGB", folder / f"{item.image_id}.png")
        elif sub == "OVERLAY":
            _save_png(encode_overlay(grey, drawn.class_map), "RGBA", folder / f"{item.image_id}.png")
    return {"id": item.image_id, "split": item.split, "class": cls,
            "has_ischemic": int(counts[ISCHEMIC] > 0), "has_hemorrhagic": int(counts[HEMORRHAGIC] > 0),
            "patient": item.patient_id, "level": f"{item.level:.4f}", "findings": ";".join(drawn.findings)}


def _save_png(array: np.ndarray, mode: str, path: Path) -> None:
    """PNG with the chunks the organisers' files carry (sRGB, gamma 0.45455, 96 dpi)."""
    info = PngImagePlugin.PngInfo()
    info.add(b"sRGB", b"\x00")
    info.add(b"gAMA", (45455).to_bytes(4, "big"))
    Image.fromarray(array, mode).save(path, "PNG", pnginfo=info, dpi=(95.9866, 95.9866), compress_level=3)


def write_dicom(path: Path, hu: np.ndarray, item: SlicePlan, seed: int) -> None:
    """A CT slice: int16 stored values, HU = stored * 1 - 1024, UIDs derived from the seed, no dates."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    def uid(*parts) -> str:
        return generate_uid(entropy_srcs=["strokekit-phantom", str(seed), *map(str, parts)])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid("image", item.image_id)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "STROKEKIT"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "CT", "strokekit phantom", "HEAD"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientID, ds.PatientName = item.patient_id, f"PHANTOM^{item.patient:05d}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study", item.patient), uid("series", item.patient)
    ds.FrameOfReferenceUID = uid("frame", item.patient)
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, item.series_index + 1
    rows, cols = hu.shape
    spacing = FOV_MM / cols
    z = item.series_index * SLICE_MM
    ds.ImagePositionPatient = [-FOV_MM / 2 + spacing / 2, -FOV_MM / 2 + spacing / 2, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation, ds.SliceThickness, ds.PixelSpacing = z, SLICE_MM, [spacing, spacing]
    ds.KVP, ds.ConvolutionKernel = 120, "H30s"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = BRAIN_WINDOW
    ds.PixelData = (hu.astype(np.int16) + 1024).astype("<i2").tobytes()   # stored = HU + 1024
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _write_answer_key(path: Path, rows: list[dict]) -> None:
    """Like the released key: no header, `<id>\\t<0|1>` CRLF; no-stroke ids first, then hemorrhage, ischemia."""
    order = {"no_stroke": 0, "hemorrhagic": 1, "ischemic": 2}
    test1 = sorted((r for r in rows if r["split"] == "test1"), key=lambda r: (order[r["class"]], r["id"]))
    path.write_bytes(b"".join(f"{r['id']}\t{int(r['class'] != 'no_stroke')}\r\n".encode() for r in test1))


def _write_truth(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["id"]))
