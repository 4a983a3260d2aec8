"""All-or-nothing file writes: a kill at any moment leaves either the previous file or the new one, whole.

Torch-free, so config / folds / spec / submission writers can use it without importing torch.
"""
from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | os.PathLike, write, text: bool = False) -> None:
    """Call write(file) on a temporary file in the same folder, fsync it, rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w" if text else "wb", **({"encoding": "utf-8", "newline": ""} if text else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda f: f.write(text), text=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
