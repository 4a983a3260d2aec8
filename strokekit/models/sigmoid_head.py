"""The sigmoid seg head (config `seg_head: sigmoid`, the DPN-U-Net's): two independent lesion channels.

The net predicts two log-odds per pixel, a (ischemia) and b (hemorrhage), each its own sigmoid, as the
DPN-U-Net paper's head does (classes may overlap, each channel is trained on its own 0/1 map: the losses'
multilabel mode, training/losses.py). The wrapper emits logits [0, a, b], so training, its argmax and every
loss read it as a 3-class head. Its probability maps (OOF files, infer.py, Predictor: `map_activation`) are

    sigmoid_maps([0, a, b]) = [1 - max(p, q), p, q]        p = sigmoid(a), q = sigmoid(b)

the sigmoids themselves, as the paper thresholds (k = 0.47 on p) and averages them (its 6 models), not the
softmax [(1-p)(1-q), p(1-q), q(1-p)] / (1 - pq), which is below p wherever q is not ~0. The background channel
makes the argmax what the softmax's is: a lesion class exactly where its sigmoid is above 0.5 and above the
other's. The maps do not sum to 1; nothing downstream needs them to.
"""
from __future__ import annotations

import torch
from torch import nn


class SigmoidLesionHead(nn.Module):
    """`net` (2 output channels: the lesion log-odds) -> logits [0, a, b]; deep supervision's training output
    (main, stages) has each of its maps padded the same way."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        if isinstance(out, tuple):
            main, stages = out
            return pad_background(main), [pad_background(s) for s in stages]
        return pad_background(out)


def sigmoid_maps(logits: torch.Tensor) -> torch.Tensor:
    """(N, 3, ...) logits [z0, a, b] of a SigmoidLesionHead -> [1 - max(p, q), p, q], p = sigmoid(a - z0)."""
    odds = logits.float()[:, 1:] - logits.float()[:, :1]
    lesion = torch.sigmoid(odds)
    return torch.cat([1.0 - lesion.max(dim=1, keepdim=True).values, lesion], dim=1)


def map_activation(cfg: dict):
    """What turns a seg model's logits into the probability maps every stage reads: the softmax, or for
    `seg_head: sigmoid` the two sigmoids (`sigmoid_maps`)."""
    return sigmoid_maps if cfg.get("seg_head") == "sigmoid" else "softmax"


def pad_background(odds: torch.Tensor) -> torch.Tensor:
    """(N, 2, ...) lesion log-odds -> (N, 3, ...) logits with a constant 0 for the background."""
    return torch.cat([torch.zeros_like(odds[:, :1]), odds], dim=1)
