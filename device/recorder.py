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

Segments (``segment_s``, ``edgeseg run --segment-s``): a recording is cut into files of that many seconds of
video, each finished and renamed as soon as it is full, so a killed process or a pulled plug loses at most the open
segment. Part 1 has the given name, part N >= 2 ``-NNNNNN`` before the suffix (``overlay.mp4``,
``overlay-000002.mp4``...: :func:`edgeseg.fsutil.part_path`); a recording into a folder that already holds parts
of that name continues their numbering. ``max_bytes`` (``--max-record-mb``) bounds the finished segments: past
it the oldest are deleted (the newest is always kept), counting the parts found there at the start. A segment
is checked before it gets its name (it opens and its first frame decodes): one that does not (OpenCV only logs a
warning when a write fails, silenced here: a full disk shows at this check) is removed and
:class:`edgeseg.fsutil.WriteFailed` is raised (exit code 4).

Codecs: ``.mp4`` -> MPEG-4 part 2 (``mp4v``, in every OpenCV build; plays in VLC/ffmpeg, not in every browser),
``.avi`` -> Motion-JPEG (robust, larger), ``.mkv`` -> ``mp4v``.
"""

from __future__ import annotations

import collections
import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import DataError
from edgeseg.fsutil import RESERVE_MB, WriteFailed, atomic_path, part_number, part_path

from .codecs import FALLBACK, quiet_opencv, video_fourcc

PROBE_FRAMES = 20  # with fps=None, the rate is measured over this many frames before the file is opened
FALLBACK_FPS = 10.0
QUEUE_FRAMES = 2  # frames waiting for the encoder thread at most
PART_DIGITS = 6  # overlay-000002.mp4: a minute a segment numbers two years


class Recorder:
    """``fps`` is the frame rate written in the file; None measures it from the first frames' times (a camera
    processed at whatever rate the CPU allows), so the recording plays at the speed it was seen.

    ``threaded`` encodes in a worker thread; ``drop`` says what :meth:`write` does when that thread is behind:
    drop the oldest waiting frame (counted in ``dropped``) or wait. The recorder keeps a reference to each frame
    until it is encoded: do not modify a frame after writing it."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None, *, threaded: bool = True,
                 drop: bool = True, queue_frames: int = QUEUE_FRAMES, segment_s: float | None = None,
                 max_bytes: int | None = None):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FALLBACK:
            raise DataError(f"cannot record to {self.path.name}", f"use one of: {', '.join(sorted(FALLBACK))}")
        self.fourcc = video_fourcc(suffix)  # H.264 where this OpenCV has it (device/codecs.py)
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
        self.segment_s = float(segment_s) if segment_s else None
        self.max_bytes = int(max_bytes) if max_bytes else None
        self.segments: collections.deque[tuple[Path, int]] = collections.deque(self._earlier_parts())
        self.part = max((part_number(self.path, p.name) for p, _ in self.segments), default=0)
        self.segments_dropped = 0  # finished segments deleted to stay under max_bytes
        self._target: Path | None = None
        self._segment_frames = 0  # frames in the open segment

    def _earlier_parts(self) -> list[tuple[Path, int]]:
        """Finished parts of this name already in the folder (an earlier run), oldest first, with their sizes."""
        if not self.path.parent.is_dir():
            return []
        found = sorted((n, p) for p in self.path.parent.iterdir()
                       if (n := part_number(self.path, p.name)) is not None and p.is_file())
        return [(p, p.stat().st_size) for _, p in found]

    @property
    def last(self) -> Path | None:
        """The newest finished segment."""
        return self.segments[-1][0] if self.segments else None

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
            return self.last if self.part and self._target is not None else None
        self._finish_segment()
        return self.last

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
        self.part += 1
        self._target = part_path(self.path, self.part, PART_DIGITS)
        self._ctx = atomic_path(self._target)
        self._tmp = self._ctx.__enter__()
        self._segment_frames = 0
        with quiet_opencv():  # its own [ERROR] lines: the one-line error below says it
            writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
        if not writer.isOpened():
            self._discard()
            raise WriteFailed(  # in a run: the recording cannot go on, the run stops with exit 4
                f"OpenCV cannot write {self.fourcc} video of {w}x{h} frames to {self.path}",
                "record to an .avi file instead (Motion-JPEG), use --no-record, or check the folder is writable",
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
        with quiet_opencv():  # a failed write is only a warning line of OpenCV's: it is found when the segment ends
            self._writer.write(np.ascontiguousarray(bgr))
        self.encoded += 1
        self._segment_frames += 1
        if self.segment_s and self._segment_frames >= max(1, round(self.segment_s * self.fps)):
            self._finish_segment()  # the next frame opens the next segment

    def _finish_segment(self) -> None:
        """Finish the open segment, check it plays, give it its name, drop the oldest past ``max_bytes``."""
        with quiet_opencv():
            self._writer.release()
        self._writer = None
        if not _plays(self._tmp):
            target = self._target
            self._discard()
            full = shutil.disk_usage(target.parent).free < RESERVE_MB << 20
            raise WriteFailed(f"{'disk full: ' if full else ''}the recording {target} could not be finished "
                              f"(the file does not play)",
                              "free space on that disk or give --out another one (finished segments are kept)",
                              disk_full=full)
        ctx, self._ctx = self._ctx, None
        ctx.__exit__(None, None, None)  # renames the temporary file onto the target
        self.segments.append((self._target, self._target.stat().st_size))
        while self.max_bytes and len(self.segments) > 1 and sum(n for _, n in self.segments) > self.max_bytes:
            oldest, _ = self.segments.popleft()
            oldest.unlink(missing_ok=True)
            self.segments_dropped += 1

    def _discard(self) -> None:
        self._pending = []
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            err = RuntimeError("recording discarded")
            ctx.__exit__(RuntimeError, err, None)  # atomic_path removes the temporary file and swallows err


def _plays(path: Path) -> bool:
    """Whether a finished video file opens and its first frame decodes."""
    with quiet_opencv():
        cap = cv2.VideoCapture(str(path))
        try:
            return bool(cap.isOpened() and cap.read()[0])
        finally:
            cap.release()
