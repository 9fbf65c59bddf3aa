"""Shared convolution blocks for the segmentation networks.

Every network in :mod:`edgeseg.train.models` is built from three blocks:

* :class:`ConvBNAct` -- convolution, batch norm, activation, laid out as torchvision's
  ``Conv2dNormActivation`` (``.0`` conv, ``.1`` norm, ``.2`` activation) so MobileNetV2
  state dicts map key for key;
* :class:`DSConv` -- a depthwise separable convolution (depthwise 3x3 then pointwise 1x1,
  each followed by batch norm and an activation), MobileNetV1's factorisation;
* :class:`InvertedResidual` -- MobileNetV2's inverted residual with a linear bottleneck,
  with torchvision's key layout (``conv.0.0.weight`` ...).

All networks expect images normalised with the ImageNet statistics below, the ones the
MobileNetV2 encoder was pre-trained with: RGB scaled to [0, 1], minus ``IMAGENET_MEAN``,
divided by ``IMAGENET_STD``.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + activation; ``act=None`` leaves the output linear."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class DSConv(nn.Sequential):
    """Depthwise separable convolution: depthwise 3x3 + BN + act, pointwise 1x1 + BN + act."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, act: type[nn.Module] = nn.ReLU
    ) -> None:
        super().__init__(
            ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels, act=act),
            ConvBNAct(in_channels, out_channels, 1, act=act),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expansion (factor ``t``), depthwise 3x3, linear 1x1 projection.

    The residual shortcut is used when the block keeps the resolution and the width. The
    submodule layout is torchvision's: ``conv`` is a Sequential of ``[expand,] depthwise,
    project conv, project BN``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        act: type[nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, act=act))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=act),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


def upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bilinear upsampling by an integer factor (``align_corners=False``; a static ONNX Resize)."""
    return nn.functional.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def encode_with_skips(encoder: nn.Sequential, x: torch.Tensor, skip_indices) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``encoder`` layer by layer, keeping the outputs of the layers in ``skip_indices`` (shallowest first)."""
    skips: list[torch.Tensor] = []
    for i, layer in enumerate(encoder):
        x = layer(x)
        if i in skip_indices:
            skips.append(x)
    return x, skips


def decode_with_skips(y: torch.Tensor, stages, skips) -> torch.Tensor:
    """A U-Net decoder: at each stage, upsample ``y`` x2, concatenate the matching skip (deepest first) and refine."""
    for stage, skip in zip(stages, skips, strict=True):
        y = stage(torch.cat([upsample(y, 2), skip], dim=1))
    return y
