"""Losses: the paper's equation 1, L = L_BCE + L_Dice."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image and channel, averaged. ``logits`` and ``target`` are N x C x H x W."""
    p = torch.sigmoid(logits.float())
    t = target.float()
    inter = (p * t).sum(dim=(2, 3))
    denom = p.sum(dim=(2, 3)) + t.sum(dim=(2, 3))
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0,
                  pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's loss: binary cross-entropy (on logits) plus soft Dice loss. ``pixel_weight`` (N x 1 x H x W)
    weighs each pixel's cross-entropy (a weighted mean); the Dice term is unweighted."""
    if pixel_weight is None:
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    else:
        w = pixel_weight.float().expand_as(logits)
        bce = (F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none") * w).sum() / w.sum()
    return bce + dice_weight * soft_dice_loss(logits, target)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, boundary_weight: float = 1.0
) -> torch.Tensor:
    """BCE + Dice on the foreground channel; with a second (boundary) channel, BCE + Dice on it too. A target
    with one plane more than the logits carries a per-pixel cross-entropy weight there (``make_targets``'s
    ``contact_weight``)."""
    c = logits.shape[1]
    weight = target[:, c:c + 1] if target.shape[1] > c else None
    loss = bce_dice_loss(logits[:, :1], target[:, :1], pixel_weight=weight)
    if c > 1:
        loss = loss + boundary_weight * bce_dice_loss(logits[:, 1:], target[:, 1:c], pixel_weight=weight)
    return loss
