"""A fold's logs: log.csv (one row per epoch), train.log (the console, with times), summary.json
(strokekit.atomic.write_json), and the `done` marker (curves.png is drawn by
strokekit.report.figures.fold_curves, which the scripts hand to the engine).

log.csv is rewritten whole (atomically) after each epoch, so a resumed run keeps exactly one row per epoch;
train.log is appended to (a --resume adds to it; a fresh start or --overwrite begins it anew).
"""
from __future__ import annotations

import csv
import io
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from strokekit.atomic import write_atomic
from strokekit.errors import INTERRUPTED  # exit_process's code after Ctrl-C (script_main returns it)


class EpochLog:
    """Rows of log.csv in memory; `keep_until(epoch)` drops rows a resumed run will redo."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def load(self) -> "EpochLog":
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                self.rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
        return self

    def keep_until(self, epoch: int) -> None:
        self.rows = [row for row in self.rows if int(row["epoch"]) <= epoch]

    def append(self, row: dict) -> None:
        self.rows.append(dict(row))
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.path, lambda f: f.write(buffer.getvalue()), text=True)


def _number(text: str):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


class ConsoleLog:
    """While open, whatever the process prints on stdout and stderr is also appended to `path`, each line
    after its local time (`2026-05-01T12:00:00 fold 0 epoch 1/10: ...`). Progress bars never reach the file:
    a carriage return starts the line over, so a bar's redraws (and its erasing) leave nothing behind.
    train.py opens one per fold folder (train.log), on rank 0 only."""

    def __init__(self, path: Path, header: str | None = None):
        self.path, self.header = Path(path), header  # header: written to the file only (the command, say)

    def __enter__(self) -> "ConsoleLog":
        self.file = open(self.path, "a", encoding="utf-8")
        if self.header:
            self.file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} --- {self.header}\n")
        self.streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, self.file), _Tee(sys.stderr, self.file)
        return self

    def __exit__(self, *exc) -> None:
        for tee in (sys.stdout, sys.stderr):
            if isinstance(tee, _Tee):
                tee.finish()
        sys.stdout, sys.stderr = self.streams
        self.file.close()


class _Tee:
    """A stream that writes through to `stream` and copies whole lines, timestamped, to `file`."""

    def __init__(self, stream, file):
        self._stream, self._file, self._line = stream, file, ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        *lines, self._line = (self._line + text).split("\n")
        for line in lines:
            self._copy(line)
        self._line = self._line.rsplit("\r", 1)[-1]
        return written if written is not None else len(text)

    def _copy(self, line: str) -> None:
        line = line.rsplit("\r", 1)[-1].rstrip()
        if line:
            self._file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
            self._file.flush()

    def flush(self) -> None:
        self._stream.flush()

    def finish(self) -> None:
        self._copy(self._line)
        self._line = ""

    def __getattr__(self, name):  # isatty, fileno, encoding ...: the terminal's own
        return getattr(self._stream, name)


_INTERRUPT_SEEN = False  # set by watch_interrupts' handler


def watch_interrupts() -> None:
    """Ctrl-C still raises KeyboardInterrupt at once, and is also remembered: Python swallows an exception
    raised while a finalizer runs (a DataLoader iterator's at an epoch's end), so `check_interrupt` raises it
    again at the training loop's next step. Left alone where SIGINT is ignored (a background job)."""
    def handler(signum, frame):
        global _INTERRUPT_SEEN
        _INTERRUPT_SEEN = True
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came (even one a finalizer swallowed)."""
    if _INTERRUPT_SEEN:
        raise KeyboardInterrupt


def interrupted(err: BaseException) -> bool:
    """Whether `err` ends the run because of Ctrl-C: a KeyboardInterrupt, or any error once Ctrl-C came (a
    KeyboardInterrupt raised inside C code can surface as another error, e.g. an ImportError from an
    extension module whose initialisation it cut short)."""
    return isinstance(err, KeyboardInterrupt) or _INTERRUPT_SEEN


def exit_process(main, skip_teardown: bool = False) -> None:
    """Run a script's `main()` and end the process with its code. After Ctrl-C, skip the interpreter's
    teardown: every checkpoint is on disk already, and torch objects freed during teardown after an
    interrupt can abort the process (exit -6). Any exception once Ctrl-C came (torch may turn the
    KeyboardInterrupt raised inside one of its calls into another error) still ends as an interrupt: its
    traceback printed, then exit 130. `skip_teardown` skips the teardown after a normal end too (train.py
    under torchrun, whose process-group threads can abort it with "terminate called without an active
    exception" after the work is done)."""
    try:
        code = main()
    except BaseException:
        if not _INTERRUPT_SEEN:
            raise
        traceback.print_exc()
        print("interrupted", file=sys.stderr)
        code = INTERRUPTED
    if code == INTERRUPTED or skip_teardown or _INTERRUPT_SEEN:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def eta(epoch_times: list[float], epochs_left: int) -> str:
    """h:mm:ss left for `epochs_left` epochs at the mean of `epoch_times` (early stopping may end sooner)."""
    seconds = round(sum(epoch_times) / max(len(epoch_times), 1) * epochs_left)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
