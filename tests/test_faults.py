"""What `edgeseg run` WRITES survives faults: unwritable places refused before the first frame, full disks and I/O
errors mid-run (exit 4, the log ends on a complete line with a summary when it can, finished recording segments
play, nothing half-written under a final name), bounded output for endless runs, and SIGKILL (a power cut).

Full disks are injected two ways: a writer that raises ENOSPC (monkeypatched into the log), and a real size limit
(``RLIMIT_FSIZE`` in a subprocess with SIGXFSZ ignored, so a write past it fails with EFBIG as on a full card).
No wall-clock assertion: waits have generous deadlines only so that a broken run cannot hang the suite.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import cv2
import numpy as np
import pytest
from fault_inputs import plays
from test_live import check_log_schema, cli, make_threshold_onnx, start_endless_run

import edgeseg.device.runlog as runlog_module
import edgeseg.fsutil as fsutil
from edgeseg.device.live import EXIT_SIGTERM, run_live
from edgeseg.device.measure_sink import MeasureSink
from edgeseg.device.options import RunOptions, check_run_options
from edgeseg.device.recorder import Recorder
from edgeseg.device.runlog import CHECK_EVERY, RunLog, read_log
from edgeseg.device.sources import SyntheticSource
from edgeseg.fsutil import WriteFailed, check_writable, part_number, part_path, remove_stale_temporaries
from edgeseg.segmenter import Segmenter

DiskUsage = namedtuple("DiskUsage", "total used free")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_threshold_onnx(tmp_path_factory.mktemp("model") / "bright.onnx")


def segments(out: Path) -> list[Path]:
    """The recording's finished segments in ``out``, in order (overlay.mp4, overlay-000002.mp4, ...)."""
    return sorted(out.glob("overlay*.mp4"), key=lambda p: part_number(out / "overlay.mp4", p.name))


def error_lines(output: str) -> list[str]:
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.startswith("error:")]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def complete_lines(path: Path) -> list[dict]:
    """Every line of a log, each one complete JSON (a torn line fails here)."""
    text = path.read_text()
    assert text.endswith("\n"), text[-200:]
    return [json.loads(line) for line in text.splitlines()]


# --------------------------------------------------------------------------- before the first frame


def test_out_under_a_regular_file_is_one_line_and_leaves_nothing(tiny_model, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    res = cli("run", "--model", str(tiny_model), "--source", "synthetic:32x32:2", "--no-display",
              "--out", str(tmp_path / "notes.txt" / "run"))
    assert res.exit_code == 2, res.output
    [line] = error_lines(res.output)
    assert "is a file, not a folder" in line and "--out" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_read_only_folder_is_one_line_and_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: a read-only mount is what refuses it
        def read_only(folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(fsutil, "_probe_write", read_only)
    try:
        res = cli("run", "--model", str(tiny_model), "--source", "synthetic:32x32:2", "--no-display",
                  "--out", str(ro / "run"))
        assert res.exit_code == 2, res.output
        [line] = error_lines(res.output)
        assert "is not writable" in line and "give --out a writable folder" in line
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_too_little_free_space_is_refused_before_the_first_frame(tiny_model, tmp_path, monkeypatch):
    real = fsutil.shutil.disk_usage
    monkeypatch.setattr(fsutil.shutil, "disk_usage",
                        lambda p: DiskUsage(real(p).total, real(p).used, (fsutil.MIN_FREE_MB - 1) << 20))
    res = cli("run", "--model", str(tiny_model), "--source", "synthetic:32x32:2", "--no-display",
              "--out", str(tmp_path / "run"))
    assert res.exit_code == 2, res.output
    [line] = error_lines(res.output)
    assert f"only {fsutil.MIN_FREE_MB - 1:.1f} MB free" in line and f"at least {fsutil.MIN_FREE_MB} MB" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--csv", "--labels-out", "--log", "--record"])
def test_every_output_place_is_checked_before_the_first_frame(tiny_model, tmp_path, option):
    (tmp_path / "file").write_text("x")
    res = cli("run", "--model", str(tiny_model), "--source", "synthetic:32x32:2", "--no-display",
              "--out", str(tmp_path / "run"), option, str(tmp_path / "file" / "out.csv"))
    assert res.exit_code == 2, res.output
    [line] = error_lines(res.output)
    assert "is a file, not a folder" in line and option in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_log_path_that_is_a_folder_is_one_line(tiny_model, tmp_path):
    (tmp_path / "logdir").mkdir()
    res = cli("run", "--model", str(tiny_model), "--source", "synthetic:32x32:2", "--no-display", "--no-record",
              "--log", str(tmp_path / "logdir"))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "is a directory" in res.output  # click's own one-line check of the path


def test_check_writable_creates_nothing(tmp_path):
    check_writable(tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change, message", [
    ({"segment_s": 0.0}, "--segment-s 0.0 is not a positive number"),
    ({"max_record_mb": -1.0}, "--max-record-mb -1.0 is not a positive number"),
    ({"max_log_mb": float("nan")}, "--max-log-mb nan is not a positive number"),
    ({"log_every": 0}, "--log-every 0 logs no frame"),
])
def test_output_bounds_that_cannot_work_are_refused(change, message):
    with pytest.raises(fsutil.EdgesegError, match=message):
        check_run_options(RunOptions(**change))


# --------------------------------------------------------------------------- a full disk mid-run


class _FailingOS:
    """``os`` for the run log, whose ``write`` writes a few bytes of a line and then raises ENOSPC, from the
    ``after``-th frame line on (``times`` times; None: for good)."""

    def __init__(self, after: int, times: int | None):
        self.after, self.times, self.frames, self.failed = after, times, 0, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if bytes(data[:16]) == b'{"type":"frame",':
            self.frames += 1
        if self.frames >= self.after and (self.times is None or self.failed < self.times):
            self.failed += 1
            os.write(fd, bytes(data[:10]))  # half a line reached the disk before it filled
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)


def test_log_ends_with_a_summary_when_the_disk_fills(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(runlog_module, "os", _FailingOS(after=6, times=1))  # space comes back: the summary fits
    out = tmp_path / "o"
    res = cli("run", "--model", str(tiny_model), "--source", "synthetic:96x72:40", "--no-display", "--out", str(out))
    assert res.exit_code == 4, res.output
    [line] = error_lines(res.output)
    assert "disk full while writing" in line and "run.jsonl" in line and "No space left" in line
    lines = complete_lines(out / "run.jsonl")
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["stopped"] == "disk_full" and "disk full" in summary["error"]
    assert [r["index"] for r in lines if r["type"] == "frame"] == list(range(5))  # the torn 6th line was cut off
    assert summary["frames"] == 6  # the frame whose line failed was processed
    assert plays(out / "overlay.mp4") and hidden(out) == []


def test_log_ends_on_a_complete_line_and_stderr_says_so_when_nothing_more_fits(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(runlog_module, "os", _FailingOS(after=4, times=None))
    out = tmp_path / "o"
    res = cli("run", "--model", str(tiny_model), "--source", "synthetic:96x72:40", "--no-display", "--out", str(out))
    assert res.exit_code == 4, res.output
    [line] = error_lines(res.output)
    assert "disk full while writing" in line and "summary line could not be written either" in line
    lines = complete_lines(out / "run.jsonl")
    assert lines[0]["type"] == "start" and [r["type"] for r in lines[1:]] == ["frame"] * 3
    assert plays(out / "overlay.mp4") and hidden(out) == []


def test_log_stops_the_run_before_the_disk_is_full(tmp_path, monkeypatch):
    real = runlog_module.shutil.disk_usage
    free = {"bytes": 1 << 30}
    monkeypatch.setattr(runlog_module.shutil, "disk_usage",
                        lambda p: DiskUsage(real(p).total, real(p).used, free["bytes"]))
    log = RunLog(tmp_path / "run.jsonl")
    log.write({"type": "start"})
    free["bytes"] = 1 << 20  # below the reserve
    with pytest.raises(WriteFailed, match="disk full: less than 8 MB left") as err:
        for i in range(2 * CHECK_EVERY):
            log.write({"type": "frame", "index": i})
    assert err.value.exit_code == 4 and err.value.stopped == "disk_full"
    log.write({"type": "summary", "stopped": "disk_full"})  # the reserve is for this line
    log.close()
    lines = complete_lines(tmp_path / "run.jsonl")
    assert len(lines) == CHECK_EVERY and lines[-1]["type"] == "summary"  # the 100th line was refused


def _limited(limit: int):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


def _run_limited(limit: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; sys.modules['torch'] = None\nfrom edgeseg.cli import main\nmain(sys.argv[1:])\n"
    return subprocess.run([sys.executable, "-c", code, "run", "--no-display", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, preexec_fn=_limited(limit))


def test_a_recording_that_cannot_be_finished_leaves_no_file_and_exits_4(tiny_model, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "o"
    proc = _run_limited(150_000, ["--model", str(tiny_model), "--source", "synthetic:96x96:60", "--out", str(out),
                                  "--segment-s", "1000"], cwd)
    assert proc.returncode == 4, proc.stderr
    [line] = error_lines(proc.stderr)
    assert "the recording" in line and "could not be finished" in line
    assert "stopped: write_failed" in proc.stdout
    lines = check_log_schema(out / "run.jsonl")
    summary = lines[-1]
    assert summary["frames"] == 60 and summary["recording"] is None and "could not be finished" in summary["error"]
    assert sorted(p.name for p in out.iterdir()) == ["run.jsonl"]  # no half-written overlay.mp4, no temporary
    assert list(cwd.iterdir()) == []  # nothing outside --out


def test_a_full_log_stops_an_endless_run_and_keeps_the_finished_segments(tiny_model, tmp_path):
    """A size limit the log reaches while the recording rotates in one-frame segments under it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "o"
    proc = _run_limited(60_000, ["--model", str(tiny_model), "--source", "synthetic:64x64:0", "--out", str(out),
                                 "--segment-s", "0.04", "--max-record-mb", "0.5"], cwd)
    assert proc.returncode == 4, proc.stderr
    [line] = error_lines(proc.stderr)
    assert "disk full while writing" in line and "run.jsonl" in line
    lines = complete_lines(out / "run.jsonl")  # complete lines only, whatever fitted
    assert lines[0]["type"] == "start" and all(r["type"] == "frame" for r in lines[1:])
    kept = segments(out)
    assert len(kept) >= 2 and all(plays(p) for p in kept)
    assert sum(p.stat().st_size for p in kept) <= 0.5 * 2**20
    assert hidden(out) == [] and list(cwd.iterdir()) == []


def test_a_full_disk_under_the_csv_keeps_its_complete_rows(tiny_model, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "o"
    proc = _run_limited(40_000, ["--model", str(tiny_model), "--source", "synthetic:256x256:200", "--out", str(out),
                                 "--no-record", "--track", "--csv", str(out / "nuclei.csv")], cwd)
    assert proc.returncode == 4, proc.stderr
    [line] = error_lines(proc.stderr)
    assert "disk full while writing" in line and "nuclei.csv" in line
    lines = check_log_schema(out / "run.jsonl")
    summary = lines[-1]
    assert summary["stopped"] == "disk_full" and 1 <= summary["frames"] < 200
    rows = (out / "nuclei.csv").read_text()
    assert rows.endswith("\n")
    header, *body = rows.splitlines()
    assert body and all(row.count(",") == header.count(",") for row in body)
    frames_in_csv = {int(row.split(",")[0]) for row in body}
    assert frames_in_csv == set(range(max(frames_in_csv) + 1))  # whole frames, none torn
    assert hidden(out) == [] and list(cwd.iterdir()) == []


def test_a_failed_csv_write_stops_the_run_as_a_write_error(tmp_path, monkeypatch):
    """MeasureSink in process: an I/O error (not a full disk) writing the CSV -> WriteFailed, rows kept."""
    from types import SimpleNamespace

    from conftest import disc_frame

    sink = MeasureSink(track=False, csv=str(tmp_path / "n.csv"))
    image, labels = disc_frame((64, 64), spacing=20)

    def frame(i):
        return SimpleNamespace(image=image, index=i, timestamp=0.0, order="rgb")

    sink.process(frame(0), SimpleNamespace(labels=labels, count=int(labels.max())))
    out = sink._outputs["csv"]

    def broken(*a, **k):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(out, "_writer", SimpleNamespace(writerows=broken))
    with pytest.raises(WriteFailed, match="write failed while writing .*n.csv .*Input/output error") as err:
        sink.process(frame(1), SimpleNamespace(labels=labels, count=int(labels.max())))
    assert err.value.stopped == "write_failed" and err.value.exit_code == 4
    summary = sink.close()
    assert summary["csv"] == [str(tmp_path / "n.csv")] and "csv" in summary["outputs_stopped"]
    rows = (tmp_path / "n.csv").read_text().splitlines()
    assert len(rows) == 1 + labels.max() and {r.split(",")[0] for r in rows[1:]} == {"0"}
    assert hidden(tmp_path) == []


# --------------------------------------------------------------------------- bounded output


def test_recording_rotates_into_playable_segments_and_drops_the_oldest(tmp_path):
    rec = Recorder(tmp_path / "overlay.mp4", 10.0, drop=False, segment_s=0.5, max_bytes=1)
    rng = np.random.default_rng(0)
    for _ in range(23):
        rec.write(rng.integers(0, 255, (48, 64, 3), np.uint8))
    assert rec.close() == part_path(tmp_path / "overlay.mp4", 5, 6)
    # five segments of 5, 5, 5, 5 and 3 frames; a 1-byte budget keeps only the newest
    assert rec.segments_dropped == 4 and [p.name for p, _ in rec.segments] == ["overlay-000005.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay-000005.mp4"]
    cap = cv2.VideoCapture(str(tmp_path / "overlay-000005.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()
    # a later recording under the same name continues the numbering and counts the earlier parts in its budget
    rec = Recorder(tmp_path / "overlay.mp4", 10.0, drop=False, segment_s=0.5, max_bytes=10 << 20)
    for _ in range(6):
        rec.write(rng.integers(0, 255, (48, 64, 3), np.uint8))
    assert rec.close().name == "overlay-000007.mp4"
    assert [p.name for p, _ in rec.segments] == ["overlay-000005.mp4", "overlay-000006.mp4", "overlay-000007.mp4"]
    assert all(plays(p) for p, _ in rec.segments)


def test_log_rotates_and_keeps_the_newest_lines_within_its_bound(tmp_path):
    log = RunLog(tmp_path / "run.jsonl", max_bytes=8000)
    log.write({"type": "start", "model": "m"})
    for i in range(200):
        log.write({"type": "frame", "index": i, "pad": "x" * 40})
    log.write({"type": "summary", "frames": 200})
    log.close()
    new, old = tmp_path / "run.jsonl", tmp_path / "run.1.jsonl"
    assert old.stat().st_size <= 4000 and new.stat().st_size <= 4000 + 200
    a, b = complete_lines(old), complete_lines(new)
    assert a[0]["type"] == "start" and b[0]["type"] == "start" and b[0]["part"] == log.part > 2
    assert b[0]["continues"] == "run.1.jsonl" and b[-1] == {"type": "summary", "frames": 200}
    indices = [r["index"] for r in a + b if r["type"] == "frame"]
    assert indices == list(range(indices[0], 200))  # the newest lines, in order, none lost between the two files


def test_log_every_writes_one_frame_line_in_n_and_counts_every_frame(tiny_model, tmp_path):
    log = tmp_path / "run.jsonl"
    res = cli("run", "--model", str(tiny_model), "--source", "synthetic:64x64:25", "--no-display", "--no-record",
              "--log", str(log), "--log-every", "10")
    assert res.exit_code == 0, res.output
    lines = read_log(log)
    assert [r["index"] for r in lines if r["type"] == "frame"] == [0, 10, 20]
    assert lines[-1]["type"] == "summary" and lines[-1]["frames"] == 25


def test_bounded_run_through_the_loop_rotates_log_and_recording(tmp_path):
    model = make_threshold_onnx(tmp_path / "m.onnx", size=64)
    rec = Recorder(tmp_path / "o" / "overlay.mp4", 30.0, drop=False, segment_s=0.2, max_bytes=150_000)
    result = run_live(Segmenter.load(model, threads=1), SyntheticSource((64, 64), 120),
                      log=RunLog(tmp_path / "o" / "run.jsonl", max_bytes=30_000), recorder=rec)
    assert result.exit_code == 0 and result.summary["frames"] == 120
    assert result.summary["recording_segments"] == len(rec.segments) and rec.segments_dropped > 0
    assert sum(n for _, n in list(rec.segments)[:-1]) <= 150_000
    assert all(plays(p) for p, _ in rec.segments)
    logs = [tmp_path / "o" / "run.1.jsonl", tmp_path / "o" / "run.jsonl"]
    assert sum(p.stat().st_size for p in logs) <= 30_000 + 2000
    assert complete_lines(logs[1])[-1]["type"] == "summary"


# --------------------------------------------------------------------------- power cut


def _wait_for(path: Path, proc) -> None:
    deadline = time.monotonic() + 120  # only so that a broken run cannot hang the suite
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path.name} never appeared: {proc.communicate()[1]}")
        time.sleep(0.05)


def test_sigkill_loses_at_most_the_open_segment_and_the_next_start_cleans_up(tiny_model, tmp_path):
    out = tmp_path / "o"
    proc = start_endless_run(tiny_model, out, ["--segment-s", "0.2"])  # 6 frames a segment at the synthetic 30 FPS
    _wait_for(out / "overlay-000004.mp4", proc)
    proc.kill()  # SIGKILL: a power cut, as far as the process can tell
    proc.communicate(timeout=60)
    closed = segments(out)
    assert len(closed) >= 4 and all(plays(p) for p in closed)  # every finished segment plays
    stale = hidden(out)
    assert len(stale) <= 1  # the open segment at most
    lines = read_log(out / "run.jsonl")
    assert (out / "run.jsonl").read_text().endswith("\n")  # one write a line: a kill tears none
    assert lines[0]["type"] == "start" and sum(r["type"] == "frame" for r in lines) >= 18
    # the service restarts into the same folder: the stale temporary goes, the numbering goes on
    fake = out / ".overlay-000099.mp4.abcd1234.mp4"
    fake.write_bytes(b"half a segment")
    keep = out / ".notes"
    keep.write_text("not ours")
    killed_log = (out / "run.jsonl").read_text()
    res = cli("run", "--model", str(tiny_model), "--source", "synthetic:64x64:3", "--no-display", "--out", str(out))
    assert res.exit_code == 0, res.output
    start = read_log(out / "run.jsonl")[0]
    assert start["stale_removed"] == len(stale) + 1
    # the killed run's log is kept beside the new one, not truncated by it
    assert start["previous_log"] == "run.previous.jsonl" and (out / "run.previous.jsonl").read_text() == killed_log
    assert hidden(out) == [".notes"]
    after = segments(out)
    assert after[:-1] == closed and after[-1].name == part_path(out / "overlay.mp4", len(closed) + 1, 6).name
    assert plays(after[-1])


def test_sigterm_finishes_the_open_segment(tiny_model, tmp_path):
    out = tmp_path / "o"
    proc = start_endless_run(tiny_model, out, ["--segment-s", "0.2"])
    _wait_for(out / "overlay-000002.mp4", proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == EXIT_SIGTERM
    summary = read_log(out / "run.jsonl")[-1]
    kept = segments(out)
    assert summary["recording_segments"] == len(kept) >= 2 and all(plays(p) for p in kept)
    assert hidden(out) == []


def test_stale_temporaries_are_recognised_by_name_only(tmp_path):
    names = [".overlay.mp4.abcd1234.mp4", ".overlay-000012.mp4.x_y9z8w7.mp4", ".nuclei.csv.abcdefgh.csv",
             ".labels.ome.tif.abcdefgh.spool", ".overlay.mp4", "overlay.mp4", ".other.mp4.abcd1234.mp4"]
    for n in names:
        (tmp_path / n).write_text("x")
    (tmp_path / ".ctc.k3j4h5g6").mkdir()
    targets = [tmp_path / "overlay.mp4", tmp_path / "nuclei.csv", tmp_path / "labels.ome.tif", tmp_path / "ctc"]
    assert remove_stale_temporaries(targets) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.mp4.abcd1234.mp4", ".overlay.mp4", "overlay.mp4"]


def test_a_frame_the_codec_cannot_record_is_a_failed_write_not_a_silent_exit_0(tiny_model, tmp_path):
    """A 130x1 image: no recording can be made of it; the run says so (exit 4, a write that failed) instead of ending
    as if all went well, and OpenCV's own [ERROR] lines stay off the terminal."""
    image = tmp_path / "thin.png"
    cv2.imwrite(str(image), np.full((1, 130), 200, np.uint8))
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "run", "--model", str(tiny_model), "--source",
                           str(image), "--no-display", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "cannot write" in errors[0] and "--no-record" in errors[0]
    assert "[ERROR" not in proc.stderr
    summary = complete_lines(out / "run.jsonl")[-1]
    assert summary["type"] == "summary" and summary["stopped"] == "write_failed" and summary["recording"] is None
    assert not list(out.glob("*.mp4")) and hidden(out) == []
