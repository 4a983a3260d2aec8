"""The sigmoid seg head (config `seg_head: sigmoid`, the DPN-U-Net's): two independent lesion channels.

The net predicts two log-odds per pixel, a (ischemia) and b (hemorrhage), each its own sigmoid, as the
DPN-U-Net paper's head does (classes may overlap, each channel is trained on its own 0/1 map: the losses'
multilabel mode, training/losses.py). The wrapper emits logits [0, a, b]:

    softmax([0, a, b]) = [1, e^a, e^b] / (1 + e^a + e^b) = [(1-p)(1-q), p(1-q), q(1-p)] / (1 - pq)

with p = sigmoid(a), q = sigmoid(b): the two independent sigmoids' distribution given that a pixel is not both
classes at once (a phase-2 mask gives each pixel one colour). So the OOF files, ensembling, post-processing,
infer.py, export and Predictor read a sigmoid head's output as they read a softmax head's, and its argmax is
a lesion class exactly where that class's sigmoid is above 0.5 and above the other's.
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


def pad_background(odds: torch.Tensor) -> torch.Tensor:
    """(N, 2, ...) lesion log-odds -> (N, 3, ...) logits with a constant 0 for the background."""
    return torch.cat([torch.zeros_like(odds[:, :1]), odds], dim=1)
