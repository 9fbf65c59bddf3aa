"""A timm-style registry of segmentation networks: ``@register_model`` on a factory function.

A factory is registered under its function name; the first line of its docstring becomes
the one-line description in :data:`MODEL_INFO` (what ``edgeseg models`` prints). Names are
listed in registration order, which is the paper's order (Half-UNet, MobileNetV2-UNet,
Fast-SCNN).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from torch import nn

from edgeseg.errors import ModelError

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}
MODEL_INFO: dict[str, str] = {}
"""Model name -> one-line description (first docstring line of its factory)."""


class UnknownModelError(ModelError, ValueError):
    """Raised by :func:`build_model` for a name that is not registered."""


def register_model(fn: ModelFactory) -> ModelFactory:
    """Register ``fn`` (a factory returning an ``nn.Module``) under ``fn.__name__``."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    doc = (fn.__doc__ or "").strip()
    MODEL_INFO[name] = doc.splitlines()[0].strip() if doc else name
    return fn


def list_models() -> list[str]:
    """Registered model names, in registration order."""
    return list(_MODELS)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the network ``name`` with ``kwargs`` (e.g. ``out_channels=2``).

    Unknown names raise :class:`UnknownModelError`, whose message lists the choices.
    """
    try:
        factory = _MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}: choose one of {', '.join(_MODELS)}") from None
    return factory(**kwargs)


def reparameterize(model: nn.Module, example=None) -> nn.Module:
    """A copy of ``model`` in its inference form, in eval mode: every submodule with a ``reparameterize()`` method
    rewrites itself into an equivalent, cheaper graph (as timm's ``reparameterize_model``). The model given, its
    state dict and its checkpoints keep the training form; export calls this before tracing.

    ``example``: inputs of the model (calibration images, a tensor), given to the model's own ``reparameterize``
    (not to its submodules, whose inputs differ) where it equalises activation ranges for INT8."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if hasattr(module, "reparameterize"):
            module.reparameterize(**({"example": example} if module is model and example is not None else {}))
    return model


def architecture_rows(size: int = 256) -> list[dict]:
    """One row per registered network for ``edgeseg models``: parameters, GFLOPs at ``size``, description."""
    from .complexity import count_params, gflops

    rows = []
    for name in list_models():
        m = build_model(name)
        rows.append({"name": name, "kind": "architecture", "arch": name, "params": count_params(m),
                     "gflops": round(gflops(m, size), 4), "description": MODEL_INFO.get(name, "")})
    return rows


def resolve_encoder_weights(model: str, spec: str | None, warn: Callable[[str], None] = print) -> str | None:
    """``--encoder-weights``: ``imagenet``, a state-dict path, ``none``, or ``auto`` (ImageNet weights when they are
    available offline, else random with a warning). Only ``mobilenetv2_unet`` has a pretrained encoder."""
    from .mobilenetv2_unet import EncoderWeightsError

    if model != "mobilenetv2_unet" or spec in ("none", None):
        return None
    if spec != "auto":
        if spec != "imagenet" and not Path(spec).exists():
            raise ModelError(f"encoder weights file {spec} does not exist", "pass an existing state-dict file")
        return spec
    try:
        build_model(model, encoder_weights="imagenet")
        return "imagenet"
    except EncoderWeightsError:
        warn("warning: no offline ImageNet weights found; the encoder starts from random weights "
             "(pass --encoder-weights PATH to use a state-dict file)")
        return None


def check_model_name(name: str) -> str:
    """``name`` if it is a registered network, else a one-line error listing them."""
    if name not in _MODELS:
        raise ModelError(f"unknown model {name!r}", f"choose one of {', '.join(_MODELS)}")
    return name
