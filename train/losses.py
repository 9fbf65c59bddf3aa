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


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """The paper's loss: binary cross-entropy (on logits) plus soft Dice loss."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return bce + dice_weight * soft_dice_loss(logits, target)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, boundary_weight: float = 1.0
) -> torch.Tensor:
    """BCE + Dice on the foreground channel; with a second (boundary) channel, BCE + Dice on it too."""
    loss = bce_dice_loss(logits[:, :1], target[:, :1])
    if logits.shape[1] > 1:
        loss = loss + boundary_weight * bce_dice_loss(logits[:, 1:], target[:, 1:])
    return loss
