"""All-or-nothing file writes: a kill at any moment leaves either the previous file or the new one, whole;
and `to_plain` / `write_json`, the one way the kit turns results into JSON (and YAML) values.

Torch-free (numpy-free too), so config / folds / spec / submission writers can use it without importing torch.
"""
from __future__ import annotations

import json
import math
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


def to_plain(value):
    """A copy made of JSON's types only: dict (keys as str), list, str, int, float, bool, None.

    numpy scalars and arrays (and anything else with `.tolist()`: torch tensors, pandas series) become Python
    numbers and lists; tuples and sets lists; paths str; NaN and infinities None (strict JSON has neither, YAML
    readers of other languages differ). Any other object becomes its str(): a result file is never lost to
    one odd value.
    """
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [to_plain(v) for v in sorted(value, key=repr)]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return to_plain(value.tolist())
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def write_json(path: str | os.PathLike, data) -> Path:
    """`to_plain(data)` as strict JSON (indented, one trailing newline), written atomically; makes the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(to_plain(data), indent=2, allow_nan=False) + "\n")
    return path


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
