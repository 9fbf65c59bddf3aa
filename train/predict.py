"""PyTorch predictors: a checkpoint + its card -> a predictor callable (see edgeseg.evaluate).

A Segmenter over a checkpoint is ``edgeseg.Segmenter.load(path_or_name)``: the ``torch`` backend
(:mod:`edgeseg.train.torch_backend`) uses these two functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeseg.card import ModelCard, as_card
from edgeseg.errors import ModelError

from .models import build_model


def load_checkpoint(path: str | Path, card: ModelCard | dict) -> torch.nn.Module:
    """Build the card's architecture and load a plain state dict into it (weights_only)."""
    card = as_card(card)
    model = build_model(card.arch, out_channels=card.out_channels)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"cannot load checkpoint {path} ({type(exc).__name__})", "re-train or re-download it"
        ) from exc
    if isinstance(state, dict) and "model" in state and "optimizer" in state:
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"checkpoint {path} does not fit architecture {card.arch}",
            "check the card's arch and out_channels",
        ) from exc
    return model.eval()


def torch_predictor(model: torch.nn.Module, tta: bool = False):
    """A predictor (float32 Nx3xSxS numpy -> NxCxSxS probabilities); ``tta`` averages over flips."""

    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x))
        p = torch.sigmoid(model(t))
        if tta:
            p = p + torch.sigmoid(model(t.flip(-1))).flip(-1) + torch.sigmoid(model(t.flip(-2))).flip(-2)
            p = p / 3
        return p.numpy()

    return predict
