"""Deep supervision for U-Nets (config `deep_supervision`): a 1x1-conv head on intermediate decoder stages.

nnU-Net trains every decoder resolution to predict the mask, so gradients reach the deep layers of a net
trained from scratch directly instead of through the whole decoder. In training mode the wrapped model
returns (full-resolution logits, [logits of each supervised stage, finest first]); in eval mode the
full-resolution logits only, so validation, OOF files, inference and export see the plain model's output
(checkpoints keep the heads; a model rebuilt from its config has them too).
"""
from __future__ import annotations

import torch
from torch import nn


def decoder_stages(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of a U-Net, coarsest first, whose outputs feed the next block (the last one feeds
    the segmentation head and is not listed)."""
    decoder = getattr(model, "decoder", None)
    blocks = getattr(decoder, "blocks", None)       # smp Unet (UnetDecoder.blocks)
    if blocks is None:
        blocks = getattr(model, "up", None)          # strokekit tiny_unet
    if blocks is None or len(blocks) < 2:
        raise ValueError(f"deep_supervision needs a U-Net decoder with stages (smp Unet, tiny_unet); "
                         f"{type(model).__name__} has none")
    return list(blocks)[:-1]


class DeepSupervision(nn.Module):
    """`net` plus a 1x1-conv head on each of its `depth` finest intermediate decoder stages."""

    def __init__(self, net: nn.Module, in_chans: int, num_outputs: int, depth: int = 3, probe_size: int = 64):
        super().__init__()
        self.net, self.depth = net, int(depth)
        was_training = net.training
        with torch.no_grad():
            _, features = self._run(net.eval(), torch.zeros(1, in_chans, probe_size, probe_size))
        net.train(was_training)
        self.heads = nn.ModuleList([nn.Conv2d(f.shape[1], num_outputs, 1) for f in features])

    def _run(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The net's output and its supervised stages' outputs, finest first (hooks live for this call only,
        so copies of the model, such as its EMA, never share them)."""
        stages = decoder_stages(net)[::-1][:self.depth]
        features: list = [None] * len(stages)
        handles = [stage.register_forward_hook(lambda m, i, o, k=k: features.__setitem__(k, o))
                   for k, stage in enumerate(stages)]
        try:
            out = net(x)
        finally:
            for handle in handles:
                handle.remove()
        return out, features

    def forward(self, x: torch.Tensor):
        if not self.training:
            return self.net(x)
        out, features = self._run(self.net, x)
        return out, [head(f) for head, f in zip(self.heads, features)]


def stage_weights(n_aux: int) -> list[float]:
    """Loss weights of the full-resolution output and n_aux stages, finest first: 1/2^i, summing to 1."""
    raw = [0.5 ** i for i in range(n_aux + 1)]
    return [w / sum(raw) for w in raw]
