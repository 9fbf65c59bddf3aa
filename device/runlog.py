"""The run log: JSON lines (one run per file), flushed per line, and run statistics in constant memory.

Every line is one JSON object with a ``type``:

- ``start``: what runs (model, backend, precision, executed precision, threads, source, options);
- ``frame``: one per processed frame: ``index``, ``timestamp`` (Unix seconds of capture), the per-stage
  milliseconds ``capture_ms``, ``preprocess_ms``, ``inference_ms``, ``postprocess_ms``, ``render_ms``,
  ``output_ms`` (recording, display and streaming), ``latency_ms`` (from the start of the capture to the end of
  the output: the stages, plus ``queue_ms``, the time the frame waited between the stages of the pipelined loop,
  0 in the sequential one), the nucleus ``count``, ``dropped`` (frames never segmented so far: those the
  source dropped plus ``dropped_pipeline``, those the pipelined loop's hand-overs dropped for a newer frame
  while a stage was busy); ``tiles`` for a tiled frame, ``processors_ms`` and the processors' own fields when
  processors are attached;
- ``event``: something that happened (camera lost / retried / back, an unreadable file, a signal, a sink or a
  processor that failed and was detached);
- ``summary``: the last line: ``frames``, ``dropped``, ``dropped_pipeline``, ``fps`` (frames / wall time),
  ``latency_ms`` (``mean``, ``p50``, ``p90``, ``p99``, ``max``), ``stages_ms`` (per-stage means), ``queue_ms``
  (mean), ``model_fps`` (1000 / mean inference ms: the network's rate inside this run, slower than a bench of
  the model alone when the other stages share its cores), ``count`` (mean, min, max), ``model``, ``backend``,
  ``precision``, ``executed_precision``, ``threads``, ``pipeline`` (whether the stages overlapped),
  ``pipeline_threads``, ``stopped`` (why the run ended); ``recording_dropped`` when recording.

Each line is written with one ``write`` and flushed to the OS at once, so a crash of the process loses
nothing; a background thread ``fsync``s the file after each new line, so a pulled plug loses at most the
lines written during the last ``fsync`` (about one frame), without making the loop wait for the disk.

Bounded and failure-safe:

- ``max_bytes`` (``edgeseg run --max-log-mb``): when the file reaches half of it, it is renamed ``run.1.jsonl``
  (replacing an older one) and a new ``run.jsonl`` starts with the run's ``start`` line again (``"part": 2, 3...``),
  so the two files hold at most ``max_bytes`` and the newest lines. The summary always goes to ``run.jsonl``.
- A line that cannot be written (disk full, I/O error) is cut off again (the file is truncated back to its last
  complete line) and :class:`edgeseg.fsutil.WriteFailed` is raised (exit code 4): the log always ends on a complete
  line. Every :data:`CHECK_EVERY` lines the free space of its disk is looked at; below ``reserve_bytes`` the
  write raises ``WriteFailed`` (disk full) before the disk is full, so that the summary line still fits.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from edgeseg.fsutil import RESERVE_MB, WriteFailed, write_failed

STAGES = ("capture", "preprocess", "inference", "postprocess", "render", "output")
FRAME_KEYS = ("type", "index", "timestamp", *(f"{s}_ms" for s in STAGES), "latency_ms", "queue_ms", "count",
              "dropped", "dropped_pipeline")
CHECK_EVERY = 100  # lines between two looks at the free space of the log's disk
SUMMARY_KEYS = ("type", "frames", "dropped", "dropped_pipeline", "fps", "latency_ms", "stages_ms", "queue_ms",
                "model", "backend", "precision", "executed_precision", "threads")


class LatencyHistogram:
    """Percentiles of a stream of positive durations in constant memory.

    Log-spaced bins 0.5 % wide from 1 microsecond to 1000 s: a percentile is exact to 0.25 %, whatever the
    run length (a week-long camera run keeps the same 30 kB), and mean and max are exact.
    """

    LO_MS, HI_MS, STEP = 1e-3, 1e6, 1.005

    def __init__(self):
        self._log_step = math.log(self.STEP)
        self.n_bins = int(math.ceil(math.log(self.HI_MS / self.LO_MS) / self._log_step)) + 1
        self.bins = np.zeros(self.n_bins, np.int64)
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, ms: float) -> None:
        ms = float(ms)
        self.n += 1
        self.total += ms
        self.max = max(self.max, ms)
        k = int(math.log(max(ms, self.LO_MS) / self.LO_MS) / self._log_step)
        self.bins[min(k, self.n_bins - 1)] += 1

    def percentile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q / 100 * self.n))
        k = int(np.searchsorted(np.cumsum(self.bins), rank))
        centre = self.LO_MS * self.STEP ** (k + 0.5)
        return min(centre, self.max)

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


class RunStats:
    """Running statistics of a run: per-stage sums, latency percentiles, count range, wall time."""

    def __init__(self, info: dict | None = None):
        self.info = dict(info or {})
        self.latency = LatencyHistogram()
        self.stage_sums = dict.fromkeys(STAGES, 0.0)
        self.frames = 0
        self.dropped = 0
        self.dropped_pipeline = 0
        self.queue_sum = 0.0
        self.count_sum = 0
        self.count_min: int | None = None
        self.count_max: int | None = None
        self.t_first: float | None = None  # perf_counter when the first frame started
        self.t_last: float | None = None  # perf_counter when the last frame ended

    def add(self, record: dict, t_start: float, t_end: float) -> None:
        self.frames += 1
        for s in STAGES:
            self.stage_sums[s] += record.get(f"{s}_ms", 0.0)
        self.latency.add(record["latency_ms"])
        c = int(record["count"])
        self.count_sum += c
        self.count_min = c if self.count_min is None else min(self.count_min, c)
        self.count_max = c if self.count_max is None else max(self.count_max, c)
        self.dropped = int(record.get("dropped", self.dropped))
        self.dropped_pipeline = int(record.get("dropped_pipeline", self.dropped_pipeline))
        self.queue_sum += record.get("queue_ms", 0.0)
        if self.t_first is None:
            self.t_first = t_start
        self.t_last = t_end

    def summary(self, **extra) -> dict:
        wall = (self.t_last - self.t_first) if self.frames else 0.0
        n = self.frames
        stages = {s: _r(self.stage_sums[s] / n) if n else None for s in STAGES}
        inference = self.stage_sums["inference"] / n if n else 0.0
        out = {
            "type": "summary",
            "frames": n,
            "dropped": self.dropped,
            "dropped_pipeline": self.dropped_pipeline,
            "fps": _r(n / wall) if wall > 0 else None,
            "wall_s": _r(wall),
            "latency_ms": {
                "mean": _r(self.latency.mean),
                "p50": _r(self.latency.percentile(50)),
                "p90": _r(self.latency.percentile(90)),
                "p99": _r(self.latency.percentile(99)),
                "max": _r(self.latency.max) if n else None,
            },
            "stages_ms": stages,
            "queue_ms": _r(self.queue_sum / n) if n else None,
            "model_fps": _r(1000.0 / inference) if inference > 0 else None,
            "count": {"mean": _r(self.count_sum / n) if n else None, "min": self.count_min, "max": self.count_max},
        }
        for key in ("model", "backend", "precision", "executed_precision", "threads"):
            out[key] = self.info.get(key)
        out.update({k: v for k, v in self.info.items() if k not in out})
        out.update(extra)
        return out


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


class RunLog:
    """An append-only JSONL file; ``path=None`` keeps nothing (the statistics still work). ``max_bytes`` bounds
    it with one rotation (None: unbounded), ``reserve_bytes`` is the free space it stops at (0: never looks)."""

    def __init__(self, path: str | os.PathLike | None, sync: bool = True, max_bytes: int | None = None,
                 reserve_bytes: int = RESERVE_MB << 20):
        self.path = Path(path) if path is not None else None
        self.max_bytes = int(max_bytes) if max_bytes else None
        self.reserve_bytes = int(reserve_bytes)
        self.part = 1
        self._fd: int | None = None
        self._size = 0  # bytes of complete lines in the file
        self._lines = 0
        self._failed: WriteFailed | None = None  # the file could not be reopened after a rotation
        self._start: dict | None = None
        self._lock = threading.Lock()  # events may come from a camera's capture thread
        self._sync = sync
        self._syncer = None
        self.previous: Path | None = None  # where the log a run before this one left here went
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._keep_previous()
            self._open()  # one run per file; open for the whole run

    @property
    def previous_path(self) -> Path | None:
        """Where the log of the run before goes when a run starts on the same path: ``run.previous.jsonl``."""
        return None if self.path is None else self.path.with_name(f"{self.path.stem}.previous{self.path.suffix}")

    def _keep_previous(self) -> None:
        """A service restarted into the same folder (after a power cut, or a clean stop) keeps the log of the run
        before it as ``run.previous.jsonl`` (one generation: the output stays bounded) instead of truncating it."""
        try:
            if self.path.stat().st_size > 0:
                os.replace(self.path, self.previous_path)
                self.previous = self.previous_path
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise write_failed(self.path, exc) from exc

    @property
    def rotated_path(self) -> Path | None:
        """Where the older lines go: ``run.1.jsonl`` beside ``run.jsonl``."""
        return None if self.path is None else self.path.with_name(f"{self.path.stem}.1{self.path.suffix}")

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._size = 0
        if self._sync:
            self._syncer = _Syncer(self._fd)

    def _close_file(self) -> None:
        if self._syncer is not None:
            self._syncer.stop()
            self._syncer = None
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError:  # what could be written is written; a failing disk does not stop the close
            pass
        finally:
            os.close(fd)

    def write(self, record: dict) -> None:
        first_start = record.get("type") == "start" and self._start is None
        if first_start and self.previous is not None:
            record = {**record, "previous_log": self.previous.name}
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False, default=_jsonable) + "\n").encode()
        with self._lock:
            if self._fd is None:
                if self._failed is not None:
                    raise self._failed
                return
            summary = record.get("type") == "summary"
            if first_start:
                self._start = dict(record)
            elif self.max_bytes and not summary and self._size + len(line) > self.max_bytes // 2:
                self._rotate()
            self._lines += 1
            if not summary and self.reserve_bytes and self._lines % CHECK_EVERY == 0:
                self._check_room()
            self._append(line)
            if self._syncer is not None:
                self._syncer.poke()

    def _append(self, line: bytes) -> None:
        """Write one whole line, or none of it (the file is cut back to its last complete line)."""
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._size)
                os.lseek(self._fd, self._size, os.SEEK_SET)
            except OSError:
                pass
            raise write_failed(self.path, exc) from exc
        self._size += len(line)

    def _rotate(self) -> None:
        self._close_file()
        try:
            os.replace(self.path, self.rotated_path)
            self._open()
        except OSError as exc:
            self._failed = write_failed(self.path, exc)
            raise self._failed from exc
        self.part += 1
        if self._start is not None:
            self._append((json.dumps({**self._start, "part": self.part, "continues": self.rotated_path.name},
                                     separators=(",", ":"), default=_jsonable) + "\n").encode())

    def _check_room(self) -> None:
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        if free < self.reserve_bytes:
            raise WriteFailed(f"disk full: less than {self.reserve_bytes >> 20} MB left on the disk of {self.path}",
                              "free space on that disk or give --out another one (what was complete is kept)",
                              disk_full=True)

    def event(self, event: str, **fields) -> dict:
        rec = {"type": "event", "event": event, "time": round(time.time(), 6), **fields}
        self.write(rec)
        return rec

    def close(self) -> None:
        with self._lock:
            if self._fd is None:
                return
            self._close_file()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


class _Syncer:
    """A daemon thread that fsyncs a file descriptor whenever new lines were flushed to it."""

    def __init__(self, fd: int):
        self.fd = fd
        self._pending = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="edgeseg-log-fsync", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._pending.set()

    def _run(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()
            if self._done:
                return
            try:
                os.fsync(self.fd)
            except OSError:  # the file was closed under us: nothing left to sync
                return

    def stop(self) -> None:
        self._done = True
        self._pending.set()
        self._thread.join(timeout=5.0)


def read_log(path: str | os.PathLike) -> list[dict]:
    """All complete lines of a run log (a torn last line, after a pulled plug, is ignored)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            out.append(json.loads(line))
    return out
