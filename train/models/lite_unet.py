"""Lite-UNet: a depthwise separable U-Net with a 3x3 stride-2 stem and its output head at 1/2 resolution.

The textbook way to give Fast-SCNN's decoder more resolution (the "output head at 1/2" candidate of the
"real-time and right" issue), kept as a measured reference for :mod:`.shuffle_unet`:

* ``stem``: 3x3 convolution, stride 2 (3 -> 8) at 1/2;
* ``encoder``: depthwise separable convs (stride 2) to 1/4 (16) and 1/8 (32), then two ReLU inverted residuals
  (expansion 4) to 1/16 (64) and two to 1/32 (96);
* ``decoder``: U-Net stages 1/32 -> 1/16 -> 1/8 -> 1/4 (bilinear x2, concatenated skip, one depthwise separable
  conv: 64, 32, 16 channels); at 1/2 a cheap fusion with no depthwise conv: the 1/4 features through a 1x1 conv
  to 8 channels, upsampled, added to a 1x1 conv of the stem's features, ReLU;
* ``head``: 1x1 convolution to ``out_channels`` logits at 1/2, bilinear x2 to the input size.

Measured in INT8 on ONNX Runtime, its two layers at 1/2 resolution (the RGB stem and the fusion) cost more than
the whole rest of the network: see ``benchmarks/results/frontier_candidates.md``.

Parameters: 192,809 (``out_channels=1``); each extra output channel adds 9. GFLOPs at 256x256: 0.090.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBNAct, DSConv, decode_with_skips, upsample
from .registry import register_model
from .shuffle_unet import residual_stage

LITE_UNET_WIDTHS: tuple[int, ...] = (8, 16, 32, 64, 96)  # strides 2, 4, 8, 16, 32
HALF_WIDTH = 8  # channels of the 1/2-resolution fusion


class LiteUNet(nn.Module):
    """3x3 stride-2 stem, DS-conv / inverted-residual encoder, U-Net decoder, 1x1 fusion and head at 1/2."""

    def __init__(self, out_channels: int = 1, widths: tuple[int, ...] = LITE_UNET_WIDTHS,
                 half_width: int = HALF_WIDTH) -> None:
        super().__init__()
        w2, w4, w8, w16, w32 = widths
        self.widths = tuple(widths)
        self.stem = ConvBNAct(3, w2, 3, stride=2)
        self.down4 = DSConv(w2, w4, stride=2)
        self.down8 = DSConv(w4, w8, stride=2)
        self.down16 = residual_stage(w8, w16, 2)
        self.down32 = residual_stage(w16, w32, 2)
        self.up16 = DSConv(w32 + w16, w16)
        self.up8 = DSConv(w16 + w8, w8)
        self.up4 = DSConv(w8 + w4, w4)
        self.to_half = ConvBNAct(w4, half_width, 1, act=None)
        self.skip2 = ConvBNAct(w2, half_width, 1, act=None)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(half_width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s2 = self.stem(x)
        s4 = self.down4(s2)
        s8 = self.down8(s4)
        s16 = self.down16(s8)
        y = decode_with_skips(self.down32(s16), (self.up16, self.up8, self.up4), (s16, s8, s4))
        y = self.relu(upsample(self.to_half(y), 2) + self.skip2(s2))
        return upsample(self.head(y), 2)


@register_model
def lite_unet(out_channels: int = 1) -> nn.Module:
    """Lite-UNet: depthwise separable U-Net, 3x3 stride-2 stem, output head at 1/2 (0.193 M)."""
    return LiteUNet(out_channels=out_channels)
