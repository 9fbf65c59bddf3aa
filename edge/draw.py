"""Drawing nuclei: one outline per nucleus (touching nuclei keep their own), an optional translucent mask, and the
count in the corner, with OpenCV on a BGR uint8 image. :meth:`edgeseg.segmenter.Segmentation.plot` and the live
overlay (:mod:`edgeseg.device.overlay`) both draw with :func:`draw`."""

from __future__ import annotations

import cv2
import numpy as np

STYLES = ("contours", "mask", "both")
MASK_ALPHA = 0.35


def _palette(n: int = 64) -> np.ndarray:
    """``n`` well-separated bright BGR colours (golden-angle hues); index 0 is unused (background)."""
    hues = (np.arange(n) * 137.508) % 360 / 2  # OpenCV hue range 0..180
    hsv = np.stack([hues, np.full(n, 200), np.full(n, 255)], axis=1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]


PALETTE = _palette()


def outline(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Pixels on the inner border of each labelled object (bool): where a label differs from a 4-neighbour.

    Touching nuclei each get their own border. ``thickness`` > 1 widens it inwards.
    """
    edge = np.zeros(labels.shape, bool)
    d = labels[1:] != labels[:-1]
    edge[1:] |= d
    edge[:-1] |= d
    d = labels[:, 1:] != labels[:, :-1]
    edge[:, 1:] |= d
    edge[:, :-1] |= d
    edge[[0, -1], :] = True  # objects cut by the frame border are closed along it
    edge[:, [0, -1]] = True
    if thickness > 1:
        edge = cv2.dilate(edge.view(np.uint8), np.ones((3, 3), np.uint8), iterations=thickness - 1).view(bool)
    return edge & (labels > 0)


def draw(
    image_bgr: np.ndarray,
    labels: np.ndarray,
    count: int,
    fps: float | None = None,
    *,
    style: str = "contours",
    caption: str | None = None,
    alpha: float = MASK_ALPHA,
) -> np.ndarray:
    """Draw the nuclei in ``labels`` (any size: resized to the image with nearest neighbour) on a copy of
    ``image_bgr``, with the count, the FPS and an optional caption in the top-left corner."""
    if style not in STYLES:
        raise ValueError(f"unknown overlay style {style!r}; use one of {', '.join(STYLES)}")
    out = image_bgr.copy()
    h, w = out.shape[:2]
    if labels.shape[:2] != (h, w):
        labels = cv2.resize(labels.astype(np.int32, copy=False), (w, h), interpolation=cv2.INTER_NEAREST)
    if count > 0:
        n = len(PALETTE) - 1
        if style in ("mask", "both"):
            fg = labels > 0
            tint = PALETTE[1 + labels[fg] % n].astype(np.float32)
            out[fg] = (out[fg].astype(np.float32) * (1 - alpha) + tint * alpha + 0.5).astype(np.uint8)
        if style in ("contours", "both"):
            edge = outline(labels, thickness=max(1, min(h, w) // 400))
            out[edge] = PALETTE[1 + labels[edge] % n]
    lines = [f"nuclei: {count}"]
    if fps is not None:
        lines.append(f"{fps:5.1f} FPS")
    if caption:
        lines.append(caption)
    _text_block(out, lines)
    return out


def _text_block(img: np.ndarray, lines: list[str]) -> None:
    scale = max(0.45, min(img.shape[0], img.shape[1]) / 900)
    thick = max(1, round(scale * 1.6))
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0] for t in lines]
    pad = max(4, round(6 * scale))
    line_h = max(s[1] for s in sizes) + pad
    box_w = max(s[0] for s in sizes) + 2 * pad
    box_h = line_h * len(lines) + pad
    roi = img[: min(box_h, img.shape[0]), : min(box_w, img.shape[1])]
    roi[:] = (roi.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken behind the text
    for i, text in enumerate(lines):
        y = pad + line_h * (i + 1) - pad // 2 - 2
        cv2.putText(img, text, (pad, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
