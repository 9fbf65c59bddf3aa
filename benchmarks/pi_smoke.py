"""A Raspberry Pi in the loop, emulated: the wheel installed in a Raspberry Pi OS-like Bookworm arm64 root and
`edgeseg run` with every shipped model file on both backends, as a Pi 4 and a Pi 5, counts compared with x86.

    make pi-smoke                                   # make wheel, then this script (as root; 20-40 min on 2 cores)
    python benchmarks/pi_smoke.py --only fast_scnn  # the files whose name holds fast_scnn
    python benchmarks/pi_smoke.py --cpus cortex-a72 # a Pi 4 only
    python benchmarks/pi_smoke.py --rewrite-markdown # results/pi_smoke.md again from its .json (no run)

1. ``benchmarks/pi_root.sh`` builds, once, a Debian Bookworm arm64 root (Python 3.11, as on Raspberry Pi OS) with
   debootstrap from Debian's mirror into ``.pi-smoke/root`` (git-ignored: a second run reuses it).
2. The host's pip installs the newest ``dist/edgeseg-*.whl`` (``make wheel``) and the aarch64 wheels of its
   dependencies into the root (``--platform manylinux_2_x_aarch64 --only-binary=:all:``, for the root's glibc):
   what ``pip install edgeseg-*.whl`` resolves on a Pi. The dependencies are kept while they do not change.
3. Every ``.onnx`` / ``.xml`` in the installed zoo runs ``edgeseg run --max-frames 5 --no-display`` (the shipped
   clip, JSONL log) on ONNX Runtime and OpenVINO (an ``.xml`` on OpenVINO only), under QEMU user mode as a
   Raspberry Pi 4 (``QEMU_CPU=cortex-a72``) and a Raspberry Pi 5 (``cortex-a76``), each in a private mount
   namespace where ``/proc/cpuinfo`` is the board's (``device/hardware.py`` and the runtimes read it), and the
   same runs on this x86 machine with the same files.
4. ``benchmarks/results/pi_smoke.json`` + ``.md``: per file, backend and CPU the status (ok / fell back to
   ONNX Runtime and why / the error), the backend that ran, and the count per frame against x86.

Needs root (debootstrap, a mount namespace), ``apt-get install debootstrap qemu-user-static`` and the package
index for the aarch64 wheels. binfmt_misc is not needed: the root's python3 runs as ``qemu-aarch64-static -L ROOT``.
Times under emulation say nothing about a real Pi and are not reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import RESULTS, cpu_name, markdown_table, write_results

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".pi-smoke"
PYTHON_VERSION = "3.11"  # Raspberry Pi OS Bookworm's python3
FRAMES = 5
RUN_TIMEOUT_S = 1800  # one emulated run; OpenVINO INT8 of MobileNetV2-UNet as a Pi 5 takes 15 min on 2 busy cores
# QEMU CPU model -> the board and the /proc/cpuinfo its 64-bit Raspberry Pi OS kernel prints (4 cores alike)
BOARDS = {
    "cortex-a72": ("Raspberry Pi 4", "Raspberry Pi 4 Model B Rev 1.4", "c03114",
                   "fp asimd evtstrm crc32 cpuid", "0x0", "0xd08", "3"),
    "cortex-a76": ("Raspberry Pi 5", "Raspberry Pi 5 Model B Rev 1.0", "d04170",
                   "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                   "asimddp", "0x4", "0xd0b", "1"),
}
BACKENDS = {".onnx": ("onnxruntime", "openvino"), ".xml": ("openvino",)}
HW_PROBE = ("import json; from edgeseg.device.hardware import hardware_report as h; r = h(); "
            "print(json.dumps({'cpu': r['cpu'], 'os': r['os']['distribution'], 'python': r['python'], "
            "'libraries': {k: r['libraries'].get(k) for k in ('numpy', 'onnxruntime', 'openvino')}}))")


def cpuinfo_text(cpu: str) -> str:
    _, model, revision, features, variant, part, rev = BOARDS[cpu]
    core = (f"BogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
            f"CPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {rev}\n")
    cores = "\n".join(f"processor\t: {i}\n{core}" for i in range(4))
    return f"{cores}\nRevision\t: {revision}\nSerial\t\t: 100000000000cafe\nModel\t\t: {model}\n"


# ------------------------------------------------------------------------------------------------ the root


def build_root(root: Path) -> None:
    subprocess.run(["bash", str(REPO / "benchmarks" / "pi_root.sh"), str(root)], check=True)


def glibc_tags(root: Path) -> list[str]:
    """``--platform`` values for the root's glibc (manylinux_2_17 .. 2_N, aarch64)."""
    libc = next((root / "usr" / "lib" / "aarch64-linux-gnu").glob("libc.so.6"), None)
    found = sorted(root.glob("usr/lib/aarch64-linux-gnu/libc-2.*.so")) or []
    minor = int(re.search(r"2\.(\d+)", found[-1].name).group(1)) if found else None
    if minor is None and libc is not None:  # Bookworm: no libc-2.36.so; the version is in the file
        m = re.search(rb"GNU C Library[^\n]*?release version 2\.(\d+)", libc.read_bytes())
        minor = int(m.group(1)) if m else None
    minor = minor or 36
    return ["manylinux2014_aarch64", *(f"manylinux_2_{v}_aarch64" for v in range(17, minor + 1))]


def newest_wheel() -> Path:
    wheels = sorted((REPO / "dist").glob("edgeseg-*-py3-none-any.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        sys.exit("pi-smoke: no dist/edgeseg-*.whl: run `make wheel` first")
    return wheels[-1]


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's runtime dependencies (Requires-Dist without an extra marker)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    return [x.split(":", 1)[1].strip() for x in lines if x.startswith("Requires-Dist:") and "extra ==" not in x]


def pip_target(args: list[str], target: Path, root: Path) -> None:
    platforms = [a for tag in glibc_tags(root) for a in ("--platform", tag)]
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", PYTHON_VERSION, "--implementation", "cp",
           "--abi", f"cp{PYTHON_VERSION.replace('.', '')}", *platforms, "--target", str(target), *args]
    subprocess.run(cmd, check=True, timeout=1800)


def install(root: Path, wheel: Path) -> dict:
    """The wheel (always) and its aarch64 dependencies (when they changed) into ROOT/opt; returns what is there."""
    opt = root / "opt"
    reqs = wheel_requirements(wheel)
    stamp = opt / "deps.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != reqs:
        shutil.rmtree(opt / "deps", ignore_errors=True)
        print(f"pi-smoke: installing the aarch64 wheels of {', '.join(reqs)}", flush=True)
        pip_target(reqs, opt / "deps", root)
        stamp.write_text(json.dumps(reqs))
    shutil.rmtree(opt / "edgeseg", ignore_errors=True)
    pip_target(["--no-deps", str(wheel)], opt / "edgeseg", root)
    versions = {}
    for info in sorted((opt / "deps").glob("*.dist-info")) + sorted((opt / "edgeseg").glob("*.dist-info")):
        name, _, version = info.name.removesuffix(".dist-info").rpartition("-")
        versions[name.lower()] = version
    return {"wheel": wheel.name, "wheel_mb": round(wheel.stat().st_size / 1e6, 1),
            "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(), "requires": reqs, "installed": versions}


# ------------------------------------------------------------------------------------------------ running


def emulated(root: Path, cpu: str, argv: list[str], cpuinfo: Path) -> list[str]:
    """``argv`` (after ``python3``) run by the root's python3 as this CPU, with the board's /proc/cpuinfo bound
    over the machine's in a private mount namespace (qemu-user reads through to the host's /proc)."""
    env = ["env", f"QEMU_CPU={cpu}", f"PYTHONPATH={root}/opt/edgeseg:{root}/opt/deps", "PYTHONDONTWRITEBYTECODE=1",
           "PYTHONNOUSERSITE=1"]
    inner = [*env, "qemu-aarch64-static", "-L", str(root), str(root / "usr" / "bin" / "python3"), *argv]
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /proc/cpuinfo && exec "$@"', str(cpuinfo), *inner]


def run_argv(model: Path, backend: str, log: Path) -> list[str]:
    return ["-m", "edgeseg.cli", "run", "--model", str(model), "--backend", backend, "--max-frames", str(FRAMES),
            "--no-display", "--no-record", "--threads", "2", "--log", str(log)]


def one_run(cmd: list[str], log: Path) -> dict:
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=log.parent)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        rc, out = None, f"timed out after {RUN_TIMEOUT_S} s"
    records = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
    start = next((r for r in records if r.get("type") == "start"), {})
    counts = [r["count"] for r in records if r.get("type") == "frame" and "count" in r]
    notes = [x[len("note: "):] for x in out.splitlines() if x.startswith("note: ")]
    lines = [x for x in out.splitlines() if x.strip() and not x.startswith(("src/plugins", "[ WARN", "hwloc"))]
    error = next((x for x in reversed(lines) if x.startswith("error:")), None) or (lines[-1] if lines else "")
    traceback = "Traceback (most recent call last)" in out
    if rc == 0 and len(counts) == FRAMES:
        status = "fell back" if start.get("fallback_from") else "ok"
    else:
        status = "error"
    return {"status": status, "exit_code": rc, "traceback": traceback, "backend_ran": start.get("backend"),
            "executed_precision": start.get("executed_precision"), "fallback_reason": start.get("fallback_reason"),
            "notes": notes, "counts": counts, "error": None if status != "error" else error[:300],
            "seconds": round(time.time() - t0, 1)}


def hardware(root: Path, cpu: str, cpuinfo: Path) -> dict:
    out = subprocess.run(emulated(root, cpu, ["-c", HW_PROBE], cpuinfo), capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_S)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ the report


def compare(row: dict, x86: dict | None) -> dict:
    if not x86 or not row["counts"] or not x86["counts"]:
        return {"mean_count": _mean(row["counts"]), "x86_mean_count": _mean((x86 or {}).get("counts")),
                "max_abs_count_diff": None}
    diffs = [abs(a - b) for a, b in zip(row["counts"], x86["counts"], strict=False)]
    return {"mean_count": _mean(row["counts"]), "x86_mean_count": _mean(x86["counts"]),
            "max_abs_count_diff": max(diffs)}


def _mean(values) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def status_cell(r: dict) -> str:
    if r["status"] == "ok":
        return "ok"
    if r["status"] == "fell back":
        return f"fell back to {r['backend_ran']}: {r['fallback_reason']}"
    return f"error (exit {r['exit_code']}{', traceback' if r['traceback'] else ''}): {r['error']}"


def markdown(data: dict) -> str:
    cpus = data["cpus"]
    head = [
        "# Raspberry Pi smoke test (emulated)",
        "",
        f"`python benchmarks/pi_smoke.py` (`make pi-smoke`), {data['date']}: the wheel `{data['install']['wheel']}` "
        f"({data['install']['wheel_mb']} MB) and the aarch64 wheels of its dependencies (pip's resolution for "
        f"CPython {PYTHON_VERSION}, glibc of the root) installed in a Debian Bookworm arm64 root (debootstrap, "
        f"Raspberry Pi OS's Python {data['root_python']}), run under QEMU user mode "
        f"({data['qemu']}) as each board's CPU with its /proc/cpuinfo; x86: {data['x86_cpu']}. "
        f"Each run: `edgeseg run --model FILE --backend B --max-frames {FRAMES} --no-display --no-record --threads 2 "
        "--log LOG` on the shipped clip. *Count* = mean nuclei per frame; *vs x86* = the largest difference of a "
        "frame's count from the same run on x86 (0: every frame counted the same). Counts move by a nucleus or a few "
        "where the arithmetic differs: x86 OpenVINO runs float layers in bf16 on an AMX CPU, the Pi 5's in fp16, "
        "and the INT8 kernels differ by CPU (see *executed*). Times under emulation mean nothing and are not given.",
        "",
        "Installed: " + ", ".join(f"{k} {v}" for k, v in data["install"]["installed"].items()
                                  if k in ("numpy", "onnxruntime", "openvino", "opencv_python_headless", "scipy")),
        "",
    ]
    for cpu, hw in cpus.items():
        c = hw.get("cpu") or {}
        feats = [k for k, v in (c.get("features") or {}).items() if v]
        head.append(f"- {BOARDS[cpu][0]} (`QEMU_CPU={cpu}`): edgeseg's hardware report reads "
                    f"`{c.get('model')}` ({c.get('architecture')}, features: {', '.join(feats) or 'none'}), "
                    f"{hw.get('os')}, Python {hw.get('python')}")
    rows = []
    for r in data["runs"]:
        if r["cpu"] == "x86":
            continue
        rows.append([r["file"], r["backend"], f"{BOARDS[r['cpu']][0]} ({r['cpu']})", status_cell(r),
                     r.get("backend_ran") or "-", r.get("executed_precision") or "-",
                     "-" if r["mean_count"] is None else f"{r['mean_count']:.1f}",
                     "-" if r["x86_mean_count"] is None else f"{r['x86_mean_count']:.1f}",
                     "-" if r["max_abs_count_diff"] is None else r["max_abs_count_diff"]])
    x86_rows = [[r["file"], r["backend"], status_cell(r), r.get("backend_ran") or "-",
                 r.get("executed_precision") or "-", "-" if r["mean_count"] is None else f"{r['mean_count']:.1f}"]
                for r in data["runs"] if r["cpu"] == "x86"]
    total = [r for r in data["runs"] if r["cpu"] != "x86"]
    summary = {s: sum(r["status"] == s for r in total) for s in ("ok", "fell back", "error")}
    tracebacks = sum(r["traceback"] for r in data["runs"])
    return "\n".join([
        *head, "",
        f"**{len(total)} emulated runs: {summary['ok']} ok, {summary['fell back']} fell back to ONNX Runtime, "
        f"{summary['error']} errors; {tracebacks} tracebacks.**", "",
        markdown_table(["file", "backend asked", "CPU", "status", "ran", "executed", "count", "x86 count", "vs x86"],
                       rows), "",
        "## x86 (the reference)", "",
        markdown_table(["file", "backend asked", "status", "ran", "executed", "count"], x86_rows), "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=CACHE / "root")
    ap.add_argument("--cpus", default=",".join(BOARDS), help="QEMU CPU models [cortex-a72,cortex-a76]")
    ap.add_argument("--only", default=None, help="Only the files whose name holds this text.")
    ap.add_argument("--jobs", type=int, default=2, help="Runs at once [2].")
    ap.add_argument("--out", type=Path, default=RESULTS / "pi_smoke", help="Result stem [benchmarks/results/pi_smoke].")
    args = ap.parse_args()
    cpus = [c for c in args.cpus.split(",") if c]
    for c in cpus:
        if c not in BOARDS:
            sys.exit(f"pi-smoke: unknown CPU {c}: use {', '.join(BOARDS)}")
    for tool in ("unshare", "qemu-aarch64-static"):
        if shutil.which(tool) is None:
            sys.exit(f"pi-smoke: {tool} is missing: apt-get install util-linux qemu-user-static")
    root = args.root.resolve()
    build_root(root)
    info = install(root, newest_wheel())
    zoo = root / "opt" / "edgeseg" / "edgeseg" / "zoo"
    files = sorted(p for p in zoo.iterdir() if p.suffix in BACKENDS and (not args.only or args.only in p.name))
    work = Path(tempfile.mkdtemp(prefix="pi-smoke-"))
    cpuinfos = {}
    for c in cpus:
        cpuinfos[c] = work / f"{c}.cpuinfo"
        cpuinfos[c].write_text(cpuinfo_text(c))
    jobs = []
    for f in files:
        for b in BACKENDS[f.suffix]:
            for c in ["x86", *cpus]:
                log = work / f"{c}-{b}-{f.name}.jsonl"
                argv = run_argv(f, b, log)
                cmd = [sys.executable, *argv] if c == "x86" else emulated(root, c, argv, cpuinfos[c])
                jobs.append(({"file": f.name, "backend": b, "cpu": c}, cmd, log))
    print(f"pi-smoke: {len(files)} files, {len(jobs)} runs ({', '.join(cpus)} and x86), {args.jobs} at a time",
          flush=True)

    def go(job):
        key, cmd, log = job
        r = {**key, **one_run(cmd, log)}
        print(f"  {r['cpu']:>10} {r['backend']:>11} {r['file']}: {r['status']} {r['counts']} ({r['seconds']} s)"
              + (f" - {r['error']}" if r["error"] else ""), flush=True)
        return r

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = list(pool.map(go, jobs))
    x86 = {(r["file"], r["backend"]): r for r in runs if r["cpu"] == "x86"}
    for r in runs:
        r.update(compare(r, x86.get((r["file"], r["backend"]))))
    qemu = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True).stdout.splitlines()
    py = subprocess.run(emulated(root, cpus[0], ["-c", "import platform; print(platform.python_version())"],
                                 cpuinfos[cpus[0]]), capture_output=True, text=True).stdout.strip()
    data = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "frames": FRAMES,
            "x86_cpu": f"{cpu_name()} ({platform.machine()})", "qemu": qemu[0] if qemu else "?", "root_python": py,
            "install": info, "cpus": {c: hardware(root, c, cpuinfos[c]) for c in cpus}, "runs": runs}
    shutil.rmtree(work, ignore_errors=True)
    if args.only or cpus != list(BOARDS):  # a partial run does not replace the full result
        args.out = args.out.with_name(args.out.name + "_partial")
    write_results(args.out, data, markdown(data))
    bad = [r for r in runs if r["status"] == "error" or r["traceback"]]
    if bad:
        sys.exit(f"pi-smoke: {len(bad)} runs failed or printed a traceback (see {args.out}.md)")


def rewrite_markdown(stem: Path = RESULTS / "pi_smoke") -> None:
    """STEM.md again from STEM.json (after a change to the table's layout; no run)."""
    from edgeseg.fsutil import atomic_write_text

    atomic_write_text(stem.with_suffix(".md"), markdown(json.loads(stem.with_suffix(".json").read_text())))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if sys.argv[1:] == ["--rewrite-markdown"]:
        rewrite_markdown()
    else:
        main()
