"""Watch the live segmentation in a browser: a small HTTP server inside the runtime's process.

The runtime loop calls ``LiveFeed.publish(overlay_bgr, stats)`` once per frame; that copies the frame, swaps two
references under a lock and returns (about 0.06 ms for a 520x520 overlay), so inference never waits for a client.
One streaming thread, at a lower scheduling priority than the loop, wakes at most ``max_fps`` times a second (15 by
default), takes the newest frame, encodes it to JPEG once for all clients and hands it to each with a non-blocking
send. A slow client keeps at most one partly sent frame and skips the frames published meanwhile (nothing is
queued per client, memory stays flat); one that takes nothing for ``write_timeout`` seconds, or closes, is dropped.

The server is the standard library's ``http.server.ThreadingHTTPServer`` (picamera2's own MJPEG streaming examples
use the same): no dependency, a thread per connection, light on a Raspberry Pi. It serves fixed routes only:

    /               one self-contained page (no external scripts, fonts or styles)
    /stream.mjpg    the overlay as multipart/x-mixed-replace MJPEG
    /stats          the runtime's live stats as JSON (the fields of the JSONL summary line)
    /snapshot.png   the latest overlay frame
    /healthz        {"status": "ok" | "waiting" | "closed", ...}
    /series.json    the recorded time series (count, tracks, FPS, mean area per frame) as JSON; ``?since=N``: after N
    /series.csv     the same series as a CSV download: ``time,frame,count,tracks,fps,mean_area``, newest last

The series is recorded in ``publish`` (one tuple appended to a bounded deque: the last ``series_window_s`` seconds,
5 minutes by default, and at most ``series_max`` samples, 3000 by default, whichever is less).

Each part of the stream carries the frame it shows: ``X-Edgeseg-Frame`` (the feed's frame number),
``X-Edgeseg-Index`` (the run's frame index) and ``X-Edgeseg-Count`` (that frame's nucleus count), so the page shows
the count of the image on screen, not of whatever frame /stats last saw.

Only GET and HEAD (405 otherwise), unknown paths get 404, at most ``max_streams`` concurrent streams (503), and with
a token every request must carry it (``?token=``, ``Authorization: Bearer`` or ``X-Edgeseg-Token``; 401 otherwise).
A non-loopback host without a token gets a generated one.

Connections: each is a thread, at most ``max_connections``. One that has not sent its request line and headers
``header_timeout`` seconds (5 by default) after it connected is closed, and when every slot is taken a new
connection closes the oldest of those still waiting to send their request (idle or slow sockets): the limit that
can lock a viewer out counts streams, never idle sockets.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import select
import socket
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, quote, urlsplit

import cv2
import numpy as np

from edgeseg.errors import EdgesegError

log = logging.getLogger("edgeseg.serve")

ROUTES = frozenset({"/", "/stream.mjpg", "/stats", "/snapshot.png", "/healthz", "/series.json", "/series.csv"})
BOUNDARY = "edgesegframe"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
STREAM_SNDBUF = 128 * 1024  # bytes (Linux doubles it): a few frames
DEFAULT_STREAM_FPS = 15.0  # the browser view's frame-rate cap (cells move slowly; each streamed frame costs CPU)
STREAM_NICE = 10  # the streaming thread's niceness above the runtime loop's
DEFAULT_HEADER_TIMEOUT_S = 5.0  # from connecting to the end of the request's headers (idle and slow sockets)
DEFAULT_SERIES_MAX = 3000  # samples kept for /series.csv and the page's chart (a bounded deque)
DEFAULT_SERIES_WINDOW_S = 300.0  # ... and at most this many seconds of them
SERIES_COLUMNS = ("time", "frame", "count", "tracks", "fps", "mean_area")


# --------------------------------------------------------------------------------------------------------------------
# the feed: what the runtime loop publishes, what the clients read


class LiveFeed:
    """The latest overlay frame and stats, shared by the runtime loop (writer) and the server (reader).

    ``publish`` never blocks on a client: it copies the frame (a memcpy), swaps references under a lock that
    readers hold only for a few attribute reads, and notifies. The JPEG is encoded lazily, when a client wants a
    newer frame than it has, outside that lock, at most ``max_fps`` times a second, and shared by all clients.
    """

    def __init__(
        self,
        *,
        jpeg_quality: int = 80,
        max_fps: float | None = DEFAULT_STREAM_FPS,
        series_max: int = DEFAULT_SERIES_MAX,
        series_window_s: float | None = DEFAULT_SERIES_WINDOW_S,
    ):
        if int(series_max) < 1:
            raise ValueError(f"series_max must be >= 1, got {series_max}")
        self.jpeg_quality = int(jpeg_quality)
        self.series_max = int(series_max)
        self.series_window_s = float(series_window_s) if series_window_s else None
        # (seq, monotonic time, wall time, frame index, count, tracks, fps): appended by publish, oldest dropped
        self._series: collections.deque[tuple] = collections.deque(maxlen=self.series_max)
        self._wall_offset = time.time() - time.monotonic()  # the series' Unix times, from the one clock publish reads
        self.min_interval = 1.0 / max_fps if max_fps else 0.0
        self._cond = threading.Condition(threading.Lock())
        self._encode_lock = threading.Lock()
        self._frame: np.ndarray | None = None
        self._frame_info: dict = {}  # the count and index of _frame (carried with its JPEG)
        self._stats: dict = {}
        self._seq = 0
        self._t_frame = 0.0
        self._times: collections.deque[float] = collections.deque(maxlen=64)
        self._closed = False
        self._jpeg: bytes | None = None
        self._jpeg_seq = 0
        self._jpeg_t = 0.0
        self._jpeg_info: dict = {}
        self._png: tuple[int, bytes] | None = None
        self.encodes = 0  # JPEG encodes so far (tests check "once per frame, shared by all clients")

    # writer side -------------------------------------------------------------------------------------------------
    def publish(self, overlay_bgr: np.ndarray, stats: dict | None = None) -> None:
        """Store the newest overlay (uint8 H x W x 3 BGR, or H x W grey) and stats; returns at once.

        ``stats`` is served as /stats. The page shows ``count`` (this frame's), ``fps_rolling`` (else the feed's own
        publish rate), ``latency_ms`` {p50, p90}, ``frames``, ``dropped``, ``model``, ``backend`` and
        ``executed_precision``: the runtime's live summary (device/live.py) has all of them.
        """
        if overlay_bgr.ndim not in (2, 3):
            raise ValueError(f"overlay must be H x W or H x W x C, got shape {overlay_bgr.shape}")
        frame = np.array(overlay_bgr, dtype=np.uint8, copy=True, order="C")  # the caller may reuse its buffer
        stats = dict(stats) if stats else {}
        now = time.monotonic()
        wall = now + self._wall_offset
        record = stats.get("frame")
        record = record if isinstance(record, dict) else {}
        count = _num(stats.get("count", record.get("count")))
        tracks = _num(record.get("tracks", stats.get("tracks")))
        fps = _num(stats.get("fps_rolling"))
        area = _num(record.get("mean_area"))  # with --track / --csv: the frame's mean nucleus area (px)
        index = _num(record.get("index"))
        with self._cond:
            if self._closed:
                return
            self._frame, self._stats, self._t_frame = frame, stats, now
            self._frame_info = {"count": count, "index": index}
            self._seq += 1
            self._times.append(now)
            series = self._series
            series.append((self._seq, now, wall, self._seq if index is None else index, count, tracks, fps, area))
            if self.series_window_s is not None:
                while series[0][1] < now - self.series_window_s:  # the newest sample always stays
                    series.popleft()
            self._cond.notify_all()

    def close(self) -> None:
        """No more frames: streams end, /healthz says "closed"."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # reader side -------------------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def frames(self) -> int:
        return self._seq

    def rolling_fps(self) -> float | None:
        """Publish rate over the last (up to 64) frames."""
        with self._cond:
            times = list(self._times)
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])

    def stats(self) -> dict:
        """The runtime's latest stats plus the feed's own view (frame number and age, rolling publish FPS)."""
        with self._cond:
            stats, seq, t = self._stats, self._seq, self._t_frame
        out = dict(stats)
        out["feed"] = {
            "frames": seq,
            "age_s": round(time.monotonic() - t, 3) if seq else None,
            "fps": _round(self.rolling_fps(), 2),
            "closed": self._closed,
            "jpeg_encodes": self.encodes,
        }
        return out

    def series(self, since: int = 0) -> list[tuple]:
        """The recorded samples after feed frame number ``since``, oldest first:
        ``(seq, time, frame, count, tracks, fps, mean_area)`` with ``time`` in Unix seconds and ``None`` for a missing
        field."""
        with self._cond:
            samples = list(self._series)
        return [(q, w, f, c, tr, fp, ar) for q, _, w, f, c, tr, fp, ar in samples if q > since]

    def series_csv(self) -> str:
        """The series as CSV: ``time,frame,count,tracks,fps,mean_area``, one row per sample, newest last."""
        lines = [",".join(SERIES_COLUMNS)]
        for _, wall, frame, count, tracks, fps, area in self.series():
            row = (round(wall, 3), frame, count, tracks, fps, area)
            lines.append(",".join("" if v is None else _csv_num(v) for v in row))
        return "\n".join(lines) + "\n"

    def wait_jpeg(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The newest frame as JPEG once there is one newer than frame number ``after``; None on timeout or close."""
        now = time.monotonic()
        deadline = now + timeout
        pause = self._jpeg_t + self.min_interval - now
        if pause > 0 and after >= self._jpeg_seq:
            # this client has the newest encode and the next is not due yet: sleep until it is, rather than wake
            # (and take the GIL) for every frame published meanwhile
            time.sleep(min(pause, timeout))
        with self._cond:
            while self._seq <= after and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            if self._closed:
                return None
        with self._encode_lock:
            now = time.monotonic()
            # Shared by all clients: reuse the cached encode if it is of the newest frame, or if it is newer than what
            # this client has and younger than 1/max_fps; encode at most max_fps times a second, whatever the clients.
            if self._jpeg is not None and self._jpeg_seq > after and (
                self._jpeg_seq == self._seq or now - self._jpeg_t < self.min_interval
            ):
                return self._jpeg_seq, self._jpeg
            wait = self._jpeg_t + self.min_interval - now
            if wait > 0:  # the last encode was less than 1/max_fps ago: this client (and those queued) wait
                time.sleep(wait)
            with self._cond:
                frame, seq, info = self._frame, self._seq, self._frame_info
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:  # pragma: no cover - OpenCV only fails on unsupported arrays, which publish() rejects
                return None
            self._jpeg, self._jpeg_seq, self._jpeg_t = buf.tobytes(), seq, time.monotonic()
            self._jpeg_info = info
            self.encodes += 1
            return seq, self._jpeg

    def jpeg_info(self, seq: int) -> dict:
        """The count and frame index of the frame whose JPEG :meth:`wait_jpeg` returned as number ``seq``."""
        with self._encode_lock:
            return dict(self._jpeg_info) if self._jpeg_seq == seq else {}

    def snapshot_png(self) -> bytes | None:
        """The newest frame as PNG (encoded on request, cached per frame); None before the first frame."""
        with self._encode_lock:
            with self._cond:
                frame, seq = self._frame, self._seq
            if frame is None:
                return None
            if self._png is None or self._png[0] != seq:
                ok, buf = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
                self._png = (seq, buf.tobytes())
            return self._png[1]


def _num(v):
    """A number for the series (bool and non-numbers -> None)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return None


def _csv_num(v) -> str:
    return str(v) if isinstance(v, int) else repr(round(v, 6))


def _round(x, nd):
    return None if x is None else round(float(x), nd)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


# --------------------------------------------------------------------------------------------------------------------
# the page


def _load_page() -> tuple[bytes, str]:
    """The page's bytes and its Content-Security-Policy (the inline script allowed by its sha256, nothing else)."""
    html = resources.files("edgeseg.device").joinpath("static/index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, flags=re.S)

    def hashes(blocks):
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    csp = (
        f"default-src 'none'; script-src {hashes(scripts)}; style-src {hashes(styles)}; "
        "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode("utf-8"), csp


# --------------------------------------------------------------------------------------------------------------------
# the HTTP side


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "edgeseg"
    sys_version = ""
    timeout = 10  # seconds a single read or write may block (the whole request must come in header_timeout)

    # every method other than GET and HEAD: 405 (after the token check, so nothing is revealed without it)
    def __getattr__(self, name: str):
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        if self._authorised():
            self._plain(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD\n", {"Allow": "GET, HEAD"})

    def parse_request(self) -> bool:
        ok = super().parse_request()  # the request line was read; this reads the headers
        self.server.request_started(self.connection)
        return ok

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._authorised():
            return
        path = self.path.split("?", 1)[0]  # the exact route; anything else (a file name, "..", a full URL) is 404
        if path not in ROUTES:
            self._plain(HTTPStatus.NOT_FOUND, "not found\n")
        elif path == "/":
            page, csp = self.server.page
            self._send(HTTPStatus.OK, page, "text/html; charset=utf-8", {"Content-Security-Policy": csp})
        elif path == "/stats":
            body = json.dumps(self.server.feed_stats(), default=_json_default).encode()
            self._send(HTTPStatus.OK, body, "application/json")
        elif path == "/healthz":
            feed = self.server.feed
            status = "closed" if feed.closed else ("ok" if feed.frames else "waiting")
            body = json.dumps({"status": status, "frames": feed.frames, "streams": self.server.streams}).encode()
            code = HTTPStatus.SERVICE_UNAVAILABLE if feed.closed else HTTPStatus.OK
            self._send(code, body, "application/json")
        elif path == "/series.json":
            values = parse_qs(urlsplit(self.path).query).get("since")
            try:
                since = int(values[0]) if values else 0
            except ValueError:
                self._plain(HTTPStatus.BAD_REQUEST, "since must be an integer\n")
                return
            feed = self.server.feed
            samples = feed.series(since)
            body = {
                "columns": ["seq", *SERIES_COLUMNS],
                "samples": [
                    [q, round(w, 3), f, c, tr, _round(fp, 3), _round(ar, 2)] for q, w, f, c, tr, fp, ar in samples
                ],
                "last": feed.frames,
                "max": feed.series_max,
                "window_s": feed.series_window_s,
            }
            self._send(HTTPStatus.OK, json.dumps(body).encode(), "application/json")
        elif path == "/series.csv":
            csv = self.server.feed.series_csv().encode()
            disposition = {"Content-Disposition": 'attachment; filename="edgeseg-series.csv"'}
            self._send(HTTPStatus.OK, csv, "text/csv; charset=utf-8", disposition)
        elif path == "/snapshot.png":
            png = self.server.feed.snapshot_png()
            if png is None:
                self._plain(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet\n", {"Retry-After": "1"})
            else:
                self._send(HTTPStatus.OK, png, "image/png")
        else:
            self._stream()

    # --- helpers ---------------------------------------------------------------------------------------------------
    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = None
        auth = self.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        given = given or self.headers.get("X-Edgeseg-Token")
        if not given:
            values = parse_qs(urlsplit(self.path).query).get("token")
            given = values[0] if values else None
        if given is not None and hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            return True
        self._plain(HTTPStatus.UNAUTHORIZED, "a valid token is required\n", {"WWW-Authenticate": "Bearer"})
        return False

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")

    def _send(self, code: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _plain(self, code: int, text: str, headers: dict | None = None) -> None:
        self._send(code, text.encode(), "text/plain; charset=utf-8", headers)

    def _stream(self) -> None:
        if self.command == "HEAD":
            self._send(HTTPStatus.OK, b"", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            return
        srv = self.server
        if not srv.open_stream(self.connection):
            self._plain(HTTPStatus.SERVICE_UNAVAILABLE, "too many streams\n", {"Retry-After": "5"})
            return
        try:
            # a small send buffer: a slow client holds a few frames, not seconds of them (bounded kernel memory
            # per client, and what a slow client sees stays close to live)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self._common_headers()
            self.send_header("Connection", "close")
            self.end_headers()
            # From here the streaming thread writes the frames; this thread only waits for the stream to end.
            client = _Client(self.connection)
            srv.streamer.add(client)
            while not client.done.wait(0.5):
                if srv.stopping:
                    break
        except OSError as exc:  # gone before the headers were out
            log.debug("stream client %s gone: %s", self.client_address, exc)
        finally:
            srv.close_stream(self.connection)
            self.close_connection = True

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        # never print request lines: they may carry the token
        log.debug("%s %s", self.client_address[0], format % args)


def _lower_priority() -> None:
    """Run the calling thread at nice +STREAM_NICE (Linux: per thread): when the CPU is short, the browser gets
    fewer frames and the runtime loop none less. Elsewhere, or if refused, nothing changes."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), STREAM_NICE)
    except (AttributeError, OSError):
        pass


class _Client:
    """One stream: its socket (non-blocking), the last frame it got, at most one frame still being written."""

    __slots__ = ("sock", "last", "pending", "since", "done")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.last = 0  # frame number of the last frame sent
        self.pending: memoryview | None = None  # the unsent rest of the frame being written
        self.since = 0.0  # when the pending write started
        self.done = threading.Event()


class _Streamer(threading.Thread):
    """The one thread that writes every stream: it wakes at most ``max_fps`` times a second, takes the newest JPEG
    (encoded once for all), and hands it to each client with a non-blocking send. A client whose socket cannot
    take the whole frame keeps the rest as its one pending write and skips the frames published meanwhile, so
    nothing is queued; one that has taken nothing for ``write_timeout`` seconds, or has closed, is dropped.

    One thread rather than one per client: every wake-up of a Python thread takes the GIL from the runtime loop,
    so a thread per client would take it clients times as often (measured in tests/test_serve.py).
    """

    def __init__(self, server: _Server):
        super().__init__(name="edgeseg-stream", daemon=True)
        self.server = server
        self.clients: list[_Client] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def add(self, client: _Client) -> None:
        client.sock.setblocking(False)
        with self._lock:
            self.clients.append(client)
        self._wake.set()

    def _drop(self, client: _Client, why: str) -> None:
        log.debug("stream dropped (%s)", why)
        with self._lock:
            if client in self.clients:
                self.clients.remove(client)
        client.done.set()

    def _write(self, client: _Client, data) -> None:
        try:
            n = client.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._drop(client, f"send: {exc}")
            return
        if n < len(data):
            if client.pending is None or n > 0:  # "stalled" means no byte taken for write_timeout seconds
                client.since = time.monotonic()
            client.pending = memoryview(data)[n:]
        else:
            client.pending = None

    def _service(self, clients: list[_Client], timeout: float) -> None:
        """Wait up to ``timeout`` for pending writes to drain; find clients that closed or stalled."""
        poller = select.poll()
        by_fd = {}
        for c in clients:
            try:
                fd = c.sock.fileno()
            except OSError:
                fd = -1
            if fd < 0:
                self._drop(c, "socket closed")
                continue
            by_fd[fd] = c
            poller.register(fd, select.POLLIN | (select.POLLOUT if c.pending is not None else 0))
        readable, writable = [], []
        for fd, ev in poller.poll(timeout * 1000):
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                readable.append(by_fd[fd])
            if ev & select.POLLOUT:
                writable.append(by_fd[fd])
        for client in readable:
            sock = client.sock
            try:
                if sock.recv(4096) == b"":  # the client closed; anything it sends after its request is ignored
                    self._drop(client, "closed")
            except (BlockingIOError, InterruptedError):
                pass
            except (OSError, ValueError) as exc:
                self._drop(client, f"recv: {exc}")
        for client in writable:
            if client.pending is not None and not client.done.is_set():
                self._write(client, client.pending)
        now = time.monotonic()
        for client in clients:
            if client.pending is not None and now - client.since > self.server.write_timeout:
                self._drop(client, "stalled")

    def run(self) -> None:
        _lower_priority()
        feed, srv = self.server.feed, self.server
        next_due = 0.0
        while not srv.stopping:
            with self._lock:
                clients = list(self.clients)
            if not clients:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            can_take = any(c.pending is None for c in clients)
            self._service(clients, max(0.0, next_due - time.monotonic()) if can_take else 0.25)
            with self._lock:
                ready = [c for c in self.clients if c.pending is None]
            if not ready or time.monotonic() < next_due:
                continue
            got = feed.wait_jpeg(min(c.last for c in ready), timeout=0.25)
            if got is None:
                if feed.closed:
                    for client in ready:
                        self._write(client, f"--{BOUNDARY}--\r\n".encode())
                        self._drop(client, "end of the run")
                continue
            seq, jpeg = got
            part = _part(seq, jpeg, feed.jpeg_info(seq))
            for client in ready:
                if client.last < seq:
                    self._write(client, part)
                    client.last = seq
            next_due = time.monotonic() + feed.min_interval
        with self._lock:
            clients, self.clients = self.clients, []
        for client in clients:
            client.done.set()


def _part(seq: int, jpeg: bytes, info: dict) -> bytes:
    """One part of the MJPEG stream, with the frame number, index and count of the frame it holds."""
    head = [f"--{BOUNDARY}", "Content-Type: image/jpeg", f"Content-Length: {len(jpeg)}", f"X-Edgeseg-Frame: {seq}"]
    for key, name in (("index", "X-Edgeseg-Index"), ("count", "X-Edgeseg-Count")):
        if info.get(key) is not None:
            head.append(f"{name}: {_csv_num(info[key])}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + jpeg + b"\r\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, feed, token, max_streams, max_connections, write_timeout,
                 header_timeout=DEFAULT_HEADER_TIMEOUT_S):
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.feed = feed
        self.token = token
        self.max_streams = max_streams
        self.max_connections = max_connections
        self.write_timeout = write_timeout
        self.header_timeout = float(header_timeout)
        self.page = _load_page()
        self.stopping = False
        self._lock = threading.Lock()
        self._streams: set = set()
        self._connections = 0
        self._waiting: dict = {}  # connections that have not sent their request yet -> when they connected
        self.evicted = 0  # waiting connections closed to make room for a new one, or for their header timeout
        super().__init__(address, _Handler)
        self.streamer = _Streamer(self)
        self.streamer.start()

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can hang on a lab network without DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    # a cap on open connections (each is a thread): at the cap, a new connection takes the slot of the oldest one
    # still waiting to send its request (idle or slow), and is refused only when none is waiting
    def verify_request(self, request, client_address) -> bool:
        with self._lock:
            if self._connections >= self.max_connections:
                if not self._waiting:
                    return False
                oldest = next(iter(self._waiting))
                self._waiting.pop(oldest)
                self._close_waiting(oldest)
            self._connections += 1
            self._waiting[request] = time.monotonic()
            return True

    def request_started(self, conn) -> None:
        """The connection sent its request line and headers: it no longer counts as waiting."""
        with self._lock:
            self._waiting.pop(conn, None)

    def service_actions(self) -> None:
        """Called by serve_forever between polls: close the connections past their header timeout."""
        limit = time.monotonic() - self.header_timeout
        with self._lock:
            late = [conn for conn, since in self._waiting.items() if since < limit]
            for conn in late:
                self._waiting.pop(conn)
                self._close_waiting(conn)

    def _close_waiting(self, conn) -> None:
        """End a waiting connection: its handler's read returns at once and its thread ends (lock held)."""
        self.evicted += 1
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._connections -= 1
                self._waiting.pop(request, None)

    def open_stream(self, conn) -> bool:
        with self._lock:
            if self.stopping or len(self._streams) >= self.max_streams:
                return False
            self._streams.add(conn)
            return True

    def close_stream(self, conn) -> None:
        with self._lock:
            self._streams.discard(conn)

    @property
    def streams(self) -> int:
        return len(self._streams)

    @property
    def connections(self) -> int:
        return self._connections

    def feed_stats(self) -> dict:
        stats = self.feed.stats()
        stats["feed"]["streams"] = self.streams
        return stats

    def stop_streams(self) -> None:
        self.stopping = True
        with self._lock:
            conns = list(self._streams)
        for conn in conns:  # unblocks a handler stuck writing to a stalled client
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LiveServer:
    """Handle on a running server: ``url`` (with the token), ``host``, ``port``, ``token``, ``shutdown()``."""

    def __init__(self, httpd: _Server, thread: threading.Thread, host: str):
        self._httpd = httpd
        self._thread = thread
        self.host = host
        self.port = httpd.server_address[1]
        self.token = httpd.token
        shown = host
        if host in ("0.0.0.0", "::", ""):
            shown = socket.gethostname()  # somewhere a browser on the lab network can reach
        if ":" in shown:
            shown = f"[{shown}]"
        self.url = f"http://{shown}:{self.port}/" + (f"?token={quote(self.token, safe='')}" if self.token else "")

    @property
    def streams(self) -> int:
        return self._httpd.streams

    @property
    def connections(self) -> int:
        return self._httpd.connections

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every stream (stalled ones included), close the socket. Idempotent."""
        if self._httpd.stopping and not self._thread.is_alive():
            return
        self._httpd.stop_streams()
        self._httpd.shutdown()
        self._thread.join(timeout)
        self._httpd.server_close()

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_hostport(spec: str | int, default_host: str = DEFAULT_HOST) -> tuple[str, int]:
    """``8080``, ``:8080``, ``0.0.0.0:8080``, ``[::]:8080`` -> (host, port). Bad input -> EdgesegError."""
    spec = str(spec).strip()
    m = re.fullmatch(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)|(?P<only>\d+)", spec)
    if not m:
        raise EdgesegError(
            f"--serve {spec!r} is not [HOST:]PORT", "e.g. --serve 8080, --serve 127.0.0.1:8080 or --serve 0.0.0.0:8080"
        )
    port = int(m["port"] or m["only"])
    host = m["v6"] or m["host"] or default_host
    if not 0 <= port <= 65535:
        raise EdgesegError(f"--serve port {port} is out of range", "use 1-65535 (0 picks a free port)")
    return host, port


def serve(
    feed: LiveFeed,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    max_streams: int = 8,
    *,
    write_timeout: float = 20.0,
    max_connections: int | None = None,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
) -> LiveServer:
    """Serve ``feed`` on http://HOST:PORT/ from a daemon thread; returns the handle (``.url``, ``.shutdown()``).

    A non-loopback host without a token gets one from ``secrets.token_urlsafe`` (it is in ``.url``).
    """
    if token is not None and not token:
        raise EdgesegError("--token is empty", "give a non-empty token or leave --token out")
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(16)
    try:
        httpd = _Server(
            (host, port), feed, token, max_streams, max_connections or max_streams + 32, float(write_timeout),
            header_timeout,
        )
    except OSError as exc:
        raise EdgesegError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc})",
            "choose another port or host with --serve HOST:PORT",
        ) from exc
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="edgeseg-serve")
    thread.daemon = True
    thread.start()
    return LiveServer(httpd, thread, host)
