"""Training targets generated from instance labels, after augmentation (so they stay consistent)."""

from __future__ import annotations

import cv2
import numpy as np


def _window(width: int) -> np.ndarray:
    """The square neighbourhood within ``width`` px (3x3 at the least) of the boundary and contact maps."""
    return np.ones((2 * width - 1, 2 * width - 1), np.uint8) if width > 1 else np.ones((3, 3), np.uint8)


def boundary_map(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of a nucleus within ``width`` px of another label or the background (bool HxW).

    Touching nuclei get a boundary on both sides of their contact, so foreground minus boundary
    leaves one seed per nucleus.
    """
    lab = labels.astype(np.float32)  # exact for labels < 2**24
    k = _window(width)
    hi = cv2.dilate(lab, k)
    lo = cv2.erode(lab, k)
    return (labels > 0) & (hi != lo)


def contact_map(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """Where two nuclei meet (bool HxW): nucleus pixels within ``width`` px of *another* nucleus, and background
    pixels within ``width`` px of two different nuclei (the thin gaps between them). A nucleus's rim against the
    background is not a contact: this is the part of :func:`boundary_map` that separates touching nuclei."""
    k = _window(width)
    lab = labels.astype(np.float32)  # exact for labels < 2**24
    hi = cv2.dilate(lab, k)  # the largest label around
    lo = cv2.erode(np.where(labels > 0, lab, np.float32(2**24)), k)  # the smallest nucleus label around
    inside = labels > 0
    return (inside & ((hi != lab) | (lo != lab))) | (~inside & (hi > 0) & (lo != hi))


def make_targets(labels: np.ndarray, out_channels: int = 1, boundary_width: int = 2,
                 contact_weight: float = 0.0) -> np.ndarray:
    """float32 C x H x W: channel 0 the foreground, channel 1 (if asked) the nucleus boundary; with
    ``contact_weight`` w > 0, one more plane: the per-pixel loss weight, 1 + w where nuclei touch
    (:func:`contact_map`), as U-Net's weight map stresses the gaps between touching cells."""
    fg = labels > 0
    chans = [fg]
    if out_channels > 1:
        chans.append(boundary_map(labels, boundary_width))
    if contact_weight > 0:
        chans.append(1.0 + contact_weight * contact_map(labels, boundary_width))
    return np.stack(chans).astype(np.float32)
