"""Shuffle-UNet: a real-time U-Net that works at 1/4 to 1/32 and draws full-resolution logits by pixel shuffle.

Written for the "real-time and right" issue: as fast as Fast-SCNN in INT8 on a CPU, but with a decoder that keeps
touching nuclei apart. Measured on ONNX Runtime INT8 (QDQ), where the cost of a layer follows its output pixels far
more than its FLOPs (``benchmarks/frontier_candidates.py``): a 3x3 stride-2 convolution on the RGB input costs about
a third of Fast-SCNN's whole inference, and any depthwise convolution at 1/2 resolution about as much again. So:

* ``stem``: a **patch embedding**, a 4x4 stride-4 convolution (3 -> 16; exactly a space-to-depth followed by a 1x1
  convolution, and in INT8 about a quarter of the cost of a 3x3 stride-2 stem), then one depthwise separable conv
  at 1/4 so the skip carries some neighbourhood;
* ``encoder``: a depthwise separable conv to 1/8 (32 channels), then MobileNetV2 inverted residuals (ReLU,
  expansion 4), two to 1/16 (64) and two to 1/32 (96);
* ``decoder``: U-Net stages 1/32 -> 1/16 -> 1/8 -> 1/4, each bilinear x2, concatenation with the skip and one
  depthwise separable conv (64, 32, 16 channels), then one more depthwise separable conv at 1/4 (``refine``);
* ``head``: a 1x1 convolution to ``16 * out_channels`` channels and a **pixel shuffle** by 4 (ONNX
  ``DepthToSpace``): each 1/4-resolution cell writes the logits of its own 4x4 input pixels, so the output is
  learnt at full resolution (a sub-pixel convolution, as in ESPCN) instead of interpolated from a coarse map.
  Channel ``c`` of the output is made of head channels ``16c .. 16c + 15``.

``shuffle_unet_px`` adds a **pixel skip**: a second patch embedding of the input (4x4 stride 4, 3 -> 32) is
concatenated with the decoder's 1/4 features and fused by a 1x1 convolution (48 -> 32) in place of ``refine``, so
each cell's head sees its own 16 input pixels, not only features that went through the 1/32 bottleneck: boundaries
between touching nuclei are placed from the pixels themselves. Same speed in INT8 (the fuse replaces a depthwise
separable conv; ``torch.pixel_unshuffle`` instead of the learnt embedding exports as a 6-D transpose and costs
1.8x), DSB2018 validation Dice 0.889 against 0.872 for ``shuffle_unet`` on the same recipe (150 epochs, this CPU;
0.898 in 300 epochs; the shipped weights are 300 epochs with U-Net's contact weight 8, validation Dice 0.891 with
the shipped post-processing, ``benchmarks/results/hard_negatives.md``).
Reusing the stem's own patch embedding instead (no second one) reached 0.883 but failed the INT8 guard (drop
0.011 or more with every strategy).

For export, :meth:`ShuffleUNet.reparameterize` merges the two patch embeddings of ``shuffle_unet_px`` into one
convolution (the same function; one pass over the input).

Everything is ReLU (quantises to INT8 without loss of speed), upsampling is bilinear (a static ONNX Resize), and
the graph is static for inputs whose sides are multiples of 32.

Parameters: 194,096 (``out_channels=1``): 0.194 M; each extra output channel adds 272 (16 filters of 16 weights
and a bias). GFLOPs at 256x256: 0.093. ``shuffle_unet_px``: 197,088 (+528 a channel), 0.117 GFLOPs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .blocks import ConvBNAct, DSConv, InvertedResidual, decode_with_skips
from .registry import register_model

SHUFFLE_UNET_WIDTHS: tuple[int, ...] = (16, 32, 64, 96)  # strides 4, 8, 16, 32
EXPANSION = 4
BLOCKS = (2, 2)  # inverted residuals at 1/16 and at 1/32
PATCH = 4  # the stem's patch size: the head's pixel-shuffle factor
MAX_EQUALISATION = 64.0  # reparameterize: the largest factor a stem channel is scaled by (a dead channel stays)
PIXEL_SKIP = 32  # shuffle_unet_px: width of the input's own patch embedding and of the 1x1 that fuses it


class PatchEmbed(nn.Sequential):
    """A ``patch x patch`` convolution with stride ``patch`` (no overlap), batch norm and ReLU: the input cut into
    patches, each mapped linearly to ``out_channels`` features (space-to-depth + 1x1 conv, in one op)."""

    def __init__(self, in_channels: int, out_channels: int, patch: int = PATCH) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, patch, stride=patch, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def residual_stage(in_channels: int, out_channels: int, blocks: int, expansion: int = EXPANSION) -> nn.Sequential:
    """``blocks`` ReLU inverted residuals, the first with stride 2 (the stage's downsampling)."""
    return nn.Sequential(*(
        InvertedResidual(in_channels if i == 0 else out_channels, out_channels, 2 if i == 0 else 1, expansion,
                         act=nn.ReLU)
        for i in range(blocks)
    ))


class ShuffleUNet(nn.Module):
    """Patch-embedding stem, DS-conv / inverted-residual encoder, U-Net decoder to 1/4, pixel-shuffle head."""

    def __init__(self, out_channels: int = 1, widths: tuple[int, ...] = SHUFFLE_UNET_WIDTHS,
                 blocks: tuple[int, int] = BLOCKS, pixel_skip: int = 0) -> None:
        super().__init__()
        w4, w8, w16, w32 = widths
        self.widths = tuple(widths)
        self.stem = nn.Sequential(PatchEmbed(3, w4), DSConv(w4, w4))
        self.down8 = DSConv(w4, w8, stride=2)
        self.down16 = residual_stage(w8, w16, blocks[0])
        self.down32 = residual_stage(w16, w32, blocks[1])
        self.up16 = DSConv(w32 + w16, w16)
        self.up8 = DSConv(w16 + w8, w8)
        self.up4 = DSConv(w8 + w4, w4)
        if pixel_skip:  # the decoder's 1/4 features beside a patch embedding of the cell's input pixels, 1x1 fused
            self.pixels = PatchEmbed(3, pixel_skip)
            self.refine = ConvBNAct(w4 + pixel_skip, pixel_skip, 1)
        else:
            self.pixels = None
            self.refine = DSConv(w4, w4)
        self.head = nn.Conv2d(pixel_skip or w4, out_channels * PATCH * PATCH, 1)
        self.embed: nn.Module | None = None  # the inference form's single patch embedding (reparameterize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:  # inference form: both patch embeddings from one convolution, then split
            cells, pixels = self.embed(x).split([self.widths[0], self.head.in_channels], dim=1)
            s4 = self.stem(cells)
        else:
            s4 = self.stem(x)
            pixels = None if self.pixels is None else self.pixels(x)
        s8 = self.down8(s4)
        s16 = self.down16(s8)
        y = decode_with_skips(self.down32(s16), (self.up16, self.up8, self.up4), (s16, s8, s4))
        if pixels is not None:
            y = torch.cat([y, pixels], dim=1)
        return F.pixel_shuffle(self.head(self.refine(y)), PATCH)

    @torch.no_grad()
    def reparameterize(self, example: torch.Tensor | None = None) -> None:
        """Rewrite into the inference form (eval mode): the stem's patch embedding and the pixel skip's read the
        same 4x4 cells of the input, so they become one convolution (3 -> 16 + 32, BatchNorm folded) whose ReLU'd
        output is split. The same function with one pass over the input instead of two. A no-op without the pixel
        skip or when done already.

        Once merged, the two embeddings share one INT8 scale, and their activations span very different ranges
        (DSB2018 training images: at most 3.3 for the stem's channels, 21.7 for the pixel skip's), which cost the
        INT8 file 0.015 validation Dice. Given ``example`` inputs (calibration images), each stem channel is
        multiplied by ``a = pixel-skip maximum / its own maximum`` on them, and the stem's depthwise convolution
        reading it by ``1 / a``: ReLU commutes with a positive scale and a depthwise filter reads one channel, so
        the function is unchanged (cross-layer equalisation, Nagel et al. 2019), while both groups now fill the
        shared INT8 range."""
        if self.pixels is None or self.embed is not None:
            return
        stem, pixels = self.stem[0], self.pixels
        parts = [fuse_conv_bn_eval(block[0].eval(), block[1].eval()) for block in (stem, pixels)]
        depthwise = self.stem[1][0][0]
        if example is not None:
            cells, skip = (F.relu(p(example.to(p.weight))).amax(dim=(0, 2, 3)) for p in parts)
            scale = (skip.max() / cells.clamp(min=skip.max() / MAX_EQUALISATION)).clamp(min=1.0)
            parts[0].weight.mul_(scale[:, None, None, None])
            parts[0].bias.mul_(scale)
            depthwise.weight.div_(scale[:, None, None, None])
        conv = nn.Conv2d(3, sum(p.out_channels for p in parts), PATCH, stride=PATCH).to(parts[0].weight)
        conv.weight.copy_(torch.cat([p.weight for p in parts]))
        conv.bias.copy_(torch.cat([p.bias for p in parts]))
        self.embed = nn.Sequential(conv, nn.ReLU(inplace=True))
        self.stem, self.pixels = self.stem[1], None


@register_model
def shuffle_unet(out_channels: int = 1) -> nn.Module:
    """Shuffle-UNet: patch stem, U-Net to 1/4, pixel-shuffle head to full resolution (0.194 M, real-time)."""
    return ShuffleUNet(out_channels=out_channels)


@register_model
def shuffle_unet_px(out_channels: int = 1) -> nn.Module:
    """Shuffle-UNet whose head also sees its 4x4 cell's input pixels (a second patch embedding; real-time)."""
    return ShuffleUNet(out_channels=out_channels, pixel_skip=PIXEL_SKIP)
