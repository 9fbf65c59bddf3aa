"""Issue 19's fault table: every fault of the issue, injected into the real `edgeseg` command line, and what is left.

    python benchmarks/faults_table.py               # every case -> results/faults.md, results/faults.json
    python benchmarks/faults_table.py --only tiff   # the cases whose name holds "tiff" (printed, nothing written)

Exits 1 when a row is not clean (the table is still written, and says why in that row).

Each case runs ``python -m edgeseg.cli ...`` in a subprocess, in a fresh temporary working folder (its cwd), with
the shipped model (``fast_scnn-int8``) and the shipped clip wherever a real model or source is needed, on short
runs (``--max-frames``). Faults are injected as ``tests/test_faults.py`` and ``tests/test_faults_inputs.py`` do:
full disks by a real small filesystem (a tmpfs mounted on ``--out`` in a mount namespace of the run's own, as
root) and by ``RLIMIT_FSIZE`` with SIGXFSZ ignored (a write past the limit fails with EFBIG, as on a full card),
power cuts by SIGKILL, odd files by the builders of ``fault_inputs.py``, a read-only folder as user nobody
(``setpriv``) and, for root, on a read-only bind mount (``unshare --mount``).

A row is clean when: the exit code is the expected one; stderr holds no traceback, and exactly one ``error:`` line
when the exit is an error (2, 3, 4); no hidden file (a name starting with ".") is left in the working folder;
nothing was written outside ``--out`` (the working folder holds only the case's inputs and the out folder); a run
refused with exit 2 wrote nothing; every ``.jsonl`` log ends on a complete line of JSON and a started run's log
ends with its ``summary`` (not where the log itself is the file at the size limit: stderr must say so then);
every recording left under a final name plays; plus each case's own checks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import tifffile
from common import RESULTS, cpu_name, load_average, machine_line, markdown_table, write_results
from fault_inputs import failing_onnx, half_output_onnx, plays, png_claiming, truncate

from edgeseg.device.bundle import install_bundle
from edgeseg.zoo import DEFAULT_RUN_MODEL, SAMPLE_CLIP, resolve_model

EDGESEG = [sys.executable, "-m", "edgeseg.cli"]
MODEL = DEFAULT_RUN_MODEL
CLIP = str(SAMPLE_CLIP)
NOBODY = 65534
ERROR_EXITS = (2, 3, 4)
TIMEOUT_S = 300  # only so that a hung case cannot hang the table: it becomes a row that says so


# ---------------------------------------------------------------------------------------------- running a case


@dataclass
class Outcome:
    """One case's run: what it expected, what the command did, and the case's own findings."""

    expect: int
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    out: Path | None = None
    inputs: set[str] = field(default_factory=set)  # the working folder's entries before the run (not output)
    summary_in: tuple[str, ...] = ("run.jsonl",)  # logs of --out that must end with a summary (when they exist)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    command: str = ""


def file_size_limit(limit: int) -> Callable[[], None]:
    """``preexec_fn``: no file may grow past ``limit`` bytes, and a write past it fails (EFBIG) instead of killing."""
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


def edgeseg(work: Path, *args, expect: int, out: str | None = "out", prefix=(), preexec=None,
            timeout: int = TIMEOUT_S) -> Outcome:
    """Run ``edgeseg ARGS`` in ``work`` and return its Outcome (``out``: the --out folder, relative to ``work``)."""
    inputs = {p.name for p in work.iterdir()}
    argv = [*prefix, *EDGESEG, *map(str, args)]
    res = Outcome(expect=expect, out=work / out if out else None, inputs=inputs,
                  command="edgeseg " + " ".join(map(str, args)))
    try:
        p = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)
        res.rc, res.stdout, res.stderr = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        res.rc, res.stderr = None, (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else ""
        res.problems.append(f"still running after {timeout} s (killed)")
    return res


def run_args(*extra, out: str = "out", model: str = MODEL) -> list:
    """``run`` with ``model`` (the shipped one), headless, into ``out``."""
    return ["run", "--model", model, "--no-display", "--out", out, *extra]


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def clip_pages(n: int) -> np.ndarray:
    """The first ``n`` frames of the shipped clip, stacked (n, H, W)."""
    return np.stack([tifffile.imread(SAMPLE_CLIP, key=k) for k in range(n)])


# ------------------------------------------------------------------------------------------------ the cases
# Each takes a fresh working folder and returns its Outcome. Their names say what the fault is.


def out_under_a_file(work: Path) -> Outcome:
    (work / "notes.txt").write_text("x")
    return edgeseg(work, *run_args("--source", CLIP, "--max-frames", 5, out="notes.txt/run"),
                   expect=2, out="notes.txt/run")


def _read_only_folder(work: Path) -> Path:
    ro = work / "ro"
    ro.mkdir()
    work.chmod(0o755)
    ro.chmod(0o555)
    return ro


def read_only_out_as_nobody(work: Path) -> Outcome:
    _read_only_folder(work)
    if os.geteuid() != 0:
        return edgeseg(work, *run_args("--source", CLIP, "--max-frames", 5, out="ro/run"),
                       expect=2, out="ro/run")
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if shutil.which("setpriv") is None:
        return Outcome(expect=2, skipped="skipped: no setpriv on this machine (root writes anywhere)")
    probe = subprocess.run([*as_nobody, sys.executable, "-c", "import edgeseg"], capture_output=True, text=True)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return Outcome(expect=2, skipped=f"skipped: user nobody cannot run {sys.executable} here ({why}); "
                                         "the read-only mount case below covers it for root")
    res = edgeseg(work, *run_args("--source", CLIP, "--max-frames", 5, out="ro/run"), expect=2,
                  out="ro/run", prefix=as_nobody)
    return res


def read_only_out_on_a_read_only_mount(work: Path) -> Outcome:
    ro = _read_only_folder(work)
    if os.geteuid() != 0:
        return Outcome(expect=2, skipped="skipped: not root (a bind mount needs root); the case above covers it")
    remount = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", remount, str(ro), "true"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        return Outcome(expect=2, skipped=f"skipped: no read-only bind mount here ({probe.stderr.strip()[:120]})")
    return edgeseg(work, *run_args("--source", CLIP, "--max-frames", 5, out="ro/run"), expect=2,
                   out="ro/run", prefix=["unshare", "--mount", "sh", "-c", remount, str(ro)])


def _on_a_small_disk(work: Path, size_mb: int, *args, expect: int) -> Outcome:
    """``edgeseg ARGS`` with ``--out out`` on a real filesystem of ``size_mb`` (a tmpfs in a mount namespace of its
    own). What the run left there is copied back into ``out`` before the namespace (and the tmpfs) goes."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return Outcome(expect=expect, skipped="skipped: mounting a small filesystem needs root and unshare")
    (work / "out").mkdir()
    keep = Path(tempfile.mkdtemp(prefix="edgeseg-fault-keep-"))
    script = ('mount -t tmpfs -o size=$1 tmpfs "$0" || exit 99; shift 2; "$@"; rc=$?; '
              'cp -a "$0"/. "$KEEP"/; exit $rc')
    try:
        res = edgeseg(work, *args, expect=expect, prefix=["env", f"KEEP={keep}", "unshare", "--mount", "sh", "-c",
                                                          script, str(work / "out"), f"{size_mb}m", "--"])
        res.inputs.discard("out")
        for p in keep.iterdir():
            shutil.move(str(p), work / "out" / p.name)
    finally:
        shutil.rmtree(keep, ignore_errors=True)
    if res.rc == 99:
        res.skipped, res.problems = "skipped: this machine cannot mount a tmpfs", []
    return res


def too_little_free_space_at_the_start(work: Path) -> Outcome:
    """A real 32 MB filesystem: under the space a run needs to start (``MIN_FREE_MB``)."""
    return _on_a_small_disk(work, 32, *run_args("--source", CLIP, "--max-frames", 5), expect=2)


def disk_full_mid_run(work: Path) -> Outcome:
    """A real 72 MB filesystem that the looped clip's recording and log fill: the run must stop while the log's
    reserve still holds its summary, and leave playable recordings."""
    res = _on_a_small_disk(work, 72, *run_args("--source", CLIP, "--loop", "--max-frames", 20000), expect=4)
    if res.out and (res.out / "run.jsonl").exists():
        last = log_lines(res.out / "run.jsonl")[-1]
        res.notes.append(f"stopped after {last.get('frames')} frames")
    return res


def disk_full_under_the_recording(work: Path) -> Outcome:
    res = edgeseg(work, *run_args("--source", CLIP, "--loop", "--max-frames", 60, "--segment-s", 1000),
                  expect=4, preexec=file_size_limit(150_000))
    if res.out and list(res.out.glob("overlay*.mp4")):
        res.problems.append("a recording that could not be finished was left under its final name")
    return res


def disk_full_under_the_log(work: Path) -> Outcome:
    """The log is the file at the limit: its summary cannot fit either (on a real disk the log's reserve keeps room
    for it: tests/test_faults.py), so the log must end on a complete line and stderr must say so."""
    res = edgeseg(work, *run_args("--source", "synthetic:64x64:0", "--segment-s", 0.04, "--max-record-mb", 0.5),
                  expect=4, preexec=file_size_limit(60_000))
    res.summary_in = ()
    if "run.jsonl" not in res.stderr:
        res.problems.append("the error does not name the log")
    if res.out and (res.out / "run.jsonl").exists():
        last = log_lines(res.out / "run.jsonl")[-1]
        res.notes.append(f"log ends on a complete `{last['type']}` line; no room for a summary in a full file")
        if last["type"] != "summary" and "summary line could not be written" not in res.stderr:
            res.problems.append("the log has no summary and stderr does not say so")
    return res


def disk_full_under_the_csv(work: Path) -> Outcome:
    res = edgeseg(work, *run_args("--source", CLIP, "--loop", "--max-frames", 3000, "--no-record", "--track",
                                  "--csv", "out/nuclei.csv"), expect=4, preexec=file_size_limit(40_000))
    csv = res.out / "nuclei.csv"
    if csv.exists():
        text = csv.read_text()
        header, *rows = text.splitlines()
        whole = text.endswith("\n") and all(r.count(",") == header.count(",") for r in rows)
        frames = sorted({int(r.split(",")[0]) for r in rows}) if rows else []
        if not whole or frames != list(range(len(frames))):
            res.problems.append("the CSV holds a torn row or a partial frame")
        res.notes.append(f"nuclei.csv: {len(rows)} complete rows of frames 0-{frames[-1] if frames else '-'}")
    return res


def sigkill_then_restart(work: Path) -> Outcome:
    """SIGKILL (a power cut) once the 4th segment exists, then the same command again (a service restart)."""
    out = work / "out"
    args = list(map(str, run_args("--source", CLIP, "--loop", "--segment-s", 0.5)))
    cmd = [*EDGESEG, *args]
    inputs = {p.name for p in work.iterdir()}
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    while not (out / "overlay-000004.mp4").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    closed = sorted(p.name for p in out.glob("overlay*.mp4"))
    stale = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    killed_log = (out / "run.jsonl").read_text()
    res = edgeseg(work, *run_args("--source", CLIP, "--max-frames", 5, "--segment-s", 0.5), expect=0)
    res.inputs = inputs
    res.command = f"edgeseg {' '.join(args)}; kill -9; the same with --max-frames 5"
    res.notes.append(f"killed with {len(closed)} closed segments and {len(stale)} hidden temporary "
                     f"({', '.join(stale) or 'none'}); the killed run's log ended on a complete line: "
                     f"{killed_log.endswith(chr(10))}")
    if not killed_log.endswith("\n"):
        res.problems.append("the killed run's log ends in a torn line")
    lost = [n for n in closed if not (out / n).exists() or not plays(out / n)]
    if lost:
        res.problems.append(f"closed segments lost or unplayable after the kill: {lost}")
    logs = sorted(p.name for p in out.glob("*.jsonl"))
    start = next((log_lines(out / n)[0] for n in logs if log_lines(out / n)[0].get("stale_removed")), None)
    res.notes.append(f"the restart removed {start['stale_removed'] if start else 0} stale temporaries; "
                     f"logs: {', '.join(logs)}")
    if stale and not start:
        res.problems.append("the restart did not report removing the stale temporary")
    kept = any(killed_log.splitlines()[0] in p.read_text() for p in out.glob("*.jsonl"))
    if not kept:
        res.problems.append(f"the restart truncated the killed run's run.jsonl: its "
                            f"{len(killed_log.splitlines())} lines are lost (a fixed --out reused by a restart)")
    return res


MAX_RECORD_MB, MAX_LOG_MB = 1.0, 0.1


def endless_loop_stays_bounded(work: Path) -> Outcome:
    res = edgeseg(work, *run_args("--source", CLIP, "--loop", "--max-frames", 400, "--segment-s", 1,
                                  "--max-record-mb", MAX_RECORD_MB, "--max-log-mb", MAX_LOG_MB), expect=0)
    out = res.out
    if not (out / "run.jsonl").exists():
        return res
    summary = log_lines(out / "run.jsonl")[-1]
    videos = sorted(out.glob("overlay*.mp4"), key=lambda p: p.stat().st_mtime)
    closed = sum(p.stat().st_size for p in videos[:-1])
    logs = sum(p.stat().st_size for p in out.glob("*.jsonl"))
    res.notes.append(f"{summary.get('frames')} frames: {summary.get('recording_segments')} segments kept, "
                     f"{summary.get('recording_segments_dropped')} dropped "
                     f"({closed / 2**20:.2f} MB closed + the last); logs {logs / 2**20:.3f} MB "
                     f"({', '.join(sorted(p.name for p in out.glob('*.jsonl')))})")
    if closed > MAX_RECORD_MB * 2**20:
        res.problems.append(f"closed segments {closed} B over --max-record-mb {MAX_RECORD_MB}")
    if logs > MAX_LOG_MB * 2**20 + 4096:
        res.problems.append(f"logs {logs} B over --max-log-mb {MAX_LOG_MB}")
    if not summary.get("recording_segments_dropped") or not (out / "run.1.jsonl").exists():
        res.problems.append("400 frames did not rotate the recording and the log: the bounds were not exercised")
    return res


def image_20000x20000(work: Path) -> Outcome:
    png_claiming(work / "big.png", 20000, 20000)
    return edgeseg(work, *run_args("--source", "big.png", "--max-frames", 1), expect=2)


def synthetic_30000x30000(work: Path) -> Outcome:
    return edgeseg(work, *run_args("--source", "synthetic:30000x30000", "--max-frames", 1), expect=2)


def _compressed_tiff(compression: str) -> Callable[[Path], Outcome]:
    def case(work: Path) -> Outcome:
        tifffile.imwrite(work / f"clip-{compression}.tif", clip_pages(12), compression=compression)
        res = edgeseg(work, *run_args("--source", f"clip-{compression}.tif", "--no-record"), expect=0)
        _expect_frames(res, 12)
        return res

    case.__name__ = f"tiff_{compression}"
    return case


def _expect_frames(res: Outcome, n: int) -> None:
    log = res.out / "run.jsonl" if res.out else None
    if log and log.exists():
        frames = log_lines(log)[-1].get("frames")
        res.notes.append(f"frames read: {frames}")
        if frames != n:
            res.problems.append(f"{frames} frames processed where the source has {n}")


def truncated_tiff(work: Path) -> Outcome:
    stack = work / "cut.tif"
    tifffile.imwrite(stack, clip_pages(48), compression="lzw")
    truncate(stack, 1 / 3)
    res = edgeseg(work, *run_args("--source", "cut.tif", "--no-record"), expect=4)
    if (res.out / "run.jsonl").exists():
        last = log_lines(res.out / "run.jsonl")[-1]
        res.notes.append(f"{last.get('frames')} of 48 pages processed, stopped: {last.get('stopped')}")
    return res


def folder_with_an_unreadable_file(work: Path) -> Outcome:
    folder = work / "images"
    folder.mkdir()
    for k, page in enumerate(clip_pages(3)):
        cv2.imwrite(str(folder / f"f{k}.png"), page)
    (folder / "f1_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    res = edgeseg(work, *run_args("--source", "images", "--no-record"), expect=0)
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    if len(warnings) != 1 or "f1_broken.png" not in warnings[0]:
        res.problems.append(f"expected one warning naming f1_broken.png, got {warnings}")
    _expect_frames(res, 3)
    return res


def single_image_source(work: Path) -> Outcome:
    cv2.imwrite(str(work / "image.png"), clip_pages(1)[0])
    res = edgeseg(work, *run_args("--source", "image.png"), expect=0)
    _expect_frames(res, 1)
    return res


def image_one_pixel_high(work: Path) -> Outcome:
    """A 130x1 image: a frame no encoder takes. The recording is a write that failed (exit 4), and it says why."""
    cv2.imwrite(str(work / "thin.png"), clip_pages(1)[0][:1])
    res = edgeseg(work, *run_args("--source", "thin.png"), expect=4)
    said = [ln for ln in res.stderr.splitlines() if ln.startswith(("warning:", "error:")) and "record" in ln]
    if res.out and not list(res.out.glob("overlay*.mp4")) and not said:
        res.problems.append("no recording was left and no warning: or error: line says why")
    return res


def model_output_differs_from_its_card(work: Path) -> Outcome:
    half_output_onnx(work / "half.onnx")
    return edgeseg(work, *run_args("--source", CLIP, "--max-frames", 3, model="half.onnx"), expect=2)


def card_that_is_a_json_list(work: Path) -> Outcome:
    shutil.copy(resolve_model(MODEL).path, work / "m.onnx")
    (work / "m.card.json").write_text("[1, 2, 3]")
    return edgeseg(work, *run_args("--source", CLIP, "--max-frames", 3, model="m.onnx"), expect=2)


def corrupt_xml_without_a_card(work: Path) -> Outcome:
    (work / "model.xml").write_text("corrupt\n")
    (work / "model.bin").write_bytes(b"\0" * 16)
    res = edgeseg(work, *run_args("--source", CLIP, "--max-frames", 3, model="model.xml"), expect=2)
    if res.stdout.strip():
        res.problems.append(f"stdout not empty: {res.stdout.strip()[:200]}")
    return res


def model_failing_at_its_first_inference(work: Path) -> Outcome:
    failing_onnx(work / "boom.onnx")
    return edgeseg(work, *run_args("--source", CLIP, "--max-frames", 3, model="boom.onnx"), expect=2)


def bundle_setting_of_the_wrong_type(work: Path) -> Outcome:
    made = subprocess.run([*EDGESEG, "bundle", "--models", MODEL, "--source", CLIP, "--out", "b.tar.gz"], cwd=work,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    if made.returncode != 0:
        return Outcome(expect=2, rc=made.returncode, stderr=made.stderr, problems=["could not make the bundle"])
    install_bundle(work / "b.tar.gz", work / "installed")
    manifest = json.loads((work / "installed" / "manifest.json").read_text())
    manifest["run"]["threads"] = "many"
    (work / "installed" / "manifest.json").write_text(json.dumps(manifest))
    return edgeseg(work, "run", "--bundle", "installed", "--no-display", "--max-frames", 3, "--out", "out",
                   expect=2)


def bundle_of_a_pytorch_checkpoint(work: Path) -> Outcome:
    res = edgeseg(work, "bundle", "--models", "fast_scnn", "--out", "pt.tar.gz", expect=2, out=None)
    if (work / "pt.tar.gz").exists():
        res.problems.append("pt.tar.gz was written")
    return res


def _bad_option(*option) -> Callable[[Path], Outcome]:
    def case(work: Path) -> Outcome:
        return edgeseg(work, *run_args("--source", CLIP, *option), expect=2)

    case.__name__ = " ".join(map(str, option))
    return case


def bench_models_typo(work: Path) -> Outcome:
    res = edgeseg(work, "bench", "--models", "TYPO", "--iterations", 5, "--warmup", 1, expect=2, out=None)
    if MODEL.split("-")[0] not in res.stderr:
        res.problems.append("the error does not list the valid names")
    return res


def zoo_name_beside_a_same_named_folder(work: Path) -> Outcome:
    (work / MODEL).mkdir()
    (work / MODEL / "run.jsonl").write_text('{"type":"start"}\n')  # a folder left by --out fast_scnn-int8
    res = edgeseg(work, *run_args("--source", CLIP, "--max-frames", 3), expect=0)
    if (res.out / "run.jsonl").exists():
        path = log_lines(res.out / "run.jsonl")[0].get("path")
        res.notes.append(f"ran {path}")
        if Path(str(path)).resolve() != resolve_model(MODEL).path.resolve():
            res.problems.append(f"ran {path}, not the zoo's {MODEL}")
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_jpeg(url: str, timeout: float) -> bytes:
    """The first whole JPEG of an MJPEG stream."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        data = b""
        while True:
            start = data.find(b"\xff\xd8")
            end = data.find(b"\xff\xd9", start + 2) if start >= 0 else -1
            if end >= 0:
                return data[start: end + 2]
            chunk = r.read1(65536)
            if not chunk:
                raise OSError("the stream ended before a whole frame")
            data += chunk


def _closed(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` (an idle client: it sent nothing, so any read is the close)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def forty_idle_connections_and_a_viewer(work: Path) -> Outcome:
    """40 idle sockets take every slot of `--serve`; a viewer must still get the page and a frame of the stream.
    The run replays the clip at its frame rate (--pace) and is stopped with SIGTERM (exit 143) afterwards."""
    port = free_port()
    args = run_args("--source", CLIP, "--loop", "--pace", "--no-record", "--serve", f"127.0.0.1:{port}")
    res = Outcome(expect=143, out=work / "out", inputs={p.name for p in work.iterdir()},
                  command="edgeseg " + " ".join(map(str, args)) + "; 40 idle sockets; GET /, /stream.mjpg; SIGTERM")
    proc = subprocess.Popen([*EDGESEG, *args], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
        time.sleep(0.5)
        t0 = time.monotonic()
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read()
        jpeg = _one_jpeg(f"http://127.0.0.1:{port}/stream.mjpg", timeout=30)
        ok = b"<html" in page.lower() and cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is not None
        took = time.monotonic() - t0
        res.notes.append(f"with 40 idle sockets open: / ({len(page)} B) and a {len(jpeg)} B frame of the stream in "
                         f"{took * 1e3:.0f} ms; the server had closed {sum(map(_closed, idle))} of the idle sockets")
        if not ok:
            res.problems.append("the viewer got no page or no decodable frame")
    except OSError as e:
        res.problems.append(f"the viewer was locked out: {e}")
    finally:
        for s in idle:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            res.stdout, res.stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            res.stdout, res.stderr = proc.communicate()
            res.problems.append("still running 60 s after SIGTERM (killed)")
        res.rc = proc.returncode
    return res


def recording_codec_for_a_browser(work: Path) -> Outcome:
    res = edgeseg(work, *run_args("--source", CLIP, "--max-frames", 10), expect=0)
    if (res.out / "run.jsonl").exists():
        codec = log_lines(res.out / "run.jsonl")[0].get("codec")
        notes = [ln for ln in (res.stderr + res.stdout).splitlines() if "H.264" in ln]
        res.notes += [f"`{ln}`" for ln in notes]
        res.notes.append(f"codec {codec}" + (" (H.264: browsers play it)" if codec == "avc1" else
                                             f"; this OpenCV build has no H.264 encoder, said {len(notes)}x"))
        if codec != "avc1" and len(notes) != 1:
            res.problems.append("recorded without H.264 and did not say so once")
    return res


CASES: list[tuple[str, Callable[[Path], Outcome]]] = [
    ("1", out_under_a_file),
    ("1", read_only_out_as_nobody),
    ("1", read_only_out_on_a_read_only_mount),
    ("1", too_little_free_space_at_the_start),
    ("1", disk_full_mid_run),
    ("1", disk_full_under_the_recording),
    ("1", disk_full_under_the_log),
    ("1", disk_full_under_the_csv),
    ("2", endless_loop_stays_bounded),
    ("3", sigkill_then_restart),
    ("4", image_20000x20000),
    ("4", synthetic_30000x30000),
    *[("5", _compressed_tiff(c)) for c in ("lzw", "deflate", "zstd")],
    ("5", truncated_tiff),
    ("5", folder_with_an_unreadable_file),
    ("6", model_output_differs_from_its_card),
    ("6", card_that_is_a_json_list),
    ("6", corrupt_xml_without_a_card),
    ("6", model_failing_at_its_first_inference),
    ("6", bundle_setting_of_the_wrong_type),
    ("7", bundle_of_a_pytorch_checkpoint),
    *[("7", _bad_option(*o)) for o in (("--threads", -1), ("--threads", 10000), ("--threshold", 2),
                                        ("--threshold", "nan"), ("--max-frames", 0))],
    ("7", bench_models_typo),
    ("7", zoo_name_beside_a_same_named_folder),
    ("8", forty_idle_connections_and_a_viewer),
    ("9", recording_codec_for_a_browser),
    ("9", single_image_source),
    ("9", image_one_pixel_high),
]


def case_name(fn) -> str:
    return fn.__name__.replace("_", " ").strip()


# ------------------------------------------------------------------------------------------------ judging


def message(work: Path, res: Outcome) -> str:
    """The run's one ``error:`` / ``warning:`` line, paths relative to the working folder."""
    lines = [ln.strip().replace(f"{work}/", "") for ln in res.stderr.splitlines()]
    for prefix in ("error:", "warning:"):
        found = [ln for ln in lines if ln.startswith(prefix)]
        if found:
            return found[0] + (f" (+{len(found) - 1} more)" if len(found) > 1 else "")
    return "-"


def files_left(work: Path, res: Outcome) -> tuple[str, list[str]]:
    """What is on disk after the run, in words, and the problems found there."""
    problems: list[str] = []
    hidden = sorted(str(p.relative_to(work)) for p in work.rglob(".*"))
    if hidden:
        problems.append(f"hidden files left: {hidden}")
    outside = sorted(p.name for p in work.iterdir() if p.name not in res.inputs
                     and (res.out is None or p != work / res.out.relative_to(work).parts[0]))
    if outside:
        problems.append(f"written outside --out: {outside}")
    parts: list[str] = []
    out = res.out
    if out is None or not out.exists() or not any(out.iterdir()):
        if out is not None and out.exists():
            parts.append("--out empty")
        else:
            parts.append("nothing" if out is None else "no --out folder")
    else:
        if res.rc == 2:
            problems.append("refused with exit 2 but wrote into --out")
        videos = sorted(out.glob("overlay*.mp4"))
        if videos:
            bad = [p.name for p in videos if not plays(p)]
            parts.append(f"{len(videos)} recording{'s' if len(videos) > 1 else ''} "
                         f"({sum(p.stat().st_size for p in videos) / 2**20:.2f} MB), "
                         + (f"NOT playing: {bad}" if bad else "all play"))
            if bad:
                problems.append(f"recordings that do not play: {bad}")
        for log in sorted(out.glob("*.jsonl")):
            text = log.read_text()
            try:
                lines = [json.loads(line) for line in text.splitlines()]
                whole = text.endswith("\n")
            except json.JSONDecodeError:
                lines, whole = [], False
            if not whole:
                problems.append(f"{log.name} ends in a torn line")
            last = lines[-1].get("type") if lines else None
            if log.name in res.summary_in and last != "summary":
                problems.append(f"{log.name} does not end with a summary")
            stopped = f", stopped: {lines[-1].get('stopped')}" if last == "summary" else ""
            parts.append(f"{log.name} ({len(lines)} complete lines, last: {last}{stopped})" if whole
                         else f"{log.name} (TORN)")
        others = sorted(p.name for p in out.iterdir() if p.suffix not in (".mp4", ".jsonl"))
        if others:
            parts.append(", ".join(others))
    parts.append(f"{len(hidden)} hidden, {len(outside)} outside --out")
    return "; ".join(parts), problems


def judge(work: Path, res: Outcome) -> dict:
    problems = list(res.problems)
    if res.rc != res.expect:
        problems.append(f"exit {res.rc}, expected {res.expect}")
    if "Traceback" in res.stderr:
        problems.append("a traceback on stderr")
    native = [ln for ln in res.stderr.splitlines() if ln.startswith(("[ERROR", "[ WARN"))]
    if native:
        problems.append(f"{len(native)} lines of a native library on stderr: {native[0][:160]}")
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    if res.rc in ERROR_EXITS and len(errors) != 1:
        problems.append(f"{len(errors)} error: lines")
    left, found = files_left(work, res)
    problems += found
    return {"exit_expected": res.expect, "exit": res.rc, "message": message(work, res), "files_left": left,
            "notes": res.notes, "problems": problems, "verdict": "clean" if not problems else "NOT CLEAN",
            "command": res.command, "stderr_tail": res.stderr[-2000:]}


def run_case(item: str, fn) -> dict:
    name = case_name(fn)
    work = Path(tempfile.mkdtemp(prefix="edgeseg-fault-"))
    t0 = time.perf_counter()
    try:
        res = fn(work)
        if res.skipped:
            row = {"exit_expected": res.expect, "exit": None, "message": "-", "files_left": "-", "notes": [],
                   "problems": [], "verdict": res.skipped, "command": "", "stderr_tail": ""}
        else:
            row = judge(work, res)
    except Exception as e:  # a broken case is a row that says so, not a lost table
        row = {"exit_expected": None, "exit": None, "message": "-", "files_left": "-", "notes": [],
               "problems": [f"the case itself failed: {type(e).__name__}: {e}"], "verdict": "NOT CLEAN",
               "command": "", "stderr_tail": ""}
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(work)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    row = {"item": item, "case": name, **row, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"[{item}] {name}: {row['verdict']} (exit {row['exit']}, expected {row['exit_expected']}, "
          f"{row['seconds']} s){'; ' + '; '.join(row['problems']) if row['problems'] else ''}", file=sys.stderr)
    return row


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict], info: dict) -> str:
    clean = sum(r["verdict"] == "clean" for r in rows)
    skipped = sum(r["verdict"].startswith("skipped") for r in rows)
    table = markdown_table(
        ["item", "case", "exit (expected / got)", "message", "files left", "verdict"],
        [[r["item"], cell(r["case"]), f"{r['exit_expected']} / {r['exit']}", f"`{cell(r['message'])}`"
          if r["message"] != "-" else "-",
          cell(r["files_left"] + "".join(f". {n}" for n in r["notes"])),
          cell(r["verdict"] + (": " + "; ".join(r["problems"]) if r["problems"] else ""))] for r in rows])
    return "\n".join([
        "# Issue 19: faults injected into `edgeseg`, and what is left",
        "",
        f"`python benchmarks/faults_table.py` on {info['machine']}, edgeseg {info['edgeseg']}, OpenCV "
        f"{info['opencv']}, {info['date']}. Every case runs the real command line (`python -m edgeseg.cli`) in a "
        "fresh working folder with the shipped model (`fast_scnn-int8`) and the shipped clip where it needs a real "
        "one. Full disks: a real small filesystem (a tmpfs of 32 or 72 MB mounted on `--out` in a mount namespace), "
        "and `RLIMIT_FSIZE` (SIGXFSZ ignored: writes past it fail with EFBIG, as on a full card) to fill the "
        "recording, the log or the CSV first; power cut: SIGKILL; read-only: as user nobody and on a read-only bind "
        "mount (root writes anywhere else).",
        "",
        "Clean: the expected exit code; no traceback, one `error:` line for an error exit (2, 3, 4); no hidden file "
        "left; nothing written outside `--out`; nothing written on a refusal (exit 2); every log ends on a complete "
        "line, a started run's with its `summary` (except where the log itself is the file at the size limit: "
        "no line fits there, stderr must say so); every recording plays; and the case's own checks (in the row).",
        "",
        f"**{clean} of {len(rows)} clean**" + (f", {skipped} skipped (the row says why)" if skipped else "")
        + f", {len(rows) - clean - skipped} not clean.",
        "",
        table,
        "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run only the cases whose name holds this (printed, no result file written)")
    args = ap.parse_args()
    cases = [(i, fn) for i, fn in CASES if not args.only or args.only.lower() in case_name(fn).lower()]
    if not cases:
        raise SystemExit(f"error: no case matches --only {args.only}; cases: "
                         + ", ".join(case_name(fn) for _, fn in CASES))
    rows = [run_case(i, fn) for i, fn in cases]
    import edgeseg

    info = {"machine": machine_line(cpu_name(), os.cpu_count() or 1), "edgeseg": edgeseg.__version__,
            "opencv": cv2.__version__, "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "load_average": load_average(), "python": sys.version.split()[0]}
    markdown = render(rows, info)
    if args.only:
        print(markdown)
    else:
        write_results(RESULTS / "faults", {"info": info, "rows": rows}, markdown)
    if any(r["verdict"] == "NOT CLEAN" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
