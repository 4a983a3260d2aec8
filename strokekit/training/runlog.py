"""A fold's logs: log.csv (one row per epoch), curves.png, summary.json, and the `done` marker.

log.csv is rewritten whole (atomically) after each epoch, so a resumed run keeps exactly one row per epoch.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from pathlib import Path

from strokekit.atomic import write_atomic


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


def plot_curves(rows: list[dict], metric: str, path: Path) -> None:
    """Losses (left) and the selection metric (right) per epoch, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        ax_loss.plot(epochs, [_float(r.get(key)) for r in rows], marker="o", label=key)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_metric.plot(epochs, [_float(r.get(metric)) for r in rows], marker="o", color="C2")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_title(f"val {metric}")
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=_plain)
    write_atomic(path, lambda f: f.write(text + "\n"), text=True)


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C


def exit_process(code: int, skip_teardown: bool = False) -> None:
    """End a script with `code`. After Ctrl-C, skip the interpreter's teardown: every checkpoint is on disk
    already, and torch objects freed during teardown after an interrupt can abort the process (exit -6).
    `skip_teardown` does the same always (train.py under torchrun, whose process-group threads can abort
    the teardown with "terminate called without an active exception" after the work is done)."""
    if code == INTERRUPTED or skip_teardown:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
