"""The one preprocessing function: any microscope frame -> the model's input tensor.

Every path (training, evaluation, INT8 calibration, the live runtime) goes through
:func:`to_rgb8` -> :func:`resize_to` -> :func:`normalise`. Frames are brought to 8-bit RGB first,
so the training cache, the augmentations and a Raspberry Pi all work on the same uint8 pixels,
and training's tensors are bit-identical to the runtime's (tests/test_preprocess.py holds them equal).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from .errors import DataError

#: ImageNet statistics (RGB, [0, 1] scale): what the MobileNetV2 encoder expects; all networks share them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_NORMALISATION = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "scale": 1 / 255}

CHANNELS = ("auto", "gray", "red", "green", "blue")
_CHANNEL_INDEX = {"red": 0, "green": 1, "blue": 2}


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """Scale any integer or float frame to uint8.

    8-bit frames pass unchanged. 16-bit and float frames are scaled by their real range (min..max of
    the frame), because microscope cameras rarely fill 16 bits: a 12-bit sensor in a 16-bit container
    would otherwise look black.
    """
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype == bool:
        return frame.astype(np.uint8) * 255
    x = frame.astype(np.float32)  # the one float32 copy; the rest works in place on it
    lo, hi = float(np.min(x)), float(np.max(x))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise DataError("frame holds NaN or infinite values", "check the camera or file")
    if hi <= lo:
        return np.zeros(frame.shape, np.uint8)
    x -= lo  # float32 arithmetic throughout (NumPy 2 keeps a Python float scalar weak): the same values as
    x *= 255.0 / (hi - lo)  # np.rint((x - lo) * (255 / (hi - lo))) computed out of place
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


def to_rgb8(frame: np.ndarray, channel: str = "auto", order: str = "rgb") -> np.ndarray:
    """Any frame (HxW, HxWx1, HxWx3, HxWx4; 8/16-bit or float; RGB or BGR) -> uint8 HxWx3 RGB.

    ``channel`` picks one channel for fluorescence ('red', 'green', 'blue', or 'gray' for luminance)
    and replicates it to three; 'auto' keeps colour. ``order`` says whether a colour frame is 'rgb'
    (readers, picamera2) or 'bgr' (OpenCV capture).
    """
    if channel not in CHANNELS:
        raise DataError(f"unknown channel {channel!r}", f"use one of {', '.join(CHANNELS)}")
    if order not in ("rgb", "bgr"):
        raise DataError(f"unknown colour order {order!r}", "use 'rgb' or 'bgr'")
    f = np.asarray(frame)
    if f.ndim == 3 and f.shape[2] == 1:
        f = f[:, :, 0]
    if f.ndim == 2:
        return _gray_to_rgb(to_uint8(f))
    if f.ndim != 3 or f.shape[2] not in (3, 4):
        raise DataError(f"unsupported frame shape {f.shape}", "give HxW, HxWx1, HxWx3 or HxWx4 pixels")
    rgb = f[:, :, :3]
    if order == "bgr":
        rgb = rgb[:, :, ::-1]
    rgb = to_uint8(np.ascontiguousarray(rgb))
    if channel == "auto":
        return rgb
    if channel == "gray":
        g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:
        g = rgb[:, :, _CHANNEL_INDEX[channel]]
    return _gray_to_rgb(g)


def _gray_to_rgb(g: np.ndarray) -> np.ndarray:
    """uint8 HxW -> HxWx3 with the value in every channel (OpenCV: one pass, no index arrays)."""
    return cv2.cvtColor(np.ascontiguousarray(g), cv2.COLOR_GRAY2RGB)


def resize_to(image: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """Resize an image to ``size`` = (height, width): area averaging when shrinking, bilinear when enlarging."""
    h, w = (size, size) if isinstance(size, int) else size
    if image.shape[:2] == (h, w):
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_labels(labels: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """Resize an instance label image with nearest neighbour (labels are never blended)."""
    h, w = (size, size) if isinstance(size, int) else size
    if labels.shape[:2] == (h, w):
        return labels
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)


def _normalise_reference(rgb8: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """:func:`normalise` spelt out in float32 arithmetic (any dtype; what the lookup tables are built with)."""
    x = rgb8.astype(np.float32) * np.float32(1 / 255)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


@functools.lru_cache(maxsize=16)
def _normalise_luts(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """3 x 256 float32: the normalised value of every uint8 level per channel, by the same float32 operations as
    :func:`_normalise_reference` (so a lookup gives the very same bits)."""
    levels = np.arange(256, dtype=np.uint8)[:, None, None].repeat(3, axis=2)  # 256 x 1 x 3, an "image"
    luts = np.ascontiguousarray(_normalise_reference(levels, mean, std)[:, :, 0])  # 3 x 256
    luts.setflags(write=False)
    return luts


def normalise(rgb8: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 HxWx3 (or NxHxWx3) RGB -> float32 3xHxW (or Nx3xHxW), scaled to [0, 1] then standardised.

    One pass: each uint8 plane is looked up in a 256-entry float32 table per channel and written straight into the
    channels-first output (no float64, no intermediate HxWx3 float copies); bit-identical to the arithmetic in
    :func:`_normalise_reference`, which other dtypes and channel counts still take."""
    x = np.asarray(rgb8)
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or x.shape[-1] != 3:
        return _normalise_reference(x, mean, std)
    luts = _normalise_luts(tuple(float(m) for m in np.ravel(mean)), tuple(float(s) for s in np.ravel(std)))
    batch = x if x.ndim == 4 else x[None]
    out = np.empty((batch.shape[0], 3, batch.shape[1], batch.shape[2]), np.float32)
    for i in range(batch.shape[0]):
        for c, plane in enumerate(cv2.split(np.ascontiguousarray(batch[i]))):
            dst = out[i, c]
            got = cv2.LUT(plane, luts[c], dst=dst)
            if not np.shares_memory(got, dst):  # an OpenCV build that did not write in place
                dst[...] = got
    return out if x.ndim == 4 else out[0]


def preprocess(
    frame: np.ndarray,
    size: tuple[int, int] | int = 256,
    *,
    channel: str = "auto",
    order: str = "rgb",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> np.ndarray:
    """Any frame -> the model's input tensor, float32 1x3xHxW."""
    return normalise(resize_to(to_rgb8(frame, channel, order), size), mean, std)[None]
