"""The k best epochs of a fold, kept in memory, and their mean weights written into best.pt (`topk_average: k`).

`TopK` holds (epoch, metric value, eval weights on the CPU) for the k best epochs by the selection metric,
ranked as engine.is_better ranks them (ties: the earlier epoch; NaN below every number). Its `state()` goes
into last.pt, so a resumed fold averages the same epochs as an uninterrupted one. `average_weights` is the
plain mean of state dicts: floating tensors (weights and BatchNorm running statistics) averaged in float64
and cast back, integer buffers (BatchNorm's num_batches_tracked) to the rounded mean.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from strokekit.models.checkpoint import read_checkpoint, save_atomic


class TopK:
    """A running set of the k best epochs' weights; `offer` each epoch, `average` at the end."""

    def __init__(self, k: int, mode: str, metric: str = ""):
        if k < 1:
            raise ValueError(f"topk_average must be >= 1, got {k}")
        if mode not in ("max", "min"):
            raise ValueError(f"metric mode must be max or min, got {mode!r}")
        self.k, self.mode, self.metric = int(k), mode, metric
        self.entries: list[dict] = []  # best first: {"epoch": int, "value": float, "weights": state dict}

    def _rank(self, entry: dict) -> tuple:
        value = entry["value"]
        if value is None or math.isnan(value):
            return (1, 0.0, entry["epoch"])
        return (0, -value if self.mode == "max" else value, entry["epoch"])

    def would_keep(self, epoch: int, value: float) -> bool:
        """Whether an epoch with this value enters the set (it is full and the candidate ranks below all: no)."""
        if len(self.entries) < self.k:
            return True
        return self._rank({"epoch": epoch, "value": value}) < self._rank(self.entries[-1])

    def offer(self, epoch: int, value: float, weights: Callable[[], dict]) -> bool:
        """Keep this epoch if it ranks among the k best; `weights()` is called (and copied) only then."""
        self.entries = [e for e in self.entries if e["epoch"] != epoch]  # a redone epoch replaces itself
        if not self.would_keep(epoch, value):
            return False
        snapshot = {name: t.detach().to("cpu", copy=True) for name, t in weights().items()}
        self.entries.append({"epoch": int(epoch), "value": math.nan if value is None else float(value),
                             "weights": snapshot})
        self.entries.sort(key=self._rank)
        del self.entries[self.k:]
        return True

    @property
    def epochs(self) -> list[int]:
        return [e["epoch"] for e in self.entries]

    @property
    def values(self) -> list[float]:
        return [e["value"] for e in self.entries]

    def average(self) -> dict:
        if not self.entries:
            raise ValueError("topk_average: no epoch was kept (did training run at all?)")
        return average_weights([e["weights"] for e in self.entries])

    def state(self) -> dict:
        """Plain types and tensors for last.pt (torch.load(weights_only=True) reads them)."""
        return {"k": self.k, "mode": self.mode, "metric": self.metric, "entries": self.entries}

    def load(self, state: dict) -> None:
        """Take a saved set (last.pt's); ValueError when it was ranked by another metric."""
        if (state["mode"], state.get("metric", "")) != (self.mode, self.metric):
            raise ValueError(f"its top epochs were ranked by {state.get('metric') or '?'} ({state['mode']}), "
                             f"this config ranks by {self.metric or '?'} ({self.mode})")
        self.entries = sorted(({**e, "weights": dict(e["weights"])} for e in state["entries"]), key=self._rank)
        del self.entries[self.k:]  # a resume with a smaller k keeps the best of the saved set

    def keep_until(self, epoch: int) -> None:
        """Drop epochs after `epoch` (a resume redoes them)."""
        self.entries = [e for e in self.entries if e["epoch"] <= epoch]


def average_weights(states: list[dict]) -> dict:
    """Element-wise mean of state dicts with the same keys and shapes (see module docstring)."""
    first = states[0]
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != first.keys():
            raise ValueError(f"state dict {i} has other keys than the first: cannot average them")
    out = {}
    for name, tensor in first.items():
        total = torch.stack([s[name].to(torch.float64) for s in states]).mean(dim=0)
        out[name] = (total.round() if not tensor.is_floating_point() else total).to(tensor.dtype)
    return out


def write_averaged(best_path, weights: dict, key: str, metrics: dict, topk: TopK) -> None:
    """best.pt = the best epoch's checkpoint with its eval weights (`key`: ema or model) replaced by the mean.

    Idempotent (the mean comes from the top-k set, never from best.pt): a kill before the fold's `done` and
    a resume write the same file again."""
    best = read_checkpoint(best_path)
    best[key] = {name: t.detach().cpu() for name, t in weights.items()}
    best.update(metrics=metrics, averaged_epochs=topk.epochs, averaged_values=topk.values)
    save_atomic(best, best_path)
