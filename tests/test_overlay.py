"""The live overlay: enlargement of small frames, the display stream, the rolling FPS (drawing: test_draw.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.device.overlay import Overlay, RollingFPS, base_image, display_scale
from edgeseg.device.sources import Frame
from edgeseg.draw import PALETTE
from edgeseg.segmenter import Segmentation


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
    # drawn at the frame's size, then enlarged: the outline is one frame pixel wide, 4 display pixels
    assert np.array_equal(out[163, 200], PALETTE[2]) and np.array_equal(out[200, 239], PALETTE[2])
    assert np.array_equal(out[164, 200], base[164, 200])  # inside: the image
    assert np.array_equal(out[159, 200], base[159, 200])  # outside too


def test_touching_nuclei_keep_their_own_outlines_when_drawn_small_and_enlarged():
    frame = np.full((100, 120), 40, np.uint8)
    labels = np.zeros((100, 120), np.int32)
    labels[30:60, 20:50] = 1
    labels[30:60, 50:80] = 2  # touching along column 49 | 50
    rgb = np.repeat(frame[..., None], 3, 2)
    seg = Segmentation(labels > 0, labels, 2, np.zeros((1, 256, 256), np.float32), rgb=rgb)
    out = Overlay(min_side=400).render(Frame(frame, 0, 0.0), seg)
    assert out.shape == (400, 480, 3)  # x4
    row = out[45 * 4 + 1]
    assert np.array_equal(row[49 * 4 + 1], PALETTE[2]) and np.array_equal(row[50 * 4 + 1], PALETTE[3])
    assert np.array_equal(row[35 * 4], [40, 40, 40])  # the inside of nucleus 1 is the frame
    # the same picture as enlarging first and drawing after, for the mask: only the outlines' width differs
    mask = Overlay("mask", min_side=400).render(Frame(frame, 0, 0.0), seg)
    assert np.array_equal(mask[200, 140], mask[201, 141]) and not np.array_equal(mask[200, 140], [40, 40, 40])


def test_the_recording_is_enlarged_less_than_the_window_from_the_same_drawing():
    """A 130x130 frame: 520x520 for the window and the stream, 260x260 for the recording; the same outlines, one
    frame pixel becoming 4 and 2 output pixels."""
    frame = np.full((130, 130), 40, np.uint8)
    labels = np.zeros((130, 130), np.int32)
    labels[80:100, 80:110] = 1
    rgb = np.repeat(frame[..., None], 3, 2)
    seg = Segmentation(labels > 0, labels, 1, np.zeros((1, 256, 256), np.float32), rgb=rgb)
    overlay = Overlay()
    assert overlay.record_min_side == 256 and overlay.min_side == 480
    images = overlay.render_sides(Frame(frame, 0, 0.0), seg, [overlay.record_min_side, overlay.min_side])
    rec, view = images[256], images[480]
    assert rec.shape == (260, 260, 3) and view.shape == (520, 520, 3)
    # away from the text box (top-left), the recording is the window's picture at half the size
    assert np.array_equal(view[200:, 200:][::2, ::2], rec[100:, 100:])
    assert np.array_equal(rec[80 * 2, 90 * 2], PALETTE[2]) and np.array_equal(rec[90 * 2, 90 * 2], [40, 40, 40])
    # both carry the corner text (darkened box)
    assert (rec[2:20, 2:40] != 40).any() and (view[2:20, 2:40] != 40).any()
    # the same side twice: one image; a recording side above the window's is capped to it
    assert len({id(v) for v in overlay.render_sides(Frame(frame, 0, 0.0), seg, [256, 256]).values()}) == 1
    assert Overlay(min_side=200, record_min_side=400).record_min_side == 200


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
