"""Warnings about configs that are valid but known not to work: said before training starts, never refused.

from_scratch_loss: a U-Net trained from scratch (no ImageNet or local weights) whose loss holds a CE-like
term (ce, bce, focal) that does not weigh lesion pixels up settles on background everywhere after an epoch
or two on the phantom (bench/seg_from_scratch.py: the old unet_r34_seg loss, the VGG16, deep-ensemble and
DPN-U-Net recipes as shipped); weighing lesion pixels 30x made each of them learn.
"""
from __future__ import annotations

from strokekit.config.schema import loss_terms

CE_LIKE = ("ce", "bce", "focal")
LESION_WEIGHT = 10.0  # lesion pixels at least this many times the background's: counts as weighted


def from_scratch_loss(cfg: dict) -> str | None:
    """The warning for a from-scratch U-Net with an unweighted CE-like loss term, else None."""
    if cfg["task"] != "seg" or cfg["pretrained"] or cfg["weights"]:
        return None
    terms = [name for name in loss_terms(cfg["loss"]) if name in CE_LIKE]
    weights = cfg["class_weights"]
    weighted = isinstance(weights, list) and min(weights[1:]) >= LESION_WEIGHT * weights[0]
    if not terms or (weighted and not (cfg.get("seg_head") == "sigmoid" and terms == ["focal"])):
        return None
    fix = ("--set loss=bce class_weights=[1,30,30] (a sigmoid head's focal loss weighs its two channels, not "
           "the lesion pixels)" if cfg.get("seg_head") == "sigmoid" else "--set class_weights=[1,30,30]")
    return (f"{cfg['name']}: from scratch, U-Nets whose {'/'.join(terms)} term does not weigh lesion pixels up "
            f"drew nothing on the phantom; weighing them 30x made them learn: {fix} (docs/recipes.md, "
            "docs/benchmarks.md#u-nets-from-scratch-seg_from_scratchpy)")


def advice(cfg: dict) -> list[str]:
    """Every warning that applies to `cfg`."""
    return [text for text in (from_scratch_loss(cfg),) if text]
