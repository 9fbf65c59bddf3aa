"""The browser view of a live run (device/serve.py): routes, security, load, and a real headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import sigint_default

from edgeseg.device.hardware import rss_mb
from edgeseg.device.live import LiveThread, RunOptions, load_segmenter
from edgeseg.device.serve import BOUNDARY, LiveFeed, is_loopback, parse_hostport, serve
from edgeseg.device.sources import open_source
from edgeseg.errors import EdgesegError
from edgeseg.zoo import DEFAULT_RUN_MODEL, SAMPLE_CLIP, zoo_entries

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------------------------
# helpers


def _frame(value: int, shape=(120, 160, 3)) -> np.ndarray:
    img = np.full(shape, value, np.uint8)
    cv2.circle(img, (40, 40), 20, (0, 255, 0), -1)
    return img


def _request(server, path, method="GET", headers=None, host="127.0.0.1", timeout=5.0):
    """(status, headers, body) of one request; the body is read only for non-stream routes."""
    conn = http.client.HTTPConnection(host, server.port, timeout=timeout)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read() if not path.startswith("/stream.mjpg") or resp.status != 200 else b""
    conn.close()
    return resp.status, resp.headers, body


def _open_stream(server, path="/stream.mjpg", timeout=5.0):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    conn.request("GET", path)
    conn.stream_sock = conn.sock  # http.client lets go of it once the response says "Connection: close"
    return conn, conn.getresponse()


def _read_part(resp) -> bytes:
    """One JPEG from a multipart/x-mixed-replace response."""
    headers, data = _read_part_headers(resp)
    assert headers["content-type"] == "image/jpeg"
    return data


def _wait(cond, timeout=60.0, step=0.02) -> bool:
    """Poll until ``cond()``; the timeout only stops a hang (it returns as soon as the condition holds)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


@pytest.fixture
def feed():
    f = LiveFeed()
    yield f
    f.close()


@pytest.fixture
def server(feed):
    s = serve(feed, port=0)
    yield s
    s.shutdown()


# --------------------------------------------------------------------------------------------------------------------
# the feed


def test_publish_copies_the_frame_and_returns_at_once(feed, monkeypatch):
    img = _frame(10, (480, 640, 3))
    feed.publish(img, {"count": 3})
    img[:] = 255  # the runtime reuses its buffer: what was published must not change
    png = feed.snapshot_png()
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[0, 0].tolist() == [10, 10, 10]

    class EncoderBusy:  # a client is encoding: whoever waits for the encoder's lock fails here instead of waiting
        def __enter__(self):
            raise AssertionError("publish() waited for the JPEG encoder")

        __exit__ = acquire = __enter__

    monkeypatch.setattr(feed, "_encode_lock", EncoderBusy())
    for i in range(200):
        feed.publish(img, {"count": i})
    # a 640x480 copy and a few reference swaps: publish() neither encodes nor waits for an encode
    assert feed.encodes == 0
    assert feed.frames == 201 and feed.stats()["count"] == 199


def test_jpeg_is_encoded_once_per_frame_and_shared_by_all_clients():
    feed = LiveFeed(max_fps=None)
    feed.publish(_frame(50), {})
    got = []
    threads = [threading.Thread(target=lambda: got.append(feed.wait_jpeg(0, 2.0))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert feed.encodes == 1
    assert len({id(g[1]) for g in got}) == 1 and all(g[0] == 1 for g in got)
    # a client that already has frame 1 waits for frame 2, then one more encode
    assert feed.wait_jpeg(1, 0.05) is None
    feed.publish(_frame(60), {})
    seq, jpeg = feed.wait_jpeg(1, 1.0)
    assert seq == 2 and feed.encodes == 2
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)


def test_encode_rate_is_capped_at_max_fps_whatever_the_frame_rate(monkeypatch):
    """One second on a fake clock (the feed's only clock): a frame published every 2 ms, while time passes, and a
    client taking frames as fast as it can. Exact whatever the machine's speed."""
    import edgeseg.device.serve as serve_module

    feed = LiveFeed(max_fps=10)
    clock = types.SimpleNamespace(now=100.0, next=100.0)

    def sleep(seconds):  # time passes: the publisher publishes the frames due meanwhile
        end = clock.now + max(seconds, 0.0)
        while clock.next <= end + 1e-9:
            clock.now = clock.next
            feed.publish(_frame(feed.frames % 255), {})
            clock.next += 0.002
        clock.now = max(clock.now, end)

    monkeypatch.setattr(serve_module, "time", types.SimpleNamespace(monotonic=lambda: clock.now, sleep=sleep))
    sleep(0.0)
    last, got = 0, []
    while clock.now < 101.0:
        new = feed.wait_jpeg(last, 0.0)
        if new is None:  # nothing newer yet: the client asks again 2 ms later
            sleep(0.002)
            continue
        last = new[0]
        got.append((clock.now, last, feed.frames))
    assert feed.frames >= 500  # the publisher ran at its own pace...
    assert 10 <= feed.encodes <= 11 and len(got) == feed.encodes  # ...and the JPEG at max_fps (10/s for 1 s)
    pairs = list(zip(got, got[1:], strict=False))
    assert all(b[0] - a[0] >= 0.1 - 1e-6 for a, b in pairs)
    assert all(seq == newest for _, seq, newest in got)  # each encode is of the newest frame...
    assert all(b[1] - a[1] >= 40 for a, b in pairs)  # ...and the frames in between are skipped


# --------------------------------------------------------------------------------------------------------------------
# host, port, token


def test_parse_hostport_defaults_to_loopback():
    assert parse_hostport("8080") == ("127.0.0.1", 8080)
    assert parse_hostport(":9000") == ("127.0.0.1", 9000)
    assert parse_hostport("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_hostport("[::1]:8081") == ("::1", 8081)
    assert parse_hostport("raspberrypi.local:80") == ("raspberrypi.local", 80)
    for bad in ("", "host", "1.2.3.4:", "8080:1.2.3.4", "1.2.3.4:99999", "a:b:8080"):
        with pytest.raises(EdgesegError):
            parse_hostport(bad)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20") and not is_loopback("pi.local")


def test_a_non_loopback_host_gets_a_generated_token(feed):
    s = serve(feed, host="0.0.0.0", port=0)
    try:
        assert s.token and len(s.token) >= 16
        assert s.url.endswith(f":{s.port}/?token={s.token}")
        assert _request(s, "/healthz")[0] == 401
        assert _request(s, f"/healthz?token={s.token}")[0] == 200
    finally:
        s.shutdown()


def test_port_in_use_is_one_line_user_error(feed, server):
    with pytest.raises(EdgesegError, match="cannot listen on 127.0.0.1"):
        serve(feed, port=server.port)


# --------------------------------------------------------------------------------------------------------------------
# security


def test_wrong_or_missing_token_gets_401_on_every_route(feed):
    feed.publish(_frame(1), {"count": 1})
    s = serve(feed, port=0, token="s3cret-token")
    try:
        for path in ("/", "/stats", "/stream.mjpg", "/snapshot.png", "/healthz", "/nope", "/../etc/passwd"):
            assert _request(s, path)[0] == 401, path
            assert _request(s, path + "?token=wrong")[0] == 401, path
            assert _request(s, path, headers={"Authorization": "Bearer s3cret-tokenX"})[0] == 401, path
        status, headers, _ = _request(s, "/stats")
        assert headers["WWW-Authenticate"] == "Bearer"
        assert _request(s, "/stats", "POST")[0] == 401  # nothing, not even 405, without the token
        assert _request(s, "/stats?token=s3cret-token")[0] == 200
        assert _request(s, "/stats", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        assert _request(s, "/stats", headers={"X-Edgeseg-Token": "s3cret-token"})[0] == 200
        assert _request(s, "/nope?token=s3cret-token")[0] == 404
    finally:
        s.shutdown()


def test_only_fixed_routes_and_only_get_and_head(feed, server):
    feed.publish(_frame(1), {})
    for path in ("/index.html", "/static/index.html", "/../../etc/passwd", "/%2e%2e/serve.py", "/stats/", "http://x/stats",
                 "/stream.mjpg/x", "/device/serve.py", "/favicon.ico"):
        assert _request(server, path)[0] == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"):
        status, headers, _ = _request(server, "/stats", method)
        assert status == 405, method
        assert headers["Allow"] == "GET, HEAD"
    status, headers, body = _request(server, "/stats", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 10


def test_ninth_stream_gets_503_and_a_closed_stream_frees_its_slot(feed, server):
    feed.publish(_frame(1), {})
    streams = [_open_stream(server) for _ in range(8)]
    try:
        assert all(resp.status == 200 for _, resp in streams)
        assert _wait(lambda: server.streams == 8)
        assert _request(server, "/stream.mjpg")[0] == 503
        assert _request(server, "/stats")[0] == 200  # other routes still work
        conn, resp = streams.pop()
        resp.close()
        conn.close()
        assert _wait(lambda: server.streams == 7)
        conn, resp = _open_stream(server)
        streams.append((conn, resp))
        assert resp.status == 200
    finally:
        for conn, resp in streams:
            resp.close()
            conn.close()
    assert _wait(lambda: server.streams == 0)  # found while idle: no frame was published since


# --------------------------------------------------------------------------------------------------------------------
# routes


def test_page_is_self_contained_with_a_strict_policy(server):
    status, headers, body = _request(server, "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for external in ("http://", "https://", "src=\"//", "@import", "cdn", "googleapis"):
        assert external not in page.lower(), external
    assert 'id="live"' in page and "stream.mjpg" in page and "stats" in page
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe" not in csp


def test_stats_snapshot_health_and_stream(feed, server):
    assert json.loads(_request(server, "/healthz")[2])["status"] == "waiting"
    assert _request(server, "/snapshot.png")[0] == 503
    stats = {"type": "summary", "frames": 7, "dropped": 0, "fps": 12.5, "latency_ms": {"p50": 30.0, "p90": 41.0},
             "model": "fast_scnn-int8", "backend": "onnxruntime", "precision": "int8", "count": np.int64(17)}
    img = _frame(90, (240, 320, 3))
    feed.publish(img, stats)
    got = json.loads(_request(server, "/stats")[2])
    assert {k: got[k] for k in stats} == {**stats, "count": 17}
    assert got["feed"]["frames"] == 1 and got["feed"]["streams"] == 0
    png = _request(server, "/snapshot.png")[2]
    assert np.array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), img)  # lossless
    assert json.loads(_request(server, "/healthz")[2]) == {"status": "ok", "frames": 1, "streams": 0}

    conn, resp = _open_stream(server)
    assert resp.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
    first = cv2.imdecode(np.frombuffer(_read_part(resp), np.uint8), cv2.IMREAD_COLOR)
    assert first.shape == img.shape and np.abs(first.astype(int) - img).mean() < 3
    feed.publish(_frame(200, (240, 320, 3)), stats)
    second = cv2.imdecode(np.frombuffer(_read_part(resp), np.uint8), cv2.IMREAD_COLOR)
    assert abs(int(second[200, 300, 0]) - 200) < 5
    feed.close()  # the run ends: the stream ends with the closing boundary, health says so
    assert resp.fp.readline() == f"--{BOUNDARY}--\r\n".encode()
    conn.close()
    status, _, body = _request(server, "/healthz")
    assert status == 503 and json.loads(body)["status"] == "closed"


def _stream_client(server, sock: socket.socket):
    """The server's record of the stream whose client end is ``sock`` (device/serve.py ``_Client``: ``last``, the
    number of the last frame handed to it, and ``pending``, the unsent rest of the one frame it may hold), or None."""
    port = sock.getsockname()[1]
    streamer = server._httpd.streamer
    with streamer._lock:
        clients = list(streamer.clients)
    for client in clients:
        try:
            if client.sock.getpeername()[1] == port:
                return client
        except OSError:
            pass
    return None


def _stall(server) -> socket.socket:
    """A client that asks for the stream and then never reads (a tiny receive buffer fills at once)."""
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    return stalled


def test_a_stalled_client_is_dropped_and_the_others_keep_their_frame_rate(feed):
    """Counted, not timed: while a stalled client holds its one partly sent frame, another reader goes on getting
    frames and the stalled one skips them (nothing queued); once write_timeout passes it is dropped."""
    s = serve(feed, port=0, write_timeout=3600)  # not dropped until the test lowers it, below
    stop = threading.Event()
    noise = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)  # ~100 kB JPEGs

    def publisher():
        i = 0
        while not stop.is_set():
            feed.publish(noise if i % 2 else 255 - noise, {"count": i})
            i += 1
            time.sleep(0.02)

    t = threading.Thread(target=publisher)
    t.start()
    stalled = None
    try:
        stalled = _stall(s)
        conn, resp = _open_stream(s, timeout=60)
        assert _wait(lambda: s.streams == 2)
        sizes, stuck = [], None
        while stuck is None or stuck.pending is None:  # until the stalled client's socket buffers are full
            assert len(sizes) < 2000, "the stalled client never filled its buffers"
            sizes.append(len(_read_part(resp)))
            stuck = _stream_client(s, stalled)
        reader = _stream_client(s, conn.stream_sock)
        stuck_last, reader_last = stuck.last, reader.last
        for _ in range(20):  # the reader never waits for the stalled client...
            sizes.append(len(_read_part(resp)))
        assert reader.last > reader_last and s.streams == 2
        # ...which keeps one partly sent frame (not a queue) and skips the frames sent meanwhile
        assert stuck.last == stuck_last < reader.last
        assert stuck.pending is not None and len(stuck.pending) < 2 * min(sizes)
        s._httpd.write_timeout = 1.5  # now it has taken nothing for longer than write_timeout: dropped
        assert _wait(lambda: s.streams == 1), "the stalled client was not dropped after write_timeout"
        for _ in range(3):
            _read_part(resp)  # the reader's stream goes on
        resp.close()
        conn.close()
        assert _wait(lambda: s.streams == 0 and s.connections == 0)
    finally:
        stop.set()
        t.join()
        if stalled is not None:
            stalled.close()
        s.shutdown()


def test_head_of_the_stream_is_not_a_stream(feed, server):
    status, headers, body = _request(server, "/stream.mjpg", "HEAD")
    assert status == 200 and body == b"" and headers["Content-Type"].startswith("multipart/x-mixed-replace")
    assert server.streams == 0


def test_shutdown_ends_a_stalled_stream_at_once(feed):
    s = serve(feed, port=0, write_timeout=3600)  # never dropped for stalling: only the shutdown can end it
    feed.publish(_frame(1, (480, 640, 3)), {})
    stalled = _stall(s)
    noise = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)  # big JPEGs fill buffers
    i = 0
    while (c := _stream_client(s, stalled)) is None or c.pending is None:  # until it holds a partly sent frame
        assert i < 10_000, "the stalled client never filled its buffers"
        feed.publish(noise if i % 2 else 255 - noise, {})
        i += 1
        time.sleep(0.01)
    assert s.streams == 1
    stopper = threading.Thread(target=s.shutdown)
    stopper.start()
    stopper.join(60)  # only stops a hang: shutdown() returns as soon as the server is down
    assert not stopper.is_alive(), "shutdown() waited for the stalled client"
    assert _wait(lambda: s.streams == 0), "the stalled stream outlived the shutdown"
    stalled.settimeout(60)  # a hang guard: the client drains what was in flight, then reads the end
    with contextlib.suppress(ConnectionResetError):
        while stalled.recv(1 << 16):
            pass
    stalled.close()


# --------------------------------------------------------------------------------------------------------------------
# load: 8 streaming clients + 1 stalled client on a real run


@pytest.fixture(scope="module")
def run_model(tmp_path_factory) -> str:
    """The shipped Fast-SCNN INT8 once the zoo has it, else a real (tiny) exported ONNX model (tests/conftest.py)."""
    if DEFAULT_RUN_MODEL in {ref.name for ref in zoo_entries()}:
        return DEFAULT_RUN_MODEL
    from conftest import write_threshold_onnx

    return str(write_threshold_onnx(tmp_path_factory.mktemp("model") / "bright.onnx"))


def live_run(model: str, feed: LiveFeed) -> LiveThread:
    """The real runtime loop on the shipped clip, looping, in a thread of this process (the server shares the
    loop's process and GIL as it does under `edgeseg run`)."""
    seg = load_segmenter(RunOptions(model=model, source=str(SAMPLE_CLIP), threads=1))
    return LiveThread(seg, open_source(SAMPLE_CLIP, model_size=seg.input_size, loop=True), sinks=[feed])


class _CountingFeed(LiveFeed):
    """A LiveFeed that notes the number of every frame it encodes to JPEG."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.encoded: list[int] = []

    def wait_jpeg(self, after, timeout):
        n = self.encodes
        got = super().wait_jpeg(after, timeout)
        if self.encodes > n:
            self.encoded.append(self._jpeg_seq)
        return got


def test_eight_streams_and_a_stalled_client_share_one_encode_and_queue_nothing(run_model):
    """The real loop publishing to the server with 8 readers and 1 stalled client. Counted, not timed (how fast the
    pipeline goes with and without viewers is a benchmark's question, not a test's): every reader gets its 200 and
    frame after frame while the stalled client holds one partly sent frame and skips the rest (nothing queued, the
    loop never waits), each frame is JPEG-encoded at most once for all clients, and memory stays flat."""
    feed = _CountingFeed()
    server = serve(feed, port=0, max_streams=9, write_timeout=3600)  # the stalled client stays for the whole test
    pipe = live_run(run_model, feed)
    streams, stalled, rounds = [], None, 30
    try:
        pipe.start()
        assert _wait(lambda: feed.frames > 5), "the run did not start"
        stalled = _stall(server)
        streams = [_open_stream(server, timeout=60) for _ in range(8)]
        assert all(resp.status == 200 for _, resp in streams)
        assert _wait(lambda: server.streams == 9)
        sizes = []

        def one_round():
            for _, resp in streams:
                sizes.append(len(_read_part(resp)))

        stuck = None
        while stuck is None or stuck.pending is None:  # until the stalled client's socket buffers are full
            assert len(sizes) < 8 * 2000, "the stalled client never filled its buffers"
            one_round()
            stuck = _stream_client(server, stalled)
        frames0, enc0, stuck_last, rss0 = feed.frames, feed.encodes, stuck.last, rss_mb()
        for _ in range(rounds):
            one_round()
        frames1, enc1, rss1 = feed.frames, feed.encodes, rss_mb()
        readers = [_stream_client(server, conn.stream_sock) for conn, _ in streams]
        last_jpeg = _read_part(streams[0][1])
        assert stuck.pending is not None and stuck.last == stuck_last and server.streams == 9
    finally:
        for conn, resp in streams:
            resp.close()
            conn.close()
        if stalled is not None:
            stalled.close()
        cleaned = _wait(lambda: server.streams == 0 and server.connections == 0)
        pipe.close()
        server.shutdown()
    report = {"frames": frames1 - frames0, "jpeg_encodes": enc1 - enc0, "deliveries": 8 * rounds,
              "rss_growth_mb": round(rss1 - rss0, 1), "stalled_last": stuck_last,
              "readers_last": [r.last for r in readers], "pending_bytes": len(stuck.pending)}
    print("\nload:", json.dumps(report))
    assert cleaned, "the closed clients were not cleaned up"
    # the loop kept going while the stalled client was stuck, and published every frame it made
    assert frames1 > frames0 and pipe.result.summary["frames"] == feed.frames, report
    # the stalled client: one partly sent frame, never a queue; it skipped every frame the readers got meanwhile
    assert len(stuck.pending) < 2 * min(sizes) and all(r.last > stuck_last for r in readers), report
    # one encode per frame for all clients: never the same frame twice, far fewer encodes than frames delivered
    assert len(feed.encoded) == len(set(feed.encoded)) and len(feed.encoded) <= feed.frames
    assert enc1 - enc0 <= 8 * rounds // 2, report
    assert cv2.imdecode(np.frombuffer(last_jpeg, np.uint8), cv2.IMREAD_COLOR) is not None
    # memory stays flat with a stalled client (nothing is queued per client)
    assert rss1 - rss0 < 15, report


# --------------------------------------------------------------------------------------------------------------------
# a real browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None  # `make browser` installs Debian's chromium (tests install and download nothing)


class _CDP:
    """Chrome DevTools Protocol over --remote-debugging-pipe (fds 3 and 4): no websocket library needed."""

    def __init__(self, exe: str, profile, size=(1100, 720)):
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()

        def child():
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "--mute-audio", "about:blank"],
            preexec_fn=child, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self.w, self.r, self.buf, self.n = cmd_w, out_r, b"", 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method, params=None, page=False, timeout=20.0):
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params or {}}
        if page:
            msg["sessionId"] = self.session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.n:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(method)
            if select.select([self.r], [], [], left)[0]:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium exited")
                self.buf += chunk

    def js(self, expression: str):
        got = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, page=True)
        return got["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.w)
        os.close(self.r)


_READ_PAGE = """JSON.stringify({w: document.getElementById('live').naturalWidth,
 h: document.getElementById('live').naturalHeight, count: document.getElementById('count').textContent,
 fps: document.getElementById('fps').textContent, model: document.getElementById('model').textContent,
 backend: document.getElementById('backend').textContent, state: document.getElementById('state').textContent})"""


def _start_run(model: str, tmp_path, *extra: str):
    """`edgeseg run` on the shipped clip (looping), serving on a free port, in a subprocess; returns it and its URL."""
    code = "import sys; from edgeseg.cli import main; main(sys.argv[1:])"
    cmd = [sys.executable, "-c", code, "run", "--model", model, "--source", str(SAMPLE_CLIP), "--loop",
           "--serve", "127.0.0.1:0", "--no-display", "--no-record", "--log", str(tmp_path / "run.jsonl"),
           "--out", str(tmp_path / "run"), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=sigint_default)
    lines: list[str] = []
    end = time.monotonic() + 60
    while time.monotonic() < end and select.select([proc.stdout], [], [], end - time.monotonic())[0]:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "watch the live overlay at " in line:
            return proc, line.split("watch the live overlay at ", 1)[1].strip()
    proc.kill()
    raise AssertionError("edgeseg run did not start serving:\n" + "".join(lines))


def test_headless_chromium_watches_edgeseg_run_on_the_shipped_clip(run_model, tmp_path):
    """A real browser on a real run: the page loads, the MJPEG image decodes, the count and FPS change."""
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not found: run `make browser`")
    proc, url = _start_run(run_model, tmp_path, "--token", "browser-test-token")
    browser = None
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/?token=browser-test-token")
        browser = _CDP(exe, tmp_path / "profile")
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": 1100, "height": 720, "deviceScaleFactor": 1, "mobile": False}, page=True)
        browser.call("Page.navigate", {"url": url}, page=True)
        seen = []
        end = time.monotonic() + 120  # only stops a hang: the loop ends once the count and the FPS have changed
        while time.monotonic() < end:
            time.sleep(0.4)
            state = json.loads(browser.js(_READ_PAGE) or "{}")
            if state.get("w"):
                seen.append(state)
            if len({s["count"] for s in seen}) > 1 and len({s["fps"] for s in seen}) > 1 and len(seen) >= 4:
                break
        png = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"}, page=True)["data"])
        stats = json.loads(urllib.request.urlopen(url.replace("/?", "/stats?"), timeout=5).read())
    finally:
        if browser is not None:
            browser.close()
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    (tmp_path / "serve.png").write_bytes(png)  # the test's artefact
    if os.environ.get("EDGESEG_UPDATE_SCREENSHOT"):  # regenerate the README's picture
        (REPO / "docs").mkdir(exist_ok=True)
        (REPO / "docs" / "serve.png").write_bytes(png)
    assert proc.returncode == 130 and "FPS end to end" in out, out
    assert seen, "the stream image never decoded in the browser"
    assert (seen[-1]["w"], seen[-1]["h"]) == (520, 520)  # the 130x130 clip, enlarged x4 by the overlay
    assert seen[-1]["state"] == "live"
    assert (seen[-1]["model"], seen[-1]["backend"]) == (stats["model"], stats["backend"]) == (
        Path(run_model).stem if run_model.endswith(".onnx") else run_model, "onnxruntime")
    assert len({s["count"] for s in seen}) > 1, f"the count never changed: {seen}"
    assert len({s["fps"] for s in seen}) > 1, f"the FPS never changed: {seen}"
    assert all(s["count"].isdigit() and float(s["fps"]) > 0 for s in seen[1:]), seen
    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert shot.shape[:2] == (720, 1100) and shot.std() > 10  # a real picture, not a blank page


# --------------------------------------------------------------------------------------------------------------------
# the time series: /series.csv, /series.json and the page's chart


def _csv_rows(body: bytes) -> list[list[str]]:
    lines = body.decode().splitlines()
    assert lines[0] == "time,frame,count,tracks,fps,mean_area"
    return [line.split(",") for line in lines[1:]]


def test_series_csv_has_the_published_counts_in_order(feed, server):
    status, headers, body = _request(server, "/series.csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv") and _csv_rows(body) == []
    for i, n in enumerate((5, 7, 3, 9)):
        frame = {"index": 100 + i, "count": n}
        if i >= 2:
            frame.update(tracks=n + 1, new_tracks=1, mean_area=100.0 + i)
        feed.publish(_frame(1), {"frame": frame, "count": n, "fps_rolling": 10.0 + i})
    status, headers, body = _request(server, "/series.csv")
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    rows = _csv_rows(body)
    assert [r[2] for r in rows] == ["5", "7", "3", "9"]  # newest last
    assert [r[1] for r in rows] == ["100", "101", "102", "103"]
    assert [r[3] for r in rows] == ["", "", "4", "10"]  # tracks only with --track
    assert [float(r[4]) for r in rows] == [10.0, 11.0, 12.0, 13.0]
    assert [float(r[5]) if r[5] else None for r in rows] == [None, None, 102.0, 103.0]  # the mean area (--track)
    times = [float(r[0]) for r in rows]
    assert times == sorted(times) and times[0] > 1e9  # Unix seconds
    # the JSON route the page polls: the same samples, and only the newer ones after ?since=
    series = json.loads(_request(server, "/series.json")[2])
    assert [s[3] for s in series["samples"]] == [5, 7, 3, 9] and series["last"] == 4
    newer = json.loads(_request(server, f"/series.json?since={series['samples'][1][0]}")[2])
    assert [s[3] for s in newer["samples"]] == [3, 9] and [s[4] for s in newer["samples"]] == [4, 10]
    assert _request(server, "/series.json?since=x")[0] == 400
    assert _request(server, "/series.csv", "HEAD")[2] == b""


def test_series_is_bounded_and_drops_the_oldest():
    feed = LiveFeed(series_max=5)
    s = serve(feed, port=0)
    try:
        for n in range(12):
            feed.publish(_frame(1), {"count": n})
        rows = _csv_rows(_request(s, "/series.csv")[2])
        assert [int(r[2]) for r in rows] == [7, 8, 9, 10, 11]
        assert [int(r[1]) for r in rows] == [8, 9, 10, 11, 12]  # no frame index given: the feed's frame number
        assert len(feed._series) == 5 and feed._series.maxlen == 5
    finally:
        s.shutdown()
        feed.close()


def test_series_keeps_only_the_window(monkeypatch):
    import edgeseg.device.serve as serve_module

    feed = LiveFeed(series_window_s=10.0)
    clock = [1000.0]
    monkeypatch.setattr(serve_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    for n in range(6):
        feed.publish(_frame(1), {"count": n})
        clock[0] += 4.0  # samples at 1000, 1004, ..., 1020
    assert [sample[3] for sample in feed.series()] == [3, 4, 5]  # 1012..1020: within 10 s of the newest
    feed.close()


def test_series_routes_need_the_token(feed):
    feed.publish(_frame(1), {"count": 4})
    s = serve(feed, port=0, token="s3cret-token")
    try:
        for path in ("/series.csv", "/series.json", "/series.json?since=0"):
            assert _request(s, path)[0] == 401, path
            sep = "&" if "?" in path else "?"
            assert _request(s, path + sep + "token=wrong")[0] == 401, path
            assert _request(s, path + sep + "token=s3cret-token")[0] == 200, path
        rows = _csv_rows(_request(s, "/series.csv", headers={"Authorization": "Bearer s3cret-token"})[2])
        assert [r[2] for r in rows] == ["4"]
    finally:
        s.shutdown()


def test_page_draws_the_series_from_its_own_route_and_stays_self_contained(server):
    import re

    status, headers, body = _request(server, "/")
    page = body.decode()
    assert status == 200 and "series.json" in page and "series.csv" in page and '<canvas id="chart"' in page
    assert not re.search(r"https?://", page, flags=re.I), "the page names an external URL"
    assert "<script src" not in page and "unsafe" not in headers["Content-Security-Policy"]


# --------------------------------------------------------------------------------------------------------------------
# idle connections and the count carried with each frame


def _read_part_headers(resp) -> tuple[dict, bytes]:
    """(headers, JPEG) of one part of a multipart/x-mixed-replace response."""
    line = resp.fp.readline()
    while line in (b"\r\n", b""):
        line = resp.fp.readline()
    assert line == f"--{BOUNDARY}\r\n".encode(), line
    headers = {}
    while (line := resp.fp.readline()) != b"\r\n":
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    data = resp.fp.read(int(headers["content-length"]))
    assert resp.fp.read(2) == b"\r\n"
    return headers, data


def test_forty_idle_connections_do_not_lock_a_viewer_out(feed):
    s = serve(feed, port=0, header_timeout=3600)  # idle sockets are only closed to make room, here
    feed.publish(_frame(1), {"count": 3})
    idle = [socket.create_connection(("127.0.0.1", s.port), timeout=5) for _ in range(40)]
    try:
        assert _wait(lambda: s.connections == 40), s.connections  # every slot (8 streams + 32) taken by idle sockets
        status, _, body = _request(s, "/stats", timeout=10)
        assert status == 200 and json.loads(body)["count"] == 3
        conn, resp = _open_stream(s, timeout=10)
        assert resp.status == 200 and _read_part_headers(resp)[1][:2] == b"\xff\xd8"
        assert s._httpd.evicted >= 1  # the oldest idle socket gave its slot up
        resp.close()
        conn.close()
        assert idle[0].recv(1) == b""  # the oldest idle socket was closed by the server
    finally:
        for sock in idle:
            sock.close()
        s.shutdown()


def test_a_connection_that_sends_no_request_is_closed_after_the_header_timeout(feed):
    s = serve(feed, port=0, header_timeout=0.3)
    try:
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=30)  # the timeout only stops a hang
        sock.sendall(b"GET /stats HTTP/1.1\r\n")  # a request line, then nothing: a slow or stuck client
        assert sock.recv(1) == b""  # closed by the server, without a response
        sock.close()
        assert _wait(lambda: s.connections == 0)
        assert _request(s, "/healthz")[0] == 200  # a prompt client is served as before
    finally:
        s.shutdown()


def test_each_streamed_frame_carries_its_own_count(feed, server):
    """The page shows the count that came with the image: each part's X-Edgeseg-Count is its frame's count."""
    conn, resp = _open_stream(server)
    try:
        seen = {}
        for k in range(1, 6):
            value = 40 * k
            feed.publish(_frame(value), {"count": 100 + k, "frame": {"index": k - 1, "count": 100 + k}})
            headers, jpeg = _read_part_headers(resp)
            pixel = int(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)[100, 150])
            seen[int(headers["x-edgeseg-frame"])] = (int(headers["x-edgeseg-count"]),
                                                     int(headers["x-edgeseg-index"]), pixel)
        for count, index, pixel in seen.values():
            assert count == 100 + index + 1  # the count published with that frame
            assert abs(pixel - 40 * (index + 1)) <= 3  # ... and the image is that frame's
    finally:
        resp.close()
        conn.close()


def test_the_page_takes_the_count_from_the_stream_and_may_show_blob_images(server):
    status, headers, page = _request(server, "/")
    assert status == 200 and b"x-edgeseg-count" in page
    assert "img-src 'self' blob:;" in headers["Content-Security-Policy"]
