"""Preprocessing cache: each image decoded, windowed and resized once, then read back as uint8 arrays.

One `.npz` per image (`image` at img_size, `hw` = the file's own size) and one per class map (`mask` at
img_size, `full` at the file's own resolution, which validation metrics use). Only `full` is compressed
(mostly zeros: 256 KiB -> ~1 KiB at 512 px); training reads the uncompressed members alone. An entry's name is
a hash of what made it: the source files' paths, sizes and mtimes (with `neighbours`, each neighbouring
slice's file too), the image source and HU windows, the neighbour setting, and img_size. A changed source
file (or another neighbour setting) therefore gives a new name and its stale entry is never read; delete the
folder to reclaim space. Entries are written atomically (temp file + os.replace), so DataLoader workers
filling the same entry at once only waste work.

With HU-window jitter (aug.window_shift / window_scale, data/window_jitter.py) training reads `hu` entries
instead: the slice's (and its neighbours') Hounsfield units area-resized to img_size, as float16.

Images are stored exactly as the training transform's first step, `resize_step`, makes them; that step then
resizes nothing (same size in, same pixels out), so cached and uncached items are bit-for-bit equal. Class
maps are resized by nearest neighbour, as that step resizes masks.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
import zipfile
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from strokekit.data.neighbours import load_input, neighbour_count, source_files
from strokekit.data.readers import load_class_map
from strokekit.data.window_jitter import jitter_enabled, load_hu

CACHE_VERSION = 1
OVERLAY_METHOD = "exact"  # what SliceDataset decodes OVERLAYs with unless the config's overlay_method says


def resize_step(size: int) -> A.Resize:
    """The resize every training / validation transform starts with: area for images, nearest for masks."""
    return A.Resize(size, size, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)


def cache_folder(cfg: dict) -> Path | None:
    """Where `cfg`'s cache lives: `cache_dir`, else <data>/.strokekit/cache when that data folder exists.

    None (no cache) when `cache` is false, or with no `cache_dir` and no existing `data` folder: the rows
    then come from elsewhere (a unit test, a test folder) and the kit writes nowhere it was not told to.
    """
    if not cfg["cache"]:
        return None
    if cfg["cache_dir"]:
        return Path(cfg["cache_dir"])
    data = Path(cfg["data"])
    return data / ".strokekit" / "cache" if data.is_dir() else None


def open_cache(cfg: dict) -> PreprocessCache | None:
    folder = cache_folder(cfg)
    return PreprocessCache(folder, cfg) if folder is not None else None


def _distinct_channels(cfg: dict) -> int:
    """Channels load_input computes before repeating the first to fill in_chans (with neighbours: all)."""
    if neighbour_count(cfg):
        return cfg["in_chans"]
    return len(cfg["windows"]) if cfg["image_source"] == "dicom" else 1


class PreprocessCache:
    """Cached `load_image` + resize, and cached class maps, for one config's preprocessing."""

    def __init__(self, folder: str | os.PathLike, cfg: dict):
        self.folder, self.cfg = Path(folder), cfg
        self.size = cfg["img_size"]
        self.resize = resize_step(self.size)
        self.writable, self.written = True, 0
        windows = cfg["windows"] if cfg["image_source"] == "dicom" else None
        self.image_params = (cfg["image_source"], repr(windows))
        if windows is not None and cfg.get("hu_range") is not None:  # HU outside it are clipped before windowing
            self.image_params += ("hu_range", repr(cfg["hu_range"]))
        if cfg.get("equalize"):  # unset, the key is as before
            self.image_params += ("equalize", cfg["equalize"])
        if neighbour_count(cfg):  # without neighbours the key is as before, so older entries stay valid
            self.image_params += ("neighbours", neighbour_count(cfg))

    # ---- what the dataset calls

    def image(self, row: dict) -> tuple[np.ndarray, tuple[int, int]]:
        """(load_input(row) resized to img_size: S x S x in_chans uint8, the file's own (H, W))."""
        key = self.key("image", source_files(row, self.cfg), self.image_params)
        entry = self._read(key, ("image", "hw"))
        if entry is None:
            image = load_input(row, self.cfg)  # raises BadInputError naming the file when it is bad
            small = self.resize(image=image)["image"]
            entry = {"image": small[..., :_distinct_channels(self.cfg)], "hw": np.asarray(image.shape[:2])}
            self._write(key, entry)
        image = entry["image"]
        if image.shape[-1] != self.cfg["in_chans"]:  # load_image's rule: repeat the first channel
            image = np.repeat(image[..., :1], self.cfg["in_chans"], axis=-1)
        return np.ascontiguousarray(image), tuple(int(v) for v in entry["hw"])

    def hu(self, row: dict) -> tuple[np.ndarray, tuple[int, int]]:
        """(window_jitter.load_hu(row) area-resized to img_size: S x S x slices float32 from float16, (H, W))."""
        params = (repr(self.cfg.get("hu_range")), neighbour_count(self.cfg))
        key = self.key("hu", source_files(row, self.cfg), params)
        entry = self._read(key, ("hu", "hw"))
        if entry is None:
            hu = load_hu(row, self.cfg)  # raises BadInputError naming the file when it is bad
            small = cv2.resize(hu, (self.size, self.size), interpolation=cv2.INTER_AREA).reshape(
                self.size, self.size, hu.shape[-1])
            entry = {"hu": small.astype(np.float16), "hw": np.asarray(hu.shape[:2])}
            self._write(key, entry)
        return entry["hu"].astype(np.float32), tuple(int(v) for v in entry["hw"])

    def class_maps(self, row: dict, read_full, need_full: bool = True) -> tuple:
        """(class map at img_size, class map at full resolution (None unless `need_full`), its (H, W)).

        `read_full()` makes the full-resolution map when the entry is missing. Rows without MASK / OVERLAY
        (no-stroke zeros) are not stored.
        """
        if row.get("mask"):
            sources = [row["mask"], *([row["ignore"]] if row.get("ignore") else [])]  # a pseudo-label's IGNORE too
        elif row.get("overlay"):
            sources = [row["overlay"], row.get("png")]
        else:
            sources = []
        key = self.key("labels", sources, (overlay_method(self.cfg),)) if sources else None
        entry = self._read(key, ("mask", "hw", "full") if need_full else ("mask", "hw"))
        if entry is None:
            full = read_full()
            entry = {"mask": resize_mask(full, self.size), "hw": np.asarray(full.shape), "full": full}
            self._write(key, entry, compress=("full",))
        return entry["mask"], entry["full"] if need_full else None, tuple(int(v) for v in entry["hw"])

    # ---- keys and files

    def key(self, kind: str, sources: list, params: tuple) -> str | None:
        """Hash of version, kind, size, params and each source's (path, size, mtime); None if a source is
        absent (the uncached reader then raises its own error)."""
        parts = [CACHE_VERSION, kind, self.size, *params]
        for path in sources:
            if not path:
                return None
            try:
                stat = os.stat(path)
            except OSError:
                return None
            parts += [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
        return hashlib.sha1(repr(parts).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def _read(self, key: str | None, names: tuple) -> dict | None:
        if key is None:
            return None
        try:
            with np.load(self.path(key)) as entry:
                return {name: entry[name] for name in names}
        except FileNotFoundError:
            return None
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            return None  # unreadable (a disk error, a foreign file): rebuilt and replaced

    def _write(self, key: str | None, arrays: dict, compress: tuple = ()) -> None:
        if key is None or not self.writable:
            return
        path = self.path(key)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_npz(tmp, arrays, compress)
            os.replace(tmp, path)
            self.written += 1
        except OSError as err:
            self.writable = False
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            warnings.warn(f"preprocessing cache {self.folder} is not writable ({err}); images are decoded "
                          "every epoch. Set cache_dir to a writable folder, or cache: false", stacklevel=3)


def write_npz(path, arrays: dict, compress: tuple = ()) -> None:
    """np.savez with a per-member choice: the members named in `compress` deflated, the others stored."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            method = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            archive.writestr(zipfile.ZipInfo(f"{name}.npy"), buffer.getvalue(), compress_type=method,
                             compresslevel=1 if name in compress else None)


def resize_mask(class_map: np.ndarray, size: int) -> np.ndarray:
    """A class map resized to size x size by nearest neighbour, as resize_step resizes masks."""
    if class_map.shape == (size, size):
        return class_map
    return cv2.resize(class_map, (size, size), interpolation=cv2.INTER_NEAREST)


def overlay_method(cfg: dict) -> str:
    """How training masks are decoded from OVERLAYs: config overlay_method (exact | hsv)."""
    return cfg.get("overlay_method") or OVERLAY_METHOD


def fill_row(cache: PreprocessCache, row: dict, labels: bool) -> int:
    """Make the entries a dataset will read for one row; returns how many were written (0: all fresh)."""
    before = cache.written
    cache.image(row)
    if jitter_enabled(cache.cfg):  # training reads HU then (validation the plain entry)
        cache.hu(row)
    if labels and (row.get("mask") or row.get("overlay")):
        cache.class_maps(row, lambda: load_class_map(row, overlay_method(cache.cfg)))
    return cache.written - before
