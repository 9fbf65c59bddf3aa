"""The hardware report that goes beside every benchmark number (torch-free, standard library only).

    from edgeseg.device.hardware import hardware_report, thermal_sample, format_report
    report = hardware_report()            # CPU, instruction sets, OS, Python, libraries, Raspberry Pi state
    ... measure ...
    report["thermal"]["after"] = thermal_sample()

What is read, and from where (Linux; elsewhere the fields are left empty):

* CPU model, logical cores (and the ones this process may use), architecture: ``/proc/cpuinfo``,
  :func:`os.sched_getaffinity`, :func:`platform.machine`. ARM kernels print no model name: the ``CPU part``
  code is translated (Cortex-A53/A72/A76...), and ``/proc/device-tree/model`` names the board.
* Instruction-set features that decide inference speed: x86 AVX2, AVX-512, VNNI (AVX-512 or AVX), AVX-512
  BF16/FP16, AMX (bf16/int8); ARM NEON (``asimd``), the int8 dot product (``asimddp``), i8mm, bf16, fp16.
* A Raspberry Pi (or any board with a thermal zone): SoC temperature from ``/sys/class/thermal`` and the
  throttling flags of ``vcgencmd get_throttled`` (when present), sampled before and after a benchmark.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from edgeseg.card import library_versions

X86_FEATURES = {  # report key -> /proc/cpuinfo flag
    "avx2": "avx2",
    "fma": "fma",
    "avx512": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
}
ARM_FEATURES = {  # report key -> /proc/cpuinfo "Features" flag (aarch64 names; 32-bit kernels say "neon")
    "neon": "asimd",
    "dotprod": "asimddp",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "fp16": "asimdhp",
    "sve": "sve",
}
ARM_PARTS = {  # implementer 0x41 (Arm) "CPU part" codes of the cores found on single-board computers
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1",
    "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710",
    "0xd4d": "Cortex-A715",
}
BUSY_SHARE = 0.10  # other processes using more of the CPU than this during a benchmark make it noisy
THROTTLE_BITS = {  # vcgencmd get_throttled: bit -> flag
    0: "under_voltage",
    1: "frequency_capped",
    2: "throttled",
    3: "soft_temperature_limit",
    16: "under_voltage_occurred",
    17: "frequency_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temperature_limit_occurred",
}


def read_text(path: Path) -> str | None:
    """A /proc or /sys file's text, None where it cannot be read."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def parse_cpuinfo(text: str) -> dict:
    """``/proc/cpuinfo`` text -> {"model", "logical_cores", "flags"} (x86 ``flags`` or ARM ``Features``)."""
    fields: dict[str, str] = {}
    processors = 0
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "processor":
            processors += 1
        elif key in ("flags", "features"):
            flags.update(value.split())
        else:
            fields.setdefault(key, value)
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model")
    if not model and fields.get("cpu implementer") == "0x41":
        part = fields.get("cpu part", "").lower()
        model = ARM_PARTS.get(part, f"Arm core (part {part})" if part else None)
    return {"model": model, "logical_cores": processors or None, "flags": sorted(flags)}


def cpu_features(flags: list[str] | set[str], arch: str) -> dict[str, bool]:
    """The instruction-set features that matter for inference, for this architecture."""
    flags = set(flags)
    table = ARM_FEATURES if is_arm(arch) else X86_FEATURES
    out = {key: flag in flags for key, flag in table.items()}
    if is_arm(arch) and "neon" in flags:  # 32-bit ARM kernels
        out["neon"] = True
    return out


def is_arm(arch: str) -> bool:
    return arch.lower().startswith(("arm", "aarch64"))


def decode_throttled(text: str) -> dict:
    """``vcgencmd get_throttled`` output (``throttled=0x50005``) -> {"raw", "value", and every flag as a bool}."""
    m = re.search(r"0x[0-9a-fA-F]+|\d+", text or "")
    if not m:
        return {"raw": (text or "").strip(), "value": None}
    value = int(m.group(0), 0)
    return {"raw": (text or "").strip(), "value": value, **{name: bool(value >> bit & 1) for bit, name in
                                                            THROTTLE_BITS.items()}}


def temperatures(root: Path = Path("/")) -> dict[str, float]:
    """Every thermal zone's temperature in °C (``/sys/class/thermal/thermal_zone*/temp``, millidegrees)."""
    out = {}
    for zone in sorted((root / "sys" / "class" / "thermal").glob("thermal_zone*")):
        raw = read_text(zone / "temp")
        if raw is None or not raw.strip().lstrip("-").isdigit():
            continue
        kind = (read_text(zone / "type") or zone.name).strip() or zone.name
        key = kind if kind not in out else f"{kind}:{zone.name}"
        out[key] = round(int(raw.strip()) / 1000.0, 1)
    return out


def throttling() -> dict | None:
    """Raspberry Pi firmware throttling flags, or None where ``vcgencmd`` is absent or fails."""
    exe = shutil.which("vcgencmd")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return {"raw": (res.stderr or res.stdout).strip(), "value": None}
    return decode_throttled(res.stdout)


def thermal_sample(root: Path = Path("/")) -> dict:
    """Temperatures and throttling now (taken before and after a benchmark: a hot Pi slows down)."""
    import time

    return {"time": round(time.time(), 3), "temperature_c": temperatures(root), "throttled": throttling()}


def cpu_snapshot() -> dict | None:
    """Busy CPU seconds of the whole machine (``/proc/stat``) and of this process, now; None off Linux."""
    import time

    text = read_text(Path("/proc/stat")) or ""
    line = next((x for x in text.splitlines() if x.startswith("cpu ")), None)
    if line is None:
        return None
    v = [int(x) for x in line.split()[1:]]
    v += [0] * (8 - len(v))
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / hz  # user nice system irq softirq steal
    t = os.times()
    return {"wall": time.monotonic(), "busy_s": busy, "own_s": t.user + t.system}


def other_cpu_share(before: dict | None, after: dict | None, cores: int) -> float | None:
    """The share of the machine's CPU (0..1) that *other* processes used between two :func:`cpu_snapshot`:
    a quiet machine is near 0; a benchmark taken while it is well above 0.1 is noisy."""
    if not before or not after or after["wall"] <= before["wall"] or cores < 1:
        return None
    others = (after["busy_s"] - before["busy_s"]) - (after["own_s"] - before["own_s"])
    return round(min(max(others / ((after["wall"] - before["wall"]) * cores), 0.0), 1.0), 3)


def board_model(root: Path = Path("/")) -> str | None:
    """The board's name from the device tree (``Raspberry Pi 5 Model B Rev 1.0``), None on a PC."""
    text = read_text(root / "proc" / "device-tree" / "model")
    if not text:
        return None
    return text.replace("\x00", "").strip() or None


def hardware_report(root: Path = Path("/"), arch: str | None = None) -> dict:
    """Everything about this machine that a benchmark number depends on (see the module docstring).

    ``root`` and ``arch`` stand for ``/`` and :func:`platform.machine` (another machine's files, in tests).
    """
    arch = arch or platform.machine() or "unknown"
    cpu = parse_cpuinfo(read_text(root / "proc" / "cpuinfo") or "")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    board = board_model(root)
    mem_total = None
    meminfo = read_text(root / "proc" / "meminfo") or ""
    m = re.search(r"MemTotal:\s+(\d+)\s*kB", meminfo)
    if m:
        mem_total = round(int(m.group(1)) / 1024**2, 2)
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": {
            "model": cpu["model"] or platform.processor() or None,
            "architecture": arch,
            "logical_cores": cpu["logical_cores"] or os.cpu_count(),
            "usable_cores": usable,
            "features": cpu_features(cpu["flags"], arch),
        },
        "memory_gib": mem_total,
        "board": board,
        "raspberry_pi": bool(board and "raspberry pi" in board.lower()),
        "os": {
            "system": platform.system(),
            "release": platform.release(),
            "distribution": _os_release(root),
        },
        "python": platform.python_version(),
        "libraries": library_versions(),
        "load_average": load,
        "thermal": {"before": thermal_sample(root), "after": None},
    }


def _os_release(root: Path) -> str | None:
    text = read_text(root / "etc" / "os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else None


def format_report(report: dict) -> str:
    """A few human lines: what the numbers were measured on."""
    cpu = report.get("cpu", {})
    feats = [k for k, v in (cpu.get("features") or {}).items() if v]
    lines = [
        f"CPU: {cpu.get('model') or '?'} ({cpu.get('architecture')}, {cpu.get('logical_cores')} logical cores, "
        f"{cpu.get('usable_cores')} usable); features: {', '.join(feats) or 'none of note'}",
    ]
    os_ = report.get("os", {})
    libs = report.get("libraries", {})
    lib_text = ", ".join(f"{k} {v}" for k, v in libs.items() if k not in ("python", "edgeseg"))
    lines.append(f"OS: {os_.get('distribution') or os_.get('system')} ({os_.get('release')}); "
                 f"Python {report.get('python')}; edgeseg {libs.get('edgeseg', '?')}; {lib_text}")
    if report.get("board"):
        lines.append(f"Board: {report['board']}")
    if report.get("load_average"):
        lines.append(f"Load average at start (1/5/15 min): {report['load_average']}")
    share = report.get("other_cpu_share")
    if share is not None:
        lines.append(f"Other processes used {share:.0%} of the CPU during the measurement"
                     + (" (a busy machine: the numbers are noisy)" if share > BUSY_SHARE else " (quiet)"))
    for when in ("before", "after"):
        s = (report.get("thermal") or {}).get(when)
        if not s:
            continue
        temps = ", ".join(f"{k} {v} °C" for k, v in s.get("temperature_c", {}).items())
        thr = s.get("throttled")
        flags = "" if thr is None else "; throttling: " + (
            ", ".join(k for k, v in thr.items() if v is True) or f"none ({thr.get('raw')})")
        if temps or flags:
            lines.append(f"Thermal {when}: {temps or 'no sensor'}{flags}")
    return "\n".join(lines)


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS reports it, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def rss_mb() -> float | None:
    """This process's resident memory in MB (from /proc; None where there is none)."""
    text = read_text(Path("/proc/self/status"))
    for line in (text or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None
