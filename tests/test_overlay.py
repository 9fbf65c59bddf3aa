"""The live overlay: one outline per nucleus (touching ones too), mask tint, count/FPS text, enlargement."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeseg.device.overlay import PALETTE, Overlay, RollingFPS, base_image, display_scale, draw, outline
from edgeseg.device.sources import Frame
from edgeseg.segmenter import Segmentation


def two_touching_discs(shape=(60, 80)):
    labels = np.zeros(shape, np.int32)
    cv2.circle(labels, (30, 30), 12, 1, -1)
    cv2.circle(labels, (52, 30), 12, 2, -1)  # overlaps disc 1: they touch along a line
    return labels


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


def test_small_frames_are_enlarged_and_labels_follow():
    assert display_scale((130, 130)) == 4 and display_scale((480, 640)) == 1 and display_scale((1080, 1920)) == 1
    frame16 = (np.arange(130 * 130, dtype=np.uint16).reshape(130, 130) * 3)
    base = base_image(frame16, "rgb", "auto", 4)
    assert base.shape == (520, 520, 3) and base.dtype == np.uint8
    labels = np.zeros((130, 130), np.int32)
    labels[40:60, 40:60] = 1
    seg = Segmentation(labels > 0, labels, 1, np.zeros((1, 256, 256), np.float32))
    out = Overlay().render(Frame(frame16, 0, 0.0), seg)
    assert out.shape == (520, 520, 3)
    assert np.array_equal(out[200, 160], PALETTE[2]) and np.array_equal(out[160, 200], PALETTE[2])
    assert np.array_equal(out[161, 200], base[161, 200])  # inside: the image


def test_display_stream_is_drawn_on_when_the_source_has_one():
    small = np.zeros((64, 86, 3), np.uint8)
    big = np.full((480, 640, 3), 90, np.uint8)
    labels = np.zeros((64, 86), np.int32)
    labels[10:30, 10:30] = 1
    seg = Segmentation(labels > 0, labels, 1, np.zeros((1, 64, 86), np.float32))
    out = Overlay().render(Frame(small, 0, 0.0, display=big), seg)
    assert out.shape == (480, 640, 3)
    assert (out[300:, 300:] == 90).all()


def test_rolling_fps_counts_frames_over_the_window():
    fps = RollingFPS(window_s=1.0)
    assert fps.tick(0.0) == 0.0
    for i in range(1, 31):
        fps.tick(i * 0.05)  # 20 frames a second
    assert fps.value == pytest.approx(20.0, rel=0.01)
    for i in range(1, 11):
        fps.tick(1.5 + i * 0.2)  # slows to 5 a second
    assert fps.value == pytest.approx(5.0, rel=0.01)
