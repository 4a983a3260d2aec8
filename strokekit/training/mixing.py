"""Mixup and CutMix: each training batch blended with a shuffled copy of itself (config `mixup`, `cutmix`,
`mix_prob`).

- mixup (classifiers): images = lam * x + (1 - lam) * x[perm], lam ~ Beta(mixup, mixup); the loss is
  lam * loss(out, y) + (1 - lam) * loss(out, y[perm]) — any loss, class weights and focal terms included.
- cutmix (classifiers and seg): a box of x[perm] pasted into x, lam = the share of x left after the box is
  clipped to the image, box area ~ 1 - Beta(cutmix, cutmix). Classifier labels mix as for mixup; a seg mask, and
  a classifier's aux_seg mask, gets the same box pasted, so the mask always matches the pixels.
- Both set: each mixed batch draws one of the two with equal odds. `mix_prob` is the share of batches mixed.

Draws come from a generator seeded by (seed, epoch, batch), so a resumed epoch mixes as the first run did.
"""
from __future__ import annotations

import numpy as np
import torch

def mixing_enabled(cfg: dict) -> bool:
    return cfg["mix_prob"] > 0 and (cfg["mixup"] > 0 or cfg["cutmix"] > 0)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a box of about (1 - lam) of the image, centred anywhere, clipped to the image."""
    cut = np.sqrt(1.0 - lam)
    h, w = int(round(height * cut)), int(round(width * cut))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    return (max(cy - h // 2, 0), min(cy + h - h // 2, height), max(cx - w // 2, 0), min(cx + w - w // 2, width))


class Mix:
    """One batch's mix: the permutation, lam and (for cutmix) the box."""

    def __init__(self, kind: str, perm: torch.Tensor, lam: float, box=None):
        self.kind, self.perm, self.lam, self.box = kind, perm, lam, box

    def images(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mixup":
            return self.lam * x + (1.0 - self.lam) * x[self.perm]
        return self.paste(x)

    def paste(self, t: torch.Tensor) -> torch.Tensor:
        """t with the box filled from t[perm] (the last two dimensions are height and width)."""
        y0, y1, x0, x1 = self.box
        out = t.clone()
        out[..., y0:y1, x0:x1] = t[self.perm][..., y0:y1, x0:x1]
        return out

    def loss(self, loss_fn, outputs, target, task: str) -> torch.Tensor:
        """The mixed loss. target: the seg mask, a classifier's label, or (label, aux mask)."""
        if task == "seg":
            return loss_fn(outputs, self.paste(target))
        label, mask = target if isinstance(target, tuple) else (target, None)
        if mask is not None:  # aux_seg: the lesion head's mask follows the pixels
            mask_a = self.paste(mask) if self.kind == "cutmix" else mask
            mask_b = self.paste(mask) if self.kind == "cutmix" else mask[self.perm]
            first, second = (label, mask_a), (label[self.perm], mask_b)
        else:
            first, second = label, label[self.perm]
        return self.lam * loss_fn(outputs, first) + (1.0 - self.lam) * loss_fn(outputs, second)


def draw_mix(cfg: dict, images: torch.Tensor, epoch: int, batch: int) -> Mix | None:
    """This batch's mix, or None when it is left as it is."""
    if not mixing_enabled(cfg) or len(images) < 2:
        return None
    rng = np.random.default_rng([cfg["seed"], epoch, batch, 0x6D6978])
    if rng.random() >= cfg["mix_prob"]:
        return None
    kinds = [k for k in ("mixup", "cutmix") if cfg[k] > 0]
    kind = kinds[int(rng.integers(len(kinds)))]
    lam = float(rng.beta(cfg[kind], cfg[kind]))
    perm = torch.as_tensor(rng.permutation(len(images)), device=images.device)
    if kind == "mixup":
        return Mix(kind, perm, lam)
    height, width = images.shape[-2:]
    box = cutmix_box(height, width, lam, rng)
    kept = 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width)
    return Mix(kind, perm, kept, box)
