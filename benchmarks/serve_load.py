"""The browser stream under load: does `edgeseg run --serve` keep the pipeline's pace with 8 viewers and 1 stalled one?

    python benchmarks/serve_load.py            # writes benchmarks/results/serve_load.md (+ .json); --pairs 1: quick

The real runtime loop (run_live on the shipped clip, fast_scnn-int8 on one inference thread) runs in a thread of
this process, as under `edgeseg run --serve`. A client process (at nice +10: on a lab network the viewers are
other machines) opens 8 readers and 1 stalled client for 1-second blocks. The pipeline's FPS with the clients on
the edgeseg server (B) is compared with its FPS without (A) in 10 interleaved pairs (ABBA order, so a drift in
background load cancels); in A the same client process reads the same bytes from its own stand-in server, so the
clients' own CPU use on this machine weighs on both. Also: the loop thread's CPU time per frame (blind to
background load), publish() time, JPEG encodes (shared by all viewers), memory growth with a stalled client.
These were assertions of the test suite once; wall-clock claims belong here, the tests check counts.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine_line, markdown_table

from edgeseg.device.hardware import hardware_report, rss_mb
from edgeseg.device.live import LiveThread, load_segmenter
from edgeseg.device.options import RunOptions
from edgeseg.device.serve import BOUNDARY, LiveFeed, serve
from edgeseg.device.sources import open_source
from edgeseg.fsutil import atomic_write_json, atomic_write_text
from edgeseg.zoo import DEFAULT_RUN_MODEL, SAMPLE_CLIP

RESULTS = Path(__file__).resolve().parent / "results"


def _wait(cond, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.02)


class _Probe:
    """A sink in front of the LiveFeed that times the loop: frame end times, the loop thread's CPU time per frame
    (blind to background load on this shared machine) and the time spent in publish()."""

    def __init__(self, feed: LiveFeed):
        self.feed = feed
        self.times: list[float] = []
        self.cpu_ms: list[float] = []
        self.publish_ms: list[float] = []
        self._cpu = None

    def publish(self, image, stats) -> None:
        cpu, t0 = time.thread_time(), time.perf_counter()
        self.feed.publish(image, stats)
        self.publish_ms.append((time.perf_counter() - t0) * 1e3)
        self.cpu_ms.append((cpu - self._cpu) * 1e3 if self._cpu is not None else float("nan"))
        self._cpu = cpu
        self.times.append(time.monotonic())

    def close(self) -> None:
        self.feed.close()


def live_run(model: str, probe) -> LiveThread:
    """The real runtime loop (run_live: source -> Segmenter -> overlay -> sinks) on the shipped clip, looping, in
    a thread of this process, so the server shares the loop's process and GIL as it does under `edgeseg run`."""
    # one inference thread: on this 2-core machine the load's own clients (on loopback) need the other core
    seg = load_segmenter(RunOptions(model=model, source=str(SAMPLE_CLIP), threads=1))
    return LiveThread(seg, open_source(SAMPLE_CLIP, model_size=seg.input_size, loop=True), sinks=[probe])


_CLIENTS = r"""
# The load's clients, in their own process. Each stdin line "PORT SECS" opens 8 readers and 1 stalled client on
# PORT for SECS seconds and prints what the readers got. PORT 0 is this process's own stand-in MJPEG server (the
# same bytes at the same rate): the control blocks, so the clients' own CPU use on loopback (which on a lab
# network is another machine's) weighs on the pipeline equally with and without the edgeseg server.
import json, selectors, socket, sys, threading, time
n, mark, part_bytes, fps = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3]), float(sys.argv[4])
req = b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
part = mark + b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % part_bytes + b"x" * part_bytes + b"\r\n"
own = socket.create_server(("127.0.0.1", 0))

def stand_in(conn):
    try:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace\r\n\r\n")
        while True:
            conn.sendall(part)
            time.sleep(1 / fps)
    except OSError:
        conn.close()

def accept():
    while True:
        conn, _ = own.accept()
        threading.Thread(target=stand_in, args=(conn,), daemon=True).start()

threading.Thread(target=accept, daemon=True).start()
for line in sys.stdin:
    port, secs = int(line.split()[0]) or own.getsockname()[1], float(line.split()[1])
    sel = selectors.DefaultSelector()
    clients = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        s.setblocking(False)
        st = {"sock": s, "frames": 0, "bytes": 0, "tail": b"", "head": b""}
        sel.register(s, selectors.EVENT_READ, st)
        clients.append(st)
    stalled = socket.socket()  # connects, asks for the stream, then never reads
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(req)
    end = time.monotonic() + secs
    while (left := end - time.monotonic()) > 0:
        for key, _ in sel.select(left):
            st = key.data
            try:
                data = st["sock"].recv(1 << 18)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(st["sock"])
                continue
            buf = st["tail"] + data
            st["frames"] += buf.count(mark)
            st["tail"] = buf[-(len(mark) - 1):]
            st["bytes"] += len(data)
            if len(st["head"]) < 32:
                st["head"] += data[:32]
    for st in clients:
        st["sock"].close()
    stalled.close()
    print(json.dumps({"frames": [c["frames"] for c in clients], "bytes": [c["bytes"] for c in clients],
                      "status": [c["head"].split(b"\r\n")[0].decode() for c in clients]}), flush=True)
"""




def _median_of(blocks, kind, key):
    return statistics.median(b[key] for b in blocks if b["kind"] == kind)


def measure(model: str = DEFAULT_RUN_MODEL, pairs: int = 5) -> dict:
    """The A/B blocks and their summary (see the module docstring)."""
    feed = LiveFeed()
    server = serve(feed, port=0, max_streams=9)  # 8 readers + the stalled one
    probe = _Probe(feed)
    pipe = live_run(model, probe)
    clients, enc = None, []

    def run_block(kind: str) -> dict:
        t0 = time.monotonic()
        clients.stdin.write(f"{server.port if kind == 'B' else 0} 1.0\n")
        clients.stdin.flush()
        out = json.loads(clients.stdout.readline())
        t1 = time.monotonic()
        if kind == "B":
            _wait(lambda: server.streams == 0 and server.connections == 0, 3.0)
        enc.append(feed.encodes)
        idx = [i for i, t in enumerate(probe.times) if t0 <= t < t1]
        return {"kind": kind, "fps": len(idx) / (t1 - t0), "secs": t1 - t0, "frames": len(idx), "clients": out,
                "cpu_ms": statistics.mean(probe.cpu_ms[i] for i in idx),
                "publish_ms": statistics.median(probe.publish_ms[i] for i in idx)}

    try:
        pipe.start()
        _wait(lambda: len(probe.times) > 5, 10.0)
        jpeg_bytes = len(feed.wait_jpeg(0, 5.0)[1])  # the stand-in sends what the server sends
        clients = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, "-c", _CLIENTS, "8", f"--{BOUNDARY}\r\n", str(jpeg_bytes),
             str(1 / feed.min_interval)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        enc.append(feed.encodes)
        run_block("A"), run_block("B")  # warm-up: first connections, first encodes, thread stacks
        rss0, enc0 = rss_mb(), feed.encodes
        blocks = [run_block(k) for k in "ABBA" * pairs]
        rss1 = rss_mb()
    finally:
        if clients is not None:
            clients.stdin.close()
            clients.wait(10)
        pipe.close()
        server.shutdown()
    paired = [{b["kind"]: b for b in blocks[i : i + 2]} for i in range(0, len(blocks), 2)]
    ratios = [p["B"]["fps"] / p["A"]["fps"] for p in paired]
    cpu_ratios = [p["A"]["cpu_ms"] / p["B"]["cpu_ms"] for p in paired]
    secs = {k: sum(b["secs"] for b in blocks if b["kind"] == k) for k in "AB"}
    frames = {k: sum(b["frames"] for b in blocks if b["kind"] == k) for k in "AB"}
    streamed = [b["clients"] for b in blocks if b["kind"] == "B"]
    return {
        "model": model, "fps_no_clients": round(frames["A"] / secs["A"], 1),
        "fps_8_clients": round(frames["B"] / secs["B"], 1), "ratios": [round(r, 3) for r in ratios],
        "median_ratio": round(statistics.median(ratios), 3),
        "median_cpu_ratio": round(statistics.median(cpu_ratios), 3),
        "publish_ms_median_A_B": [round(_median_of(blocks, k, "publish_ms"), 3) for k in "AB"],
        "jpeg_encodes": feed.encodes - enc0, "frames_with_clients": frames["B"],
        "delivered": [sum(c["frames"][i] for c in streamed) for i in range(8)], "rss_growth_mb": round(rss1 - rss0, 1),
    }


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5, help="ABBA groups of 1-second blocks (5: 10 pairs)")
    ap.add_argument("--model", default=DEFAULT_RUN_MODEL)
    args = ap.parse_args()
    hw = hardware_report()
    r = measure(args.model, args.pairs)
    rows = [["pipeline FPS, no viewer (A)", r["fps_no_clients"]], ["pipeline FPS, 8 viewers + 1 stalled (B)",
            r["fps_8_clients"]], ["B/A, median of the interleaved pairs", r["median_ratio"]],
            ["loop CPU per frame A/B, median", r["median_cpu_ratio"]],
            ["publish() ms, median A / B", " / ".join(map(str, r["publish_ms_median_A_B"]))],
            ["JPEG encodes / frames with viewers", f"{r['jpeg_encodes']} / {r['frames_with_clients']}"],
            ["frames delivered to each reader", ", ".join(map(str, r["delivered"]))],
            ["memory growth with a stalled client (MB)", r["rss_growth_mb"]]]
    text = "\n".join([
        "# `edgeseg run --serve` under load: 8 viewers and a stalled one", "",
        f"Regenerate: `python benchmarks/serve_load.py`. {machine_line(hw['cpu'].get('model'), 1)} for the inference;"
        f" {r['model']}, the load average before: {hw.get('load_average')},",
        "the shipped clip looping; ratios from one run (interleaved 1 s blocks, ABBA).", "",
        markdown_table(["measure", "value"], rows), ""])
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "serve_load.json", {"hardware": hw, **r})
    atomic_write_text(RESULTS / "serve_load.md", text)
    print(text)


if __name__ == "__main__":
    main()
