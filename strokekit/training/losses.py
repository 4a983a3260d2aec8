"""Losses by name, and weighted sums of them: `loss: ce`, `loss: "dice+ce"`, `loss: {dice: 1.0, ce: 0.5}`.

Two modes, chosen by the task:
- `binary`: classifier logits (N, 2) against targets (N,) in {0, 1}. CE uses the two logits; BCE, focal and
  Lovasz use the log-odds z1 - z0 (= logit of softmax[:, 1]), so every loss trains the same head.
- `multiclass`: segmentation logits (N, C, H, W) against class maps (N, H, W).
- `multilabel`: a sigmoid seg head (config `seg_head: sigmoid`, models.SigmoidLesionHead): logits
  [0, a, b] whose lesion channels' log-odds a (ischemia) and b (hemorrhage) are two independent sigmoid
  outputs; bce, focal and the Dice losses score each lesion channel against its own 0/1 map (smp's
  multilabel mode), `ce` and `lovasz` are the softmax head's and are refused.
`class_weights` (one weight per class) apply to ce, bce (as pos_weight = w1 / w0, or per channel) and focal.
`dice` and `lovasz` come from smp.losses (smp's Dice counts the background class too); `batch_dice` /
`image_dice` are foreground-only soft Dice over the batch (nnU-Net) / per image.
In multiclass mode every loss skips the pixels whose target is vocabulary.IGNORE_LABEL (255: the uncertain
pixels of a pseudo-label, data/pseudo.py): they add nothing to the loss and get no gradient.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from strokekit.errors import UserError
from strokekit.vocabulary import IGNORE_LABEL

MODES = ("binary", "multiclass", "multilabel")
SOFTMAX_ONLY = ("ce", "lovasz")  # losses of mutually exclusive classes: no multilabel form


class LossNameError(UserError, KeyError):
    """A loss name (or loss spec) that no registry knows."""


def _log_odds(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 1] - logits[:, 0]


def lesion_channels(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Multilabel mode: (lesion log-odds (N, 2, H, W), 0/1 maps (N, 2, H, W), IGNORE_LABEL where the class map
    is) from logits [0, a, b] and a class map: channel 0 ischemia (class 1), channel 1 hemorrhage (class 2)."""
    odds = logits.float()[:, 1:] - logits.float()[:, :1]
    maps = torch.stack([target == 1, target == 2], dim=1).long()
    return odds, maps.masked_fill((target == IGNORE_LABEL).unsqueeze(1), IGNORE_LABEL)


class CrossEntropy(nn.Module):
    def __init__(self, mode: str, class_weights=None):
        super().__init__()
        self.register_buffer("weight", _as_tensor(class_weights), persistent=False)

    def forward(self, logits, target):
        # torch's weighted mean, written out so that a target with every pixel ignored gives 0, not 0 / 0
        total = F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=IGNORE_LABEL,
                                reduction="sum")
        valid = target != IGNORE_LABEL
        count = valid.sum() if self.weight is None else self.weight[target.where(valid, 0)][valid].sum()
        return total / count.clamp_min(1e-12)


class BinaryCrossEntropy(nn.Module):
    def __init__(self, mode: str, class_weights=None):
        super().__init__()
        self.mode = mode
        w = _as_tensor(class_weights)
        if mode in ("binary", "multilabel") and w is not None:
            w = w[1:] / w[0]  # pos_weight (per lesion channel in multilabel mode)
        self.register_buffer("weight", w, persistent=False)

    def forward(self, logits, target):
        logits = logits.float()
        if self.mode == "binary":
            return F.binary_cross_entropy_with_logits(_log_odds(logits), target.float(), pos_weight=self.weight)
        if self.mode == "multilabel":
            odds, maps = lesion_channels(logits, target)
            valid = maps != IGNORE_LABEL
            weight = None if self.weight is None else self.weight.view(1, -1, *([1] * (odds.ndim - 2)))
            loss = F.binary_cross_entropy_with_logits(odds, maps.where(valid, 0).float(), pos_weight=weight,
                                                      reduction="none")
            return (loss * valid).sum() / valid.sum().clamp_min(1)
        valid = (target != IGNORE_LABEL).unsqueeze(1)
        onehot = F.one_hot(target.where(valid[:, 0], 0), logits.shape[1]).movedim(-1, 1).float()
        loss = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        if self.weight is not None:
            loss = loss * self.weight.view(1, -1, *([1] * (loss.ndim - 2)))
        return (loss * valid).sum() / (valid.sum() * logits.shape[1]).clamp_min(1)


class _SmpLoss(nn.Module):
    """An smp loss in multiclass mode, or in binary mode on the log-odds for classifiers."""

    def __init__(self, mode: str, make: Callable[..., nn.Module]):
        super().__init__()
        self.mode = mode
        self.loss = make("binary") if mode == "binary" else make(mode, ignore_index=IGNORE_LABEL)

    def forward(self, logits, target):
        logits = logits.float()
        if self.mode == "binary":
            return self.loss(_log_odds(logits).unsqueeze(1), target.float().unsqueeze(1))
        if self.mode == "multilabel":
            return self.loss(*lesion_channels(logits, target))
        return self.loss(logits, target)


def focal(mode: str, class_weights=None) -> nn.Module:
    from segmentation_models_pytorch.losses import FocalLoss

    weights = None if class_weights is None else [float(w) for w in class_weights]
    if mode == "binary":  # one output: the class weights become alpha, the positive class's share
        alpha = None if weights is None else weights[1] / (weights[0] + weights[1])
        return _SmpLoss(mode, lambda m: FocalLoss(m, alpha=alpha))
    if mode == "multilabel":  # one weight per lesion channel
        return MultilabelFocal(weights and weights[1:])
    return _SmpLoss(mode, lambda m, **kw: FocalLoss(m, class_weights=weights, **kw))


class MultilabelFocal(nn.Module):
    """Sigmoid focal loss (gamma 2) of each lesion channel over its valid pixels, then the channels' mean (or
    mean weighted by `weights`), as smp's FocalLoss reduces its classes (its multilabel mode fails on ignored
    pixels, so the channels are filtered here)."""

    def __init__(self, weights=None, gamma: float = 2.0):
        super().__init__()
        self.register_buffer("weight", _as_tensor(weights), persistent=False)
        self.gamma = gamma

    def forward(self, logits, target):
        from torchvision.ops import sigmoid_focal_loss

        odds, maps = lesion_channels(logits, target)
        valid = maps != IGNORE_LABEL
        losses = torch.stack([sigmoid_focal_loss(odds[:, c][valid[:, c]], maps[:, c][valid[:, c]].float(),
                                                 alpha=-1, gamma=self.gamma, reduction="sum")
                              / valid[:, c].sum().clamp_min(1) for c in range(odds.shape[1])])
        if self.weight is None:
            return losses.mean()
        return (losses * self.weight).sum() / self.weight.sum()


def dice(mode: str, class_weights=None) -> nn.Module:
    from segmentation_models_pytorch.losses import DiceLoss
    return _SmpLoss(mode, lambda m, **kw: DiceLoss(m, from_logits=True, **kw))


class ForegroundDice(nn.Module):
    """Soft Dice of the foreground classes on softmax probabilities, 1 - its mean over those classes.

    `batch=True` (nnU-Net's batch dice): one Dice per class over every pixel of the batch, so a class absent
    from one slice neither vanishes nor punishes; `batch=False`: one Dice per image and class, averaged.
    dice_c = (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth); background (class 0) is left out, as its
    Dice is near 1 on any slice and would dilute the lesions' gradient. Binary (classifier) mode: the
    positive class's probability against the 0/1 target, over the batch.
    """

    def __init__(self, mode: str, batch: bool, smooth: float = 1e-5):
        super().__init__()
        self.mode, self.batch, self.smooth = mode, batch, smooth

    def forward(self, logits, target):
        logits = logits.float()
        if self.mode == "binary":
            probs, onehot = torch.sigmoid(_log_odds(logits))[:, None], target.float()[:, None]
            dims = (0,)
        elif self.mode == "multilabel":  # each lesion channel's own sigmoid
            odds, maps = lesion_channels(logits, target)
            valid = maps != IGNORE_LABEL
            probs, onehot = torch.sigmoid(odds) * valid, (maps * valid).float()
            dims = (0, *range(2, logits.ndim)) if self.batch else tuple(range(2, logits.ndim))
        else:
            valid = (target != IGNORE_LABEL).unsqueeze(1)
            probs = logits.softmax(1)[:, 1:] * valid
            onehot = F.one_hot(target.where(valid[:, 0], 0), logits.shape[1]).movedim(-1, 1)[:, 1:].float()
            dims = (0, *range(2, logits.ndim)) if self.batch else tuple(range(2, logits.ndim))
        inter = (probs * onehot).sum(dims)
        total = probs.sum(dims) + onehot.sum(dims)
        return 1 - ((2 * inter + self.smooth) / (total + self.smooth).clamp_min(1e-8)).mean()


def batch_dice(mode: str, class_weights=None) -> nn.Module:
    return ForegroundDice(mode, batch=True)


def image_dice(mode: str, class_weights=None) -> nn.Module:
    return ForegroundDice(mode, batch=False)


def lovasz(mode: str, class_weights=None) -> nn.Module:
    from segmentation_models_pytorch.losses import LovaszLoss
    return _SmpLoss(mode, lambda m, **kw: LovaszLoss(m, per_image=False, **kw))


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropy, "bce": BinaryCrossEntropy, "focal": focal, "dice": dice, "lovasz": lovasz,
    "batch_dice": batch_dice, "image_dice": image_dice,
}


class WeightedSum(nn.Module):
    """sum_i weight_i * loss_i(logits, target)."""

    def __init__(self, parts: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        self.weights = dict(weights)

    def forward(self, logits, target):
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.parts.items())


def parse_loss_spec(spec) -> dict[str, float]:
    """"dice+ce" -> {dice: 1, ce: 1}; "0.5*dice+ce" -> {dice: 0.5, ce: 1}; a mapping is taken as is."""
    if isinstance(spec, dict):
        terms = {str(k).strip(): float(v) for k, v in spec.items()}
    elif isinstance(spec, str):
        terms = {}
        for part in spec.split("+"):
            weight, star, name = part.strip().rpartition("*")
            terms[name.strip()] = float(weight) if star else 1.0
    else:
        raise LossNameError(f"loss must be a name, a sum such as 'dice+ce', or a mapping; got {spec!r}")
    unknown = [name for name in terms if name not in LOSSES]
    if unknown or not terms:
        raise LossNameError(f"unknown loss {', '.join(unknown) or spec!r}; valid losses: {', '.join(LOSSES)} "
                            "(or sums such as 'dice+ce' / {dice: 1.0, ce: 0.5})")
    return terms


def build_loss(spec, mode: str, class_weights=None) -> nn.Module:
    """The loss module a config's `loss` names, for `mode` 'binary' (classifiers), 'multiclass' (seg) or
    'multilabel' (seg with a sigmoid head)."""
    if mode not in MODES:
        raise ValueError(f"loss mode must be one of {MODES}, got {mode!r}")
    terms = parse_loss_spec(spec)
    refused = [name for name in terms if mode == "multilabel" and name in SOFTMAX_ONLY]
    if refused:
        raise LossNameError(f"loss {', '.join(refused)} is for the softmax head (mutually exclusive classes); "
                            "seg_head: sigmoid trains with bce, focal, dice, batch_dice or image_dice")
    parts = {name: LOSSES[name](mode, class_weights) for name in terms}
    if len(parts) == 1 and next(iter(terms.values())) == 1.0:
        return next(iter(parts.values()))
    return WeightedSum(parts, terms)


def _as_tensor(weights) -> torch.Tensor | None:
    return None if weights is None else torch.as_tensor([float(w) for w in weights], dtype=torch.float32)


class LesionAuxLoss(nn.Module):
    """A classifier's loss plus `weight` x BCE of its lesion head (config `aux_seg`, models.LesionAuxClassifier).

    The head's target per cell of the last feature map: does the cell hold ischemic / hemorrhagic pixels (the
    mask max-pooled to the map's size), so a lesion of a few pixels still marks its cell. In eval mode the
    model gives image logits only and this is the classifier's loss alone (the logged val_loss).
    """

    def __init__(self, base: nn.Module, weight: float):
        super().__init__()
        self.base, self.weight = base, float(weight)

    def forward(self, output, target) -> torch.Tensor:
        label, mask = target if isinstance(target, tuple) else (target, None)
        if not isinstance(output, tuple):
            return self.base(output, label)
        logits, lesion = output
        if mask is None:
            raise ValueError("aux_seg: the training batch holds no masks for the lesion head")
        cells = lesion_cells(mask, lesion.shape[-2:])
        bce = F.binary_cross_entropy_with_logits(lesion.float(), cells, reduction="none")
        # lesion cells are a few in a hundred: each side gets half the weight, or the head learns "never"
        lesion_cell, clear = cells > 0, cells == 0
        balanced = (0.5 * (bce[clear].mean() + bce[lesion_cell].mean()) if lesion_cell.any() and clear.any()
                    else bce.mean())  # (a batch whose every cell holds lesion, e.g. after cutmix, is no NaN)
        return self.base(logits, label) + self.weight * balanced


def lesion_cells(mask: torch.Tensor, size) -> torch.Tensor:
    """(N, 2, *size) float: 1 where a cell of the (N, H, W) class map holds ischemia (channel 0) / hemorrhage (1)."""
    classes = torch.stack([mask == 1, mask == 2], dim=1).float()
    return F.adaptive_max_pool2d(classes, tuple(size))


class DeepSupervisionLoss(nn.Module):
    """A seg loss at every output of a deep-supervised U-Net (models/deep_supervision.py): the full-resolution
    logits and each stage's, against the class map resized (nearest) to that stage; weights 1/2^i, finest
    first, summing to 1 (nnU-Net). In eval mode the model gives the full-resolution logits only: base loss."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, output, target) -> torch.Tensor:
        if not isinstance(output, tuple):
            return self.base(output, target)
        main, stages = output
        from strokekit.models.deep_supervision import stage_weights

        weights = stage_weights(len(stages))
        loss = weights[0] * self.base(main, target)
        for weight, logits in zip(weights[1:], stages):
            small = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
            loss = loss + weight * self.base(logits, small)
        return loss
