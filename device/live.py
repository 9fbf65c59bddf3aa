"""The live loop behind ``edgeseg run``: source -> Segmenter -> overlay -> display / recording / sinks, + JSONL log.

Torch-free: it uses :class:`edgeseg.segmenter.Segmenter` (ONNX Runtime or OpenVINO) and OpenCV only.

One frame, timed stage by stage (milliseconds in the log)::

    capture      source.read(): waiting for the camera (or the pace), decoding, converting
    preprocess   to 8-bit RGB, resize or tiles, normalisation          (Segmenter timings)
    inference    the backend                                            (Segmenter timings)
    postprocess  threshold, components / watershed, back to frame size  (Segmenter timings)
    render       drawing the overlay (skipped when nothing shows, records or streams it)
    output       recording, display and the sinks (e.g. the browser stream)

Pipelined (the default) or sequential (``pipeline=False``, ``edgeseg run --sequential``). Pipelined, four threads
overlap the stages of consecutive frames, the network alone in one of them::

    capture thread       source.read(), Segmenter.prepare (preprocess)           -> [slot] ->
    network thread       Segmenter.infer (inference)                              -> [slot] ->
    finish thread        Segmenter.finish (postprocess), processors               -> [slot] ->
    caller's thread      overlay, recording hand-over, display, sinks, statistics, JSONL line

With fewer than 4 usable cores the caller's thread does the finish thread's work (``finish_thread``): on 2 cores
a fourth Python thread costs more in contention for the GIL than its overlap gives.

joined by single-slot hand-overs: a camera's frame that finds the slot full replaces the one waiting there (the
older frame is dropped and counted: ``dropped_pipeline``), so a camera never waits for a slow consumer and nothing
queues up; a file's frame waits instead (every frame of a file is processed and recorded). The recorder encodes
in a thread of its own (``Recorder``: dropping for a camera, waiting for a file). Each frame's record keeps its
stage times and ``queue_ms``, the time it waited between stages; ``latency_ms`` runs from the start of its capture
to the end of its output. The network runs on half the cores by default in this mode (``inference_threads``),
the other stages on the rest. Sequential, one thread does everything for one frame before reading the next, as
the loop always did (the recording too is encoded in that thread by ``run_session``).

Stopping: the end of a file source, ``max_frames``, ``q``/Esc or closing the window, Ctrl-C or SIGTERM (the
frame in flight is finished - pipelined: the one being output; frames still in the hand-overs are discarded - the
recording and the log are finalised and the summary printed; a second Ctrl-C aborts at once, still finalising),
a source that fails mid-way (camera lost after its retries, corrupt video: what was processed is kept).

Sinks: objects with ``publish(overlay_bgr: np.ndarray, stats: dict)`` and ``close()``, called once per frame
after the overlay is drawn (e.g. ``edgeseg.device.serve.LiveFeed``). ``stats`` is the live summary (the same
fields as the log's ``summary`` line: frames, dropped, fps, latency_ms p50/p90/p99, stages_ms, model, backend,
precision, executed_precision, threads) plus ``frame`` (this frame's log record), ``count`` and
``fps_rolling``. A sink must return quickly (copy the frame and hand it to its own thread); one that raises is
reported in the log and detached, the run goes on.

Processors: objects with ``process(frame, result) -> dict`` and ``close() -> dict`` (e.g. per-nucleus measurement
or tracking), called in the finish stage right after segmentation, for every segmented frame, in order (a
camera frame dropped before segmentation is never seen; one dropped after it was seen but gets no log record); the
returned fields are merged into that frame's log record (the loop's own keys win), ``close()``'s into the summary.
One that raises is reported as a ``processor_failed`` event and detached, the run goes on.

Exit codes (``edgeseg run``): 0 done (end of the source or ``--max-frames``, or the window closed); 2 bad input
(missing or unreadable source, no camera, model file not matching its card, bad option); 3 a missing
dependency (picamera2, a GUI-enabled OpenCV); 4 the source failed mid-run (camera lost, video corrupt mid-file:
the frames before were processed and logged), or a write failed mid-run (disk full, I/O error: the run stops with
``stopped`` ``disk_full`` or ``write_failed`` and the ``error`` in its summary; the log ends on a complete line,
finished recording segments stay, nothing half-written is left under a final name); 130 stopped by Ctrl-C; 143
stopped by SIGTERM.

What a run writes is bounded (``--segment-s``/``--max-record-mb`` for the recording, ``--max-log-mb`` and
``--log-every`` for the log) and checked before the first frame (:func:`check_outputs`: every folder writable,
enough free space); hidden temporary files a killed run left there are removed at the start (``stale_removed`` in
the ``start`` line).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.fsutil import WriteFailed, check_writable, remove_stale_temporaries
from edgeseg.progress import Progress, reporter
from edgeseg.zoo import DEFAULT_RUN_MODEL, SAMPLE_CLIP

from .codecs import codec_note
from .hardware import usable_cores
from .options import RunOptions, check_run_options
from .overlay import Overlay
from .recorder import Recorder
from .runlog import RunLog, RunStats
from .sources import DEFAULT_FILE_FPS as DEFAULT_FPS
from .sources import Source, SourceFailed

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_MISSING_DEPENDENCY = 3
EXIT_SOURCE_FAILED = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_CODES = {
    EXIT_OK: "done: end of the source, --max-frames reached, or the window closed",
    EXIT_BAD_INPUT: "bad input: missing or unreadable source, no camera, model not matching its card, bad option",
    EXIT_MISSING_DEPENDENCY: "a missing dependency (picamera2, a GUI-enabled OpenCV for --display)",
    EXIT_SOURCE_FAILED: "the source failed mid-run (camera lost after its retries, video corrupt mid-file), or "
                        "an output could not be written (disk full, I/O error)",
    EXIT_SIGINT: "stopped by Ctrl-C (recording and log finalised, summary printed)",
    EXIT_SIGTERM: "stopped by SIGTERM (recording and log finalised, summary printed)",
}
RUNS_DIR = "edgeseg-runs"


class MissingGUI(EdgesegError):
    exit_code = EXIT_MISSING_DEPENDENCY


# --------------------------------------------------------------------------- stopping


class StopFlag:
    """Set by a signal, a key press or the caller; the loop stops after the frame in flight."""

    def __init__(self):
        self.reason: str | None = None
        self.signum: int | None = None
        self._event = threading.Event()
        self.on_stop: list[Callable[[], None]] = []

    def set(self, reason: str, signum: int | None = None) -> None:
        if self._event.is_set():
            return
        self.reason, self.signum = reason, signum
        self._event.set()
        for cb in self.on_stop:
            cb()

    def __bool__(self) -> bool:
        return self._event.is_set()


@contextlib.contextmanager
def stop_on_signals(stop: StopFlag) -> Iterator[StopFlag]:
    """Turn SIGINT and SIGTERM into a clean stop while the block runs (main thread only).

    The first signal sets ``stop``; a second SIGINT raises KeyboardInterrupt (for a loop stuck in a call).
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, _frame):
        if stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set(signal.Signals(signum).name, signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def exit_code_for(result: RunResult) -> int:
    if result.signum == signal.SIGTERM:
        return EXIT_SIGTERM
    if result.signum == signal.SIGINT or result.stopped == "interrupted":
        return EXIT_SIGINT
    if result.error is not None:
        return getattr(result.error, "exit_code", EXIT_SOURCE_FAILED)
    return EXIT_OK


# --------------------------------------------------------------------------- display


def gui_available() -> bool:
    """Whether this OpenCV build can open windows and a display is there to show them."""
    info = cv2.getBuildInformation()
    at = info.find("GUI:")
    no_gui = at >= 0 and info[at : at + 60].split(":", 1)[1].strip().upper().startswith("NONE")
    has_screen = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or os.name == "nt"
    return not no_gui and has_screen


class Display:
    """An OpenCV window; ``show`` returns False once the user pressed q / Esc or closed the window."""

    def __init__(self, title: str = "edgeseg"):
        self.title = title
        if not gui_available():
            raise MissingGUI(
                "no display to show the overlay on (no screen, or opencv-python-headless has no GUI)",
                "run with --no-display (add --record FILE or --serve PORT to watch), or pip install opencv-python",
            )
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        self.shown = False

    def show(self, bgr: np.ndarray) -> bool:
        cv2.imshow(self.title, bgr)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            return False
        if self.shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            return False
        self.shown = True
        return True

    def close(self) -> None:
        with contextlib.suppress(cv2.error):
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)


# --------------------------------------------------------------------------- the loop


@dataclass
class RunResult:
    summary: dict
    stopped: str  # end | max_frames | window | SIGINT | SIGTERM | interrupted | source_failed | error
    log_path: Path | None = None
    recording: Path | None = None
    signum: int | None = None
    error: Exception | None = None
    events: list[dict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return exit_code_for(self)


def run_live(
    seg,
    source: Source,
    *,
    log: RunLog | None = None,
    recorder: Recorder | None = None,
    display: Display | None = None,
    sinks: Sequence = (),
    overlay: Overlay | None = None,
    max_frames: int | None = None,
    stop: StopFlag | None = None,
    info: dict | None = None,
    pipeline: bool = True,
    processors: Sequence = (),
    drop: bool | None = None,
    log_every: int = 1,
    finish_thread: bool | None = None,
) -> RunResult:
    """Run ``seg`` (a :class:`~edgeseg.segmenter.Segmenter`) on every frame of ``source`` until it ends, ``max_frames``
    frames were processed or ``stop`` is set. Always finalises the log (with its summary line), the recording, the
    display, the sinks and the processors, also when a frame raises; then re-raises anything but a failing source.

    ``pipeline`` overlaps capture, segmentation and output in three threads (see the module docstring); False runs
    them one after another in the caller's thread. ``drop`` (default: ``source.live``) says what a busy stage does
    to the frame waiting for it: a camera's is replaced by the newer frame (counted in ``dropped_pipeline``), a
    file's waits (every frame of a file is processed). ``processors``: objects with ``process(frame, result) ->
    dict`` (called right after segmentation; the dict is merged into the frame's log record) and ``close() ->
    dict`` (merged into the summary); one that raises is reported as an event and detached, except for a write that
    failed (:class:`~edgeseg.fsutil.WriteFailed`: a full disk), which stops the run like a failed source. ``log_every``
    writes one frame line every N frames (the statistics count every frame). ``finish_thread`` gives the
    post-processing and the processors a thread of their own (default: with 4 or more usable cores; on 2 cores the
    output thread does them, which measured 1.06-1.09x faster there: one thread fewer contending for the GIL)."""
    loop = _Loop(seg, source, log or RunLog(None), recorder, display, list(sinks),
                 overlay or Overlay(channel=getattr(seg, "channel", "auto")), max_frames,
                 stop if stop is not None else StopFlag(), info, bool(pipeline), list(processors),
                 source.live if drop is None else bool(drop),
                 usable_cores() >= FINISH_THREAD_CORES if finish_thread is None else bool(finish_thread))
    loop.log_every = max(1, int(log_every))
    return loop.run()


FINISH_THREAD_CORES = 4  # from this many usable cores on, post-processing gets a thread of its own


POLL_S = 0.05  # how often a stage waiting for a frame looks at the stop flag
JOIN_S = 10.0  # how long the end of a run waits for a stage's thread (a frame in a slow model, a camera read)


class _Job:
    """One frame on its way through the stages, with the perf_counter times that split its latency: capture
    (t0-t1), prepare (t_seg-t_prepared), network (t_infer-t_inferred), finish and processors (t_finish-t_segged)."""

    __slots__ = ("frame", "t0", "t1", "t_seg", "t_prepared", "t_infer", "t_inferred", "t_finish", "t_segged",
                 "prep", "result", "extra", "processors_ms")

    def __init__(self, frame, t0: float, t1: float):
        self.frame, self.t0, self.t1 = frame, t0, t1
        self.t_seg = self.t_prepared = self.t_infer = self.t_inferred = self.t_finish = self.t_segged = t1
        self.prep = None
        self.result = None
        self.extra: dict = {}
        self.processors_ms: float | None = None

    def waited_s(self, t_output: float) -> float:
        """The time this frame spent in the hand-overs between its stages (seconds)."""
        return ((self.t_seg - self.t1) + (self.t_infer - self.t_prepared) + (self.t_finish - self.t_inferred)
                + (t_output - self.t_segged - (self.processors_ms or 0.0) / 1e3))


class _Slot:
    """A one-frame hand-over between two stages of the pipelined loop.

    ``put`` into a full slot either replaces the waiting frame by the newer one (``drop``: counted in
    ``dropped``) or waits until the consumer took it. ``get`` returns None once the slot is closed and empty, or
    when ``halted()`` (a stop: what waits is discarded). Waits poll ``halted`` every POLL_S, so a stop set from a
    signal handler (which must not take locks) is seen within that time."""

    def __init__(self, drop: bool, halted: Callable[[], bool]):
        self._cond = threading.Condition(threading.Lock())
        self._item = None
        self._full = False
        self._closed = False
        self.drop, self.halted = drop, halted
        self.dropped = 0

    def put(self, item) -> bool:
        """Hand ``item`` over; False (and nothing handed over) when the run was halted while waiting."""
        with self._cond:
            if self._full and self.drop:
                self.dropped += 1  # the oldest frame gives way: the producer never waits
            while self._full and not self.drop:
                if self.halted():
                    return False
                self._cond.wait(POLL_S)
            self._item, self._full = item, True
            self._cond.notify_all()
            return True

    def get(self):
        with self._cond:
            while not self._full and not self._closed and not self.halted():
                self._cond.wait(POLL_S)
            if not self._full or self.halted():
                return None
            item, self._item, self._full = self._item, None, False
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Loop:
    """The stages of one run and what they share; :meth:`run` runs them sequentially or pipelined."""

    def __init__(self, seg, source, log, recorder, display, sinks, overlay, max_frames, stop, info, pipeline,
                 processors, drop, finish_thread=True):
        self.seg, self.source, self.log, self.recorder, self.display = seg, source, log, recorder, display
        self.sinks, self.overlay, self.max_frames, self.stop = sinks, overlay, max_frames, stop
        self.pipeline, self.processors, self.drop = pipeline, processors, drop
        # a Segmenter's three steps (prepare, infer, finish) go to three threads; any other callable runs whole
        self.split = all(callable(getattr(seg, step, None)) for step in ("prepare", "infer", "finish"))
        self.events: list[dict] = []
        self.finish_thread = bool(finish_thread)
        # pipeline_threads: the loop's own threads (the recorder's encoder and the network's pool not counted)
        self.run_info = {**getattr(seg, "info", {}), **(info or {}), "pipeline": pipeline,
                         "pipeline_threads": (4 if self.finish_thread else 3) if pipeline else 1}
        self.stats = RunStats(self.run_info)
        self.halt = threading.Event()  # the run is over for the stages (max_frames, window, error, stop)
        self.error: Exception | None = None  # the source failed
        self.failed: BaseException | None = None  # a stage's thread raised
        self.stopped = "end"
        self.slots: list[_Slot] = []
        self.threads: list[threading.Thread] = []
        self.log_every = 1

    def on_event(self, ev: dict) -> None:
        self.events.append(ev)
        self.log.event(**ev)

    def halted(self) -> bool:
        return bool(self.stop) or self.halt.is_set()

    @property
    def dropped_pipeline(self) -> int:
        return sum(slot.dropped for slot in self.slots)

    # ------------------------------------------------------------------ the stages

    def capture(self) -> _Job | None:
        """The next frame from the source, or None at its end or when it failed (``self.error``)."""
        t0 = time.perf_counter()
        try:
            frame = self.source.read()
        except SourceFailed as exc:
            self.stopped, self.error = "source_failed", exc
            self.on_event({"event": "source_failed", "source": self.source.spec, "error": str(exc)})
            return None
        return None if frame is None else _Job(frame, t0, time.perf_counter())

    def segment(self, job: _Job) -> _Job:
        """The three segmentation steps of one frame, one after another (the sequential loop)."""
        return self.finish(self.infer(self.prepare(job)))

    def prepare(self, job: _Job) -> _Job:
        """Everything before the network (``Segmenter.prepare``; a segmenter without the three steps is run whole
        in :meth:`infer`)."""
        job.t_seg = time.perf_counter()
        if self.split:
            job.prep = self.seg.prepare(job.frame.image, job.frame.order)
        job.t_prepared = time.perf_counter()
        return job

    def infer(self, job: _Job) -> _Job:
        """The network alone (the step a pipelined run gives a thread and its inference threads of its own)."""
        job.t_infer = time.perf_counter()
        if self.split:
            self.seg.infer(job.prep)
        else:
            job.result = self.seg(job.frame.image, job.frame.order)
        job.t_inferred = time.perf_counter()
        return job

    def finish(self, job: _Job) -> _Job:
        """Stitching and post-processing, then the processors (a failing one is reported and detached)."""
        job.t_finish = time.perf_counter()
        if self.split:
            job.result = self.seg.finish(job.prep)
            job.prep = None
        job.t_segged = time.perf_counter()
        if self.processors:
            for proc in list(self.processors):
                try:
                    job.extra.update(proc.process(job.frame, job.result) or {})
                except WriteFailed:  # a full disk stops the run (exit 4)
                    raise
                except Exception as exc:  # a broken measurement must not stop the microscope
                    self.processors.remove(proc)
                    self.on_event({"event": "processor_failed", "processor": type(proc).__name__,
                                   "error": repr(exc)})
            job.processors_ms = (time.perf_counter() - job.t_segged) * 1e3
        return job

    def output(self, job: _Job) -> bool:
        """Overlay, recording, display, sinks, statistics and the log line; False when the window was closed."""
        t2 = time.perf_counter()
        frame, result = job.frame, job.result
        # nothing shows, records or streams the overlay (a headless logger): do not draw it; the recording is
        # enlarged less than what people watch (Overlay.record_min_side)
        sides = ([self.overlay.record_min_side] if self.recorder is not None else []) + \
            ([self.overlay.min_side] if self.display is not None or self.sinks else [])
        images = self.overlay.render_sides(frame, result, sides) if sides else {}
        image = images.get(self.overlay.min_side)
        t3 = time.perf_counter()
        rolling = self.overlay.fps.tick(t3)
        keep_going = True
        if self.recorder is not None:
            self.recorder.write(images[self.overlay.record_min_side], t3)
        if self.display is not None:
            keep_going = self.display.show(image)
        wait = job.waited_s(t2)
        dropped_pipeline = self.dropped_pipeline
        record = {
            "type": "frame",
            "index": frame.index,
            "timestamp": round(frame.timestamp, 6),
            "capture_ms": round((job.t1 - job.t0) * 1e3, 3),
            "preprocess_ms": round(result.timings.get("preprocess", 0.0), 3),
            "inference_ms": round(result.timings.get("inference", 0.0), 3),
            "postprocess_ms": round(result.timings.get("postprocess", 0.0), 3),
            "render_ms": round((t3 - t2) * 1e3, 3),
            "output_ms": 0.0,
            "latency_ms": 0.0,
            "queue_ms": round(max(wait, 0.0) * 1e3, 3) if self.pipeline else 0.0,
            "count": int(result.count),
            "dropped": int(self.source.dropped) + dropped_pipeline,
            "dropped_pipeline": dropped_pipeline,
        }
        if result.tiled:
            record["tiles"] = int(result.n_tiles)
        if job.processors_ms is not None:
            record["processors_ms"] = round(job.processors_ms, 3)
            record.update({k: v for k, v in job.extra.items() if k not in record})
        live = None
        for sink in list(self.sinks):
            if live is None:
                live = self.stats.summary()
                live.update(frame=record, count=record["count"], fps_rolling=round(rolling, 3))
            try:
                sink.publish(image, live)
            except WriteFailed:
                raise
            except Exception as exc:  # a broken viewer must not stop the microscope
                self.sinks.remove(sink)
                self.on_event({"event": "sink_failed", "sink": type(sink).__name__, "error": repr(exc)})
        t4 = time.perf_counter()
        record["output_ms"] = round((t4 - t3) * 1e3, 3)
        record["latency_ms"] = round((t4 - job.t0) * 1e3, 3)
        self.stats.add(record, job.t0, t4)
        if self.log_every == 1 or self.stats.frames % self.log_every == 1:
            self.log.write(record)
        return keep_going

    def done(self) -> bool:
        """max_frames reached (checked before each frame)."""
        if self.max_frames is not None and self.stats.frames >= self.max_frames:
            self.stopped = "max_frames"
            return True
        return False

    # ------------------------------------------------------------------ the two loops

    def sequential(self) -> None:
        while not self.stop:
            if self.done():
                return
            job = self.capture()
            if job is None:
                return
            if not self.output(self.segment(job)):
                self.stopped = "window"
                return

    def pipelined(self) -> None:
        """Capture + prepare -> [slot] -> network -> [slot] -> finish + processors -> [slot] -> output: the first
        three in threads of their own, the output in the caller's (the display's GUI wants the main thread, and so
        do signals)."""
        captured, inferred = _Slot(self.drop, self.halted), _Slot(self.drop, self.halted)
        self.slots = [captured, inferred]
        stages = [("capture", self._capture_stage, (captured,)),
                  ("infer", self._step_stage, (self.infer, captured, inferred))]
        if self.finish_thread:
            self.slots.append(_Slot(self.drop, self.halted))
            stages.append(("finish", self._step_stage, (self.finish, inferred, self.slots[-1])))
        last = self.slots[-1]
        self.threads = [threading.Thread(target=self._guard, args=(stage, *args), daemon=True, name=f"edgeseg-{name}")
                        for name, stage, args in stages]
        for t in self.threads:
            t.start()
        while not self.stop:
            job = last.get()
            if job is None:
                break
            keep_going = self.output(job if self.finish_thread else self.finish(job))
            if not keep_going:
                self.stopped = "window"
                break
            if self.done():
                break
        self.halt.set()
        if self.failed is not None:
            raise self.failed

    def _guard(self, stage, *slots: _Slot) -> None:
        """Run a stage's thread; what it raises ends the run and is raised in the caller's thread."""
        try:
            stage(*slots)
        except BaseException as exc:
            self.failed = self.failed or exc
            self.halt.set()
        finally:
            slots[-1].close()  # the next stage sees the end

    def _capture_stage(self, out: _Slot) -> None:
        reads = 0
        while not self.halted():
            if not self.drop and self.max_frames is not None and reads >= self.max_frames:
                return  # a file: exactly max_frames frames (a camera's are counted where they are output)
            job = self.capture()
            if job is None or not out.put(self.prepare(job)):
                return
            reads += 1

    def _step_stage(self, step: Callable[[_Job], _Job], inp: _Slot, out: _Slot) -> None:
        while (job := inp.get()) is not None:
            if not out.put(step(job)):
                return

    def _join(self) -> None:
        self.halt.set()
        for slot in self.slots:
            slot.close()
        threads = self.threads
        if threads and threads[0].is_alive() and hasattr(self.source, "cancel"):
            self.source.cancel()  # a camera read in progress returns soon
        for t in threads:
            t.join(JOIN_S)

    # ------------------------------------------------------------------ one run

    def run(self) -> RunResult:
        source, stop, log, recorder = self.source, self.stop, self.log, self.recorder
        if hasattr(source, "cancel"):
            stop.on_stop.append(source.cancel)
        source.on_event = self.on_event
        log.write({"type": "start", "time": round(time.time(), 6), **self.run_info, **source.describe(),
                   "max_frames": self.max_frames, "recording": str(recorder.path) if recorder else None})
        raised = None
        try:
            self.pipelined() if self.pipeline else self.sequential()
            if stop:
                self.stopped = stop.reason or "stopped"
        except KeyboardInterrupt:
            self.stopped, raised = "interrupted", None
        except WriteFailed as exc:  # a full disk: stop like a failed source, keep what was complete
            self.write_failed(exc)
        except BaseException as exc:
            self.stopped, raised = "error", exc
        finally:
            self._join()
            recording = None
            if recorder is not None:
                try:
                    recording = recorder.close()  # what was recorded is a complete, playable file
                except WriteFailed as exc:  # the open segment did not finish: it is removed, the others stay
                    recorder.abort()
                    self.write_failed(exc)
                    recording = getattr(recorder, "last", None)
                except Exception:  # finishing the file failed: leave no partial file under the real name
                    recorder.abort()
            if self.display is not None:
                self.display.close()
            for sink in self.sinks:
                with contextlib.suppress(Exception):
                    sink.close()
            closed = self._close_processors()
            source.close()
            extra = {"stopped": self.stopped, "source": source.spec,
                     "recording": str(recording) if recording else None}
            if recorder is not None:
                extra["recording_dropped"] = int(getattr(recorder, "dropped", 0))
                if getattr(recorder, "segment_s", None):
                    extra["recording_segments"] = len(recorder.segments)
                    extra["recording_segments_dropped"] = recorder.segments_dropped
            summary = self.stats.summary(**extra)
            summary.update({k: v for k, v in closed.items() if k not in summary})
            if raised is not None:
                summary["error"] = str(raised) or type(raised).__name__
            if self.error is not None:
                summary["error"] = str(self.error)
            try:
                log.write(summary)
            except WriteFailed as exc:  # the log itself cannot be written: the error line on stderr says so
                self.error = exc if self.error is None else _also_no_summary(self.error, exc)
            log.close()
        if raised is not None:
            raise raised
        return RunResult(summary, self.stopped, log.path, recording, stop.signum, self.error, self.events)

    def write_failed(self, exc: WriteFailed) -> None:
        """A write failed (disk full): the run stops with exit code 4, the summary says why."""
        if exc is self.error:  # the recorder raises its error again when it is closed
            return
        if self.error is None:
            self.stopped, self.error = exc.stopped, exc
        self.on_event_safe({"event": exc.stopped, "error": str(exc)})

    def on_event_safe(self, ev: dict) -> None:
        """An event that may not reach the log (its disk is full)."""
        self.events.append(ev)
        with contextlib.suppress(WriteFailed):
            self.log.event(**ev)

    def _close_processors(self) -> dict:
        out: dict = {}
        for proc in self.processors:
            try:
                out.update(proc.close() or {})
            except WriteFailed as exc:
                self.write_failed(exc)
            except Exception as exc:
                self.on_event({"event": "processor_failed", "processor": type(proc).__name__, "error": repr(exc),
                               "at": "close"})
        return out


def _also_no_summary(error: Exception, log_error: WriteFailed) -> WriteFailed:
    """The run's error, saying that the log's summary line could not be written either (one line)."""
    problem = getattr(error, "problem", str(error))
    same = isinstance(error, WriteFailed) and str(error) == str(log_error)
    more = "" if same else f" ({log_error.problem})"
    return WriteFailed(f"{problem}; the log's summary line could not be written either{more}",
                       getattr(error, "fix", None), disk_full=getattr(error, "disk_full", log_error.disk_full))


# --------------------------------------------------------------------------- one run, from options


def apply_bundle(options: dict, bundle: str, explicit: set[str]) -> tuple[dict, str | None]:
    """Options for a run from a bundle (``edgeseg run --bundle B``): the bundle's verified model file and its
    default ``run`` configuration, under the options given on the command line (``explicit``). ``--model NAME``
    picks another model of the bundle. Returns (options, a note to show or None)."""
    from .bundle import open_bundle

    b = open_bundle(bundle)  # verifies every file against the manifest first
    out = dict(options)
    for key, value in (b.run_config or {}).items():
        if key != "model" and key in RunOptions.fields() and value is not None and key not in explicit:
            out[key] = value
    name = options.get("model") if "model" in explicit else None
    out["model"] = str(b.model(name).path if name and hasattr(b, "model") else b.model_path)
    note = b.version_note() if hasattr(b, "version_note") else None
    return out, note


def inference_threads(cores: int, pipeline: bool = True) -> int:
    """The network's threads when ``--threads`` is not given: all cores for the sequential loop (nothing else runs
    while the network does); half of them for the pipelined one, whose capture, pre-/post-processing, overlay and
    encoder threads run beside the network (2 cores: 1 + 1, 4 cores: 2 + 2; see benchmarks/results/e2e.md)."""
    return max(1, cores) if not pipeline else max(1, cores // 2)


def load_segmenter(opts: RunOptions):
    """The Segmenter for a run, warmed up (one inference on a blank input) so model errors come first."""
    from edgeseg.segmenter import Segmenter

    # Segmenter.load warms it up: a file that cannot run, or whose output is not its card's, is a one-line error
    return Segmenter.load(opts.model, backend=opts.backend, threads=opts.threads, threshold=opts.threshold,
                          tile=opts.tile, channel=opts.channel, diameter=opts.diameter,
                          remember_scale=True)  # one scale estimate per frame size, not one per frame


def run_session(opts: RunOptions, progress: Progress | None = print, sinks: Sequence = ()) -> RunResult:
    """Load the model, open the source and the outputs, run the loop with Ctrl-C/SIGTERM handled; return the result.

    Raises EdgesegError (one line, before anything is written) for a bad model, source or option.
    """
    from .choose import choose_for_run
    from .sources import open_source

    if opts.model is None or opts.source is None:  # the demo: the shipped clip through the default model
        opts = replace(opts, model=opts.model or DEFAULT_RUN_MODEL, source=opts.source or str(SAMPLE_CLIP))
    check_run_options(opts)
    check_outputs(opts)  # every folder a measurement output goes to can be written, with room
    processors = measurement(opts)  # before the model opens: bad output options fail first
    if not opts.sequential and usable_cores() < 2:
        # one core: the threads only take turns, and handing frames over costs 6-11 % (benchmarks/results/e2e.md)
        opts = replace(opts, sequential=True)
    if opts.threads is None:
        opts = replace(opts, threads=inference_threads(usable_cores(), pipeline=not opts.sequential))
    opts, chosen = choose_for_run(opts, reporter(progress))  # a network name: the file for this CPU (choose.py)
    seg = load_segmenter(opts)
    source = open_source(opts.source, model_size=seg.input_size, loop=opts.loop,
                         pace=(opts.fps or 0.0) if opts.pace else None, default_fps=opts.fps,
                         max_pixels=opts.max_pixels)
    closers: list[Callable[[], None]] = [source.close]
    try:
        if opts.pace and source.kind in ("camera", "picam"):
            raise EdgesegError("--pace is for files", "a camera delivers frames at its own rate: drop --pace")
        if opts.loop and source.kind in ("camera", "picam"):
            raise EdgesegError("--loop is for files", "drop --loop")
        out_dir = Path(opts.out) if opts.out else default_run_dir()
        log_path = Path(opts.log) if opts.log else out_dir / "run.jsonl"
        record = None
        if not opts.no_record:
            if opts.record:
                record = Path(opts.record)
            elif not source.live:
                record = out_dir / "overlay.mp4"
        check_outputs(opts, out_dir if not opts.log else None, log_path, record)
        stale = remove_stale_temporaries(p for p in (record, opts.csv, opts.labels_out, opts.ctc_out) if p)
        rate = None if source.live else (source.fps or opts.fps or DEFAULT_FPS)  # None: measured while running
        # a file's video has every frame; --sequential encodes in the loop's thread too (the loop as it was)
        recorder = Recorder(record, rate, drop=source.live, threaded=not opts.sequential, segment_s=opts.segment_s,
                            max_bytes=int(opts.max_record_mb * 2**20)) if record else None
        if recorder is not None and (note := codec_note(recorder.fourcc, record.suffix)):
            reporter(progress)(f"note: {note}")
        sinks = list(sinks)
        if opts.serve:
            from . import serve as serve_mod

            host, port = serve_mod.parse_hostport(opts.serve)
            feed = serve_mod.LiveFeed()
            server = serve_mod.serve(feed, host, port, opts.token)
            closers.append(server.shutdown)
            sinks.append(feed)
            reporter(progress)(f"watch the live overlay at {server.url}")
        show = opts.display if opts.display is not None else (gui_available() and not opts.serve)
        display = Display() if show else None
        overlay = Overlay(opts.overlay, opts.channel, caption=seg.name)
        log = open_log(log_path, opts)
        with stop_on_signals(StopFlag()) as stop:
            return run_live(seg, source, log=log, recorder=recorder, display=display, sinks=sinks, overlay=overlay,
                            max_frames=opts.max_frames, stop=stop, pipeline=not opts.sequential, processors=processors,
                            info={"source": source.spec, "out": str(out_dir) if not opts.log else None,
                                  "stale_removed": stale,
                                  "codec": recorder.fourcc if recorder else None, **chosen}, log_every=opts.log_every)
    finally:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()


def check_outputs(opts: RunOptions, *paths: Path | None) -> None:
    """One-line errors (exit 2) before the first frame when a folder the run writes to cannot be created or
    written, or its disk has too little room (:func:`edgeseg.fsutil.check_writable`): ``paths`` (a folder, or a
    file whose folder is checked), or with none, the measurement outputs (``--csv``, ``--ctc-out``,
    ``--labels-out``). Creates nothing."""
    if not paths:
        places = [(opts.csv, "--csv"), (opts.ctc_out, "--ctc-out"), (opts.labels_out, "--labels-out")]
        folders = {Path(p).absolute().parent: what for p, what in places if p}
    else:
        out_dir, log, record = paths
        given = [(log, "--log" if opts.log else "--out"), (record, "--record" if opts.record else "--out")]
        folders = {Path(p).absolute().parent: what for p, what in given if p}
        if out_dir is not None:
            folders[Path(out_dir).absolute()] = "--out"
    for folder, what in folders.items():
        check_writable(folder, what)


def open_log(path: Path, opts: RunOptions) -> RunLog:
    """The run's log, bounded by ``--max-log-mb``; a path that cannot be opened is a one-line error (exit 2)."""
    try:
        return RunLog(path, max_bytes=int(opts.max_log_mb * 2**20))
    except OSError as exc:
        raise EdgesegError(f"cannot write the log {path} ({exc.strerror or exc})",
                           "give --log a file in a writable folder, or --out a writable folder") from None


def measurement(opts: RunOptions) -> list:
    """The per-nucleus measurement and tracking of a run (:class:`~edgeseg.device.measure_sink.MeasureSink`) when
    ``--track``, ``--csv``, ``--ctc-out`` or ``--labels-out`` asks for it, as the loop's one processor."""
    if not (opts.track or opts.csv or opts.ctc_out or opts.labels_out):
        return []
    from .measure_sink import MeasureSink

    return [MeasureSink(track=opts.track, csv=opts.csv, ctc_out=opts.ctc_out, labels_out=opts.labels_out,
                        um_per_px=opts.um_per_px)]


# --------------------------------------------------------------------------- output places


def default_run_dir(root: str | os.PathLike = RUNS_DIR) -> Path:
    """``edgeseg-runs/YYYYmmdd-HHMMSS`` (``-2``, ``-3``... if that exists already)."""
    base = Path(root) / datetime.now().strftime("%Y%m%d-%H%M%S")
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def summary_text(summary: dict) -> str:
    """The human summary printed at the end of a run."""
    lat = summary.get("latency_ms") or {}
    st = summary.get("stages_ms") or {}
    threads = summary.get("threads")
    what = (f"{summary.get('model')} ({summary.get('backend')}, {summary.get('executed_precision') or '?'}"
            f"{f', {threads} threads' if threads else ''}) on {summary.get('source')}")
    fps = summary.get("fps")
    model_fps = summary.get("model_fps")
    lines = [
        f"edgeseg run: {what}",
        f"  {summary.get('frames', 0)} frames, {summary.get('dropped', 0)} dropped, "
        f"{fps if fps is not None else '-'} FPS end to end"
        + (f" (its network steps alone: {model_fps} FPS)" if model_fps else "")
        + f"; stopped: {summary.get('stopped')}",
    ]
    if summary.get("frames"):
        lines.append(f"  latency ms: p50 {lat.get('p50')}  p90 {lat.get('p90')}  p99 {lat.get('p99')}  "
                     f"max {lat.get('max')}")
        lines.append("  stage means ms: " + ", ".join(f"{k} {v}" for k, v in st.items() if v is not None))
        c = summary.get("count") or {}
        lines.append(f"  nuclei per frame: mean {c.get('mean')}, min {c.get('min')}, max {c.get('max')}")
    return "\n".join(lines)


class LiveThread:
    """:func:`run_live` in a background thread of this process (an app embedding the runtime, a GUI, a benchmark
    next to the browser stream): ``start()``, then ``close()`` stops it after the frame in flight and waits.
    ``result`` holds the RunResult once it has stopped."""

    def __init__(self, seg, source: Source, **run_options):
        self.stop = run_options.pop("stop", None) or StopFlag()
        self.result: RunResult | None = None
        self._thread = threading.Thread(target=self._run, args=(seg, source, run_options), daemon=True)

    def _run(self, seg, source: Source, run_options: dict) -> None:
        self.result = run_live(seg, source, stop=self.stop, **run_options)

    def start(self) -> LiveThread:
        self._thread.start()
        return self

    def close(self, timeout: float = 60.0) -> RunResult | None:
        self.stop.set("closed")
        self._thread.join(timeout)
        return self.result
