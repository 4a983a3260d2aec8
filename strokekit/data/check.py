"""The up-front pass over the files a run will read, and the `on_bad_input` policy (fail | skip).

`check_files(rows, ...)` judges every image (and, for segmentation, every MASK / OVERLAY) exactly as the
readers will (readers.check_png / check_dicom: a PNG's chunks and inflated size, a DICOM's pixel header,
decoded pixels and Hounsfield units inside the config's `hu_range`), so a bad file stops a run before
training starts (`fail`), or is left out and listed in skipped.csv (`skip`), instead of failing in epoch 1.
Labels problems found while indexing (masks with colours outside the official three, OVERLAYs that do not
decode) come from the IndexReport instead of a second read.
Sizes: any image size is read and resized to img_size like every other; an image whose size differs from
the set's usual one is named in a warning. A MASK / OVERLAY of another size than its image is bad input.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from strokekit.atomic import write_atomic
from strokekit.data.layout import CLASS_NAMES
from strokekit.data.badinput import BadInputError
from strokekit.data.dicom import check_dicom
from strokekit.data.readers import PNG_MODES_16BIT, check_png

POLICIES = ("fail", "skip")
SKIPPED_COLUMNS = ["image_id", "file", "problem"]


@dataclass
class InputCheck:
    """Files that cannot be used (bad) and things worth knowing that do not stop a run (warnings)."""
    bad: list[tuple[int, str, str]] = field(default_factory=list)   # (image_id, file, problem)
    warnings: list[tuple[str, str]] = field(default_factory=list)   # (file or folder, note)
    n_images: int = 0
    seconds: float = 0.0

    @property
    def bad_ids(self) -> set[int]:
        return {image_id for image_id, _, _ in self.bad}

    def summary(self, max_items: int = 10) -> str:
        lines = [f"checked the files of {self.n_images} images in {self.seconds:.1f}s: "
                 f"{len(self.bad_ids)} bad, {len(self.warnings)} warnings"]
        for title, items in (("bad", [(f, p) for _, f, p in self.bad]), ("warning", self.warnings)):
            lines += [f"  {title}: {path}: {why}" for path, why in items[:max_items]]
            if len(items) > max_items:
                lines.append(f"  ... and {len(items) - max_items} more {title} entries")
        return "\n".join(lines)

    def error(self) -> BadInputError:
        """The first bad file, saying how many more there are and how to go on without them."""
        _, path, problem = self.bad[0]
        more = len(self.bad_ids) - 1
        return BadInputError(path, f"{problem}{f' (and {more} more bad images)' if more else ''}. "
                                   "--on-bad-input skip leaves bad images out and lists them in skipped.csv")

    def write_skipped(self, path) -> None:
        table = pd.DataFrame(self.bad, columns=SKIPPED_COLUMNS)
        write_atomic(path, lambda f: table.to_csv(f, index=False), text=True)


def apply_policy(rows: pd.DataFrame, check: InputCheck, policy: str) -> pd.DataFrame:
    """`fail`: raise the first bad file; `skip`: the rows without the bad images."""
    if policy not in POLICIES:
        raise ValueError(f"on_bad_input must be one of {POLICIES}, got {policy!r}")
    if not check.bad:
        return rows
    if policy == "fail":
        raise check.error()
    return rows[~rows["image_id"].isin(check.bad_ids)].reset_index(drop=True)


def check_files(rows: pd.DataFrame, image_source: str = "png", masks: bool = False, report=None,
                hu_range=None) -> InputCheck:
    """Check what a run reads of `rows` (index rows): each row's image of `image_source` (png | dicom),
    and with masks=True the MASK / OVERLAY of every stroke row. `report` (from build_index) supplies the
    label problems found while indexing and the empty folders; hu_range (the config's) the Hounsfield units
    a DICOM slice may hold (default dicom.HU_RANGE)."""
    started, out = time.time(), InputCheck(n_images=len(rows))
    label_problems = dict(report.skipped) if report is not None else {}
    sizes: dict[str, tuple[int, int]] = {}
    for row in rows.to_dict("records"):
        try:
            path, size = _check_image(row, image_source, out.warnings, hu_range)
            sizes[path] = size
            if masks:
                _check_labels(row, size, label_problems, out.warnings)
        except BadInputError as err:
            out.bad.append((int(row["image_id"]), err.path, err.problem))
    out.warnings += _size_outliers(sizes)
    if report is not None:
        out.warnings += [(folder, "empty folder") for folder in report.empty]
    if len(rows) and (rows["split"] == "train").all():
        out.warnings += [("-", f"no {cls} images: is its folder missing or empty?")
                         for cls in CLASS_NAMES if not (rows["class_name"] == cls).any()]
    out.seconds = time.time() - started
    return out


def _check_image(row: dict, image_source: str, warnings: list, hu_range=None) -> tuple[str, tuple[int, int]]:
    path = row.get(image_source) or ""
    if not path:
        others = [row[k] for k in ("png", "dicom", "mask", "overlay") if row.get(k)]
        raise BadInputError(others[0] if others else f"image {row['image_id']}",
                            f"no {image_source.upper()} file for image {row['image_id']} (found only "
                            f"{', '.join(others) or 'nothing'})")
    if image_source == "dicom":
        height, width, notes = check_dicom(path, hu_range)
        warnings += [(path, note) for note in notes]
    else:
        height, width, mode = check_png(path)
        if mode in PNG_MODES_16BIT:
            warnings.append((path, "16-bit PNG: scaled to 8 bits by its own maximum"))
    return path, (height, width)


def _check_labels(row: dict, size: tuple[int, int], label_problems: dict, warnings: list) -> None:
    if row.get("class_name") == "no_stroke":
        return
    files = [(kind, row[kind]) for kind in ("mask", "overlay") if row.get(kind)]
    if not files:
        warnings.append((row.get("png") or row.get("dicom"), "stroke image without MASK or OVERLAY: "
                                                             "segmentation does not use it"))
        return
    for kind, path in files:
        if path in label_problems:
            raise BadInputError(path, label_problems[path])
        height, width, mode = check_png(path)
        if mode in PNG_MODES_16BIT:
            raise BadInputError(path, f"a 16-bit image; a {kind.upper()} is 8-bit RGB(A)")
        if (height, width) != size:
            raise BadInputError(path, f"{kind.upper()} is {height}x{width} but its image is {size[0]}x{size[1]}")


def _size_outliers(sizes: dict[str, tuple[int, int]]) -> list[tuple[str, str]]:
    if not sizes:
        return []
    usual = Counter(sizes.values()).most_common(1)[0][0]
    return [(path, f"{h}x{w}, unlike the usual {usual[0]}x{usual[1]}: resized to img_size like every image")
            for path, (h, w) in sizes.items() if (h, w) != usual]
