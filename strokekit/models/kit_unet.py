"""`kit_unet` (seg): a U-Net on any smp encoder whose decoder blocks the config composes, for the published
decoders smp's Unet cannot express.

    decoder_upsample: nearest | pixel_shuffle | transpose
                                                x2 upsampling: nearest neighbour (smp's); a 1x1 conv to 4x
                                                 the channels + PixelShuffle, initialised ICNR so it starts as
                                                 a nearest upsampling without checkerboard (fastai's dynamic
                                                 U-Net; the deep-ensemble paper, §2.2.3); or a learned 2x2
                                                 transposed convolution, stride 2, + BN + ReLU (the original
                                                 U-Net's "up-convolution"; the VGG16 paper's deconvolution)
    decoder_block: plain | residual             after [upsampled, skip]: two 3x3 conv-BN-ReLU (smp's), or a
                                                 residual block F = G + Conv(F_prev) with a 1x1 projection of
                                                 the block's input (the VGG16 paper's improved U-Net, eq. 2)
    decoder_self_attention: false | true        SAGAN self-attention (1x1 query / key / value, a learned gate
                                                 starting at 0) on the decoder stage at stride 8, where fastai's
                                                 dynamic U-Net places it
    decoder_attention: scse                     scSE on each block's output, as smp's Unet
    drop_rate                                   spatial dropout before the 3x3 head

The decoder's widths are smp's Unet's (256, 128, 64, 32, 16); its five stages are `decoder.blocks`, so
`deep_supervision` and the tools that find a U-Net's stages see them. With every option at its default the
network is smp's Unet with nearest upsampling and the same widths (not its weights' names).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from strokekit.models.registry import register_model, smp_encoder

UPSAMPLE = ("nearest", "pixel_shuffle", "transpose")
BLOCKS = ("plain", "residual")
DECODER_CHANNELS = (256, 128, 64, 32, 16)
SELF_ATTENTION_STRIDE = 8


def _conv_bn(c_in: int, c_out: int, k: int = 3, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def icnr_(weight: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """ICNR initialisation (Aitken et al. 2017) of a conv feeding PixelShuffle(scale): each group of scale**2
    output channels starts equal, so the shuffled output is a nearest-neighbour upsampling at first."""
    out_c = weight.shape[0] // scale ** 2
    base = torch.empty(out_c, *weight.shape[1:])
    nn.init.kaiming_normal_(base)
    with torch.no_grad():
        weight.copy_(base.repeat_interleave(scale ** 2, dim=0))
    return weight


class PixelShuffleUp(nn.Module):
    """x2 upsampling by a 1x1 conv to 4x the channels, PixelShuffle, BN and ReLU (ICNR-initialised)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 4, 1, bias=False)
        icnr_(self.conv.weight)
        self.shuffle, self.bn = nn.PixelShuffle(2), nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.shuffle(self.conv(x))))


class TransposeUp(nn.Module):
    """x2 upsampling by a learned 2x2 transposed convolution with stride 2, BN and ReLU (the U-Net paper's
    up-convolution; each input cell paints its own 2x2 output patch, so no checkerboard overlap)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 2, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class NearestUp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class SelfAttention(nn.Module):
    """SAGAN self-attention: every position attends to every other; out = x + gamma * attention, gamma = 0 at
    first so the block starts as the identity."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 8)
        self.query, self.key = nn.Conv2d(channels, inner, 1), nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)                 # (n, hw, inner)
        k = self.key(x).flatten(2)                                   # (n, inner, hw)
        attn = torch.softmax(torch.bmm(q, k), dim=-1)                # (n, hw, hw)
        out = torch.bmm(self.value(x).flatten(2), attn.transpose(1, 2)).view(n, c, h, w)
        return x + self.gamma * out


class DecoderBlock(nn.Module):
    def __init__(self, c_in: int, c_skip: int, c_out: int, upsample: str, block: str, attention: str | None,
                 self_attention: bool):
        super().__init__()
        self.up = PixelShuffleUp(c_in) if upsample == "pixel_shuffle" else (
            TransposeUp(c_in) if upsample == "transpose" else NearestUp())
        c_cat = c_in + c_skip
        self.body = nn.Sequential(_conv_bn(c_cat, c_out), _conv_bn(c_out, c_out, relu=block == "plain"))
        self.shortcut = _conv_bn(c_cat, c_out, k=1, relu=False) if block == "residual" else None
        self.attention = _scse(c_out) if attention else nn.Identity()
        self.self_attention = SelfAttention(c_out) if self_attention else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        y = self.body(x)
        if self.shortcut is not None:
            y = F.relu(y + self.shortcut(x))
        return self.self_attention(self.attention(y))


def _scse(channels: int) -> nn.Module:
    from segmentation_models_pytorch.base.modules import Attention

    return Attention("scse", in_channels=channels)


class KitDecoder(nn.Module):
    def __init__(self, encoder_channels: list[int], upsample: str, block: str, attention: str | None,
                 self_attention: bool, channels: tuple[int, ...] = DECODER_CHANNELS):
        super().__init__()
        skips = list(encoder_channels[1:-1])[::-1] + [0]  # strides 16, 8, 4, 2; none at full size
        c_in = [encoder_channels[-1], *channels[:-1]]
        strides = [2 ** (len(channels) - 1 - i) for i in range(len(channels))]  # each stage's output stride
        self.blocks = nn.ModuleList(
            DecoderBlock(c, s, d, upsample, block, attention, self_attention and stride == SELF_ATTENTION_STRIDE)
            for c, s, d, stride in zip(c_in, skips, channels, strides))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        skips = features[1:-1][::-1] + [None]
        y = features[-1]
        for block, skip in zip(self.blocks, skips):
            y = block(y, skip)
        return y


class KitUNet(nn.Module):
    def __init__(self, encoder: nn.Module, classes: int, cfg: dict):
        super().__init__()
        self.encoder = encoder
        self.decoder = KitDecoder(list(encoder.out_channels), cfg["decoder_upsample"], cfg["decoder_block"],
                                  cfg["decoder_attention"], bool(cfg["decoder_self_attention"]))
        self.segmentation_head = nn.Sequential(nn.Dropout2d(cfg["drop_rate"]),
                                               nn.Conv2d(DECODER_CHANNELS[-1], classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(self.encoder(x)))


@register_model("kit_unet", kind="seg")
def kit_unet(cfg: dict, num_outputs: int) -> nn.Module:
    encoder = smp_encoder(cfg, "kit_unet")
    model = KitUNet(encoder, num_outputs, cfg)
    model.pretrained_loaded = encoder.pretrained_loaded
    return model
