"""Normalisation layers for small batches from scratch (config `norm`): BatchNorm swapped for instance or
group norm in the encoder and decoder alike, as nnU-Net trains its 2D U-Nets (instance norm)."""
from __future__ import annotations

from torch import nn

NORMS = ("batch", "instance", "group")


def group_count(channels: int, most: int = 32) -> int:
    """The largest group count <= `most` that divides `channels` (GroupNorm needs one)."""
    return next(g for g in range(min(most, channels), 0, -1) if channels % g == 0)


def replace_batchnorm(model: nn.Module, kind: str) -> nn.Module:
    """Every BatchNorm2d of `model` replaced in place by InstanceNorm2d / GroupNorm with learnable affine
    parameters (copied from the BatchNorm, so pretrained scale and shift survive); `batch` changes nothing."""
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
    if kind == "batch":
        return model
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            new = (nn.InstanceNorm2d(c, eps=child.eps, affine=True) if kind == "instance"
                   else nn.GroupNorm(group_count(c), c, eps=child.eps))
            if child.affine:
                new.weight.data.copy_(child.weight.data)
                new.bias.data.copy_(child.bias.data)
            setattr(model, name, new)
        else:
            replace_batchnorm(child, kind)
    return model
