"""Drawing nuclei: one outline per nucleus (touching ones too), mask tint, the count in the corner."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import two_touching_discs

from edgeseg.draw import PALETTE, draw, outline


def test_outline_gives_each_touching_nucleus_its_own_closed_border():
    labels = two_touching_discs()
    edge = outline(labels)
    assert not edge[labels == 0].any()
    for k in (1, 2):
        inside = labels == k
        border = edge & inside
        # the border of each nucleus separates its interior from everything else: eroding it once leaves the rest
        interior = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert np.array_equal(border | interior, inside) or (interior & border).sum() < 0.05 * inside.sum()
        n_inner = cv2.connectedComponents((inside & ~border).astype(np.uint8))[0] - 1
        assert n_inner == 1
    shared = (labels[:, 1:] == 2) & (labels[:, :-1] == 1)
    assert shared.any() and edge[:, 1:][shared].all()  # the line where they touch is drawn


def test_draw_colours_nuclei_writes_the_count_and_leaves_the_input_alone():
    img = np.full((60, 80, 3), 40, np.uint8)
    before = img.copy()
    labels = two_touching_discs()
    out = draw(img, labels, 2, 12.5, style="contours")
    assert np.array_equal(img, before)
    edge = outline(labels)
    low = np.zeros_like(edge)
    low[36:] = True  # below the text box
    assert (out[edge & low & (labels == 1)] == PALETTE[2]).all()  # label 1 -> palette entry 2
    assert (out[edge & low & (labels == 2)] == PALETTE[3]).all()
    assert not np.array_equal(PALETTE[2], PALETTE[3])
    assert (out[40:, :] != 40).any()
    blank = draw(img, np.zeros((60, 80), np.int32), 0, None)
    assert (blank[:20, :50] != 40).any()  # the text box is there even with no nuclei
    assert (blank[25:, 60:] == 40).all()
    masked = draw(img, labels, 2, None, style="mask")
    centre = masked[30, 24]
    assert not np.array_equal(centre, [40, 40, 40]) and (centre < 130).all()  # tinted, translucent
    with pytest.raises(ValueError):
        draw(img, labels, 2, None, style="glow")
