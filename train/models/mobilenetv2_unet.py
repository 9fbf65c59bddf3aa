"""MobileNetV2-UNet: an ImageNet-pretrained MobileNetV2 encoder with a U-Net decoder (6.629 M parameters).

Encoder: MobileNetV2 at width 1.0 (Sandler et al. 2018), written out here (torchvision is
not required) with exactly the parameter names of torchvision's ``mobilenet_v2().features``:
``model.encoder`` *is* that Sequential (``0.0.weight`` ... ``18.1.num_batches_tracked``,
312 state dict entries, 2,223,872 parameters), so a features state dict loads with
``model.encoder.load_state_dict(sd, strict=True)``. Inputs are RGB in [0, 1] normalised
with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`, the statistics it was pre-trained with.

Decoder: the standard U-Net upsampling path with channels (256, 128, 64, 32, 16). Stage 1
upsamples the stride-32 features (1280 channels, ``features.18``) x2 and concatenates the
stride-16 skip (96 ch, ``features.13``); stages 2-4 do the same with the stride-8 (32 ch,
``features.6``), stride-4 (24 ch, ``features.3``) and stride-2 (16 ch, ``features.1``)
skips; stage 5 upsamples to full resolution without a skip. Each stage is bilinear x2 +
concat + two 3x3 conv-BN-ReLU. A 1x1 classifier gives ``out_channels`` logits.

Parameters (``out_channels=1``): encoder 2,223,872 + decoder 4,404,928 + classifier 17 =
6,628,817 (6.629 M, the paper's Table 1). This is the layout of the common
``segmentation_models_pytorch`` ``Unet('mobilenet_v2')``, apart from its 3x3 head.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from edgeseg.errors import ModelError

from .blocks import IMAGENET_MEAN, IMAGENET_STD, ConvBNAct, InvertedResidual, encode_with_skips, upsample
from .registry import register_model

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EncoderWeightsError",
    "MobileNetV2UNet",
    "load_encoder_weights",
    "mobilenetv2_encoder",
]

SHARED_WEIGHTS_HINT = "../shared/weights/mobilenet_v2_imagenet_features.pth"

# torchvision's MobileNetV2 inverted residual setting: expansion t, channels c, repeats n, stride s
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# indices into features whose outputs are the skips at strides 2, 4, 8, 16, and the stride-32 output
SKIP_INDICES: tuple[int, ...] = (1, 3, 6, 13)
SKIP_CHANNELS: tuple[int, ...] = (16, 24, 32, 96)
ENCODER_CHANNELS = 1280
DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 16)


class EncoderWeightsError(ModelError, ValueError):
    """Encoder weights that cannot be used; the message names the file, the problem and the fix."""


def mobilenetv2_encoder() -> nn.Sequential:
    """MobileNetV2 (width 1.0) ``features``: stem, 17 inverted residuals, 1x1 conv to 1280 channels."""
    layers: list[nn.Module] = [ConvBNAct(3, 32, 3, stride=2, act=nn.ReLU6)]
    c_in = 32
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
            c_in = c
    layers.append(ConvBNAct(c_in, ENCODER_CHANNELS, 1, act=nn.ReLU6))
    return nn.Sequential(*layers)


class DecoderBlock(nn.Module):
    """U-Net decoder stage: bilinear x2 upsampling, concat the skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels + skip_channels, out_channels, 3)
        self.conv2 = ConvBNAct(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = upsample(x, 2)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class MobileNetV2UNet(nn.Module):
    """MobileNetV2 encoder (``encoder`` = torchvision's ``features``), U-Net decoder, 1x1 classifier."""

    def __init__(self, out_channels: int = 1) -> None:
        super().__init__()
        self.encoder = mobilenetv2_encoder()
        skips = (*reversed(SKIP_CHANNELS), 0)
        ins = (ENCODER_CHANNELS, *DECODER_CHANNELS[:-1])
        self.decoder = nn.ModuleList(
            DecoderBlock(c_in, c_skip, c_out)
            for c_in, c_skip, c_out in zip(ins, skips, DECODER_CHANNELS, strict=True)
        )
        self.classifier = nn.Conv2d(DECODER_CHANNELS[-1], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = encode_with_skips(self.encoder, x, SKIP_INDICES)
        for block in self.decoder:
            x = block(x, skips.pop() if skips else None)
        return self.classifier(x)


def _features_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a full torchvision MobileNetV2 state dict too: keep ``features.*`` without the prefix."""
    if sd and all(k.startswith(("features.", "classifier.")) for k in sd):
        return {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
    return sd


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load a MobileNetV2 ``features`` state dict file into ``encoder`` with strict key and shape checks.

    Raises :class:`EncoderWeightsError` (one line: file, problem, fix) when the file is
    missing, unreadable, or not a MobileNetV2 (width 1.0) features state dict.
    """
    path = Path(path)
    fix = f"pass the state dict of torchvision's mobilenet_v2().features (e.g. {SHARED_WEIGHTS_HINT})"
    if not path.is_file():
        raise EncoderWeightsError(f"encoder weights '{path}' not found: {fix}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors, truncated files, non-torch files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EncoderWeightsError(
            f"encoder weights '{path}' cannot be read as a plain state dict ({reason[:120]}): {fix}"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise EncoderWeightsError(f"encoder weights '{path}' is not a state dict of tensors: {fix}")
    sd = _features_state_dict(sd)
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise EncoderWeightsError(
            f"encoder weights '{path}': missing {len(missing)} keys, unexpected {len(unexpected)} keys: "
            f"it is not a MobileNetV2 features state dict; {fix}"
        )
    bad = [k for k, v in expected.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        k = bad[0]
        raise EncoderWeightsError(
            f"encoder weights '{path}': {len(bad)} tensors have the wrong shape (e.g. '{k}' is "
            f"{tuple(sd[k].shape)}, expected {tuple(expected[k].shape)}): it is not a width-1.0 "
            f"MobileNetV2; {fix}"
        )
    encoder.load_state_dict(sd, strict=True)


def _cached_torchvision_weights() -> Path:
    """Path of torchvision's cached ImageNet MobileNetV2 checkpoint; never downloads."""
    hint = f"no offline ImageNet weights: pass --encoder-weights PATH (e.g. {SHARED_WEIGHTS_HINT})"
    try:
        from torchvision.models import MobileNet_V2_Weights
    except ImportError:
        raise EncoderWeightsError(f"{hint}; torchvision is not installed") from None
    url = MobileNet_V2_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.is_file():
        raise EncoderWeightsError(f"{hint}; torchvision's cache has no {cached}")
    return cached


@register_model
def mobilenetv2_unet(out_channels: int = 1, encoder_weights: str | os.PathLike | None = None) -> nn.Module:
    """MobileNetV2-UNet: ImageNet MobileNetV2 encoder, U-Net decoder (256,128,64,32,16) (6.629 M).

    ``encoder_weights``: ``None`` (random init), ``'imagenet'`` (torchvision's locally
    cached weights only, if torchvision is installed; never downloads) or a path to a
    MobileNetV2 ``features`` state dict file.
    """
    model = MobileNetV2UNet(out_channels=out_channels)
    if encoder_weights is not None:
        path = _cached_torchvision_weights() if encoder_weights == "imagenet" else encoder_weights
        load_encoder_weights(model.encoder, path)
    return model
