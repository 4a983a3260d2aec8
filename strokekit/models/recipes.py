"""Models of published systems that timm and smp do not have, registered so configs name them like timm models.

- `simple_cnn` (classifier): the multi-task paper's small type classifier: conv-ReLU-max-pool blocks, a dense
  layer, dropout (`drop_rate`) and two outputs. No batch norm, as in the paper.
- `hypercolumn_unet` (seg): the DPN-U-Net: any smp encoder (`encoder: dpn92 | dpn68 | ...`), the paper's slim
  decoder (16 channels at every stage, 3x3 bottleneck convs fusing the skips) and a hypercolumn head that sees
  every decoder stage upsampled to the input size. `pretrained:
  true` loads the encoder's ImageNet weights from the local cache (or the hub when downloads are allowed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from strokekit.models.registry import SequentialClassifier, register_model, smp_encoder


@register_model("simple_cnn")
def simple_cnn(cfg: dict, num_outputs: int) -> nn.Module:
    """Four conv(3x3)-ReLU-maxpool blocks (32-256 channels) -> 4x4 pooling -> dense 128 -> dropout -> logits."""
    widths = [cfg["in_chans"], 32, 64, 128, 256]
    layers = []
    for c_in, c_out in zip(widths, widths[1:]):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    # the adaptive pool keeps the dense layer's size fixed whatever img_size is
    return SequentialClassifier(layers, [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(widths[-1] * 16, 128),
                                         nn.ReLU(inplace=True), nn.Dropout(cfg["drop_rate"]),
                                         nn.Linear(128, num_outputs)], widths[-1])


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class HypercolumnUNet(nn.Module):
    """Encoder features at strides 32..2 -> slim decoder stages (x2 upsampling; a 3x3 conv-BN-ReLU bottleneck
    fusing the upsampled map with the encoder's skip to 16 channels; a 3x3 conv-BN-ReLU 16 -> 16) -> every
    stage's output upsampled to the input size and concatenated (the hypercolumn, 5 x 16 channels) -> spatial
    dropout -> 1x1 conv to the outputs (the paper: a depthwise conv to 2 sigmoid channels: with `seg_head:
    sigmoid` build_model asks for 2 and wraps them, models/sigmoid_head.py; docs/recipes.md)."""

    SLIM_DECODER = (16, 16, 16, 16, 16)  # the paper's (Sec. 4.1); smp's Unet decoder uses (256, 128, 64, 32, 16)

    def __init__(self, encoder: nn.Module, classes: int, drop_rate: float = 0.0,
                 decoder_channels: tuple[int, ...] = SLIM_DECODER):
        super().__init__()
        self.encoder = encoder
        enc = list(encoder.out_channels)  # (in_chans, stride 2, 4, 8, 16, 32)
        skips = enc[1:-1][::-1] + [0]     # the last block upsamples to full size with no skip
        c_in = [enc[-1]] + list(decoder_channels[:-1])
        self.blocks = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(c + s, d), _conv_bn_relu(d, d))
            for c, s, d in zip(c_in, skips, decoder_channels))
        hyper = sum(decoder_channels)
        self.head = nn.Sequential(nn.Dropout2d(drop_rate), nn.Conv2d(hyper, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = self.encoder(x)
        skips = features[1:-1][::-1] + [None]
        y, stages = features[-1], []
        for block, skip in zip(self.blocks, skips):
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            y = block(y if skip is None else torch.cat([y, skip], dim=1))
            stages.append(y if y.shape[-2:] == size else
                          F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return self.head(torch.cat(stages, dim=1))


@register_model("hypercolumn_unet", kind="seg")
def hypercolumn_unet(cfg: dict, num_outputs: int) -> nn.Module:
    encoder = smp_encoder(cfg, "hypercolumn_unet")
    model = HypercolumnUNet(encoder, num_outputs, cfg["drop_rate"])
    model.pretrained_loaded = encoder.pretrained_loaded
    return model
