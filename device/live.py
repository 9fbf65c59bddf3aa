"""The live loop behind ``edgeseg run``: source -> Segmenter -> overlay -> display / recording / sinks, + JSONL log.

Torch-free: it uses :class:`edgeseg.segmenter.Segmenter` (ONNX Runtime or OpenVINO) and OpenCV only.

One frame, timed stage by stage (milliseconds in the log)::

    capture      source.read(): waiting for the camera (or the pace), decoding, converting
    preprocess   to 8-bit RGB, resize or tiles, normalisation          (Segmenter timings)
    inference    the backend                                            (Segmenter timings)
    postprocess  threshold, components / watershed, back to frame size  (Segmenter timings)
    render       drawing the overlay (skipped when nothing shows, records or streams it)
    output       recording, display and the sinks (e.g. the browser stream)

Stopping: the end of a file source, ``max_frames``, ``q``/Esc or closing the window, Ctrl-C or SIGTERM (the
frame in flight is finished, the recording and the log are finalised and the summary printed; a second Ctrl-C
aborts at once, still finalising), a source that fails mid-way (camera lost after its retries, corrupt video:
what was processed is kept).

Sinks: objects with ``publish(overlay_bgr: np.ndarray, stats: dict)`` and ``close()``, called once per frame
after the overlay is drawn (e.g. ``edgeseg.device.serve.LiveFeed``). ``stats`` is the live summary (the same
fields as the log's ``summary`` line: frames, dropped, fps, latency_ms p50/p90/p99, stages_ms, model, backend,
precision, executed_precision, threads) plus ``frame`` (this frame's log record), ``count`` and
``fps_rolling``. A sink must return quickly (copy the frame and hand it to its own thread); one that raises is
reported in the log and detached, the run goes on.

Exit codes (``edgeseg run``): 0 done (end of the source or ``--max-frames``, or the window closed); 2 bad input
(missing or unreadable source, no camera, model file not matching its card, bad option); 3 a missing
dependency (picamera2, a GUI-enabled OpenCV); 4 the source failed mid-run (camera lost, video corrupt mid-file:
the frames before were processed and logged); 130 stopped by Ctrl-C; 143 stopped by SIGTERM.
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
from edgeseg.progress import Progress, reporter
from edgeseg.zoo import DEFAULT_RUN_MODEL, SAMPLE_CLIP

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
    EXIT_SOURCE_FAILED: "the source failed mid-run (camera lost after its retries, video corrupt mid-file)",
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
) -> RunResult:
    """Run ``seg`` (a :class:`~edgeseg.segmenter.Segmenter`) on every frame of ``source`` until it ends, ``max_frames``
    frames were processed or ``stop`` is set. Always finalises the log (with its summary line), the recording, the
    display and the sinks, also when a frame raises; then re-raises anything but a failing source."""
    log = log or RunLog(None)
    overlay = overlay or Overlay(channel=getattr(seg, "channel", "auto"))
    stop = stop if stop is not None else StopFlag()
    sinks = list(sinks)
    events: list[dict] = []
    run_info = {**getattr(seg, "info", {}), **(info or {})}
    stats = RunStats(run_info)
    if hasattr(source, "cancel"):
        stop.on_stop.append(source.cancel)

    def on_event(ev: dict) -> None:
        events.append(ev)
        log.event(**ev)

    source.on_event = on_event
    log.write({"type": "start", "time": round(time.time(), 6), **run_info, **source.describe(),
               "max_frames": max_frames, "recording": str(recorder.path) if recorder else None})
    stopped, error, raised = "end", None, None
    try:
        while not stop:
            if max_frames is not None and stats.frames >= max_frames:
                stopped = "max_frames"
                break
            t0 = time.perf_counter()
            try:
                frame = source.read()
            except SourceFailed as exc:
                stopped, error = "source_failed", exc
                on_event({"event": "source_failed", "source": source.spec, "error": str(exc)})
                break
            t1 = time.perf_counter()
            if frame is None:
                break
            result = seg(frame.image, frame.order)
            t2 = time.perf_counter()
            # nothing shows, records or streams the overlay (a headless logger): do not draw it
            image = overlay.render(frame, result) if (recorder is not None or display is not None or sinks) else None
            t3 = time.perf_counter()
            rolling = overlay.fps.tick(t3)
            keep_going = True
            if recorder is not None:
                recorder.write(image, t3)
            if display is not None:
                keep_going = display.show(image)
            record = {
                "type": "frame",
                "index": frame.index,
                "timestamp": round(frame.timestamp, 6),
                "capture_ms": round((t1 - t0) * 1e3, 3),
                "preprocess_ms": round(result.timings.get("preprocess", 0.0), 3),
                "inference_ms": round(result.timings.get("inference", 0.0), 3),
                "postprocess_ms": round(result.timings.get("postprocess", 0.0), 3),
                "render_ms": round((t3 - t2) * 1e3, 3),
                "output_ms": 0.0,
                "latency_ms": 0.0,
                "count": int(result.count),
                "dropped": int(source.dropped),
            }
            if result.tiled:
                record["tiles"] = int(result.n_tiles)
            live = None
            for sink in list(sinks):
                if live is None:
                    live = stats.summary()
                    live.update(frame=record, count=record["count"], fps_rolling=round(rolling, 3))
                try:
                    sink.publish(image, live)
                except Exception as exc:  # a broken viewer must not stop the microscope
                    sinks.remove(sink)
                    on_event({"event": "sink_failed", "sink": type(sink).__name__, "error": repr(exc)})
            t4 = time.perf_counter()
            record["output_ms"] = round((t4 - t3) * 1e3, 3)
            record["latency_ms"] = round((t4 - t0) * 1e3, 3)
            stats.add(record, t0, t4)
            log.write(record)
            if not keep_going:
                stopped = "window"
                break
        if stop:
            stopped = stop.reason or "stopped"
    except KeyboardInterrupt:
        stopped = "interrupted"
        raised = None
    except BaseException as exc:
        stopped, raised = "error", exc
    finally:
        recording = None
        if recorder is not None:
            try:
                recording = recorder.close()  # what was recorded is a complete, playable file
            except Exception:  # finishing the file failed: leave no partial file under the real name
                recorder.abort()
        if display is not None:
            display.close()
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.close()
        source.close()
        summary = stats.summary(stopped=stopped, source=source.spec, recording=str(recording) if recording else None)
        if raised is not None:
            summary["error"] = str(raised) or type(raised).__name__
        if error is not None:
            summary["error"] = str(error)
        log.write(summary)
        log.close()
    if raised is not None:
        raise raised
    return RunResult(summary, stopped, log.path, recording, stop.signum, error, events)


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


def load_segmenter(opts: RunOptions):
    """The Segmenter for a run, warmed up (one inference on a blank input) so model errors come first."""
    from edgeseg.segmenter import Segmenter

    seg = Segmenter.load(opts.model, backend=opts.backend, threads=opts.threads, threshold=opts.threshold,
                         tile=opts.tile, channel=opts.channel, diameter=opts.diameter,
                         remember_scale=True)  # one scale estimate per frame size, not one per frame
    s = seg.input_size
    try:
        seg.predict(np.zeros((1, 3, s, s), np.float32))
    except EdgesegError:
        seg.close()
        raise
    except Exception as exc:  # a runtime that loads a file but cannot run it (seen: OpenVINO on some ARM CPUs)
        seg.close()
        raise EdgesegError(f"{seg.name} fails at its first inference ({str(exc).splitlines()[0][:160]})",
                           "try --backend onnxruntime, or another model file") from exc
    return seg


def run_session(opts: RunOptions, progress: Progress | None = print, sinks: Sequence = ()) -> RunResult:
    """Load the model, open the source and the outputs, run the loop with Ctrl-C/SIGTERM handled; return the result.

    Raises EdgesegError (one line, before anything is written) for a bad model, source or option.
    """
    from .sources import open_source

    if opts.model is None or opts.source is None:  # the demo: the shipped clip through the default model
        opts = replace(opts, model=opts.model or DEFAULT_RUN_MODEL, source=opts.source or str(SAMPLE_CLIP))
    check_run_options(opts)
    seg = load_segmenter(opts)
    source = open_source(opts.source, model_size=seg.input_size, loop=opts.loop,
                         pace=(opts.fps or 0.0) if opts.pace else None, default_fps=opts.fps)
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
        rate = None if source.live else (source.fps or opts.fps or DEFAULT_FPS)  # None: measured while running
        recorder = Recorder(record, rate) if record else None
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
        log = RunLog(log_path)
        with stop_on_signals(StopFlag()) as stop:
            return run_live(seg, source, log=log, recorder=recorder, display=display, sinks=sinks, overlay=overlay,
                            max_frames=opts.max_frames, stop=stop,
                            info={"source": source.spec, "out": str(out_dir) if not opts.log else None})
    finally:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()


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
        + (f" (the model alone: {model_fps} FPS)" if model_fps else "")
        + f"; stopped: {summary.get('stopped')}",
    ]
    if summary.get("frames"):
        lines.append(f"  latency ms: p50 {lat.get('p50')}  p90 {lat.get('p90')}  p99 {lat.get('p99')}  "
                     f"max {lat.get('max')}")
        lines.append("  stage means ms: " + ", ".join(f"{k} {v}" for k, v in st.items() if v is not None))
        c = summary.get("count") or {}
        lines.append(f"  nuclei per frame: mean {c.get('mean')}, min {c.get('min')}, max {c.get('max')}")
    return "\n".join(lines)
