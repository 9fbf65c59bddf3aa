"""Which file of a network runs fastest on *this* CPU without losing accuracy (torch-free).

``edgeseg run --model fast_scnn`` names a network, not a file. The zoo holds several files of it (FP32, INT8 for
x86 VNNI, INT8 for AVX2 without VNNI, INT8 for ARM, OpenVINO IRs), and which one is fastest is a property of the
CPU: INT8 is slower than FP32 on a CPU without VNNI, and the INT8 kernels of such a CPU (u8 x s8 pairs that can
saturate) lose accuracy that the VNNI machine the guard ran on did not. :func:`choose_variant` answers it here:

* **candidates**: the network's exported files that an installed backend runs (the ``--backend`` asked for, or
  the file's own); an INT8 file only if it was quantised for this CPU's kernels (:func:`cpu_flavour`: ``x86``
  with VNNI, ``x86-no-vnni`` for AVX2 without it, ``arm``) or for none in particular;
* **accuracy**: a lower-precision file only if its Dice drop against its FP32 twin stays within the card's
  tolerance (the INT8 guard's ``max_drop``): the drop the cards record on the DSB2018 test split, and the drop
  measured on this CPU (the shipped sample at calibration; ``edgeseg bench --accuracy`` records larger sets);
* **speed**: a short calibration bench (:func:`~edgeseg.device.bench.time_predictor`, interleaved rounds, the
  median of the per-round median latencies) at the thread count of the run; the fastest file wins, except that a
  lower-precision file must beat the fastest FP32 file by :data:`MIN_GAIN` (it costs accuracy).

The choice is cached per machine (:func:`cache_path`: CPU model and flags, threads, backend, library versions,
the files' sizes and mtimes), so it costs a few seconds once; a changed file recalibrates, and
``edgeseg bench --choose --recalibrate`` (or deleting the file) forces it.

    from edgeseg.device.choose import choose_variant
    choice = choose_variant("fast_scnn", threads=1)
    choice["model"], choice["chosen_from"], choice["candidates"]
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from edgeseg.errors import EdgesegError, ModelError
from edgeseg.fsutil import atomic_write_json
from edgeseg.zoo import ModelRef, Zoo

from .hardware import is_arm, parse_cpuinfo, read_text

SCHEMA = 1
CACHE_NAME = "choices.json"
MIN_GAIN = 0.05  # a lower-precision file must be 5 % faster than the fastest FP32 file to be chosen
ROUNDS, ITERATIONS, WARMUP = 3, 20, 5  # the calibration bench: 3 interleaved rounds of 20 timed calls a file
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # /proc/cpuinfo flags of x86 int8 dot products
FLAVOUR_LABEL = {"x86": "x86 with VNNI", "x86-no-vnni": "x86 without VNNI (AVX2 kernels)", "arm": "ARM"}

Timer = Callable[[list, int], dict]  # (candidates, threads) -> {name: p50 ms, or a one-line error}
DropMeter = Callable[[ModelRef, ModelRef, str, int], dict]  # (file, fp32 twin, backend, threads) -> a drop record


@dataclass
class Candidate:
    """One file of the network, and what calibration learned about it."""

    name: str
    path: str
    format: str
    backend: str
    precision: str
    target: str | None
    card_drop: float | None = None  # FP32 twin's test Dice minus this file's, as the cards record them
    tolerance: float | None = None  # the largest drop allowed (the INT8 guard's max_drop)
    measured_drop: dict | None = None  # the drop measured on this CPU: {"drop", "dice", "fp32_dice", "data", ...}
    p50_ms: float | None = None
    rejected: str | None = None  # why it cannot be chosen (None: it can)


# --------------------------------------------------------------------------- this CPU


def cpu_identity(root: Path = Path("/"), arch: str | None = None) -> dict:
    """What decides the INT8 kernels and the speed of this CPU: model, architecture, a hash of its flags, flavour."""
    arch = arch or platform.machine() or "unknown"
    cpu = parse_cpuinfo(read_text(root / "proc" / "cpuinfo") or "")
    return {"model": cpu["model"] or platform.processor() or None, "arch": arch,
            "flags_sha256": hashlib.sha256(" ".join(cpu["flags"]).encode()).hexdigest()[:16],
            "flavour": cpu_flavour(cpu["flags"], arch)}


def cpu_flavour(flags, arch: str | None = None) -> str:
    """The INT8 kernels a CPU runs, as the zoo's targets name them: ``arm``; ``x86`` with a VNNI dot product
    (AVX512-VNNI, AVX-VNNI, AMX); ``x86-no-vnni`` otherwise (AVX2: u8 x s8 pairs that can saturate)."""
    if is_arm(arch or platform.machine() or ""):
        return "arm"
    return "x86" if VNNI_FLAGS & set(flags) else "x86-no-vnni"


# --------------------------------------------------------------------------- the cache


def cache_path() -> Path:
    """``$EDGESEG_CACHE/choices.json``, else ``$XDG_CACHE_HOME/edgeseg/choices.json``, else ``~/.cache/edgeseg/``."""
    if os.environ.get("EDGESEG_CACHE"):
        return Path(os.environ["EDGESEG_CACHE"]) / CACHE_NAME
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeseg" / CACHE_NAME


def read_cache(path: Path | None = None) -> dict:
    """The cache's content (an empty one if missing, unreadable or of another schema)."""
    path = path or cache_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        data = {"schema": SCHEMA}
    data.setdefault("choices", {})
    data.setdefault("drops", [])
    return data


def write_cache(data: dict, path: Path | None = None) -> None:
    """Write the cache atomically; a cache that cannot be written is only a slower next start."""
    try:
        atomic_write_json(path or cache_path(), data)
    except OSError:
        pass


def clear_cache(path: Path | None = None) -> bool:
    """Forget every choice and measured drop; True if there was a cache."""
    path = path or cache_path()
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def file_identity(ref: ModelRef) -> list:
    """A file as the cache sees it: name, size, mtime (and its OpenVINO ``.bin``'s)."""
    out = [ref.name]
    for p in (ref.path, ref.path.with_suffix(".bin") if ref.format == "openvino" else None):
        if p is not None and p.exists():
            st = p.stat()
            out += [st.st_size, st.st_mtime_ns]
    return out


def _libraries() -> dict:
    out = {}
    for lib in ("onnxruntime", "openvino"):
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


def choice_key(network: str, threads: int, backend: str, refs: list[ModelRef], cpu: dict) -> dict:
    """Everything a cached choice depends on."""
    return {"schema": SCHEMA, "network": network, "threads": int(threads), "backend": backend, "cpu": cpu,
            "libraries": _libraries(), "files": [file_identity(r) for r in refs]}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:24]


def recorded_drop(cache: dict, ref: ModelRef, twin: ModelRef, backend: str, cpu: dict) -> dict | None:
    """The Dice drop of ``ref`` against ``twin`` measured on this CPU with ``backend`` (the largest data set)."""
    mine = {"cpu": _digest(cpu), "backend": backend, "file": file_identity(ref), "fp32": file_identity(twin)}
    found = [d for d in cache.get("drops", []) if all(d.get(k) == v for k, v in mine.items())]
    return max(found, key=lambda d: d.get("n_images") or 0) if found else None


def record_drop(cache: dict, ref: ModelRef, twin: ModelRef, backend: str, cpu: dict, drop: dict) -> dict:
    """Keep a measured drop (one a file pair, backend and data set: a new measurement replaces the old)."""
    entry = {"cpu": _digest(cpu), "backend": backend, "file": file_identity(ref), "fp32": file_identity(twin),
             **drop}
    same = ("cpu", "backend", "file", "fp32", "data")
    cache["drops"] = [d for d in cache.get("drops", []) if any(d.get(k) != entry.get(k) for k in same)] + [entry]
    return entry


def forget_choices(cache: dict, network: str) -> None:
    """Drop the cached choices of ``network`` (a new measured drop may change them: the next run recalibrates)."""
    cache["choices"] = {k: v for k, v in cache.get("choices", {}).items() if v.get("network") != network}


# --------------------------------------------------------------------------- candidates


def _installed_backends() -> list[str]:
    from edgeseg.backends import available_backends

    return available_backends()


def _backend_for(ref: ModelRef, backend: str, installed: list[str]) -> tuple[str, str | None]:
    """The backend that runs ``ref`` (``backend``, or the file's own for ``auto``), and why it cannot, if so."""
    from edgeseg.backends import NATIVE, backend_class

    name = NATIVE.get(ref.format, ref.format) if backend == "auto" else backend
    if name not in installed:
        return name, f"{name} is not installed"
    if ref.format not in backend_class(name).formats:
        return name, f"{name} does not run {ref.format} files"
    return name, None


def twin_backend(twin: ModelRef, backend: str) -> str:
    """The backend an FP32 twin is scored with: ``backend`` where it runs the twin's format, else the twin's own."""
    installed = _installed_backends()
    name, cannot = _backend_for(twin, backend, installed)
    return _backend_for(twin, "auto", installed)[0] if cannot else name


def tolerance(card) -> float:
    """The largest Dice drop a lower-precision file may have against FP32: its INT8 guard's ``max_drop`` (the
    bench's recommendation tolerance for a file with no guard)."""
    from .bench import DICE_TOLERANCE

    guard = card.extra.get("guard") or {}
    return float(guard["max_drop"]) if guard.get("max_drop") is not None else DICE_TOLERANCE


def card_drop(ref: ModelRef, twin: ModelRef | None) -> float | None:
    """The test Dice (at the input size) the cards record: the FP32 twin's (or the source checkpoint's) minus
    ``ref``'s."""
    mine = ref.card.test_dice
    ref_dice = twin.card.test_dice if twin is not None else None
    if ref_dice is None:
        ref_dice = (ref.card.source or {}).get("test_dice_256")
    return None if mine is None or ref_dice is None else round(float(ref_dice) - float(mine), 6)


def candidates(network: str, zoo: Zoo, backend: str, flavour: str) -> list[Candidate]:
    """Every exported file of ``network`` with the backend that would run it, rejected where it cannot be chosen
    (not installed, made for other CPU kernels, a card drop over its tolerance)."""
    installed = _installed_backends()
    out = []
    for ref in zoo.variants(network, target=flavour):
        be, why = _backend_for(ref, backend, installed)
        c = Candidate(ref.name, str(ref.path), ref.format, be, ref.precision, ref.card.target, rejected=why)
        if ref.card.target not in (None, flavour) and c.rejected is None:
            c.rejected = (f"made for {FLAVOUR_LABEL.get(ref.card.target, ref.card.target)}; "
                          f"this CPU is {FLAVOUR_LABEL[flavour]}")
        if ref.precision != "fp32":
            c.tolerance = tolerance(ref.card)
            c.card_drop = card_drop(ref, zoo.fp32_twin(ref))
            if c.rejected is None and c.card_drop is not None and c.card_drop > c.tolerance:
                c.rejected = f"its card's test Dice drop {c.card_drop:.4f} is over its tolerance {c.tolerance}"
        out.append(c)
    return out


# --------------------------------------------------------------------------- measuring


def time_files(cands: list[Candidate], threads: int, rounds: int = ROUNDS, iterations: int = ITERATIONS,
               warmup: int = WARMUP) -> dict:
    """The calibration bench: each file open at once on its backend, timed in interleaved rounds (a busy machine
    slows every file alike); ``{name: median p50 ms}``, or a one-line error for a file that fails here."""
    from edgeseg.segmenter import Segmenter

    from .bench import model_input, sample_images, time_predictor

    out: dict = {}
    segs = {}
    try:
        image = sample_images(1)
        for c in cands:
            try:
                segs[c.name] = Segmenter.load(c.path, backend=c.backend, threads=threads, verify=False)
            except Exception as exc:  # a runtime that cannot open the file here: it is not a candidate
                out[c.name] = f"fails here: {_line(exc)}"
        inputs = {name: model_input(seg, image) for name, seg in segs.items()}
        p50s: dict[str, list[float]] = {name: [] for name in segs}
        for _ in range(rounds):
            for name, seg in segs.items():
                if name in out:
                    continue
                try:
                    timed = time_predictor(seg.predict, inputs[name], iterations, warmup)
                    p50s[name].append(timed["latency_ms"]["p50"])
                except Exception as exc:
                    out[name] = f"fails here: {_line(exc)}"
        out.update({name: round(statistics.median(v), 4) for name, v in p50s.items() if name not in out and v})
    finally:
        for seg in segs.values():
            seg.close()
    return out


def _line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, EdgesegError) else text


def sample_drop(ref: ModelRef, twin: ModelRef, backend: str, threads: int, data: str | None = None) -> dict:
    """The Dice drop (at the input size) of ``ref`` against its FP32 twin measured here with ``backend``: on the
    sample shipped in the package, or on ``data`` (a DSB-layout folder: its test split when canonical)."""
    from edgeseg.segmenter import Segmenter

    from .bench import accuracy, sample_images

    samples = None if data else sample_images()
    scores = []
    for r, be in ((ref, backend), (twin, twin_backend(twin, backend))):
        with Segmenter.load(r.path, backend=be, threads=threads, verify=False) as seg:
            scores.append(accuracy(seg, samples, data))
    return drop_record(ref, twin, scores[0], scores[1])


def drop_record(ref: ModelRef, twin: ModelRef, mine: dict, fp32: dict) -> dict:
    """A measured drop from two :func:`~edgeseg.device.bench.accuracy` results on the same data."""
    return {"model": ref.name, "fp32_model": twin.name, "dice": mine["dice_256"], "fp32_dice": fp32["dice_256"],
            "drop": round(fp32["dice_256"] - mine["dice_256"], 4), "data": mine["data"],
            "n_images": mine["n_images"], "measured": _now()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the choice


def choose_variant(network: str, threads: int, *, backend: str = "auto", zoo: Zoo | None = None,
                   timer: Timer | None = None, drop_meter: DropMeter | None = None, recalibrate: bool = False,
                   cache_file: Path | None = None, cpu: dict | None = None,
                   say: Callable[[str], None] | None = None) -> dict:
    """The file of ``network`` to run on this CPU at ``threads`` threads with ``backend`` (``auto``: each file's
    own), from the cache when nothing it depends on changed, else calibrated (``timer``: :func:`time_files`;
    ``drop_meter``: :func:`sample_drop`) and cached; ``say`` hears that a calibration starts.

    Returns ``{"network", "model", "file", "backend", "precision", "chosen_from": "cache"|"calibrated", "why",
    "threads", "cpu", "candidates": [Candidate as dicts], "calibrated"}``; a one-line EdgesegError when no file
    of the network can run here."""
    zoo = zoo or Zoo()
    cpu = cpu or cpu_identity()
    refs = zoo.variants(network, target=cpu["flavour"])
    if not refs:
        raise ModelError(f"{network} has no exported file in the zoo",
                         f"export one with `edgeseg export {network} --format onnx`")
    key = choice_key(network, threads, backend, refs, cpu)
    digest = _digest(key)
    cache = read_cache(cache_file)
    if not recalibrate and digest in cache["choices"]:
        return {**cache["choices"][digest], "chosen_from": "cache"}
    if say is not None:
        say(f"{network}: timing its files on this CPU to pick the fastest (once; cached in "
            f"{cache_file or cache_path()})")
    cands = calibrate(network, threads, backend, zoo, cpu, cache, timer or time_files, drop_meter or sample_drop)
    choice = {**decide(network, cands), "threads": int(threads), "cpu": cpu, "calibrated": _now(), "key": digest}
    cache["choices"][digest] = choice
    write_cache(cache, cache_file)
    return {**choice, "chosen_from": "calibrated"}


def calibrate(network: str, threads: int, backend: str, zoo: Zoo, cpu: dict, cache: dict, timer: Timer,
              drop_meter: DropMeter) -> list[Candidate]:
    """The candidates with their measured drops (from the cache, else measured and recorded in it) and timings."""
    cands = candidates(network, zoo, backend, cpu["flavour"])
    for c in cands:
        if c.rejected is not None or c.precision == "fp32":
            continue
        ref = zoo.get(c.name)
        twin = zoo.fp32_twin(ref)
        if twin is None:
            continue
        drop = recorded_drop(cache, ref, twin, c.backend, cpu)
        if drop is None:
            try:
                drop = record_drop(cache, ref, twin, c.backend, cpu, drop_meter(ref, twin, c.backend, threads))
            except Exception as exc:  # the file (or its twin) fails here: it is not a candidate
                c.rejected = f"fails here: {_line(exc)}"
                continue
        c.measured_drop = {k: drop.get(k) for k in ("drop", "dice", "fp32_dice", "data", "n_images")}
        if drop["drop"] > c.tolerance:
            c.rejected = (f"its Dice drop on this CPU, {drop['drop']:.4f} ({drop['data']}), is over its tolerance "
                          f"{c.tolerance}")
    timings = timer([c for c in cands if c.rejected is None], threads)
    for c in cands:
        t = timings.get(c.name)
        if isinstance(t, str):
            c.rejected = t
        elif t is not None:
            c.p50_ms = float(t)
        elif c.rejected is None:
            c.rejected = "not timed"
    return cands


def decide(network: str, cands: list[Candidate]) -> dict:
    """The fastest eligible file; a lower-precision one only if :data:`MIN_GAIN` faster than the fastest FP32."""
    ok = sorted((c for c in cands if c.rejected is None), key=lambda c: c.p50_ms)
    if not ok:
        why = "; ".join(f"{c.name}: {c.rejected}" for c in cands)
        raise ModelError(f"no file of {network} can run on this machine ({why})",
                         "install the backend it needs, or give a model file")
    pick = ok[0]
    fp32 = next((c for c in ok if c.precision == "fp32"), None)
    if pick.precision != "fp32" and fp32 is not None and fp32.p50_ms <= pick.p50_ms * (1 + MIN_GAIN):
        why = (f"{pick.name} ({pick.p50_ms:.2f} ms) is not {MIN_GAIN:.0%} faster than {fp32.name} "
               f"({fp32.p50_ms:.2f} ms): FP32 keeps the accuracy")
        pick = fp32
    elif len(ok) > 1:
        why = f"the fastest of {len(ok)} files within their accuracy tolerance ({ok[1].name}: {ok[1].p50_ms:.2f} ms)"
    else:
        why = "the only file that can run here within its accuracy tolerance"
    return {"network": network, "model": pick.name, "file": pick.path, "backend": pick.backend,
            "precision": pick.precision, "p50_ms": pick.p50_ms, "why": f"{pick.p50_ms:.2f} ms p50: {why}",
            "candidates": [asdict(c) for c in cands]}


def choose_for_run(opts, say: Callable[[str], None] | None = None):
    """``edgeseg run``'s MODEL: a network name becomes the file chosen for this CPU (``opts`` with that model, and
    ``{"model_choice": choice}`` for the run log's start line); a file name or path passes as it is (``{}``)."""
    zoo = Zoo()
    network = zoo.network_name(opts.model) if opts.model else None
    if network is None:
        return opts, {}
    choice = choose_variant(network, opts.threads or 1, backend=opts.backend, zoo=zoo, say=say)
    if say is not None:
        say(f"{network}: {choice['model']} on {choice['backend']} ({choice['chosen_from']}, {choice['why']})")
    return replace(opts, model=choice["model"]), {"model_choice": choice}


# --------------------------------------------------------------------------- showing it


def format_choice(choice: dict) -> str:
    """What ``edgeseg bench --choose`` prints for one network: the choice, then each file with its timing and
    accuracy, or why it cannot be chosen."""
    cpu = choice.get("cpu") or {}
    lines = [f"{choice['network']} on this CPU ({cpu.get('model') or '?'}, "
             f"{FLAVOUR_LABEL.get(cpu.get('flavour'), cpu.get('flavour'))}, {choice['threads']} thread(s)): "
             f"{choice['model']} on {choice['backend']} [{choice['chosen_from']} {choice.get('calibrated', '')}]",
             f"  {choice['why']}"]
    for c in choice["candidates"]:
        ms = f"{c['p50_ms']:8.2f} ms" if c.get("p50_ms") is not None else f"{'-':>11}"
        acc = ""
        if c.get("tolerance") is not None:
            here = (c.get("measured_drop") or {}).get("drop")
            acc = (f"  Dice drop: card {_num(c.get('card_drop'))}, here {_num(here)} (tolerance {c['tolerance']})")
        state = f"  not chosen: {c['rejected']}" if c.get("rejected") else ""
        lines.append(f"  {c['name']:<34}{c['backend']:<12}{c['precision']:<6}{ms}{acc}{state}")
    return "\n".join(lines)


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def choose_report(networks: list[str], threads: int | None = None, backend: str = "auto",
                  recalibrate: bool = False) -> str:
    """``edgeseg bench --choose``: the choice for each network at the thread count ``edgeseg run`` uses (or
    ``threads``), calibrated again with ``recalibrate``."""
    from .hardware import usable_cores
    from .live import inference_threads

    zoo = Zoo()
    unknown = [n for n in networks if zoo.network_name(n) is None]
    if unknown:
        raise EdgesegError(f"--choose takes network names, not {', '.join(unknown)}",
                           f"give some of: {', '.join(n for n in zoo.networks() if zoo.network_name(n))}")
    n = threads or inference_threads(usable_cores())
    return "\n".join(format_choice(choose_variant(net, n, backend=backend, zoo=zoo, recalibrate=recalibrate))
                     for net in networks)
