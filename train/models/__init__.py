"""The three segmentation networks of the paper and their registry.

``build_model(name, out_channels=1, **kw)`` returns a plain ``nn.Module`` mapping a
``(N, 3, H, W)`` float batch (H, W multiples of 32; RGB in [0, 1] normalised with
:data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`) to logits ``(N, out_channels, H, W)``:

========================  ==========================================================
``half_unet``             Half-UNet baseline, U-Net 4 down / 4 up, 16 initial channels
``mobilenetv2_unet``      ImageNet MobileNetV2 encoder + U-Net decoder
``fast_scnn``             Fast-SCNN, narrowed to the paper's size
========================  ==========================================================
"""

from __future__ import annotations

# isort: off
# importing a network module registers it; this order (the paper's) is list_models()'s order
from . import half_unet as _half_unet  # noqa: F401
from . import mobilenetv2_unet as _mobilenetv2_unet  # noqa: F401
from . import fast_scnn as _fast_scnn  # noqa: F401

# the real-time candidates of the "real-time and right" issue (benchmarks/frontier_candidates.py)
from . import shuffle_unet as _shuffle_unet  # noqa: F401
from . import lite_unet as _lite_unet  # noqa: F401
from . import lraspp_lite as _lraspp_lite  # noqa: F401
from . import mobilenetv2_unet_s as _mobilenetv2_unet_s  # noqa: F401

# isort: on
from .blocks import IMAGENET_MEAN, IMAGENET_STD
from .complexity import count_params, gflops
from .mobilenetv2_unet import EncoderWeightsError, load_encoder_weights
from .registry import (
    MODEL_INFO,
    UnknownModelError,
    architecture_rows,
    build_model,
    check_model_name,
    list_models,
    register_model,
    reparameterize,
    resolve_encoder_weights,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_INFO",
    "EncoderWeightsError",
    "UnknownModelError",
    "architecture_rows",
    "build_model",
    "check_model_name",
    "count_params",
    "gflops",
    "list_models",
    "load_encoder_weights",
    "register_model",
    "reparameterize",
    "resolve_encoder_weights",
]
