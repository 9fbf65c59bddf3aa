"""Soak: `edgeseg run --loop` for 10,000 frames with output rotation, disk use and memory sampled as it runs.

    python benchmarks/soak.py                 # 10,000 frames -> results/soak.md, results/soak.json
    python benchmarks/soak.py --frames 2000   # a shorter look (does not show much)

The shipped model (``fast_scnn-int8``) on the shipped clip, replayed endlessly (``--loop``), headless
(``--no-display``), recording on, with rotation settings small enough to rotate many times in 10,000 frames:
2-second recording segments (the clip plays at 10 FPS: 20 frames a segment) and at most 2 MB of them, and a log of
at most 1 MB (``run.jsonl`` + ``run.1.jsonl``). Every ``--every`` frames (read from the last line of the log) it
samples the bytes under ``--out`` (every file, hidden temporaries included) and the run's resident memory (VmRSS of
the process, from /proc). Flat means: after the warm-up (frame 1,000), disk use stays under its bound (the recording
bound + the log bound + one open segment) and the memory moves within a few MiB with no steady climb.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, cpu_name, machine_line, markdown_table, write_results

MB = 2**20
SEGMENT_S, MAX_RECORD_MB, MAX_LOG_MB = 2.0, 2.0, 1.0


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def disk_bytes(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:  # rotated away while we looked
            pass
    return total


def last_index(log: Path) -> int | None:
    """The index of the last frame line of a run log (its tail is read, not the whole file)."""
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()[1:] if len(tail) >= 8192 else tail.splitlines()):
        if line.startswith('{"type":"frame"'):
            try:
                return int(json.loads(line)["index"])
            except (ValueError, KeyError):
                continue
    return None


def soak(frames: int, every: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "edgeseg.cli", "run", "--loop", "--no-display", "--max-frames", str(frames),
           "--out", str(out), "--segment-s", str(SEGMENT_S), "--max-record-mb", str(MAX_RECORD_MB),
           "--max-log-mb", str(MAX_LOG_MB), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[dict] = []
    next_at = 0
    t0 = time.perf_counter()
    while proc.poll() is None:
        index = last_index(out / "run.jsonl")
        if index is not None and index >= next_at:
            rss = rss_kib(proc.pid)
            if rss is not None:
                samples.append({"frame": index, "disk_bytes": disk_bytes(out), "rss_kib": rss,
                                "t_s": round(time.perf_counter() - t0, 2)})
                next_at = (index // every + 1) * every
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"edgeseg run failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    files = sorted(p.name for p in out.iterdir())
    return {"samples": samples, "summary": summary, "files": files, "final_disk_bytes": disk_bytes(out)}


def slope_per_1000(samples: list[dict], key: str, scale: float = 1.0) -> float | None:
    """Least-squares slope of ``key`` per 1,000 frames, divided by ``scale``; None under two samples."""
    x = np.array([s["frame"] for s in samples], float)
    y = np.array([s[key] for s in samples], float)
    return round(float(np.polyfit(x, y, 1)[0] * 1000) / scale, 1) if len(x) >= 2 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=250, help="sample every N frames")
    ap.add_argument("--stem", type=Path, default=RESULTS / "soak", help="write STEM.md and STEM.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeseg-soak-") as tmp:
        run = soak(args.frames, args.every, Path(tmp) / "out")
    samples, summary = run["samples"], run["summary"]
    warm = [s for s in samples if s["frame"] >= 1000]
    bound = (MAX_RECORD_MB + MAX_LOG_MB) * MB
    disk_max = max(s["disk_bytes"] for s in warm)
    rss = [s["rss_kib"] for s in warm]
    result = {
        "machine": machine_line(cpu_name(), summary.get("threads")),
        "command": f"edgeseg run --loop --no-display --max-frames {args.frames} --segment-s {SEGMENT_S} "
                   f"--max-record-mb {MAX_RECORD_MB} --max-log-mb {MAX_LOG_MB}",
        "frames": summary["frames"], "fps": summary["fps"], "stopped": summary["stopped"],
        "model": summary["model"], "source": summary["source"],
        "recording_segments_kept": summary.get("recording_segments"),
        "recording_segments_dropped": summary.get("recording_segments_dropped"),
        "disk_bound_mb": round(bound / MB, 3),
        "disk_max_after_1000_mb": round(disk_max / MB, 3),
        "disk_slope_after_1000_kib_per_1000_frames": slope_per_1000(warm, "disk_bytes", 1024),
        "rss_first_after_1000_mib": round(rss[0] / 1024, 1), "rss_last_mib": round(rss[-1] / 1024, 1),
        "rss_min_mib": round(min(rss) / 1024, 1), "rss_max_mib": round(max(rss) / 1024, 1),
        "rss_slope_after_1000_kib_per_1000_frames": slope_per_1000(warm, "rss_kib"),
        "files_at_end": run["files"], "final_disk_mb": round(run["final_disk_bytes"] / MB, 3),
        "samples": samples,
    }
    rows = [[s["frame"], f"{s['disk_bytes'] / MB:.2f}", f"{s['rss_kib'] / 1024:.1f}"]
            for s in samples if s["frame"] % 1000 < args.every or s is samples[-1]]
    md = "\n".join([
        f"# Soak: {args.frames:,} frames of `edgeseg run --loop` with output rotation",
        "",
        f"`python benchmarks/soak.py` on {result['machine']}: `{result['command']}` (the shipped "
        f"`{result['model']}` on the shipped clip, recording on). {result['frames']} frames at {result['fps']} FPS, "
        f"stopped: {result['stopped']}; {result['recording_segments_dropped']} recording segments were deleted as "
        f"newer ones finished, {result['recording_segments_kept']} kept.",
        "",
        f"* **Disk use under `--out`** (recording + log + the open segment's temporary file): at most "
        f"{result['disk_max_after_1000_mb']} MB after frame 1,000 against the {result['disk_bound_mb']} MB of "
        f"`--max-record-mb` + `--max-log-mb` (the open segment comes on top); least-squares slope after frame "
        f"1,000: {result['disk_slope_after_1000_kib_per_1000_frames']} KiB per 1,000 frames.",
        f"* **Resident memory of the run**: {result['rss_first_after_1000_mib']} MiB at frame 1,000, "
        f"{result['rss_last_mib']} MiB at the end (after frame 1,000: min {result['rss_min_mib']}, max "
        f"{result['rss_max_mib']}); least-squares slope after frame 1,000: "
        f"{result['rss_slope_after_1000_kib_per_1000_frames']} KiB per 1,000 frames (VmRSS as /proc shows it, "
        "malloc arenas included: steps of a few MiB come and go, a leak would climb at every sample).",
        f"* Files at the end: {', '.join(result['files_at_end'])}.",
        "",
        f"Samples every 1,000 frames (all of them, every {args.every} frames, in soak.json):",
        "",
        markdown_table(["frame", "disk MB", "RSS MiB"], rows),
        "",
    ])
    write_results(args.stem, result, md)


if __name__ == "__main__":
    main()
