"""Progress bars for every long step (training, validation, infer.py, ensemble.py's search, grouping, reports).

    for item in progress.bar(items, desc="search", unit="setting"):
        ...

A bar is a tqdm bar (count, rate and ETA) on stderr, drawn only when that stream is a terminal: piped or
redirected output (a log file, CI, `| tee`) gets no bar at all, so logs hold the scripts' own lines only.
`--no-progress`, which every script with a bar takes, turns them off in a terminal too (`set_enabled`).
Torch-free and light, so every stage may use it (a root module, beside atomic.py).
"""
from __future__ import annotations

import sys

_ENABLED = True  # the scripts set it from --no-progress (set_enabled)


def set_enabled(on: bool) -> None:
    """Bars on (the default: on a terminal) or off everywhere in this process (--no-progress)."""
    global _ENABLED
    _ENABLED = bool(on)


def shown(stream=None) -> bool:
    """Whether a bar would be drawn on `stream` (default stderr): bars are on and the stream is a terminal."""
    stream = sys.stderr if stream is None else stream
    if not _ENABLED or stream is None:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def add_argument(parser) -> None:
    """The `--no-progress` flag of a script with bars (the script calls set_enabled(not args.no_progress))."""
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are drawn only on a terminal anyway)")


def bar(iterable=None, total: int | None = None, desc: str | None = None, unit: str = "it", leave: bool = False,
        show: bool = True, stream=None, **kwargs):
    """A tqdm bar over `iterable` (or to `update` by hand with `total`), drawn only where `shown(stream)` and
    `show`; otherwise a silent tqdm that iterates just the same. `leave=False`: the bar is erased when done."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream,
                disable=not (show and shown(stream)), dynamic_ncols=True, **kwargs)
