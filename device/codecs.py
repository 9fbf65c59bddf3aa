"""Which video codec a recording uses: H.264 (``avc1``, plays in every browser) where this OpenCV build can encode
it, else MPEG-4 part 2 (``mp4v``, in every build; plays in VLC and ffmpeg, not in every browser).

The pip wheels of OpenCV ship no H.264 encoder (licensing); a build against a system FFmpeg with libx264, or a
Raspberry Pi's hardware encoder (``h264_v4l2m2m``), has one. :func:`h264_available` finds out once per process by
opening a tiny ``VideoWriter`` in a temporary folder, with OpenCV's and FFmpeg's own messages silenced.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

H264 = "avc1"
FALLBACK = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
H264_CONTAINERS = (".mp4", ".m4v", ".mov", ".mkv")
NO_H264_NOTE = ("this OpenCV build has no H.264 encoder: recording MPEG-4 (mp4v), which VLC and ffmpeg play but "
                "browsers may not; to share it: ffmpeg -i overlay.mp4 -c:v libx264 -pix_fmt yuv420p web.mp4")


@contextlib.contextmanager
def quiet_opencv():
    """OpenCV's and FFmpeg's own warnings off the terminal while the block runs (the runtime reports in one line).
    ``OPENCV_FFMPEG_LOGLEVEL`` is read at OpenCV's first FFmpeg use; a value the user set wins."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:
        yield
        return
    old = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(old)


@functools.cache
def h264_available() -> bool:
    """Whether this OpenCV build can write H.264 (``avc1``) into an .mp4: a 64x64 frame is written and read back."""
    with tempfile.TemporaryDirectory(prefix="edgeseg-codec-") as tmp, quiet_opencv():
        path = str(Path(tmp) / "probe.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*H264), 10.0, (64, 64))
        try:
            if not writer.isOpened():
                return False
            writer.write(np.zeros((64, 64, 3), np.uint8))
        finally:
            writer.release()
        return Path(path).is_file() and Path(path).stat().st_size > 0


def video_fourcc(suffix: str) -> str:
    """The FourCC to record a file with this suffix: ``avc1`` where H.264 is available for that container, else
    :data:`FALLBACK` (``mp4v``, or Motion-JPEG for .avi). KeyError for a suffix that cannot be recorded."""
    suffix = suffix.lower()
    fallback = FALLBACK[suffix]
    return H264 if suffix in H264_CONTAINERS and h264_available() else fallback


def codec_note(fourcc: str, suffix: str) -> str | None:
    """The one note to show when a recording is not browser-playable H.264 for lack of an encoder, else None."""
    if suffix.lower() in H264_CONTAINERS and fourcc != H264:
        return NO_H264_NOTE
    return None
