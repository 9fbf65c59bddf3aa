"""LR-ASPP-Lite: a MobileNetV3-small-style ReLU encoder with the Lite R-ASPP segmentation head (Howard et al. 2019).

The "LR-ASPP / MobileNetV3-small decoder" candidate of the "real-time and right" issue, on the same patch-embedding
stem as :mod:`.shuffle_unet` (a 3x3 stride-2 RGB stem costs about a third of Fast-SCNN's INT8 inference), so that
the two differ in their decoder only:

* ``stem``: 4x4 stride-4 patch embedding (3 -> 16) and one depthwise separable conv, at 1/4;
* ``encoder``: ReLU inverted residuals (expansion 4; MobileNetV3's Hardswish and squeeze-excitation are left out:
  Hardswish is slow in INT8 and the head has its own global gate), two to 1/8 (24 channels), two to 1/16 (48)
  and two more at 1/16 widening to 96 (MobileNetV3's last stage without its stride, as LR-ASPP uses it);
* ``head`` (LR-ASPP): the 1/16 features through a 1x1 conv-BN-ReLU (64 channels), multiplied by a gate
  (global average pooling, 1x1 conv, sigmoid), upsampled x2 and classified by a 1x1 conv; plus a 1x1 classifier
  on the 1/8 features (LR-ASPP's low-level branch) and, for resolution, one more on the 1/4 features; the
  logits are summed at 1/8, upsampled and summed at 1/4, then upsampled x4 (bilinear) to the input size.

The global pooling is a fixed-kernel ``avg_pool2d`` over the whole (static) map, so the ONNX graph is static
(AveragePool, no GlobalAveragePool or Shape).

Parameters: 161,659 (``out_channels=1``); each extra output channel adds 107. GFLOPs at 256x256: 0.109.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvBNAct, DSConv, InvertedResidual, upsample
from .registry import register_model
from .shuffle_unet import EXPANSION, PatchEmbed, residual_stage

LRASPP_WIDTHS: tuple[int, ...] = (16, 24, 48, 96)  # 1/4, 1/8, 1/16, 1/16 (widened)
ASPP_CHANNELS = 64


class LRASPPHead(nn.Module):
    """Lite R-ASPP: a gated 1x1 branch on the high-level features, with low-level logits added at 1/8 and 1/4."""

    def __init__(self, high: int, low8: int, low4: int, out_channels: int, inner: int = ASPP_CHANNELS) -> None:
        super().__init__()
        self.cbr = ConvBNAct(high, inner, 1)
        self.gate = nn.Sequential(nn.Conv2d(high, inner, 1, bias=False), nn.Sigmoid())
        self.high_classifier = nn.Conv2d(inner, out_channels, 1)
        self.low8_classifier = nn.Conv2d(low8, out_channels, 1)
        self.low4_classifier = nn.Conv2d(low4, out_channels, 1)

    def forward(self, s4: torch.Tensor, s8: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        kernel = (int(high.shape[2]), int(high.shape[3]))  # global pooling, static in ONNX
        y = self.cbr(high) * self.gate(F.avg_pool2d(high, kernel))
        y = self.high_classifier(upsample(y, 2)) + self.low8_classifier(s8)
        return upsample(y, 2) + self.low4_classifier(s4)


class LRASPPLite(nn.Module):
    """Patch-embedding stem, ReLU inverted-residual encoder to 1/16, LR-ASPP head at 1/4, bilinear x4."""

    def __init__(self, out_channels: int = 1, widths: tuple[int, ...] = LRASPP_WIDTHS) -> None:
        super().__init__()
        w4, w8, w16, wide = widths
        self.widths = tuple(widths)
        self.stem = nn.Sequential(PatchEmbed(3, w4), DSConv(w4, w4))
        self.down8 = residual_stage(w4, w8, 2)
        self.down16 = nn.Sequential(
            residual_stage(w8, w16, 2),
            InvertedResidual(w16, wide, 1, EXPANSION, act=nn.ReLU),
            InvertedResidual(wide, wide, 1, EXPANSION, act=nn.ReLU),
        )
        self.head = LRASPPHead(wide, w8, w4, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s4 = self.stem(x)
        s8 = self.down8(s4)
        return upsample(self.head(s4, s8, self.down16(s8)), 4)


@register_model
def lraspp_lite(out_channels: int = 1) -> nn.Module:
    """LR-ASPP-Lite: MobileNetV3-small-style ReLU encoder, Lite R-ASPP head at 1/4, patch stem (0.162 M)."""
    return LRASPPLite(out_channels=out_channels)
