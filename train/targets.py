"""Training targets generated from instance labels, after augmentation (so they stay consistent)."""

from __future__ import annotations

import cv2
import numpy as np


def boundary_map(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of a nucleus within ``width`` px of another label or the background (bool HxW).

    Touching nuclei get a boundary on both sides of their contact, so foreground minus boundary
    leaves one seed per nucleus.
    """
    lab = labels.astype(np.float32)  # exact for labels < 2**24
    k = np.ones((2 * width - 1, 2 * width - 1), np.uint8) if width > 1 else np.ones((3, 3), np.uint8)
    hi = cv2.dilate(lab, k)
    lo = cv2.erode(lab, k)
    return (labels > 0) & (hi != lo)


def make_targets(labels: np.ndarray, out_channels: int = 1, boundary_width: int = 2) -> np.ndarray:
    """float32 C x H x W: channel 0 the foreground, channel 1 (if asked) the nucleus boundary."""
    fg = labels > 0
    chans = [fg]
    if out_channels > 1:
        chans.append(boundary_map(labels, boundary_width))
    return np.stack(chans).astype(np.float32)
