"""Small file writers for tests that need hand-made data files with known contents."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from PIL import Image

from strokekit.postprocess.steps import resize_probs


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def write_dicom(path: Path, stored: np.ndarray, slope: float | None = 1.0, intercept: float | None = -1024.0,
                modality: str = "CT", patient: str = "P1", photometric: str = "MONOCHROME2") -> Path:
    """A minimal valid CT DICOM with the given stored int16 pixels and rescale tags."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = modality, patient
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient, "series"])
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.PixelData = stored.astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def random_seg_oof(n=10, low=16, size=40, seed=3):
    """Smooth random probabilities (both lesion classes, touching) at a reduced size, masks at full size."""
    rng = np.random.default_rng(seed)
    logits = ndimage.gaussian_filter(rng.normal(0, 10, (n, 3, low, low)), sigma=(0, 0, 1.5, 1.5))
    logits[0, 2] = -50                        # image 0 holds no hemorrhage at all: the empty-mask rule
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    masks = {}
    for i in range(n):
        truth_logits = resize_probs(logits[i], size) + rng.normal(0, 0.3, (3, size, size))
        masks[i] = truth_logits.argmax(0).astype(np.uint8)
    return {"image_id": np.arange(n), "probs": probs.astype(np.float16), "fold": np.arange(n) % 2}, masks


def training_files(data: Path, folder: str) -> list[Path]:
    """The files of one TRAINING class folder of a phantom (`INMEYOK`, `KANAMA/MASK` ...), sorted."""
    return sorted((data / "TRAINING" / folder).iterdir())


def write_classifier_run(root: Path, name: str, target, prob, fold_of=None, task: str = "stroke") -> Path:
    """A finished classifier run folder `root/name` as ensemble.py reads it: per fold a config, an empty best.pt,
    `done` and the fold's OOF rows (`fold_of`: each image's fold; default one fold holding every image)."""
    import pandas as pd
    import yaml

    target, prob = np.asarray(target), np.asarray(prob)
    fold_of = np.zeros(len(target), int) if fold_of is None else np.asarray(fold_of)
    for k in np.unique(fold_of):
        fold = root / name / f"fold{k}"
        fold.mkdir(parents=True)
        (fold / "config.yaml").write_text(yaml.safe_dump({"task": task, "model": name}))
        (fold / "best.pt").write_bytes(b"")
        (fold / "done").write_text("")
        mine = fold_of == k
        pd.DataFrame({"image_id": np.flatnonzero(mine), "fold": int(k), "target": target[mine],
                      "prob": prob[mine]}).to_csv(fold / "oof.csv", index=False)
    return root / name
