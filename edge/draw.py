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


def draw_nuclei(bgr: np.ndarray, labels: np.ndarray, count: int, style: str = "contours",
                alpha: float = MASK_ALPHA) -> np.ndarray:
    """Draw the nuclei of ``labels`` (the image's size) in place on ``bgr``: a translucent tint per nucleus
    (``mask``), its own outline (``contours``) or both. Returns ``bgr``."""
    if style not in STYLES:
        raise ValueError(f"unknown overlay style {style!r}; use one of {', '.join(STYLES)}")
    if count <= 0:
        return bgr
    n = len(PALETTE) - 1
    h, w = bgr.shape[:2]
    if style in ("mask", "both"):
        fg = labels > 0
        tint = PALETTE[1 + labels[fg] % n].astype(np.float32)
        bgr[fg] = (bgr[fg].astype(np.float32) * (1 - alpha) + tint * alpha + 0.5).astype(np.uint8)
    if style in ("contours", "both"):
        edge = outline(labels, thickness=max(1, min(h, w) // 400))
        bgr[edge] = PALETTE[1 + labels[edge] % n]
    return bgr


def corner_lines(count: int, fps: float | None = None, caption: str | None = None) -> list[str]:
    """The lines of the top-left corner: the count, the FPS and a caption (each where given)."""
    return [f"nuclei: {count}", *([f"{fps:5.1f} FPS"] if fps is not None else []), *([caption] if caption else [])]


def draw_track_ids(bgr: np.ndarray, labels: np.ndarray, track_ids: dict, scale: int = 1) -> np.ndarray:
    """Write each nucleus's track id at its centroid, in place; ``labels`` are at 1/``scale`` of the image's size.
    Centroids come from one pass over the label image."""
    n = int(labels.max(initial=0))
    if n == 0 or not track_ids:
        return bgr
    flat = labels.ravel()
    ys, xs = np.divmod(np.arange(flat.size), labels.shape[1])
    area = np.maximum(np.bincount(flat, minlength=n + 1), 1)
    cy = np.bincount(flat, weights=ys, minlength=n + 1) / area
    cx = np.bincount(flat, weights=xs, minlength=n + 1) / area
    size = max(0.35, min(bgr.shape[0], bgr.shape[1]) / 1400)
    for label, track in track_ids.items():
        if 0 < label <= n and track is not None:
            at = (int((cx[label] + 0.5) * scale) - 4, int((cy[label] + 0.5) * scale) + 4)
            cv2.putText(bgr, str(track), at, cv2.FONT_HERSHEY_SIMPLEX, size, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(bgr, str(track), at, cv2.FONT_HERSHEY_SIMPLEX, size, (255, 255, 255), 1, cv2.LINE_AA)
    return bgr


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
    draw_nuclei(out, labels, count, style, alpha)
    text_block(out, corner_lines(count, fps, caption))
    return out


def text_block(img: np.ndarray, lines: list[str]) -> None:
    """White text lines on a darkened box in the top-left corner, in place."""
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
