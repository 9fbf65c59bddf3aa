"""A timm-style registry of segmentation networks: ``@register_model`` on a factory function.

A factory is registered under its function name; the first line of its docstring becomes
the one-line description in :data:`MODEL_INFO` (what ``edgeseg models`` prints). Names are
listed in registration order, which is the paper's order (Half-UNet, MobileNetV2-UNet,
Fast-SCNN).
"""

from __future__ import annotations

from collections.abc import Callable

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
