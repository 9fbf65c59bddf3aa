"""Recording the overlay to a video file that is never left half-written (torch-free).

Frames go to a temporary file beside the target (``.NAME.XXXX.mp4``, made by :func:`edgeseg.fsutil.atomic_path`)
and the file is renamed onto its real name only when the recording is closed properly, so the target name only
ever holds a finished, playable file. The writer opens at the first frame (its size fixes the video's size;
later frames of another size are resized).

Codecs: ``.mp4`` -> MPEG-4 part 2 (``mp4v``, in every OpenCV build; plays in VLC/ffmpeg, not in every browser),
``.avi`` -> Motion-JPEG (robust, larger), ``.mkv`` -> ``mp4v``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import DataError
from edgeseg.fsutil import atomic_path

FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


PROBE_FRAMES = 20  # with fps=None, the rate is measured over this many frames before the file is opened
FALLBACK_FPS = 10.0


class Recorder:
    """``fps`` is the frame rate written in the file; None measures it from the first frames' times (a camera
    processed at whatever rate the CPU allows), so the recording plays at the speed it was seen."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC:
            raise DataError(f"cannot record to {self.path.name}", f"use one of: {', '.join(sorted(FOURCC))}")
        self.fourcc = FOURCC[suffix]
        self.fps = float(fps) if fps and fps > 0 else None
        self.frames = 0
        self.size: tuple[int, int] | None = None
        self._ctx = None
        self._tmp: Path | None = None
        self._writer = None
        self._pending: list[tuple[np.ndarray, float]] = []

    def _open(self, w: int, h: int) -> None:
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
        if not writer.isOpened():
            self._discard()
            raise DataError(
                f"OpenCV cannot write {self.fourcc} video to {self.path}",
                "record to an .avi file instead (Motion-JPEG), or check the folder is writable",
            )
        self._writer, self.size = writer, (w, h)

    def write(self, bgr: np.ndarray, t: float | None = None) -> None:
        """Add a frame; ``t`` (seconds, any clock) is when it was made, used only to measure the rate."""
        self.frames += 1
        if self._writer is None and self.fps is None:
            self._pending.append((bgr.copy(), time.perf_counter() if t is None else t))
            if len(self._pending) >= PROBE_FRAMES:
                self._flush_pending()
            return
        self._write(bgr)

    def _flush_pending(self) -> None:
        if self.fps is None:
            times = [t for _, t in self._pending]
            span = times[-1] - times[0] if len(times) > 1 else 0.0
            self.fps = round((len(times) - 1) / span, 3) if span > 0 else FALLBACK_FPS
        pending, self._pending = self._pending, []
        for img, _ in pending:
            self._write(img)

    def _write(self, bgr: np.ndarray) -> None:
        h, w = bgr.shape[:2]
        if self._writer is None:
            self._open(w + w % 2, h + h % 2)  # encoders want even sizes
        if (w, h) != self.size:
            bgr = cv2.resize(bgr, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(np.ascontiguousarray(bgr))

    def close(self) -> Path | None:
        """Finish the file and give it its real name; None if no frame was written."""
        if self._pending:
            self._flush_pending()
        if self._writer is None:
            return None
        self._writer.release()
        self._writer = None
        ctx, self._ctx = self._ctx, None
        ctx.__exit__(None, None, None)  # renames the temporary file onto the target
        return self.path

    def _discard(self) -> None:
        self._pending = []
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            err = RuntimeError("recording discarded")
            ctx.__exit__(RuntimeError, err, None)  # atomic_path removes the temporary file and swallows err

    def abort(self) -> None:
        """Drop the recording: the temporary file is removed and the target is left as it was."""
        self._discard()
