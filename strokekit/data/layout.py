"""Recognise the data set's folder names in every known layout, Unicode normalisation and case.

The competition FTP (`TRAINING/KANAMA/PNG`, `YARISMA_1/DICOM`), the public release (`İNME VERİSETİ/İskemi`,
`YarısmaVeriSeti_2_Oturum/MASKS`), the portal's zips (`Kanama Veri Seti/PNG`, `Test Veri Seti_1`) and the
English mirror (`Bleeding`, `Ischemia`, `Normal`, `External_Test`) all map to the same three pieces of
meaning: split (train / test1 / test2), class (no_stroke / ischemic / hemorrhagic) and modality
(png / dicom / mask / overlay).
"""
from __future__ import annotations

import re
import unicodedata

CLASS_NAMES = ("no_stroke", "ischemic", "hemorrhagic")
MODALITIES = ("png", "dicom", "mask", "overlay")

# Normalised (see `fold_name`) spellings, matched as substrings of a folder name.
_CLASS_PATTERNS = {
    "no_stroke": ("inmeyok", "normal", "nostroke", "healthy"),
    "ischemic": ("iskemi", "ischemi", "ischaemi"),
    "hemorrhagic": ("kanama", "bleeding", "hemorrhag", "haemorrhag"),
}
_MODALITY_NAMES = {
    "png": "png", "dicom": "dicom", "dcm": "dicom", "mask": "mask", "masks": "mask",
    "overlay": "overlay", "overlays": "overlay",
}
_TEST_PATTERNS = (
    (re.compile(r"(yarisma|asama|testveriseti|oturum)\D*1(\D|$)"), "test1"),
    (re.compile(r"(yarisma|asama|testveriseti|oturum)\D*2(\D|$)"), "test2"),
    (re.compile(r"externaltest"), "test2"),  # English mirror's test set carries MASKS like phase 2
)
# Files that live in data folders but are not data; skipped silently apart from the report.
STRAY_NAMES = {"thumbs.db", ".ds_store", "desktop.ini"}


def fold_name(name: str) -> str:
    """Lower-case ASCII form of a folder name: NFC/NFD agnostic, diacritics and separators removed.

    'İnme Yok', 'INME_YOK', 'i\u0307nme yok' and 'İNME YOK' all become 'inmeyok'; 'Yarışma' becomes 'yarisma'.
    """
    text = unicodedata.normalize("NFKD", name.casefold())
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).replace("ı", "i")
    return re.sub(r"[\s_\-.]+", "", text)


def class_of(name: str) -> str | None:
    folded = fold_name(name)
    for cls, patterns in _CLASS_PATTERNS.items():
        if any(p in folded for p in patterns):
            return cls
    return None


def modality_of(name: str) -> str | None:
    return _MODALITY_NAMES.get(fold_name(name))


def test_split_of(name: str) -> str | None:
    folded = fold_name(name)
    for pattern, split in _TEST_PATTERNS:
        if pattern.search(folded):
            return split
    return None


def is_answer_key(name: str) -> bool:
    """The released phase-1 labels (ASAMA1_Cevaplar.txt) or an asama1-style table."""
    folded = fold_name(name)
    return folded.endswith("txt") and ("cevap" in folded or "answer" in folded or "label" in folded)


def image_id(stem: str) -> int | None:
    """The image id a file name's stem spells, or None: ASCII digits only (str.isdigit also takes '²', which
    int() refuses, and full-width '１００１２', which int() reads as 10012)."""
    return int(stem) if stem.isascii() and stem.isdigit() else None


def describe_path(parts: tuple[str, ...]) -> dict:
    """Split / class / modality read from the folder names of a relative path (nearest folder wins)."""
    split = cls = modality = None
    for part in parts:
        split = test_split_of(part) or split
        cls = class_of(part) or cls
        modality = modality_of(part) or modality
    return {"split": split or "train", "class_name": None if split else cls, "modality": modality}
