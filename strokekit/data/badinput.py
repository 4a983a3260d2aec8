"""BadInputError: a data file the kit refuses, named by its path (and how the OS's refusals read)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from strokekit.errors import UserError


class BadInputError(UserError, ValueError):
    """A data file that cannot be read or does not hold what the kit expects."""

    def __init__(self, path, problem: str | None = None):
        if problem is None:  # rebuilt from one message (a DataLoader worker re-raises errors that way)
            path, problem = _split_message(str(path))
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}" if path else problem)


def _split_message(text: str) -> tuple[str, str]:
    """'<path>: <problem>' from a message, or the last 'BadInputError: ...' line of a worker's traceback."""
    lines = [line for line in text.strip().splitlines() if line.strip()] or [""]
    line = next((x for x in reversed(lines) if "BadInputError: " in x), lines[-1])
    path, sep, problem = line.split("BadInputError: ", 1)[-1].partition(": ")
    return (path, problem) if sep else ("", path)


def unreadable(path, err: OSError) -> BadInputError:
    """A file the OS cannot open, named: missing, a dangling symlink, a symlink loop, a folder ..."""
    if os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if err.errno == errno.ELOOP:
            return BadInputError(path, f"a symlink loop (-> {target})")
        if isinstance(err, FileNotFoundError):
            return BadInputError(path, f"a dangling symlink: its target {target} does not exist")
    if isinstance(err, FileNotFoundError):
        return BadInputError(path, "file does not exist")
    if err.errno == errno.ELOOP:
        return BadInputError(path, "a symlink loop in its path")
    if isinstance(err, IsADirectoryError):
        return BadInputError(path, "a folder, not a file")
    return BadInputError(path, f"cannot be read ({type(err).__name__}: {err.strerror or err})")


def read_bytes(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise unreadable(path, err) from None
