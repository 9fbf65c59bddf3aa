"""MobileNetV2-UNet-S: ``mobilenetv2_unet`` scaled to width 0.35 with a depthwise separable decoder to 1/2.

The "width-scaled MobileNetV2-UNet" candidate of the "real-time and right" issue (random initialisation: there
are no ImageNet weights at this width):

* ``encoder``: MobileNetV2 (torchvision's layer recipe) at width multiplier 0.35, channels rounded as torchvision
  rounds them (``_make_divisible(c * 0.35, 8)``): stem 16, then 8, 8, 16, 24, 32, 56, 112; the final 1x1 conv to
  1280 channels is left out (it would hold 70 % of the parameters for a segmentation decoder that does not need
  it). Skips at strides 2, 4, 8 and 16 are taken at the same layers as in ``mobilenetv2_unet``.
* ``decoder``: U-Net stages 1/32 -> 1/16 -> 1/8 -> 1/4 -> 1/2, each bilinear x2, concatenation with the skip and
  one depthwise separable conv (48, 24, 16, 8 channels);
* ``head``: 1x1 conv to ``out_channels`` logits at 1/2, bilinear x2 to the input size.

Parameters: 262,465 (``out_channels=1``); each extra output channel adds 9. GFLOPs at 256x256: 0.162.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBNAct, DSConv, InvertedResidual, decode_with_skips, encode_with_skips, upsample
from .mobilenetv2_unet import INVERTED_RESIDUAL_SETTING, SKIP_INDICES
from .registry import register_model

WIDTH = 0.35
DECODER_CHANNELS: tuple[int, ...] = (48, 24, 16, 8)  # at 1/16, 1/8, 1/4, 1/2


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: the nearest multiple of ``divisor``, never below 90 % of ``value``."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def scaled_encoder(width: float = WIDTH) -> tuple[nn.Sequential, list[int]]:
    """MobileNetV2 ``features`` at ``width`` without the final 1x1 conv, and the width after each layer."""
    c_in = make_divisible(32 * width)
    layers: list[nn.Module] = [ConvBNAct(3, c_in, 3, stride=2, act=nn.ReLU6)]
    widths = [c_in]
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        c_out = make_divisible(c * width)
        for i in range(n):
            layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
            c_in = c_out
            widths.append(c_out)
    return nn.Sequential(*layers), widths


class MobileNetV2UNetS(nn.Module):
    """Width-0.35 MobileNetV2 encoder, depthwise separable U-Net decoder to 1/2, 1x1 head, bilinear x2."""

    def __init__(self, out_channels: int = 1, width: float = WIDTH,
                 decoder: tuple[int, ...] = DECODER_CHANNELS) -> None:
        super().__init__()
        self.encoder, widths = scaled_encoder(width)
        skips = [widths[i] for i in reversed(SKIP_INDICES)]  # 1/16, 1/8, 1/4, 1/2
        ins = (widths[-1], *decoder[:-1])
        self.decoder = nn.ModuleList(
            DSConv(c_in + c_skip, c_out) for c_in, c_skip, c_out in zip(ins, skips, decoder, strict=True)
        )
        self.head = nn.Conv2d(decoder[-1], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = encode_with_skips(self.encoder, x, SKIP_INDICES)
        return upsample(self.head(decode_with_skips(x, self.decoder, reversed(skips))), 2)


@register_model
def mobilenetv2_unet_s(out_channels: int = 1) -> nn.Module:
    """MobileNetV2-UNet-S: width-0.35 MobileNetV2 encoder, DS-conv U-Net decoder, head at 1/2 (0.262 M)."""
    return MobileNetV2UNetS(out_channels=out_channels)
