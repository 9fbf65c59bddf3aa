"""The live overlay: one outline per nucleus, an optional translucent mask, the count and the rolling FPS.

Drawn with OpenCV on a BGR uint8 image (what ``cv2.imshow`` and ``cv2.VideoWriter`` take). The nuclei are
drawn at the frame's native size, on the 8-bit RGB frame the Segmenter kept (one outline per nucleus, its inner
border, so touching nuclei keep their own); frames smaller than ``min_side`` pixels (a 130x130 time-lapse) are
then enlarged by an integer factor with nearest neighbour, so each outline becomes a band of whole frame pixels,
and the text is written on the enlarged image, where it is legible. Drawing first costs the frame's pixels, not
the enlarged ones (16x fewer for a 130x130 frame). The recording is enlarged less than the window and the browser
stream (to RECORD_MIN_SIDE rather than MIN_SIDE: 260x260 for the clip, whose encoding costs a quarter of
520x520's). Torch-free.
"""

from __future__ import annotations

import collections
import math
import time

import cv2
import numpy as np

from edgeseg.draw import STYLES, corner_lines, draw, draw_nuclei, draw_track_ids, text_block
from edgeseg.preprocess import to_rgb8

MIN_SIDE = 480  # smaller frames are enlarged to at least this (integer factor) in the window and the stream
RECORD_MIN_SIDE = 256  # and to at least this in the recording (the text stays legible; encoding costs ~ pixels)


class RollingFPS:
    """Frames per second over the last ``window_s`` seconds (at least two frames), from frame end times."""

    def __init__(self, window_s: float = 2.0, max_len: int = 512):
        self.window_s = window_s
        self.times: collections.deque[float] = collections.deque(maxlen=max_len)

    def tick(self, t: float | None = None) -> float:
        t = time.perf_counter() if t is None else t
        self.times.append(t)
        while len(self.times) > 2 and t - self.times[0] > self.window_s:
            self.times.popleft()
        return self.value

    @property
    def value(self) -> float:
        if len(self.times) < 2:
            return 0.0
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0


def display_scale(shape: tuple[int, ...], min_side: int = MIN_SIDE) -> int:
    """Integer enlargement that brings the shorter side of a frame to at least ``min_side``."""
    short = min(shape[0], shape[1])
    return max(1, math.ceil(min_side / short)) if short < min_side else 1


def base_image(frame: np.ndarray, order: str = "rgb", channel: str = "auto", scale: int = 1,
               rgb: np.ndarray | None = None) -> np.ndarray:
    """Any frame -> the BGR uint8 image the overlay is drawn on, enlarged ``scale`` times; ``rgb``, the frame
    already converted to 8-bit RGB (the Segmentation keeps it), saves converting it again."""
    rgb = to_rgb8(frame, channel, order) if rgb is None else rgb
    return enlarged(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), scale)


def enlarged(image: np.ndarray, scale: int) -> np.ndarray:
    """``image`` enlarged ``scale`` times by nearest neighbour (each pixel a scale x scale block); itself at 1."""
    if scale <= 1:
        return image
    return cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


class Overlay:
    """Per-run overlay state: style, enlargement for small frames, rolling FPS, caption.

    ``min_side`` is the enlargement for what people watch (the window, the browser stream); ``record_min_side``
    that of the recording, smaller by default: the nuclei are drawn once at the frame's size and each output gets
    its own integer enlargement, and encoding a 130x130 clip at 2x instead of 4x costs a quarter."""

    def __init__(self, style: str = "contours", channel: str = "auto", caption: str | None = None,
                 min_side: int = MIN_SIDE, fps_window_s: float = 2.0, record_min_side: int | None = RECORD_MIN_SIDE):
        if style not in STYLES:
            raise ValueError(f"unknown overlay style {style!r}; use one of {', '.join(STYLES)}")
        self.style, self.channel, self.caption, self.min_side = style, channel, caption, min_side
        self.record_min_side = min_side if record_min_side is None else min(record_min_side, min_side)
        self.fps = RollingFPS(fps_window_s)

    def render(self, frame, seg, min_side: int | None = None) -> np.ndarray:
        """A :class:`~edgeseg.device.sources.Frame` and its segmentation -> the BGR overlay image, enlarged to at
        least ``min_side`` (default: the overlay's ``min_side``)."""
        side = self.min_side if min_side is None else min_side
        return self.render_sides(frame, seg, (side,))[side]

    def render_sides(self, frame, seg, sides) -> dict[int, np.ndarray]:
        """The overlay for each minimum side in ``sides`` (one image per distinct enlargement; the nuclei are drawn
        once, at the frame's size)."""
        if frame.display is not None:  # a camera's full-size stream to draw on: drawn for each side
            return {side: self._on_display(frame.display, seg, side) for side in set(sides)}
        # the Segmenter converted the frame with the run's channel already: draw on that copy, at its size
        base = base_image(frame.image, frame.order, self.channel, rgb=getattr(seg, "rgb", None))
        if seg.labels.shape[:2] != base.shape[:2]:  # labels of another size: draw as the core does
            out = {}
            for side in set(sides):
                big = base_image(frame.image, frame.order, self.channel, display_scale(base.shape, side),
                                 rgb=getattr(seg, "rgb", None))
                out[side] = draw(big, seg.labels, seg.count, self.fps.value, style=self.style, caption=self.caption)
            return out
        drawn = draw_nuclei(base, seg.labels, seg.count, self.style)
        out, by_scale = {}, {}
        for side in sides:
            scale = display_scale(drawn.shape, side)
            if scale not in by_scale:
                img = enlarged(drawn, scale)
                if img is drawn and len(set(sides)) > 1:  # the text goes on it: another scale must not get it too
                    img = drawn.copy()
                if getattr(seg, "track_ids", None):  # a tracked run: each nucleus's track id at its centroid
                    draw_track_ids(img, seg.labels, seg.track_ids, scale)
                text_block(img, corner_lines(seg.count, self.fps.value, self.caption))
                by_scale[scale] = img
            out[side] = by_scale[scale]
        return out

    def _on_display(self, base: np.ndarray, seg, side: int) -> np.ndarray:
        if base.ndim == 2:
            base = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
        base = enlarged(base, display_scale(base.shape, side))
        return draw(base, seg.labels, seg.count, self.fps.value, style=self.style, caption=self.caption)
