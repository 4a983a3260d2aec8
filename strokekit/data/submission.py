"""Submission files: phase-1 `asama1.txt` and phase-2 colour masks — writers, readers and validators.

Phase 1 is written byte-for-byte like the organisers' example (`ASAMA1_örnek.txt`): UTF-8 without BOM,
header `Image Id<TAB>İnme Var mı?`, one `<id><TAB><0|1>` row per image, CRLF between lines and no line
end after the last row. Phase 2 is one `<id>.png` per image, 24-bit RGB, only the three MASK colours.
Writers go through a temp file and `os.replace` (no half-written file is ever visible) and validate what
they wrote before returning. Every problem is raised as a `SubmissionError` that lists all of them.
"""
from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from PIL import Image

from strokekit.atomic import write_atomic
from strokekit.data import layout
from strokekit.data.encodings import MASK_COLOURS, class_map_to_rgb, rgb_to_class_map
from strokekit.errors import UserError

PHASE1_FILENAME = "asama1.txt"
PHASE1_HEADER = "Image Id\tİnme Var mı?"
CRLF = "\r\n"
PHASE2_SIZE = (512, 512)  # (width, height), as PIL reports sizes
MAX_LISTED = 10  # ids listed per kind of problem; the count says how many there are


class SubmissionError(UserError, ValueError):
    """A submission file or folder that the organisers' scorer would not read as intended."""

    def __init__(self, source: os.PathLike | str, problems: list[str]):
        self.source, self.problems = str(source), list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


def _listed(kind: str, items: Iterable) -> str:
    items = sorted(items)
    more = f" ... (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return f"{len(items)} {kind}: {', '.join(str(i) for i in items[:MAX_LISTED])}{more}"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: f.write(data))


def _id_set_problems(found: Iterable[int], expected: Iterable[int] | None) -> list[str]:
    if expected is None:
        return []
    found, expected = set(found), {int(i) for i in expected}
    problems = []
    if expected - found:
        problems.append(_listed("missing ids", expected - found))
    if found - expected:
        problems.append(_listed("extra ids", found - expected))
    return problems


# --------------------------------------------------------------------------- phase 1


def format_phase1(ids: Iterable, labels: Iterable) -> bytes:
    """The bytes of an asama1.txt for these rows, in the given order."""
    rows = [f"{int(i)}\t{int(label)}" for i, label in zip(ids, labels, strict=True)]
    return CRLF.join([PHASE1_HEADER, *rows]).encode("utf-8")


def write_phase1(path: os.PathLike | str, ids: Iterable, labels: Iterable,
                 expected_ids: Iterable[int] | None = None) -> Path:
    """Write asama1.txt (a folder path gets `asama1.txt` inside it); validates it, returns its path.

    expected_ids: the test set's ids, if known, so a missing or extra id fails here and not at upload.
    """
    ids, labels = list(ids), list(labels)
    path = Path(path)
    if path.is_dir():
        path = path / PHASE1_FILENAME
    problems = _phase1_row_problems(list(zip(ids, labels)))
    if problems:
        raise SubmissionError(path, problems)
    _atomic_write_bytes(path, format_phase1(ids, labels))
    validate_phase1(path, expected_ids if expected_ids is not None else [int(i) for i in ids])
    return path


def _phase1_row_problems(rows: list[tuple]) -> list[str]:
    bad_ids, bad_labels, seen, dupes = [], [], set(), set()
    for id_, label in rows:
        try:
            if isinstance(id_, str) and layout.image_id(id_) is None:  # ASCII digits: int() reads '１２' as 12
                raise ValueError(id_)
            id_ = int(id_)
        except (TypeError, ValueError):
            bad_ids.append(repr(id_))
            continue
        if id_ in seen:
            dupes.add(id_)
        seen.add(id_)
        if not _label_ok(label):
            bad_labels.append(f"{id_}={label!r}")
    problems = []
    if bad_ids:
        problems.append(_listed("ids that are not integers", bad_ids))
    if dupes:
        problems.append(_listed("duplicate ids", dupes))
    if bad_labels:
        problems.append(_listed("labels other than 0/1", bad_labels))
    return problems


def _label_ok(label) -> bool:
    if isinstance(label, str):
        return label in ("0", "1")
    try:
        return label in (0, 1)  # ints, numpy ints and bools
    except (TypeError, ValueError):
        return False


def _parse_phase1(text: str) -> tuple[str | None, list[tuple[int, str, str, bool]], list[str]]:
    """-> (header line or None, [(line number, id, label, tab-separated?)], problems with the line layout).

    Lenient about the separator (a tab or other whitespace) so hand-edited files still read;
    validate_phase1 insists on tabs.
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # a final line end (the answer key has one) is fine
        lines.pop()
    header = None
    if lines and layout.image_id(lines[0].split("\t")[0].strip()) is None:  # the answer key has no header
        header = lines[0]
        lines = lines[1:]
    rows, malformed = [], []
    start = 2 if header is not None else 1
    for number, line in enumerate(lines, start=start):
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 2:
            malformed.append(f"line {number} {line!r}")
            continue
        rows.append((number, fields[0].strip(), fields[1].strip(), "\t" in line))
    problems = [_listed("lines that are not '<id><TAB><label>'", malformed)] if malformed else []
    return header, rows, problems


def read_labels(path: os.PathLike | str) -> dict[int, int]:
    """{id: 0|1} from an asama1.txt (with header) or the released answer key (no header); LF or CRLF."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(path, ["file not found"])
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SubmissionError(path, [f"not UTF-8 ({err})"]) from None
    _, rows, problems = _parse_phase1(text)
    problems += _phase1_row_problems([(i, label) for _, i, label, _ in rows])
    if not rows:
        problems.append("no rows")
    if problems:
        raise SubmissionError(path, problems)
    return {int(i): int(label) for _, i, label, _ in rows}


def validate_phase1(path: os.PathLike | str, expected_ids: Iterable[int] | None = None) -> dict[int, int]:
    """Check an asama1.txt strictly (header byte-exact, no BOM, tab-separated 0/1 rows, the id set).

    Returns {id: label} when it is valid; raises SubmissionError listing every problem otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(path, ["file not found"])
    raw = path.read_bytes()
    problems = []
    if raw.startswith(b"\xef\xbb\xbf"):
        problems.append("starts with a UTF-8 byte-order mark (the organisers' example has none)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SubmissionError(path, [f"not UTF-8 ({err})"]) from None
    header, rows, layout = _parse_phase1(text)
    if header != PHASE1_HEADER:
        problems.append(f"header is {header!r}, expected {PHASE1_HEADER!r}")
    untabbed = [number for number, _, _, tabbed in rows if not tabbed]
    if untabbed:
        problems.append(_listed("rows not separated by a tab, at lines", untabbed))
    problems += layout + _phase1_row_problems([(i, label) for _, i, label, _ in rows])
    ids = [int(i) for _, i, _, _ in rows if i.isascii() and i.isdigit()]  # (`layout` is a local list here)
    problems += _id_set_problems(ids, expected_ids)
    if not rows:
        problems.append("no rows")
    if problems:
        raise SubmissionError(path, problems)
    return {int(i): int(label) for _, i, label, _ in rows}


# --------------------------------------------------------------------------- phase 2


def write_phase2_mask(path: os.PathLike | str, class_map: np.ndarray,
                      size: tuple[int, int] | None = PHASE2_SIZE) -> Path:
    """Write `<id>.png` as 24-bit RGB in the official colours; validates the file, returns its path.

    size: the (width, height) the file must have (512x512 for the competition); None skips that check.
    """
    path = Path(path)
    rgb = class_map_to_rgb(np.asarray(class_map))
    buffer = BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="PNG")
    _atomic_write_bytes(path, buffer.getvalue())
    problems = check_phase2_mask(path, size)
    if problems:
        raise SubmissionError(path, problems)
    return path


def check_phase2_mask(path: os.PathLike | str, size: tuple[int, int] | None = PHASE2_SIZE) -> list[str]:
    """Problems of one mask file (empty list = valid): not a PNG, not 24-bit RGB, size, off-palette colours."""
    try:
        with Image.open(path) as image:
            fmt, mode, got = image.format, image.mode, image.size
            rgb = np.asarray(image.convert("RGB")) if mode in ("RGB", "RGBA", "L", "P") else None
    except (OSError, ValueError) as err:
        return [f"cannot be read as an image ({err})"]
    problems = []
    if fmt != "PNG":
        problems.append(f"format is {fmt}, not PNG")
    if mode != "RGB":
        problems.append(f"mode is {mode}, not 24-bit RGB")
    if size is not None and tuple(got) != tuple(size):
        problems.append(f"size is {got[0]}x{got[1]}, not {size[0]}x{size[1]}")
    if rgb is not None:
        palette = np.array(list(MASK_COLOURS.values()), dtype=np.uint8)
        off = ~(rgb[..., None, :] == palette).all(-1).any(-1)
        if off.any():
            problems.append(f"{int(off.sum())} pixels are not (0,0,0), (0,0,255) or (0,255,0)")
    return problems


def read_phase2_mask(path: os.PathLike | str, strict: bool = True) -> np.ndarray:
    """HxW uint8 class map from a mask PNG.

    strict=True: the file must be 24-bit RGB in the official colours (else SubmissionError);
    strict=False: any mode is converted to RGB and colours snap to the nearest official one.
    """
    with Image.open(path) as image:
        mode = image.mode
        rgb = np.asarray(image.convert("RGB"))
    if strict and mode != "RGB":
        raise SubmissionError(path, [f"mode is {mode}, not 24-bit RGB"])
    try:
        return rgb_to_class_map(rgb, strict=strict, source=str(path))
    except ValueError as err:
        raise SubmissionError(path, [str(err)]) from None


def mask_files(directory: os.PathLike | str) -> dict[int, Path]:
    """{id: path} of the `<id>.png` files in a folder (hidden and temp files ignored)."""
    return {int(p.stem): p for p in sorted(Path(directory).glob("*.png"))
            if layout.image_id(p.stem) is not None and not p.name.startswith(".")}


def validate_phase2(directory: os.PathLike | str, expected_ids: Iterable[int] | None = None,
                    size: tuple[int, int] | Mapping[int, tuple[int, int] | None] | None = PHASE2_SIZE
                    ) -> dict[int, Path]:
    """Check a phase-2 folder: the id set, file names, and every mask file; returns {id: path} if valid.
    size: (width, height) of every mask, {id: (width, height) | None} per image, or None (not checked)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SubmissionError(directory, ["not a folder"])
    files = mask_files(directory)
    problems = _id_set_problems(files, expected_ids)
    odd = [p.name for p in directory.glob("*.png")
           if not p.name.startswith(".") and (layout.image_id(p.stem) is None or str(int(p.stem)) != p.stem)]
    if odd:
        problems.append(_listed("PNG files not named <id>.png", odd))
    for id_, path in files.items():
        want = size.get(id_) if isinstance(size, Mapping) else size  # per image: each test image's own size
        problems += [f"{path.name}: {p}" for p in check_phase2_mask(path, want)]
    if not files:
        problems.append("no <id>.png files")
    if problems:
        raise SubmissionError(directory, problems)
    return files


def write_phase2(directory: os.PathLike | str, masks: Mapping[int, np.ndarray],
                 size: tuple[int, int] | None = PHASE2_SIZE) -> dict[int, Path]:
    """Write every `<id>.png` of a phase-2 submission into a folder and validate the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for id_, class_map in masks.items():
        write_phase2_mask(directory / f"{int(id_)}.png", class_map, size)
    return validate_phase2(directory, [int(i) for i in masks], size)
