"""One writer per folder: an OS-level lock (fcntl.flock) on a lock file, held for a whole run.

train.py locks each fold folder it trains (`<fold>/.lock`), export.py its --out model folder and infer.py its
submission folder; a second run on a locked folder is refused with FolderLockedError, which names the holder
(pid, host, start time and command, written into the lock file by the holder), and the script exits 2.

The kernel drops a flock when the process holding it ends, however it ends (kill -9, OOM, power loss of a
local disk): a crashed run may leave its lock file behind, but never a held lock, so the next run proceeds.
A run deletes its lock file when it lets go, while still holding it; a run that took the lock re-checks that
the file it locked is still the one at the path (else it was deleted meanwhile, and it tries again), so two
runs never hold "the" lock on two different files.

A folder that is replaced as a whole (export.py swaps a finished copy into place) or whose every file matters
(a submission) is locked with a file beside it instead, `<parent>/.<name>.lock` (`beside=True`).

Within one process the lock is re-entrant (a count per lock file), so library code may take it again under a
script that already holds it. Root module: the standard library and strokekit.errors only.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from strokekit.errors import UserError

LOCK_NAME = ".lock"

# lock file (resolved) -> [fd, count] for the locks this process holds
_HELD: dict[str, list[int]] = {}


class FolderLockedError(UserError, BlockingIOError):
    """Another live process holds the folder's lock: two writers would interleave (and delete) its files."""


def lock_file(folder: str | os.PathLike, beside: bool = False) -> Path:
    """Where a folder's lock lives: inside it (`.lock`), or beside it (`.<name>.lock`)."""
    folder = Path(folder)
    if beside:
        folder = folder.absolute()
        return folder.parent / f".{folder.name}.lock"
    return folder / LOCK_NAME


class FolderLock:
    """`with FolderLock(folder):` - hold the folder's lock or raise FolderLockedError naming its holder.

    Also usable as `lock = FolderLock(folder).acquire()` ... `lock.release()`; a lock that is dropped
    without release() is released when it is garbage collected (and in any case when the process ends).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "run", beside: bool = False):
        self.folder, self.what = Path(folder), what
        self.path = lock_file(folder, beside)
        self._held = False

    def acquire(self) -> FolderLock:
        if self._held:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:  # this process holds it already
            _HELD[key][1] += 1
        else:
            _HELD[key] = [self._lock(), 1]
        self._key, self._held = key, True
        return self

    def _lock(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, self.path):
                    _write_holder(fd, self.what)
                    return fd
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise FolderLockedError(f"{self.folder} is in use by {holder}, which holds its lock {self.path}; "
                                        "wait for it to finish or stop it (a killed run frees the lock at once)"
                                        ) from None
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder we waited for deleted that file on release: lock the new one

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        entry = _HELD.get(self._key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[self._key]
            try:
                if _same_file(entry[0], self.path):
                    self.path.unlink()  # still holding it: whoever opens the old file re-checks, and retries
            except OSError:
                pass
            os.close(entry[0])  # closing the last descriptor drops the flock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def hold_folder(folder: str | os.PathLike, what: str = "run", beside: bool = False) -> FolderLock:
    """Take the folder's lock until the process ends (or `release()` on the returned lock)."""
    lock = FolderLock(folder, what, beside).acquire()
    _KEPT.append(lock)
    return lock


_KEPT: list[FolderLock] = []  # hold_folder's locks: referenced, so never garbage collected


@atexit.register
def _release_kept() -> None:
    """A normal exit deletes the lock files hold_folder kept (a killed process leaves them, unlocked)."""
    while _KEPT:
        _KEPT.pop().release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _write_holder(fd: int, what: str) -> None:
    info = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


def _holder_info(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode("utf-8", "replace") or "{}")
    except ValueError:
        info = {}
    return info if isinstance(info, dict) else {}


def _read_holder(fd: int) -> str:
    info = _holder_info(fd)
    if not info.get("pid"):
        return "another process (it has not written its details yet)"
    command = f" ({info['command']})" if info.get("command") else ""
    return (f"another {info.get('what', 'run')}: pid {info['pid']} on {info.get('host', '?')}, started "
            f"{info.get('started', '?')}{command}")
