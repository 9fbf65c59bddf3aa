"""Recording the overlay to a video file that is never left half-written, encoded in a worker thread (torch-free).

Frames go to a temporary file beside the target (``.NAME.XXXX.mp4``, made by :func:`edgeseg.fsutil.atomic_path`)
and the file is renamed onto its real name only when the recording is closed properly, so the target name only
ever holds a finished, playable file. The writer opens at the first frame (its size fixes the video's size;
later frames of another size are resized).

Encoding runs in a worker thread: :meth:`Recorder.write` hands the frame over and returns. The hand-over holds
:data:`QUEUE_FRAMES` frames; when the encoder is behind, ``drop=True`` (a camera: the loop must never wait for
the encoder) drops the oldest waiting frame and counts it in :attr:`Recorder.dropped`, while ``drop=False`` (a
file: every frame belongs in the video) makes ``write`` wait for room. ``threaded=False`` encodes in the
caller's thread, as before.

Codecs: ``.mp4`` -> MPEG-4 part 2 (``mp4v``, in every OpenCV build; plays in VLC/ffmpeg, not in every browser),
``.avi`` -> Motion-JPEG (robust, larger), ``.mkv`` -> ``mp4v``.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import DataError
from edgeseg.fsutil import atomic_path

FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


PROBE_FRAMES = 20  # with fps=None, the rate is measured over this many frames before the file is opened
FALLBACK_FPS = 10.0
QUEUE_FRAMES = 2  # frames waiting for the encoder thread at most


class Recorder:
    """``fps`` is the frame rate written in the file; None measures it from the first frames' times (a camera
    processed at whatever rate the CPU allows), so the recording plays at the speed it was seen.

    ``threaded`` encodes in a worker thread; ``drop`` says what :meth:`write` does when that thread is behind:
    drop the oldest waiting frame (counted in ``dropped``) or wait. The recorder keeps a reference to each frame
    until it is encoded: do not modify a frame after writing it."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None, *, threaded: bool = True,
                 drop: bool = True, queue_frames: int = QUEUE_FRAMES):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC:
            raise DataError(f"cannot record to {self.path.name}", f"use one of: {', '.join(sorted(FOURCC))}")
        self.fourcc = FOURCC[suffix]
        self.fps = float(fps) if fps and fps > 0 else None
        self.frames = 0  # frames handed to write()
        self.encoded = 0  # frames written to the file
        self.dropped = 0  # frames dropped because the encoder was behind (drop=True)
        self.size: tuple[int, int] | None = None
        self.threaded, self.drop = bool(threaded), bool(drop)
        self.queue_frames = max(1, int(queue_frames))
        self._ctx = None
        self._tmp: Path | None = None
        self._writer = None
        self._pending: list[tuple[np.ndarray, float]] = []
        self._queue: collections.deque[tuple[np.ndarray, float]] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False  # the worker is encoding a frame it took from the queue
        self._closing = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the caller's side

    def write(self, bgr: np.ndarray, t: float | None = None) -> None:
        """Add a frame; ``t`` (seconds, any clock) is when it was made, used only to measure the rate. Raises what
        the encoder thread raised (e.g. a codec OpenCV cannot write)."""
        t = time.perf_counter() if t is None else t
        self.frames += 1
        if not self.threaded:
            self._encode(bgr, t)
            return
        with self._cond:
            self._raise_error()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="edgeseg-recorder", daemon=True)
                self._thread.start()
            if self.drop:
                while len(self._queue) >= self.queue_frames:
                    self._queue.popleft()  # the oldest waiting frame gives way: the loop never waits
                    self.dropped += 1
            else:
                while len(self._queue) >= self.queue_frames and self._error is None:
                    self._cond.wait(0.1)
                self._raise_error()
            self._queue.append((bgr, t))
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """Frames handed over and not encoded yet."""
        with self._cond:
            return len(self._queue) + self._busy

    def close(self) -> Path | None:
        """Encode what is waiting, finish the file and give it its real name; None if no frame was written.
        Raises what the encoder thread raised (the caller then :meth:`abort`\\ s)."""
        self._join()
        self._raise_error()
        if self._pending:
            self._flush_pending()
        if self._writer is None:
            return None
        self._writer.release()
        self._writer = None
        ctx, self._ctx = self._ctx, None
        ctx.__exit__(None, None, None)  # renames the temporary file onto the target
        return self.path

    def abort(self) -> None:
        """Drop the recording: the temporary file is removed and the target is left as it was."""
        with self._cond:
            self._queue.clear()
        self._join()
        self._discard()

    # ------------------------------------------------------------------ the encoder's side

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                bgr, t = self._queue.popleft()
                self._busy = True
                self._cond.notify_all()  # room for a waiting write()
            try:
                self._encode(bgr, t)
            except BaseException as exc:  # reported to the caller at its next write() or close()
                with self._cond:
                    self._error = exc
                    self._queue.clear()
                    self._busy = False
                    self._cond.notify_all()
                return
            with self._cond:
                self._busy = False

    def _join(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _encode(self, bgr: np.ndarray, t: float) -> None:
        if self._writer is None and self.fps is None:
            self._pending.append((bgr if self.threaded else bgr.copy(), t))
            if len(self._pending) >= PROBE_FRAMES:
                self._flush_pending()
            return
        self._write(bgr)

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
        self.encoded += 1

    def _discard(self) -> None:
        self._pending = []
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            err = RuntimeError("recording discarded")
            ctx.__exit__(RuntimeError, err, None)  # atomic_path removes the temporary file and swallows err
