"""The options of ``edgeseg run``, declared once: the CLI builds its flags from :class:`RunOptions`, a bundle's
default run configuration (:data:`BUNDLE_KEYS`, :func:`run_defaults`) takes its keys and defaults from it, and
:func:`check_run_options` checks them before anything is opened (torch-free, OpenCV-free)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from edgeseg.errors import EdgesegError

from .hardware import usable_cores

TILE_CHOICES = ("auto", "always", "never")
CHANNEL_CHOICES = ("auto", "gray", "red", "green", "blue")
BACKEND_CHOICES = ("auto", "onnxruntime", "openvino")
OVERLAY_CHOICES = ("contours", "mask", "both")
# Bounded output for endless runs (README, "Bounded output"): the recording is at most DEFAULT_MAX_RECORD_MB of
# finished segments + the open one (a minute: about 70 MB at the worst ~1.1 MB/s seen), the log at most
# DEFAULT_MAX_LOG_MB; together about 2.2 GB, however long the run: a week of camera service fits a 32 GB card.
DEFAULT_SEGMENT_S = 60.0
DEFAULT_MAX_RECORD_MB = 2048.0
DEFAULT_MAX_LOG_MB = 64.0
DEFAULT_MAX_PIXELS = 25_000_000  # a 5000x5000 frame: about 1.7 GB at the peak of a run with a recording
BYTES_PER_PIXEL = 70  # the runtime's peak memory per frame pixel (frames in flight, tiles, labels, overlay)


def _opt(default, help: str, *, flags: tuple[str, ...] | None = None, choices: tuple[str, ...] | None = None,
         type=None, metavar: str | None = None, path: str | None = None):
    """A RunOptions field with what the command line needs to declare it (``flags`` default: ``--name``)."""
    return field(default=default, metadata={"help": help, "flags": flags, "choices": choices, "type": type,
                                            "metavar": metavar, "path": path})


@dataclass
class RunOptions:
    """Everything ``edgeseg run`` takes (the names of its options; a bundle's ``run`` configuration uses them too)."""

    model: str | None = _opt(None, "A network (fast_scnn: the file fastest on this CPU within its accuracy "
                                   "tolerance, calibrated once and cached), a zoo file (fast_scnn-int8) or a model "
                                   "file (.onnx, .xml; .pt with edgeseg[train]) [shuffle_unet_px-int8].")
    source: str | None = _opt(None, "picam[:N][@WxH], cam:N, a video file, a multi-page TIFF, a folder of images, "
                                    "or synthetic[:WxH[:N]] [the shipped sample clip].")
    backend: str = _opt("auto", "auto: ONNX Runtime for .onnx, OpenVINO for .xml.", choices=BACKEND_CHOICES)
    threads: int | None = _opt(None, "Inference threads [all cores].", type=int)
    display: bool | None = _opt(None, "Show the overlay in a window [when there is a screen and a GUI-enabled "
                                      "OpenCV].", flags=("--display/--no-display",))
    record: str | None = _opt(None, "Overlay video, .mp4 or .avi [OUT/overlay.mp4 for a file source; none for a "
                                    "camera].", path="file")
    no_record: bool = _opt(False, "Record no video.", flags=("--no-record",))
    log: str | None = _opt(None, "JSONL log, one line a frame [OUT/run.jsonl].", path="file")
    out: str | None = _opt(None, "Folder for the log and the recording [edgeseg-runs/YYYYmmdd-HHMMSS].", path="dir")
    max_frames: int | None = _opt(None, "Stop after N frames.", type=int)
    channel: str = _opt("auto", "Fluorescence channel to segment (auto keeps colour).", choices=CHANNEL_CHOICES)
    tile: str = _opt("auto", "auto resizes frames near the input size and tiles large ones at the training scale.",
                     choices=TILE_CHOICES)
    diameter: float | None = _opt(None, "Nucleus diameter in frame pixels: rescale to the model's training scale "
                                        "instead of estimating it.", type=float, metavar="PX")
    threshold: float | None = _opt(None, "Override the card's foreground threshold (0-1).", type=float)
    overlay: str = _opt("contours", "How nuclei are drawn.", choices=OVERLAY_CHOICES)
    pace: bool = _opt(False, "Play a file at its frame rate like a camera (late frames are dropped).",
                      flags=("--pace",))
    fps: float | None = _opt(None, "Frame rate of a file that has none (TIFF, folder) [10].", type=float)
    loop: bool = _opt(False, "Replay a file source endlessly (stop with --max-frames or Ctrl-C).", flags=("--loop",))
    serve: str | None = _opt(None, "Also stream the overlay to a browser (host 127.0.0.1 unless given; 0.0.0.0 "
                                   "needs a token).", metavar="[HOST:]PORT")
    token: str | None = _opt(None, "Token every --serve request must carry [generated for a non-loopback host].")
    track: bool = _opt(False, "Link nuclei from frame to frame (track ids on the overlay and in the log, gap "
                              "closing, divisions); --ctc-out needs it.", flags=("--track",))
    csv: str | None = _opt(None, "Per-nucleus measurements, one CSV row a nucleus a frame (centroid, area, shape, "
                                 "intensities of the original frame, track and parent id).", path="file")
    ctc_out: str | None = _opt(None, "Write the tracks in the Cell Tracking Challenge result format to this new "
                                     "folder (maskNNN.tif + res_track.txt).", path="dir")
    labels_out: str | None = _opt(None, "Write an OME-TIFF label stack (T, Y, X; nuclei painted with their track "
                                        "id) for Fiji / napari, e.g. labels.ome.tif.", path="file")
    um_per_px: float | None = _opt(None, "Pixel size in micrometres: adds micrometre columns to --csv and the "
                                         "physical size to --labels-out.", type=float, metavar="UM")
    max_pixels: int = _opt(DEFAULT_MAX_PIXELS, "Refuse frames larger than this many pixels, before reading them "
                                               "(a run needs about 70 bytes of memory a pixel); 0: no limit.",
                           type=int, metavar="N")
    segment_s: float = _opt(DEFAULT_SEGMENT_S, "Cut the recording into files of this many seconds of video "
                                               "(overlay.mp4, overlay-000002.mp4, ...): a crash loses at most "
                                               "the open one [60].", type=float, metavar="S")
    max_record_mb: float = _opt(DEFAULT_MAX_RECORD_MB, "Keep at most this many MB of finished recording "
                                                       "segments: the oldest are deleted [2048].", type=float,
                                metavar="MB")
    max_log_mb: float = _opt(DEFAULT_MAX_LOG_MB, "Bound the log: at half of this run.jsonl becomes run.1.jsonl "
                                                 "(replacing an older one) and a new run.jsonl starts [64].",
                             type=float, metavar="MB")
    log_every: int = _opt(1, "Write one frame line every N frames (the summary still counts every frame) [1].",
                          type=int, metavar="N")
    sequential: bool = _opt(False, "Capture, segment and output one frame after another in one thread instead of "
                                   "overlapping them in 3-4 threads (the default with 2 or more cores); --threads "
                                   "then defaults to all cores (overlapped: half of them, the other stages get the "
                                   "rest).", flags=("--sequential",))

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in fields(cls)}


# the options a bundle may carry as the device's defaults (None: the card's / the runtime's own default)
BUNDLE_KEYS = ("model", "source", "backend", "threads", "threshold", "tile", "channel", "diameter")


def run_defaults() -> dict:
    """A bundle's default run configuration: :data:`BUNDLE_KEYS` with RunOptions' defaults."""
    defaults = {f.name: f.default for f in fields(RunOptions)}
    return {k: defaults[k] for k in BUNDLE_KEYS}


def check_run_options(opts: RunOptions) -> None:
    """One-line errors for options that cannot work, before the model or the source is opened."""
    cores = usable_cores()
    if opts.threads is not None and not 1 <= opts.threads <= 4 * cores:
        raise EdgesegError(f"--threads {opts.threads} is not a usable thread count",
                           f"give 1 to {4 * cores} ({cores} cores here)")
    if opts.threshold is not None and not (math.isfinite(opts.threshold) and 0.0 <= opts.threshold <= 1.0):
        raise EdgesegError(f"--threshold {opts.threshold} is not a probability", "give a value from 0 to 1")
    if opts.diameter is not None and not (math.isfinite(opts.diameter) and opts.diameter > 0):
        raise EdgesegError(f"--diameter {opts.diameter} is not a size in pixels", "give a positive number")
    if opts.max_frames is not None and opts.max_frames < 1:
        raise EdgesegError(f"--max-frames {opts.max_frames} processes nothing", "give a positive number")
    if opts.fps is not None and not (math.isfinite(opts.fps) and opts.fps > 0):
        raise EdgesegError(f"--fps {opts.fps} is not a frame rate", "give a positive number")
    for name in ("segment_s", "max_record_mb", "max_log_mb"):
        value = getattr(opts, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise EdgesegError(f"--{name.replace('_', '-')} {value} is not a positive number",
                               "give a positive number (a larger one for longer files)")
    if not (isinstance(opts.log_every, int) and opts.log_every >= 1):
        raise EdgesegError(f"--log-every {opts.log_every} logs no frame", "give 1 (every frame) or more")
    if opts.max_pixels is not None and opts.max_pixels < 0:
        raise EdgesegError(f"--max-pixels {opts.max_pixels} is not a pixel count",
                           "give a positive number, or 0 for no limit")
