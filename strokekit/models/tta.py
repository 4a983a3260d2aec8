"""Test-time augmentation by flips and scales, one function for classifiers and U-Nets.

Every flip variant of a batch is stacked along the batch dimension and sent through the model in ONE
forward pass per scale; spatial outputs are flipped back, then the *probabilities* (not logits) are averaged.
Flips are their own inverses, so the same table undoes them. A scale s resizes the batch to s x its size
(bilinear, half-pixel, antialiased when shrinking; rounded to a multiple of SCALE_STRIDE) before its pass;
a U-Net's probabilities are resized back to the size the unscaled input gives before the average, so the
masks come back at the input's resolution. Scale 1 runs exactly the flip-only computation.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from strokekit.vocabulary import FLIPS, SCALE_STRIDE, resolve_flips, resolve_scales

ACTIVATIONS = ("softmax", "sigmoid", "none")


def apply_flip(x: torch.Tensor, name: str) -> torch.Tensor:
    """Flip the last two (H, W) dims of `x` as `name` says; applying it twice gives `x` back."""
    dims = FLIPS[resolve_flips(name)[0]]
    return torch.flip(x, dims) if dims else x


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """(H, W) of a batch at `scale`: s x each side rounded to a multiple of SCALE_STRIDE (>= one stride);
    scale 1 keeps the size as it is."""
    if scale == 1.0:
        return tuple(int(n) for n in size)
    return tuple(max(SCALE_STRIDE, int(round(n * scale / SCALE_STRIDE)) * SCALE_STRIDE) for n in size)


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, *size), bilinear with half-pixel centres, antialiased when shrinking."""
    size = tuple(int(n) for n in size)
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


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
                     activation: str | Callable | None = "softmax", scales=(1.0,)) -> torch.Tensor:
    """Average of `activation(model_fn(flip(scale(images))))` over flips x scales, one forward pass per scale.

    images: (B, C, H, W). spatial=True: the output is (B, K, H', W') and is flipped back (and resized back
    to the size scale 1 gives) before averaging (a U-Net); spatial=False: the output (B, K) or (B,) is
    averaged as is (a classifier). Grad mode is the caller's (wrap in torch.inference_mode()). Memory grows
    with len(flips) and the largest scale: size batches for it.
    """
    names, factors = resolve_flips(flips), resolve_scales(scales)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
    batch, size = images.shape[0], tuple(images.shape[-2:])
    variants = []
    for scale in factors:
        scaled = resize(images, scaled_size(size, scale))
        stacked = torch.cat([apply_flip(scaled, name) for name in names], dim=0)
        probs = _activate(model_fn(stacked), activation)
        if probs.shape[0] != batch * len(names):
            raise ValueError(f"model returned batch {probs.shape[0]}, expected {batch * len(names)}")
        parts = probs.split(batch, dim=0)
        if spatial:
            if probs.ndim < 3:
                raise ValueError(f"spatial=True needs outputs with H, W dims; got shape {tuple(probs.shape)}")
            back = [round(probs.shape[d] * size[k] / scaled.shape[d]) for k, d in enumerate((-2, -1))]
            parts = [resize(apply_flip(v, name), back) for v, name in zip(parts, names)]
        variants += parts
    return torch.stack(variants, dim=0).mean(dim=0)


def forward_passes(n_images: int, batch_size: int, flips: str | Sequence[str] | None, n_models: int = 1,
                   scales=(1.0,)) -> dict:
    """What a TTA run will cost, to print before it starts: batches, forward passes and images seen."""
    names, factors = resolve_flips(flips), resolve_scales(scales)
    batches = -(-n_images // batch_size) if n_images else 0
    return {"flips": names, "scales": factors, "forward_passes": batches * n_models * len(factors),
            "images_through_models": n_images * len(names) * len(factors) * n_models}
