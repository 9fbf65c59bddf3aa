"""Frame sources for the live runtime: one small protocol, chosen by :func:`open_source` (torch-free).

SPEC                       source
``picam`` / ``picam:N``    Raspberry Pi camera N through picamera2 (lazily imported): a ``lores`` YUV420 stream
                           near the model input size is segmented, the ``main`` stream (``@WxH``, default
                           640x480) is shown and recorded. ``picam:0@1280x720``.
``cam:N``                  OpenCV camera N (``/dev/videoN``), buffer size 1.
``synthetic[:WxH[:N]]``    moving, touching bright discs on a noisy background (tests, soak, demos); N frames
                           (default 200, 0 = endless).
a video file               anything OpenCV's FFmpeg reads (.mp4, .avi, .mkv, ...).
a multi-page TIFF          every page (or plane) in order, 8/16-bit, as stored (tifffile; LZW, Deflate, zstd... through
                           imagecodecs).
a folder of images         every .png/.tif/.jpg/.bmp in name order (a file that cannot be read is skipped, with one
                           line on stderr saying why).
an image file              one frame (.png, .jpg, .bmp; a .tif is a one-page stack).

Every source returns :class:`Frame` objects from :meth:`Source.read` (``None`` at the end) and is closed with
:meth:`Source.close` (also a context manager). Frames are returned as stored: 8- or 16-bit, mono, RGB, RGBA
or BGR; :attr:`Frame.order` says the colour order, so the one preprocessing function converts them once.

Live policy. Cameras (``live`` sources) run a capture thread that keeps only the latest frame; a frame
replaced before the runtime took it is counted in :attr:`Source.dropped`. If the camera stops delivering, the
thread closes it and reopens it with a bounded exponential back-off (each try is reported through
``on_event``); when every try fails, :meth:`Source.read` raises :class:`SourceFailed`. File sources give every
frame; :class:`Paced` replays one at its frame rate like a camera (late frames are dropped and counted).
A video that stops before its announced length (truncated or corrupt) raises :class:`SourceFailed` after the
last good frame; so does a TIFF whose pages stop early (a broken page chain, or fewer pages than its metadata
announces) after the pages it could read.

Frame size. A frame larger than ``max_pixels`` (``--max-pixels``, :data:`~edgeseg.device.options.DEFAULT_MAX_PIXELS`
by default) is refused with :class:`FrameTooLarge` before it is decoded or allocated: image and TIFF sizes come
from their headers, a video's from its stream, a synthetic one's from its spec. (The runtime needs about
:data:`~edgeseg.device.options.BYTES_PER_PIXEL` bytes of memory per frame pixel.)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgeseg.data import IMAGE_EXTS, missing_imagecodecs, needs_imagecodecs, read_image
from edgeseg.errors import DataError, EdgesegError

from .codecs import quiet_opencv as _quiet_opencv
from .options import BYTES_PER_PIXEL, DEFAULT_MAX_PIXELS

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".ogv", ".h264")
TIFF_EXTS = (".tif", ".tiff")
DEFAULT_PICAM_MAIN = (640, 480)
DEFAULT_FILE_FPS = 10.0  # pacing / recording rate of a file that carries none (TIFF stacks, image folders)
DEFAULT_SYNTHETIC = (256, 256, 200)
DEFAULT_RETRIES = 5  # reopen attempts after a camera stops delivering
DEFAULT_BACKOFF_S = 0.25  # first wait between attempts; doubles each time, capped at MAX_BACKOFF_S
MAX_BACKOFF_S = 4.0
FRAME_TIMEOUT_S = 10.0  # a camera that delivers nothing for this long is treated as lost
PICAMERA2_FIX = (
    "on Raspberry Pi OS: sudo apt install python3-picamera2, and create the virtual environment with "
    "--system-site-packages (python3 -m venv --system-site-packages .venv) so it can import it"
)

EventHook = Callable[[dict], None]


class SourceError(DataError):
    """A source that cannot be opened (missing, unreadable, no camera). Exit code 2."""


class SourceFailed(DataError):
    """A source that failed after it started (camera lost for good, video corrupt mid-file). Exit code 4."""

    exit_code = 4


class FrameTooLarge(SourceError):
    """A frame above the ``--max-pixels`` limit, refused before it is read. Exit code 2."""


def check_frame_size(width: int, height: int, what: str, max_pixels: int | None) -> None:
    """Raise :class:`FrameTooLarge` when a ``width`` x ``height`` frame is above ``max_pixels`` (None or 0: no
    limit), saying how much memory it would take."""
    if not max_pixels or width * height <= max_pixels:
        return
    need_gb = width * height * BYTES_PER_PIXEL / 1e9
    raise FrameTooLarge(
        f"{what} has {width}x{height} frames ({width * height / 1e6:.1f} MP), above --max-pixels {max_pixels} "
        f"({max_pixels / 1e6:.1f} MP): a frame this size needs about {need_gb:.1f} GB of memory",
        "crop or bin the frames, or raise --max-pixels if this machine has the memory",
    )


class MissingPicamera2(EdgesegError):
    """picamera2 is not importable. Exit code 3, like every missing dependency."""

    exit_code = 3


@dataclass
class Frame:
    """One frame from a source.

    ``image`` is what gets segmented, as stored (8/16-bit or float; HxW, HxWx1, HxWx3, HxWx4), with its colour
    order in ``order`` ("rgb" or "bgr"). ``display``, when set, is a larger BGR uint8 view of the same scene to
    draw the overlay on (picamera2's main stream). ``timestamp`` is the wall-clock time of capture (Unix
    seconds); ``capture_ms`` the time :meth:`Source.read` spent getting it (waiting, decoding, converting).
    """

    image: np.ndarray
    index: int
    timestamp: float
    capture_ms: float = 0.0
    order: str = "rgb"
    display: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


class Source:
    """Base class. Subclasses implement :meth:`_read` (and :meth:`_close`)."""

    kind = "source"
    live = False  # a camera: frames arrive on their own, the latest one wins

    def __init__(self, spec: str, on_event: EventHook | None = None):
        self.spec = str(spec)
        self._on_event = on_event
        self.fps: float | None = None  # nominal frame rate, when the source has one
        self.length: int | None = None  # number of frames, when known
        self.index = 0  # index of the next frame
        self._dropped = 0
        self.closed = False
        self._cancelled = False

    @property
    def on_event(self) -> EventHook | None:
        """Called with a dict for each event (camera lost / retried / back, unreadable file); may be set later."""
        return self._on_event

    @on_event.setter
    def on_event(self, hook: EventHook | None) -> None:
        self._on_event = hook
        inner = getattr(self, "inner", None)
        if inner is not None:
            inner.on_event = hook

    @property
    def dropped(self) -> int:
        """Frames the source produced that the runtime never saw (latest-frame policy)."""
        return self._dropped

    def read(self) -> Frame | None:
        """The next frame, or None at the end of the source. Raises :class:`SourceFailed` if it broke."""
        if self.closed:
            return None
        t0 = time.perf_counter()
        got = self._read()
        if got is None:
            return None
        image, order, display, meta, stamp = got
        frame = Frame(image, self.index, stamp or time.time(), (time.perf_counter() - t0) * 1e3, order, display, meta)
        self.index += 1
        return frame

    def cancel(self) -> None:
        """Ask a blocked :meth:`read` to return None soon (safe from a signal handler; :meth:`close` still needed)."""
        self._cancelled = True

    def skip(self) -> bool:
        """Discard the next frame without converting it (used by :class:`Paced`); False at the end."""
        if self._read() is None:
            return False
        self.index += 1
        return True

    def _read(self):  # -> (image, order, display, meta, timestamp) or None
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()

    def describe(self) -> dict:
        return {"source": self.spec, "kind": self.kind, "live": self.live, "fps": self.fps, "length": self.length}

    def _event(self, event: str, **fields) -> None:
        if self.on_event is not None:
            self.on_event({"event": event, "source": self.spec, **fields})

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame


# --------------------------------------------------------------------------- files


class VideoSource(Source):
    """A video file decoded by OpenCV, every frame in order."""

    kind = "video"

    def __init__(self, path: str | Path, on_event: EventHook | None = None, max_pixels: int | None = None):
        super().__init__(str(path), on_event)
        self.path = Path(path)
        _require_file(self.path)
        # FFmpeg's own decoder messages ("moov atom not found", "overread") would precede ours: the runtime says
        # what is wrong in one line
        with _quiet_opencv():
            self.cap = cv2.VideoCapture(str(self.path))
        if not self.cap.isOpened():
            self.cap.release()
            raise SourceError(
                f"cannot decode the video {self.path} (corrupt, truncated or an unsupported codec)",
                "check the file plays, or convert it: ffmpeg -i IN -c:v libx264 OUT.mp4",
            )
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and math.isfinite(fps) and 0 < fps < 1000 else None
        n = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.length = n if n > 0 else None
        try:  # the stream's size, before a frame is decoded
            check_frame_size(int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
                             int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0), f"the video {self.path}", max_pixels)
        except FrameTooLarge:
            self.cap.release()
            raise
        self._first = self._grab()
        if self._first is None:
            self.cap.release()
            raise SourceError(f"the video {self.path} holds no readable frame", "check the file plays")

    def _grab(self) -> np.ndarray | None:
        try:
            ok, img = self.cap.read()
        except cv2.error:
            return None
        return img if ok and img is not None and img.size else None

    def _read(self):
        if self._first is not None:
            img, self._first = self._first, None
        else:
            img = self._grab()
        if img is None:
            # FFmpeg's frame count is an estimate from the container: allow a few frames of slack
            if self.length is not None and self.index < self.length - max(2, self.length // 50):
                raise SourceFailed(
                    f"the video {self.path} stopped after {self.index} of {self.length} frames (truncated or corrupt)",
                    "the frames before the damage were processed; repair or re-encode the file",
                )
            return None
        return img, "bgr", None, {}, None

    def _close(self) -> None:
        self.cap.release()


class TiffStackSource(Source):
    """A multi-page (or multi-plane) TIFF, read plane by plane with tifffile.

    Planes are the pages of the first series. A leading channel axis of at most 4 (axes ``CYX`` per time
    point, as ImageJ hyperstacks store them) is stacked into one multi-channel frame (two channels become red
    and green); ``--channel`` then picks the fluorescence channel.

    A damaged file (a page chain that breaks off, or fewer pages than its metadata announces: a truncated copy) is
    read page by page: every page that can be read is a frame, then :meth:`read` raises :class:`SourceFailed`.
    """

    kind = "tiff"

    def __init__(self, path: str | Path, on_event: EventHook | None = None, max_pixels: int | None = None):
        super().__init__(str(path), on_event)
        import tifffile

        self.path = Path(path)
        _require_file(self.path)
        with _tifffile_warnings() as warnings:
            try:
                self.tif = tifffile.TiffFile(self.path)
            except Exception as exc:  # tifffile raises many kinds on a damaged file
                if needs_imagecodecs(exc):
                    raise missing_imagecodecs(self.path, exc) from exc
                raise SourceError(f"cannot read the TIFF {self.path} ({_reason(exc)})",
                                  "check the file, or export it again") from exc
            try:
                self._readable = _readable_pages(self.tif)
                series = _first_series(self.tif)
            except Exception:
                self.tif.close()
                raise
        self._announced = _announced_pages(self.tif)
        self.damaged = series is None or any(w in msg.lower() for msg in warnings for w in _DAMAGE_WORDS) or (
            self._announced is not None and len(series) < self._announced)
        if self._readable == 0:
            self.tif.close()
            raise SourceError(f"the TIFF {self.path} holds no readable page", "check the file, or export it again")
        first = self.tif.pages[0]
        try:
            check_frame_size(int(first.imagewidth), int(first.imagelength), f"the TIFF {self.path}", max_pixels)
        except FrameTooLarge:
            self.tif.close()
            raise
        self._channels = 1
        self.axes = series.axes if series is not None else "IYX"
        self._contiguous = _contiguous_planes(self.tif, self.path) if self.damaged else None
        if self._contiguous is not None:  # ImageJ/Fiji: one header, then the planes back to back, the rest at the end
            self._readable = min(self._announced, self._contiguous[3])
        if self.damaged:
            self.length = self._readable  # frames = the pages that can be read, then SourceFailed
        else:
            axes, shape = series.axes, series.shape
            self._n_pages = len(series)
            yx = 3 if axes.endswith("S") else 2  # YX, or YXS for an RGB page
            lead_axes, lead_shape = axes[:-yx], shape[:-yx]
            if "C" in lead_axes:
                c = lead_shape[lead_axes.index("C")]
                if lead_axes.index("C") == len(lead_axes) - 1 and 1 < c <= 4 and yx == 2:
                    self._channels = c
            self.length = max(self._n_pages // self._channels, 1)
        self.fps = _imagej_fps(self.tif)

    def _page(self, k: int) -> np.ndarray:
        try:
            with _tifffile_warnings():
                if self._contiguous is not None:
                    offset, dtype, shape, _ = self._contiguous
                    per = int(np.prod(shape))
                    fh = self.tif.filehandle
                    fh.seek(offset + k * per * dtype.itemsize)
                    return np.frombuffer(fh.read(per * dtype.itemsize), dtype, per).reshape(shape)
                if self.damaged:
                    return self.tif.pages[k].asarray()
                return self.tif.asarray(key=k, series=0)
        except Exception as exc:
            if needs_imagecodecs(exc):  # not a damaged page: every page needs the codec (exit 3, not 4)
                raise missing_imagecodecs(self.path, exc) from exc
            raise SourceFailed(
                f"page {k + 1} of the TIFF {self.path} cannot be read ({_reason(exc)})",
                "the pages before it were processed; repair or export the file again",
            ) from exc

    def _read(self):
        if self.index >= self.length:
            if self.damaged:
                of = f" of {self._announced}" if self._announced else ""
                raise SourceFailed(
                    f"the TIFF {self.path} stopped after {self._readable}{of} pages (truncated or corrupt)",
                    "the pages before the damage were processed; repair or export the file again",
                )
            return None
        k = self.index * self._channels
        if self._channels > 1:
            planes = [self._page(k + c) for c in range(self._channels)]
            if len(planes) == 2:  # two fluorescence channels -> red and green, blue empty
                planes.append(np.zeros_like(planes[0]))
            img = np.stack(planes, axis=-1)
        else:
            img = self._page(k)
            if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[2] not in (3, 4):
                img = np.moveaxis(img, 0, -1)
        return img, "rgb", None, {}, None

    def skip(self) -> bool:
        if self.index >= self.length:
            return False
        self.index += 1
        return True

    def _close(self) -> None:
        self.tif.close()


_DAMAGE_WORDS = ("invalid page offset", "corrupt", "truncat", "failed to reshape")  # tifffile on a broken file


def _reason(exc: BaseException) -> str:
    """An exception's first line (the cause a user can act on, e.g. a compression that needs imagecodecs)."""
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def _tifffile_warnings():
    """Collect what tifffile logs about a damaged file ("invalid page offset", ...) instead of printing it: the
    runtime says what is wrong in one line."""
    logger = logging.getLogger("tifffile")
    found: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                found.append(record.getMessage())

    handler, propagate = _Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _readable_pages(tif) -> int:
    """How many pages' headers (IFDs) can be parsed, from the first on (a truncated file's chain breaks off)."""
    n = 0
    try:
        total = len(tif.pages)
        for k in range(total):
            tif.pages[k]
            n += 1
    except Exception:  # a page whose header is cut: the pages before it are readable
        pass
    return n


def _first_series(tif):
    """The first series, or None when tifffile cannot make one (a damaged file: read it page by page)."""
    try:
        series = tif.series
        return series[0] if series else None
    except Exception:
        return None


def _contiguous_planes(tif, path: Path):
    """For an uncompressed ImageJ stack (ImageJ and Fiji write the first page's header, every plane back to back,
    then the other headers at the end: a truncated copy keeps planes but loses those headers):
    ``(offset, dtype, plane shape, planes present)``; None for another layout."""
    try:
        page = tif.pages[0]
        if not tif.is_imagej or page.compression != 1 or not page.is_contiguous or page.shape is None:
            return None
        dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)
        nbytes = int(np.prod(page.shape)) * dtype.itemsize
        offset = int(page.dataoffsets[0])
        return offset, dtype, tuple(page.shape), max(0, (path.stat().st_size - offset) // nbytes)
    except Exception:
        return None


def _announced_pages(tif) -> int | None:
    """How many pages the file's own metadata says it holds (tifffile's shaped or ImageJ metadata), if it says."""
    try:
        shaped = tif.shaped_metadata
        if shaped and "shape" in shaped[0]:
            shape = list(shaped[0]["shape"])
            page = tif.pages[0]
            per_page = int(np.prod(page.shape)) if page.shape else 1
            total = int(np.prod(shape))
            return total // per_page if per_page else None
        imagej = tif.imagej_metadata
        if imagej and imagej.get("images"):
            return int(imagej["images"])
    except Exception:  # metadata of a damaged file: unknown
        return None
    return None


def _imagej_fps(tif) -> float | None:
    meta = getattr(tif, "imagej_metadata", None) or {}
    fps = meta.get("fps")
    if fps:
        return float(fps)
    interval = meta.get("finterval")
    return 1.0 / float(interval) if interval else None


class ImageFilesSource(Source):
    """Image files in order, one frame each. An unreadable file (or one above ``max_pixels``) is skipped: it is
    reported as an ``unreadable_image`` event and in one line on stderr, and the run goes on."""

    kind = "images"

    def __init__(self, files: list[Path], spec: str, on_event: EventHook | None = None, max_pixels: int | None = None):
        super().__init__(spec, on_event)
        self.files = list(files)
        self.length = len(self.files)
        self.max_pixels = max_pixels
        self._pos = 0
        self.skipped: list[str] = []

    def _read(self):
        while self._pos < len(self.files):
            path = self.files[self._pos]
            self._pos += 1
            try:
                img = read_frame_file(path, self.max_pixels)
            except DataError as exc:
                self.skipped.append(path.name)
                self._event("unreadable_image", file=str(path), error=str(exc))
                sys.stderr.write(f"warning: skipped {path.name}: {exc}\n")
                continue
            return img, "rgb", None, {"file": path.name}, None
        return None

    def skip(self) -> bool:
        if self._pos >= len(self.files):
            return False
        self._pos += 1
        self.index += 1
        return True


class ImageFolderSource(ImageFilesSource):
    """Every image file of a folder (not recursive), in name order. An unreadable file is skipped and reported."""

    kind = "folder"

    def __init__(self, folder: str | Path, on_event: EventHook | None = None, max_pixels: int | None = None):
        self.folder = Path(folder)
        try:
            files = sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        except OSError as exc:
            raise SourceError(f"cannot list the folder {self.folder} ({exc.strerror or exc})",
                              "check the folder's permissions") from exc
        if not files:
            raise SourceError(
                f"the folder {self.folder} holds no image ({', '.join(IMAGE_EXTS)})", "give a folder of images"
            )
        super().__init__(files, str(folder), on_event, max_pixels)


class ImageFileSource(ImageFilesSource):
    """One image file (``--source image.png``): one frame. Unlike a folder's file, an unreadable one is an error."""

    kind = "image"

    def __init__(self, path: str | Path, on_event: EventHook | None = None, max_pixels: int | None = None):
        path = Path(path)
        _require_file(path)
        try:
            size = image_size(path)
        except DataError as exc:
            raise SourceError(str(exc)) from exc
        if size is not None:
            check_frame_size(*size, f"the image {path}", max_pixels)
        super().__init__([path], str(path), on_event, max_pixels)
        self._image = self._load(path)

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        try:
            return read_image(path)
        except DataError as exc:
            raise SourceError(str(exc)) from exc

    def _read(self):
        if self._pos >= 1:
            return None
        self._pos = 1
        return self._image, "rgb", None, {"file": self.files[0].name}, None


def read_frame_file(path: Path, max_pixels: int | None) -> np.ndarray:
    """An image file as stored (:func:`edgeseg.data.read_image`), its size checked from its header first."""
    size = image_size(path)
    if size is not None:
        check_frame_size(*size, f"the image {path.name}", max_pixels)
    with _quiet_opencv():  # a broken file: the caller's one line says why, not OpenCV's own [ERROR] lines
        return read_image(path)


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of a PNG, JPEG, BMP or TIFF from its header, without decoding it; None for another format.
    Raises DataError when the file cannot be opened or its header is cut."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
                return struct.unpack(">II", head[16:24])
            if head[:2] == b"BM" and len(head) >= 26:
                w, h = struct.unpack("<ii", head[18:26])
                return abs(w), abs(h)
            if head[:2] == b"\xff\xd8":
                return _jpeg_size(f)
            if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                import tifffile

                with _tifffile_warnings(), tifffile.TiffFile(path) as tif:
                    page = tif.pages[0]
                    return int(page.imagewidth), int(page.imagelength)
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})", "check the file") from exc
    except Exception as exc:  # a cut or garbled header (struct.error, tifffile's errors)
        raise DataError(f"cannot read the header of {path.name} ({_reason(exc)})",
                        "replace or remove the file") from exc
    return None


def _jpeg_size(f) -> tuple[int, int] | None:
    """Scan a JPEG's markers for its frame header (SOFn) -> (width, height)."""
    f.seek(2)
    while True:
        byte = f.read(1)
        while byte and byte != b"\xff":
            byte = f.read(1)
        while byte == b"\xff":
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            continue
        if marker == 0xD9:  # end of image before a frame header
            return None
        length = struct.unpack(">H", f.read(2))[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            _, h, w = struct.unpack(">BHH", f.read(5))
            return w, h
        f.seek(length - 2, os.SEEK_CUR)


# --------------------------------------------------------------------------- synthetic


class SyntheticSource(Source):
    """Bright round nuclei, some touching in pairs, drifting over a dark noisy background (deterministic).

    ``meta["count"]`` holds the true number of nuclei in each frame. ``bits`` 8 or 16 chooses the pixel type.
    """

    kind = "synthetic"

    def __init__(
        self,
        size: tuple[int, int] = DEFAULT_SYNTHETIC[:2],
        frames: int | None = DEFAULT_SYNTHETIC[2],
        *,
        nuclei: int | None = None,
        radius: float | None = None,
        bits: int = 8,
        seed: int = 0,
        spec: str | None = None,
        on_event: EventHook | None = None,
        max_pixels: int | None = None,
    ):
        w, h = int(size[0]), int(size[1])
        super().__init__(spec or f"synthetic:{w}x{h}:{frames or 0}", on_event)
        if w < 16 or h < 16:
            raise SourceError(f"synthetic frames of {w}x{h} are too small", "use at least 16x16")
        check_frame_size(w, h, f"the source {self.spec}", max_pixels)  # before the noise fields are allocated
        if bits not in (8, 16):
            raise SourceError(f"synthetic frames have 8 or 16 bits, not {bits}", "use bits=8 or bits=16")
        self.w, self.h, self.bits = w, h, bits
        self.length = frames or None
        self.fps = 30.0
        rng = np.random.default_rng(seed)
        self.r = float(radius or max(3.0, min(w, h) / 16))
        n_pairs = max(1, (nuclei or max(2, (w * h) // int((6 * self.r) ** 2))) // 2)
        # each "pair" is two discs whose centres are 1.6 r apart (touching, with a neck), moving together
        self.centres = rng.uniform([2 * self.r, 2 * self.r], [w - 2 * self.r, h - 2 * self.r], size=(n_pairs, 2))
        angle = rng.uniform(0, 2 * np.pi, size=n_pairs)
        speed = rng.uniform(0.5, 1.5, size=n_pairs)
        self.velocity = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]
        self.spin = rng.uniform(0, np.pi, size=n_pairs)
        self.noise = rng.integers(0, 25, size=(4, h, w), dtype=np.uint8)  # a few fixed noise fields, cycled
        self.top = 60000 if bits == 16 else 230

    def _read(self):
        if self.length is not None and self.index >= self.length:
            return None
        t = self.index
        img = np.zeros((self.h, self.w), np.uint8 if self.bits == 8 else np.uint16)
        count = 0
        lo = np.array([self.r * 1.6, self.r * 1.6])
        hi = np.array([self.w - self.r * 1.6, self.h - self.r * 1.6])
        for (cx, cy), (vx, vy), spin in zip(self.centres, self.velocity, self.spin, strict=True):
            # bounce off the borders: a triangle wave of the straight-line path
            x = _bounce(cx + vx * t, lo[0], hi[0])
            y = _bounce(cy + vy * t, lo[1], hi[1])
            a = spin + 0.02 * t
            dx, dy = 0.8 * self.r * math.cos(a), 0.8 * self.r * math.sin(a)
            for sx in (-1, 1):
                cv2.circle(img, (round(x + sx * dx), round(y + sx * dy)), round(self.r), self.top, -1, cv2.LINE_AA)
            count += 2
        noise = self.noise[t % len(self.noise)]
        img = cv2.add(img, noise if self.bits == 8 else noise.astype(np.uint16) * 64)
        return img, "rgb", None, {"count": count}, None


def _bounce(v: float, lo: float, hi: float) -> float:
    span = hi - lo
    if span <= 0:
        return lo
    k = (v - lo) % (2 * span)
    return lo + (k if k <= span else 2 * span - k)


# --------------------------------------------------------------------------- cameras


class _LatestFrameCamera(Source):
    """A camera read by a capture thread that keeps only the newest frame.

    Subclasses implement ``_open_device() -> handle``, ``_read_device(handle) -> item or None`` and
    ``_close_device(handle)``, and ``_convert(item) -> (image, order, display)`` which runs in the consumer's
    thread, only for the frames the runtime takes.
    """

    live = True

    def __init__(
        self,
        spec: str,
        on_event: EventHook | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        frame_timeout_s: float = FRAME_TIMEOUT_S,
    ):
        super().__init__(spec, on_event)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.frame_timeout_s = float(frame_timeout_s)
        self.reconnects = 0
        self._cond = threading.Condition()
        self._latest = None  # (seq, timestamp, item)
        self._seq = 0
        self._taken = 0
        self._error: Exception | None = None
        self._stop = threading.Event()
        self._handle = self._open_device()  # raises SourceError when there is no camera
        self._thread = threading.Thread(target=self._capture_loop, name=f"edgeseg-capture-{spec}", daemon=True)
        self._thread.start()

    # -- capture thread
    def _capture_loop(self) -> None:
        handle = self._handle
        while not self._stop.is_set():
            try:
                item = self._read_device(handle)
            except Exception as exc:  # a driver error is a lost frame, handled below
                item, err = None, exc
            else:
                err = None
            if self._stop.is_set():
                break
            if item is None:
                self._event("camera_lost", error=str(err) if err else "no frame", frames_so_far=self._seq)
                self._safe_close(handle)
                handle = self._reconnect()
                if handle is None:
                    return
                continue
            with self._cond:
                if self._latest is not None and self._latest[0] > self._taken:
                    self._dropped += 1  # the previous frame was never taken
                self._seq += 1
                self._latest = (self._seq, time.time(), item)
                self._cond.notify_all()
        self._safe_close(handle)

    def _reconnect(self):
        delay = self.backoff_s
        for attempt in range(1, self.retries + 1):
            if self._stop.wait(delay):
                return None
            try:
                handle = self._open_device()
            except Exception as exc:
                self._event("camera_retry", attempt=attempt, of=self.retries, waited_s=round(delay, 3), error=str(exc))
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            self.reconnects += 1
            self._event("camera_back", attempt=attempt)
            return handle
        with self._cond:
            self._error = SourceFailed(
                f"the camera {self.spec} stopped delivering frames and {self.retries} reconnection attempts failed",
                "check the cable and the power supply, then start again",
            )
            self._cond.notify_all()
        self._event("camera_gone", attempts=self.retries)
        return None

    def _safe_close(self, handle) -> None:
        try:
            self._close_device(handle)
        except Exception:  # closing a vanished device may fail; nothing more to do
            pass

    # -- consumer
    def _read(self):
        deadline = time.monotonic() + self.frame_timeout_s
        with self._cond:
            while True:
                if self._latest is not None and self._latest[0] > self._taken:
                    seq, stamp, item = self._latest
                    self._taken = seq
                    break
                if self._error is not None:
                    raise self._error
                if self.closed or self._cancelled:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SourceFailed(
                        f"the camera {self.spec} sent no frame for {self.frame_timeout_s:.0f} s",
                        "check the camera and its cable, then start again",
                    )
                self._cond.wait(min(left, 0.5))
        image, order, display = self._convert(item)
        return image, order, display, {}, stamp

    def _close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5.0)

    # -- device interface
    def _open_device(self):
        raise NotImplementedError

    def _read_device(self, handle):
        raise NotImplementedError

    def _close_device(self, handle) -> None:
        raise NotImplementedError

    def _convert(self, item):
        return item, "bgr", None


class OpenCVCameraSource(_LatestFrameCamera):
    """``cam:N``: an OpenCV (V4L2 on Linux) camera with a one-frame driver buffer.

    ``capture_factory`` makes the capture object (``cv2.VideoCapture`` by default); tests pass their own.
    """

    kind = "camera"

    def __init__(self, index: int, on_event: EventHook | None = None, capture_factory=None, **kw):
        self.cam_index = int(index)
        self.capture_factory = capture_factory or cv2.VideoCapture
        super().__init__(f"cam:{index}", on_event, **kw)

    def _open_device(self):
        with _quiet_opencv():
            cap = self.capture_factory(self.cam_index)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"no camera at cam:{self.cam_index}",
                "plug the camera in and check it is listed by `ls /dev/video*` (or pick another index)",
            )
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver keeps one frame: what we read is fresh
        fps = cap.get(cv2.CAP_PROP_FPS)
        if fps and math.isfinite(fps) and 0 < fps < 1000:
            self.fps = float(fps)
        return cap

    def _read_device(self, cap):
        ok, img = cap.read()
        return img if ok and img is not None and img.size else None

    def _close_device(self, cap) -> None:
        cap.release()


class PicameraSource(_LatestFrameCamera):
    """``picam[:N][@WxH]``: a Raspberry Pi camera through picamera2.

    Two streams from one capture: ``lores`` (YUV420, the shorter side near the model input size, converted to
    RGB) is what gets segmented; ``main`` (``RGB888``, i.e. BGR bytes, default 640x480) is shown and recorded.
    """

    kind = "picam"

    def __init__(
        self,
        camera: int = 0,
        main_size: tuple[int, int] = DEFAULT_PICAM_MAIN,
        model_size: int = 256,
        on_event: EventHook | None = None,
        **kw,
    ):
        self.Picamera2 = import_picamera2()
        self.camera = int(camera)
        self.main_size = (int(main_size[0]), int(main_size[1]))
        self.lores_size = lores_size_for(self.main_size, model_size)
        super().__init__(f"picam:{camera}", on_event, **kw)

    def _open_device(self):
        info = getattr(self.Picamera2, "global_camera_info", None)
        if callable(info) and self.camera >= len(info()):
            raise SourceError(
                f"no Raspberry Pi camera at picam:{self.camera}",
                "check the ribbon cable and that `rpicam-hello --list-cameras` lists it",
            )
        try:
            cam = self.Picamera2(self.camera)
        except Exception as exc:
            raise SourceError(
                f"cannot open the Raspberry Pi camera picam:{self.camera} ({exc})",
                "check the ribbon cable, and that no other program (rpicam-*, another edgeseg) holds the camera",
            ) from exc
        try:
            config = cam.create_video_configuration(
                main={"size": self.main_size, "format": "RGB888"},
                lores={"size": self.lores_size, "format": "YUV420"},
                buffer_count=4,
            )
            if hasattr(cam, "align_configuration"):
                cam.align_configuration(config)
            cam.configure(config)
            cur = cam.camera_configuration() if hasattr(cam, "camera_configuration") else config
            self.lores_size = tuple(cur["lores"]["size"])
            self.main_size = tuple(cur["main"]["size"])
            cam.start()
        except Exception as exc:
            self._safe_close(cam)
            raise SourceError(
                f"cannot start the Raspberry Pi camera picam:{self.camera} ({exc})", "try a smaller main size (@WxH)"
            ) from exc
        controls = cur.get("controls", {}) if isinstance(cur, dict) else {}
        duration = controls.get("FrameDurationLimits")
        if duration and duration[0]:
            self.fps = 1e6 / float(duration[0])
        return cam

    def _read_device(self, cam):
        arrays, _metadata = cam.capture_arrays(["main", "lores"])
        return arrays[0], arrays[1]

    def _close_device(self, cam) -> None:
        try:
            cam.stop()
        finally:
            cam.close()

    def _convert(self, item):
        main, lores = item
        rgb = yuv420_to_rgb(lores, *self.lores_size)
        return rgb, "rgb", np.ascontiguousarray(main[:, :, :3])


def import_picamera2():
    """The ``Picamera2`` class, or a one-line :class:`MissingPicamera2` saying how to install it."""
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise MissingPicamera2("picamera2 is not installed (needed for --source picam)", PICAMERA2_FIX) from exc
    except ValueError as exc:  # "numpy.dtype size changed": apt's simplejpeg/picamera2 are built for numpy 1.x
        raise MissingPicamera2(
            f"picamera2 cannot load with this venv's numpy ({str(exc).splitlines()[0][:80]})",
            "in the venv run: pip install --force-reinstall simplejpeg (or pip install 'numpy<2')",
        ) from exc
    return Picamera2


def lores_size_for(main: tuple[int, int], model_size: int) -> tuple[int, int]:
    """(w, h) of the lores stream: the main stream's aspect ratio, shorter side near ``model_size``, never larger
    than main, both even (YUV420 halves them)."""
    w, h = main
    scale = min(1.0, model_size / min(w, h))
    lw, lh = max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)
    return min(lw, w - w % 2), min(lh, h - h % 2)


def yuv420_to_rgb(yuv: np.ndarray, width: int, height: int) -> np.ndarray:
    """picamera2's YUV420 (I420) array, ``(height * 3 / 2, stride)``, to RGB ``(height, width, 3)``.

    A row stride wider than the image (hardware alignment) is cropped: Y rows are ``stride`` bytes, U and V rows
    ``stride / 2`` bytes, each plane packed after the other.
    """
    yuv = np.asarray(yuv, np.uint8)
    stride = yuv.shape[1]
    if stride != width:
        flat = yuv.reshape(-1)
        y = flat[: height * stride].reshape(height, stride)[:, :width]
        half = stride // 2
        uv_rows = height // 2
        u = flat[height * stride : height * stride + uv_rows * half].reshape(uv_rows, half)[:, : width // 2]
        v_start = height * stride + uv_rows * half
        v = flat[v_start : v_start + uv_rows * half].reshape(uv_rows, half)[:, : width // 2]
        yuv = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(height * 3 // 2, width)
    return cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)


# --------------------------------------------------------------------------- wrappers


REPLAY_MAX_BYTES = 64 * 2**20  # a looped file whose decoded frames fit in this is replayed from memory


class Looped(Source):
    """Replays a finite source from the start when it ends (``--loop``), with increasing frame indices.

    A single file (a video, a TIFF stack) whose decoded frames take at most :data:`REPLAY_MAX_BYTES` is read once
    and then replayed from memory (the shipped clip: 1.6 MB), so an endless demo or soak run does not decode the
    same pages again and again; a folder is opened again each round (its files may change)."""

    def __init__(self, factory: Callable[[], Source]):
        self.factory = factory
        self.inner = factory()
        super().__init__(self.inner.spec, self.inner.on_event)
        self.kind, self.fps, self.length = self.inner.kind, self.inner.fps, None
        self.rounds = 1
        self._kept: list[tuple] | None = [] if self.kind in ("video", "tiff") else None
        self._kept_bytes = 0
        self._replay: list[tuple] | None = None  # the first round's frames, once it fitted in memory
        self._at = 0

    def _next(self, take: Callable[[Source], object]):
        got = take(self.inner)
        if got is None or got is False:
            self.inner.close()
            self.inner = self.factory()
            self.inner.on_event = self.on_event
            self.rounds += 1
            got = take(self.inner)
        return got

    def _read(self):
        if self._replay is not None:
            got = self._replay[self._at]
            self._at = (self._at + 1) % len(self._replay)
            if self._at == 0:
                self.rounds += 1
            return got
        rounds = self.rounds
        frame = self._next(lambda s: s.read())
        if frame is None:
            return None
        got = frame.image, frame.order, frame.display, frame.meta, frame.timestamp
        self._keep(got, ended=self.rounds != rounds)
        return got

    def _keep(self, got: tuple, ended: bool) -> None:
        """Keep the first round's frames while they fit; when it ended whole, replay them from now on."""
        if self._kept is None:
            return
        if ended and self._kept:
            self._replay, self._kept, self._at = self._kept, None, 1  # ``got`` is the first frame again
            self.inner.close()
            return
        self._kept_bytes += sum(a.nbytes for a in got[:3] if isinstance(a, np.ndarray))
        if self._kept_bytes > REPLAY_MAX_BYTES:
            self._kept = None  # too big: read from the file each round
        else:
            for a in got[:3]:
                if isinstance(a, np.ndarray):
                    a.setflags(write=False)  # shared by every round: nothing may draw on it in place
            self._kept.append(got)

    def skip(self) -> bool:
        if self._replay is not None:
            self._read()
        else:
            self._kept = None  # a skipped frame is not kept: the first round is not whole
            if not self._next(lambda s: s.skip()):
                return False
        self.index += 1
        return True

    def cancel(self) -> None:
        super().cancel()
        self.inner.cancel()

    def _close(self) -> None:
        self.inner.close()


class Paced(Source):
    """Replays a file source at ``fps`` like a camera: frame i becomes current at ``t0 + i / fps``.

    A read waits for the next frame's time; if the runtime is late, the frames that went by are dropped and
    counted, as a camera's latest-frame policy would.
    """

    live = True

    def __init__(self, inner: Source, fps: float):
        super().__init__(inner.spec, inner.on_event)
        if not fps or fps <= 0:
            raise SourceError(f"cannot pace {inner.spec} at {fps} frames per second", "give a positive --fps")
        self.inner, self.fps = inner, float(fps)
        self.kind, self.length = inner.kind, inner.length
        self._t0: float | None = None
        self._next_i = 0

    def _read(self):
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        due = int((now - self._t0) * self.fps)  # the frame that is current now
        while self._next_i < due:  # the runtime was late: those frames are gone
            if not self.inner.skip():
                return None
            self._next_i += 1
            self._dropped += 1
        wait = self._t0 + self._next_i / self.fps - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        frame = self.inner.read()
        if frame is None:
            return None
        self._next_i += 1
        return frame.image, frame.order, frame.display, frame.meta, None

    def cancel(self) -> None:
        super().cancel()
        self.inner.cancel()

    def _close(self) -> None:
        self.inner.close()


# --------------------------------------------------------------------------- dispatch

_SIZE = re.compile(r"^(\d+)x(\d+)$")


def _require_file(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"the source {path} does not exist", "check the path, or use cam:N / picam for a camera")
    if not path.is_file():
        raise SourceError(f"the source {path} is not a file", "give a video, a TIFF stack or a folder of images")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise SourceError(f"cannot read {path} ({exc.strerror})", "check the file's permissions") from exc


def _parse_size(text: str, what: str) -> tuple[int, int]:
    m = _SIZE.match(text)
    if not m:
        raise SourceError(f"bad {what} size {text!r}", "write it as WIDTHxHEIGHT, e.g. 640x480")
    return int(m.group(1)), int(m.group(2))


def open_source(
    spec: str | Path,
    *,
    model_size: int = 256,
    on_event: EventHook | None = None,
    loop: bool = False,
    pace: float | None = None,
    default_fps: float | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    **camera_options,
) -> Source:
    """Open a frame source from its SPEC (see the module docstring).

    ``loop`` replays a finite source endlessly. ``pace`` replays a file source like a camera: at that many
    frames per second, or when it is 0 at the file's own rate (``default_fps``, else :data:`DEFAULT_FILE_FPS`,
    for a file without one). Cameras are never paced. A file or synthetic source whose frames are larger than
    ``max_pixels`` (None or 0: no limit) is refused before a frame is read (:class:`FrameTooLarge`). ``camera_options``
    (``retries``, ``backoff_s``, ``frame_timeout_s``; ``capture_factory`` for ``cam:N``) tune a camera.
    """
    text = str(spec)
    low = text.lower()
    if low == "picam" or low.startswith("picam:") or low.startswith("picam@"):
        rest = text[5:].lstrip(":")
        index_text, _, size_text = rest.partition("@")
        index = int(index_text) if index_text.isdigit() else 0
        if index_text and not index_text.isdigit():
            raise SourceError(f"bad camera spec {text!r}", "write picam, picam:1 or picam:0@1280x720")
        main = _parse_size(size_text, "picam") if size_text else DEFAULT_PICAM_MAIN
        check_frame_size(*main, f"the camera stream {text}", max_pixels)  # before the camera is opened
        return PicameraSource(index, main, model_size, on_event, **camera_options)
    if low.startswith("cam:"):
        if not text[4:].isdigit():
            raise SourceError(f"bad camera spec {text!r}", "write cam:0, cam:1, ...")
        return OpenCVCameraSource(int(text[4:]), on_event, **camera_options)
    if low == "synthetic" or low.startswith("synthetic:"):
        parts = text.split(":")[1:]
        w, h = _parse_size(parts[0], "synthetic") if parts and parts[0] else DEFAULT_SYNTHETIC[:2]
        n = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else DEFAULT_SYNTHETIC[2]

        def factory():
            return SyntheticSource((w, h), n or None, spec=text, on_event=on_event, max_pixels=max_pixels)
    else:
        path = Path(text).expanduser()
        if path.is_dir():
            kind = ImageFolderSource
        elif path.suffix.lower() in TIFF_EXTS:
            kind = TiffStackSource
        elif path.suffix.lower() in IMAGE_EXTS:
            kind = ImageFileSource
        else:
            kind = VideoSource

        def factory():
            return kind(path, on_event, max_pixels=max_pixels)

    src = Looped(factory) if loop else factory()
    if pace is not None:
        src = Paced(src, pace or src.fps or default_fps or DEFAULT_FILE_FPS)
    return src
