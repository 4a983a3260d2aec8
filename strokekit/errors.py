"""One base for every error a user can cause, and the one way a script reports it.

A `UserError` is a problem in what the user gave: a config key, a data folder, a spec file, a flag value,
weights missing offline. Each stage keeps its own subclass (ConfigError, SpecError, BadInputError ...), which
also keeps its older base (ValueError, KeyError, RuntimeError) for the callers that catch that.

Every script's `main` is wrapped in `script_main`: a UserError prints `error: <message>` to stderr and returns
2, with no traceback; anything else (a bug) raises with its traceback. Code that turns a user's input into an
error raises a UserError subclass, never a bare KeyError / ValueError: a bare one is a bug.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable

USAGE = 2  # exit status of a user error (argparse's status for a bad command line)
INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C


class UserError(Exception):
    """Something the user gave (a file, folder, flag or setting) that the kit cannot use as it is."""

    def __str__(self) -> str:  # one message, as written (KeyError subclasses would print it in quotes)
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputFileError(UserError, FileNotFoundError):
    """A file or folder the user named that is not there, or holds nothing the kit can use."""


class OutputExistsError(UserError, FileExistsError):
    """An output path that already holds something the kit will not replace unasked (--overwrite)."""


class UnknownNameError(UserError, KeyError):
    """A name (flip, metric, blend, statistic, objective ...) that is not one of the known ones."""


class SettingError(UserError, ValueError):
    """A flag or setting whose value the kit cannot use (out of range, empty, inconsistent)."""


def missing_file(path, what: str = "file") -> InputFileError:
    """The error for a user-given `path` that is not there: `<what> <path> does not exist`."""
    return InputFileError(f"{what} {path} does not exist")


def main_rank() -> bool:
    """False in torchrun's other processes (RANK > 0), which print nothing."""
    return os.environ.get("RANK", "0") == "0"


def script_main(main: Callable | None = None, *, interrupted: str | None = None,
                speaks: Callable[[], bool] = lambda: True):
    """Decorator for a script's `main(argv=None) -> int`.

    UserError: print `error: <message>` to stderr (only where `speaks()`) and return 2. KeyboardInterrupt:
    with `interrupted`, print it and return 130 (train.py, tune.py: every checkpoint is on disk already);
    without, let it raise as Python does. Anything else raises with its traceback.
    """
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except UserError as err:
                if speaks():
                    print(f"error: {err}", file=sys.stderr)
                return USAGE
            except KeyboardInterrupt:
                if interrupted is None:
                    raise
                print(interrupted, file=sys.stderr)
                return INTERRUPTED
        return run
    return wrap if main is None else wrap(main)
