"""Test-time augmentation by flips, one function for classifiers and U-Nets.

Every flip variant of a batch is stacked along the batch dimension and sent through the model in ONE
forward pass; spatial outputs are flipped back, then the *probabilities* (not logits) are averaged.
Flips are their own inverses, so the same table undoes them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from strokekit.vocabulary import FLIPS, resolve_flips

ACTIVATIONS = ("softmax", "sigmoid", "none")


def apply_flip(x: torch.Tensor, name: str) -> torch.Tensor:
    """Flip the last two (H, W) dims of `x` as `name` says; applying it twice gives `x` back."""
    dims = FLIPS[resolve_flips(name)[0]]
    return torch.flip(x, dims) if dims else x


def _activate(out: torch.Tensor, activation: str | Callable | None) -> torch.Tensor:
    if callable(activation):
        return activation(out)
    if activation in (None, "none"):
        return out
    if activation == "softmax":
        return torch.softmax(out.float(), dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(out.float())
    raise KeyError(f"unknown activation {activation!r}; valid: {list(ACTIVATIONS)} or a callable")


def predict_with_tta(model_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     flips: str | Sequence[str] | None = ("none",), spatial: bool = False,
                     activation: str | Callable | None = "softmax") -> torch.Tensor:
    """Average of `activation(model_fn(flip(images)))` over the flip set, in one forward pass.

    images: (B, C, H, W). spatial=True: the output is (B, K, H', W') and is flipped back before averaging
    (a U-Net); spatial=False: the output (B, K) or (B,) is averaged as is (a classifier). Grad mode is
    the caller's (wrap in torch.inference_mode()). Memory grows with len(flips): size batches for it.
    """
    names = resolve_flips(flips)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
    batch = images.shape[0]
    stacked = torch.cat([apply_flip(images, name) for name in names], dim=0)
    probs = _activate(model_fn(stacked), activation)
    if probs.shape[0] != batch * len(names):
        raise ValueError(f"model returned batch {probs.shape[0]}, expected {batch * len(names)}")
    variants = probs.split(batch, dim=0)
    if spatial:
        if probs.ndim < 3:
            raise ValueError(f"spatial=True needs outputs with H, W dims; got shape {tuple(probs.shape)}")
        variants = [apply_flip(v, name) for v, name in zip(variants, names)]
    return torch.stack(variants, dim=0).mean(dim=0)


def forward_passes(n_images: int, batch_size: int, flips: str | Sequence[str] | None, n_models: int = 1) -> dict:
    """What a TTA run will cost, to print before it starts: batches, forward passes and images seen."""
    names = resolve_flips(flips)
    batches = -(-n_images // batch_size) if n_images else 0
    return {"flips": names, "forward_passes": batches * n_models,
            "images_through_models": n_images * len(names) * n_models}
