"""Fast-SCNN (Poudel et al. 2019), narrowed to the paper's size (about 0.154 M parameters).

The four modules of the original, with its layer recipe (expansion t=6, 3/3/3 bottleneck
blocks, strides 2/2/1) and every channel width scaled by a width multiplier:

* ``learning_to_downsample``: 3x3 conv (stride 2) then two depthwise separable convs
  (stride 2 each): stride 8, keeping shallow edge detail (the high-resolution branch);
* ``global_feature_extractor``: 3 + 3 + 3 MobileNetV2 inverted residual bottleneck blocks
  (t=6; strides 2, 2, 1) down to stride 32, then ``pyramid_pooling``;
* ``pyramid_pooling``: average pooling to ``bins`` = (1, 2, 4, 8) grids, a 1x1 conv to a
  quarter of the width each, bilinear upsampling back, concatenation with the input and a
  1x1 conv. The original bins (1, 2, 3, 6) need adaptive pooling that ONNX cannot export
  statically from the 8x8 stride-32 map of a 256x256 input; we use fixed-kernel
  ``avg_pool2d`` with ``kernel = size // bin`` computed from the (static) input shape, so
  the graph is static at any input size. At 256x256 the kernels are 8, 4, 2, 1; at 512x512
  16, 8, 4, 2. Where a bin does not divide the size (e.g. bin 4 on the 14x14 map of a
  448x448 input: kernel 3) the pooled grid is ``size // kernel`` cells, resized back to
  the exact map size;
* ``feature_fusion``: the low-resolution branch is upsampled x4, goes through a depthwise
  3x3 conv (dilation 4) + BN + ReLU and a 1x1 conv + BN; the high-resolution branch through
  a 1x1 conv + BN; the two are added and passed through ReLU;
* ``classifier``: two depthwise separable convs, dropout, a 1x1 conv to ``out_channels``,
  then bilinear upsampling x8 to the input size.

Widths: the original is learning-to-downsample 32/48/64, global feature extractor
64/96/128, pyramid pooling / fusion / classifier 128 (1,135,473 parameters here). With
width multiplier 0.35 (:data:`FAST_SCNN_WIDTH`, MobileNetV2's smallest standard multiplier),
each width rounded to a multiple of 4, they become 12/16/24, 24/32/44 and 44 (pyramid
pooling branches 11), giving 152,881 parameters (``out_channels=1``): 0.153 M against the
paper's 0.154 M (-0.7 %). Each extra output channel adds 45. (Multiplier 0.375, i.e.
12/18/24, 24/36/48, 48, would give 0.177 M, +15 %.)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvBNAct, DSConv, InvertedResidual, upsample
from .registry import register_model

FAST_SCNN_WIDTH = 0.35
PYRAMID_BINS: tuple[int, ...] = (1, 2, 4, 8)
# the original Fast-SCNN widths, scaled by the width multiplier
LTD_CHANNELS = (32, 48, 64)
GFE_CHANNELS = (64, 96, 128)
FUSION_CHANNELS = 128
EXPANSION = 6
BLOCKS = (3, 3, 3)
GFE_STRIDES = (2, 2, 1)


def _scaled(c: int, width: float) -> int:
    """Scale a channel width by the width multiplier, rounded to a multiple of 4 (pyramid pooling
    splits the global features in quarters)."""
    return max(4, int(round(c * width / 4)) * 4)


class PyramidPooling(nn.Module):
    """Pyramid pooling with fixed-kernel average pooling (static in ONNX), bins (1, 2, 4, 8)."""

    def __init__(self, in_channels: int, out_channels: int, bins: tuple[int, ...] = PYRAMID_BINS) -> None:
        super().__init__()
        self.bins = tuple(bins)
        inner = in_channels // 4
        self.stages = nn.ModuleList(ConvBNAct(in_channels, inner, 1) for _ in self.bins)
        self.project = ConvBNAct(in_channels + inner * len(self.bins), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])
        pooled = [x]
        for bin_, stage in zip(self.bins, self.stages, strict=True):
            kernel = (max(1, h // bin_), max(1, w // bin_))
            y = stage(F.avg_pool2d(x, kernel, stride=kernel))
            if (h // kernel[0]) * kernel[0] == h and (w // kernel[1]) * kernel[1] == w:
                # an integer scale keeps the ONNX Resize free of Shape ops
                y = F.interpolate(y, scale_factor=kernel, mode="bilinear", align_corners=False)
            else:
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            pooled.append(y)
        return self.project(torch.cat(pooled, dim=1))


class FeatureFusion(nn.Module):
    """Fuse the stride-8 high-resolution branch with the x4-upsampled stride-32 global features."""

    def __init__(self, high_channels: int, low_channels: int, out_channels: int, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.low_dwconv = ConvBNAct(low_channels, low_channels, 3, groups=low_channels, dilation=scale)
        self.low_conv = ConvBNAct(low_channels, out_channels, 1, act=None)
        self.high_conv = ConvBNAct(high_channels, out_channels, 1, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.low_conv(self.low_dwconv(upsample(low, self.scale)))
        return self.relu(self.high_conv(high) + low)


class FastSCNN(nn.Module):
    """Fast-SCNN: learning to downsample, global feature extractor, feature fusion, classifier."""

    def __init__(self, out_channels: int = 1, width: float = FAST_SCNN_WIDTH, dropout: float = 0.1) -> None:
        super().__init__()
        ltd = [_scaled(c, width) for c in LTD_CHANNELS]
        gfe = [_scaled(c, width) for c in GFE_CHANNELS]
        fused = _scaled(FUSION_CHANNELS, width)
        self.channels = {"learning_to_downsample": ltd, "global_feature_extractor": gfe, "fusion": fused}

        self.learning_to_downsample = nn.Sequential(
            ConvBNAct(3, ltd[0], 3, stride=2),
            DSConv(ltd[0], ltd[1], stride=2),
            DSConv(ltd[1], ltd[2], stride=2),
        )
        blocks: list[nn.Module] = []
        c_in = ltd[2]
        for c, n, s in zip(gfe, BLOCKS, GFE_STRIDES, strict=True):
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c, s if i == 0 else 1, EXPANSION, act=nn.ReLU))
                c_in = c
        self.global_feature_extractor = nn.Sequential(*blocks)
        self.pyramid_pooling = PyramidPooling(gfe[-1], gfe[-1])
        self.feature_fusion = FeatureFusion(ltd[2], gfe[-1], fused)
        self.classifier = nn.Sequential(
            DSConv(fused, fused),
            DSConv(fused, fused),
            nn.Dropout(dropout),
            nn.Conv2d(fused, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        high = self.learning_to_downsample(x)
        low = self.pyramid_pooling(self.global_feature_extractor(high))
        return upsample(self.classifier(self.feature_fusion(high, low)), 8)


@register_model
def fast_scnn(out_channels: int = 1, width: float = FAST_SCNN_WIDTH) -> nn.Module:
    """Fast-SCNN: two-branch real-time network, width x0.35 (0.153 M), pyramid bins 1/2/4/8."""
    return FastSCNN(out_channels=out_channels, width=width)
