"""``edgeseg bench``: which model, in which format, is fast and accurate enough on *this* box (torch-free).

For every model x backend x precision x threads it measures, the way the paper does, 100 consecutive
single 256x256 inferences after a warm-up (model only: the backend's call on a preprocessed real image),
and reports FPS (iterations / total time), latency mean/p50/p90/p99, the precision the backend really
executed, params, GFLOPs and file size. Optional: ``e2e`` runs the real ``edgeseg run`` pipeline
(:func:`edgeseg.device.live.run_live`: capture -> preprocess -> inference -> post-process -> overlay) on a
clip and reports its FPS and stage means; ``accuracy`` scores each file on the 8-image DSB2018 sample
shipped in the package (``edge/samples/dsb2018_sample``), so speed is seen beside what it costs.

    from edgeseg.device.bench import BenchConfig, run_bench
    result = run_bench(BenchConfig(models=["fast_scnn"], backends=["onnxruntime", "openvino"]))
    result["rows"], result["recommendation"]["text"]

Models are zoo names: a network (``fast_scnn``: every exported file of it, picked by backend and
precision, plus its PyTorch checkpoint for the ``torch`` backend), an exported variant
(``fast_scnn-int8``) or a model file. Backends: ``onnxruntime``, ``openvino`` (it reads ``.xml`` and, where
no IR exists, the ``.onnx`` file) and ``torch``, the paper's own method and our baseline, available only
where torch is installed (the ``torch`` row uses the fp32 checkpoint). A combination that cannot run here
(a backend not installed, no file of that precision) becomes a row with its ``error``; Ctrl-C stops with
the rows measured so far (``interrupted``).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgeseg.card import ModelCard
from edgeseg.errors import EdgesegError
from edgeseg.fsutil import atomic_path, atomic_write_json, atomic_write_text
from edgeseg.zoo import DEFAULT_RUN_NETWORK, FORMATS, SAMPLE_DIR, ModelRef, Zoo

from .hardware import cpu_snapshot, hardware_report, other_cpu_share, thermal_sample, usable_cores

SCHEMA = 1
DEFAULT_MODELS = ("half_unet", "mobilenetv2_unet", "fast_scnn", DEFAULT_RUN_NETWORK)  # the paper's, then the default
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_PRECISIONS = ("fp32", "int8")
DICE_TOLERANCE = 0.01  # the recommendation: the fastest file whose Dice is within this of the best
CLIP_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".tif", ".tiff")
PAPER_TABLE1 = {  # Table 1 of the paper: Intel Core i9 desktop, CPU only, PyTorch 1.13
    "half_unet": {"label": "U-Net (Half-UNet)", "params_m": 0.118, "fps": 55.7, "dice": 0.8713, "time5_s": 300.81},
    "mobilenetv2_unet": {"label": "MobileNetV2-UNet", "params_m": 6.629, "fps": 21.8, "dice": 0.9175,
                         "time5_s": 416.75},
    "fast_scnn": {"label": "Fast-SCNN", "params_m": 0.154, "fps": 215.8, "dice": 0.7504, "time5_s": 146.40},
}
FORMAT_LABEL = {"onnx": "ONNX", "openvino": "OpenVINO IR", "torch": "PyTorch checkpoint"}


@dataclass
class BenchConfig:
    models: Sequence[str] = DEFAULT_MODELS
    backends: Sequence[str] | None = None  # None: every installed one (torch where installed)
    precisions: Sequence[str] = DEFAULT_PRECISIONS
    threads: Sequence[int] | None = None  # None: all usable cores
    iterations: int = 100
    warmup: int = 10
    e2e: bool = False
    e2e_source: str | None = None  # None: the shipped clip, else a synthetic 640x480 source
    accuracy: bool = False
    data: str | None = None  # --accuracy on this DSB-layout folder (its test split when canonical) [the sample]
    zoo: str | None = None  # a folder of exported files with cards [the shipped zoo]


@dataclass
class Target:
    """One thing to measure: a model file on a backend (or why it cannot be)."""

    network: str  # the family asked for (fast_scnn)
    model: str  # the file's model name (fast_scnn-int8; fast_scnn for the checkpoint)
    backend: str
    precision: str
    path: Path | None = None
    card: ModelCard | None = None
    error: str | None = None


# --------------------------------------------------------------------------- what to measure


def default_backends() -> list[str]:
    """Every installed backend of the registry (torch where ``edgeseg[train]`` is installed)."""
    from edgeseg.backends import available_backends

    return available_backends()


def _backend_formats(backend: str) -> tuple[str, ...] | str:
    """The file formats ``backend`` runs, or why it cannot run here (one line)."""
    from edgeseg.backends import backend_class

    try:
        return backend_class(backend).formats
    except EdgesegError as exc:
        return str(exc)


def _file_target(ref: ModelRef, network: str, backend: str) -> Target:
    return Target(network, ref.name, backend, ref.card.precision, ref.path, ref.card)


def _single_file(spec: str, zoo: Zoo) -> ModelRef | Target | None:
    """``spec`` as one model file (a path, or a zoo variant's name), a Target holding why it cannot be read, or
    None when it names a network."""
    p = Path(spec)
    if p.is_file():
        from edgeseg.zoo import resolve_model

        try:
            return resolve_model(p, verify=False)
        except EdgesegError as exc:
            return Target(p.stem, p.stem, "-", "-", p, error=str(exc))
    ref = zoo.get(spec)
    return ref if ref is not None and ref.network != spec else None


def _file_targets(ref: ModelRef, backends: list[str]) -> list[Target]:
    """One file on every requested backend that can open it (or one row saying none can)."""
    runs = [b for b in backends if ref.format in _backend_formats(b)]
    if runs:
        return [_file_target(ref, ref.network, b) for b in runs]
    kind = FORMAT_LABEL.get(ref.format, ref.format)
    return [Target(ref.network, ref.name, ",".join(backends), ref.precision, ref.path, ref.card,
                   error=f"none of the backends {', '.join(backends)} runs a {kind}")]


def _network_targets(spec: str, backend: str, precision: str, zoo: Zoo, shipped: Zoo, where: str,
                     every_flavour: bool = False) -> list[Target]:
    """The file of network ``spec`` that the installed ``backend`` runs at ``precision`` (the one made for this CPU's
    kernels; ``every_flavour``: every INT8 flavour, for --accuracy), or a Target saying why there is none; none
    where the combination is not measured (a checkpoint is fp32 only)."""
    from .choose import cpu_identity

    formats = _backend_formats(backend)
    if formats[0] == "torch":  # the paper's baseline: the fp32 checkpoint, eager
        if precision != "fp32":
            return []
        ckpt = zoo.checkpoint(spec) or shipped.checkpoint(spec)
        return [_file_target(ckpt, spec, backend) if ckpt else Target(
            spec, spec, backend, "fp32", error=f"no PyTorch checkpoint of {spec} in {where}")]
    flavour = cpu_identity()["flavour"]
    for fmt in formats:
        found = zoo.variants(spec, precision=precision, formats=(fmt,), target=flavour)
        if found:
            return [_file_target(r, spec, backend) for r in (found if every_flavour else found[:1])]
    if backend == "onnxruntime" and precision == "fp16":
        return [Target(spec, f"{spec}-fp16", backend, precision, error=(
            f"no fp16 ONNX file of {spec} in {where} (ONNX Runtime's CPU provider runs fp16 graphs slower than fp32): "
            "fp16 is an OpenVINO IR, bench it with --backends openvino"))]
    fmt = "openvino" if backend == "openvino" else "onnx"
    return [Target(spec, f"{spec}-{precision}", backend, precision, error=(
        f"no {precision} file of {spec} for {backend} in {where}: "
        f"export it with `edgeseg export {spec} --format {fmt} --precision {precision}`"))]


def plan(cfg: BenchConfig) -> list[Target]:
    """Every model x backend x precision of ``cfg`` -> targets (with ``error`` where there is nothing to run)."""
    backends = list(cfg.backends) if cfg.backends is not None else default_backends()
    zoo = Zoo(cfg.zoo)
    shipped = zoo if cfg.zoo is None else Zoo()
    where = "the shipped zoo" if cfg.zoo is None else str(cfg.zoo)
    targets: list[Target] = []
    for spec in cfg.models:
        single = _single_file(spec, zoo)
        if isinstance(single, Target):
            targets.append(single)
        elif single is not None:
            targets += _file_targets(single, backends)
        elif spec not in zoo.networks() and shipped.checkpoint(spec) is None:
            raise EdgesegError(f"unknown model {spec!r} in {where}",
                               f"give a network ({', '.join(zoo.networks()) or 'none'}), a zoo variant "
                               f"({', '.join(r.name for r in zoo.entries if r.format != 'torch') or 'none'}) "
                               "or a model file")
        else:
            for backend in backends:
                formats = _backend_formats(backend)
                if isinstance(formats, str):  # not installed here: one row saying so
                    targets.append(Target(spec, spec, backend, "-", error=formats))
                    continue
                for p in cfg.precisions:
                    targets += _network_targets(spec, backend, p, zoo, shipped, where, cfg.accuracy and p != "fp32")
    return targets


# --------------------------------------------------------------------------- measuring


def time_predictor(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, iterations: int = 100,
                   warmup: int = 10) -> dict:
    """The paper's method: ``warmup`` calls, then ``iterations`` consecutive single inferences, each timed.

    FPS is ``iterations`` over their total wall time; latencies are per call, in milliseconds.
    """
    if iterations < 1:
        raise EdgesegError(f"--iterations {iterations} measures nothing", "give at least 1")
    for _ in range(max(warmup, 0)):
        predict(x)
    times = np.empty(iterations, np.float64)
    start = time.perf_counter()
    for i in range(iterations):
        t0 = time.perf_counter()
        predict(x)
        times[i] = time.perf_counter() - t0
    total = time.perf_counter() - start
    ms = times * 1e3
    return {
        "fps": round(iterations / total, 3),
        "latency_ms": {
            "mean": round(float(ms.mean()), 4),
            "p50": round(float(np.percentile(ms, 50)), 4),
            "p90": round(float(np.percentile(ms, 90)), 4),
            "p99": round(float(np.percentile(ms, 99)), 4),
            "min": round(float(ms.min()), 4),
            "max": round(float(ms.max()), 4),
        },
        "total_s": round(total, 4),
    }


def sample_images(limit: int | None = None) -> list:
    """The DSB2018 test-split sample shipped in the package (images and labels)."""
    from edgeseg.data import find_items, load_sample

    items = find_items(SAMPLE_DIR)
    return [load_sample(it) for it in items[:limit]]


def _file_size(path: Path | None) -> int | None:
    if path is None or not path.exists():
        return None
    size = path.stat().st_size
    if path.suffix.lower() == ".xml" and path.with_suffix(".bin").exists():
        size += path.with_suffix(".bin").stat().st_size
    return size


def _open(target: Target, threads: int):
    """A Segmenter for the target at ``threads`` threads (the backend from the registry, torch included). A bench
    measures the backend it names: OpenVINO that cannot run the file here is an error, not ONNX Runtime's numbers
    under OpenVINO's name."""
    from edgeseg.segmenter import Segmenter

    extra = {"fallback": False} if target.backend == "openvino" else {}
    return Segmenter.load(target.path, backend=target.backend, threads=threads, remember_scale=True, **extra)


E2E_SIZE = (640, 480)  # the second frame size of the e2e profile: a VGA camera


def default_e2e_source(frames: int) -> str:
    """The clip shipped in the package, else a synthetic 640x480 source of ``frames`` frames."""
    samples = SAMPLE_DIR.parent
    clips = sorted(p for p in samples.rglob("*") if p.suffix.lower() in CLIP_EXTS and p.is_file()
                   and SAMPLE_DIR not in p.parents)
    return str(clips[0]) if clips else f"synthetic:{E2E_SIZE[0]}x{E2E_SIZE[1]}:{max(frames, 1)}"


def e2e_sources(spec: str | None, frames: int) -> list[str]:
    """What the e2e profile runs on: ``spec`` (default: the shipped clip) and synthetic 640x480 frames."""
    first = spec or default_e2e_source(frames)
    vga = f"synthetic:{E2E_SIZE[0]}x{E2E_SIZE[1]}:{max(frames, 1)}"
    return [first] if first.startswith(f"synthetic:{E2E_SIZE[0]}x{E2E_SIZE[1]}") else [first, vga]


class _FrameProbe:
    """A run_live processor noting each frame's size and how many inferences it took (tiles)."""

    def __init__(self):
        self.shape: tuple[int, int] | None = None
        self.tiles = 0
        self.frames = 0

    def process(self, frame, result) -> dict:
        self.shape = self.shape or tuple(frame.image.shape[:2])
        self.tiles += int(getattr(result, "n_tiles", 1) or 1)
        self.frames += 1
        return {}

    def close(self) -> dict:
        return {}


def end_to_end(seg, source_spec: str, frames: int, *, record: bool = False, pipeline: bool = True,
               gflops: float | None = None, model_fps: float | None = None) -> dict:
    """The real ``edgeseg run`` loop (no display; ``record``: an mp4 in a temporary folder, every frame encoded as
    for a file) on ``source_spec`` for ``frames`` frames: FPS, stage means in ms and in ms per megapixel, the
    network's achieved GFLOP/s (``gflops`` per inference x inferences per second), the share of the wall time
    spent outside the network, and FPS against ``model_fps`` (model only, per input-size inference) for the same
    number of inferences per frame."""
    import tempfile

    from .live import run_live
    from .overlay import Overlay
    from .recorder import Recorder
    from .sources import open_source

    probe = _FrameProbe()
    with tempfile.TemporaryDirectory(prefix="edgeseg-e2e-") as tmp:
        source = open_source(source_spec, model_size=seg.input_size, loop=True)
        recorder = (Recorder(Path(tmp) / "overlay.mp4", source.fps or 10.0, drop=source.live, threaded=pipeline)
                    if record else None)  # sequential: encoded in the loop's thread, as `edgeseg run --sequential`
        result = run_live(seg, source, overlay=Overlay(caption=seg.name), max_frames=frames, recorder=recorder,
                          pipeline=pipeline, processors=[probe])
    if result.stopped == "interrupted":
        raise KeyboardInterrupt
    s = result.summary
    if result.error is not None or s.get("error"):
        raise EdgesegError(f"the run pipeline failed on {source_spec}: {s.get('error') or result.error}",
                           "check the source with `edgeseg run`")
    h, w = probe.shape or (0, 0)
    mp = w * h / 1e6
    stages = s.get("stages_ms") or {}
    fps, tiles = s.get("fps"), (probe.tiles / probe.frames if probe.frames else None)
    inference = stages.get("inference")
    out = {"source": source_spec, "size": [w, h], "megapixels": round(mp, 4), "record": record, "pipeline": pipeline,
           "threads": s.get("threads"), "frames": s.get("frames"), "fps": fps, "latency_ms": s.get("latency_ms"),
           "stages_ms": stages, "queue_ms": s.get("queue_ms"),
           "stages_ms_per_mp": {k: round(v / mp, 3) if v is not None and mp else None for k, v in stages.items()},
           "count_mean": (s.get("count") or {}).get("mean"), "dropped": s.get("dropped"),
           "recording_dropped": s.get("recording_dropped"), "tiles_mean": _round(tiles),
           "inferences_per_s": _round(fps * tiles if fps and tiles else None),
           "gflops_per_s": _round(gflops * fps * tiles if gflops and fps and tiles else None),
           "outside_share": _round(max(0.0, 1.0 - fps * inference / 1e3) if fps and inference is not None else None),
           "model_fps": model_fps,
           "vs_model": _round(fps * tiles / model_fps if fps and tiles and model_fps else None)}
    return out


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def e2e_profile(seg, spec: str | None, frames: int, *, gflops: float | None = None,
                model_fps: float | None = None, pipelines: Sequence[bool] = (False, True)) -> dict:
    """:func:`end_to_end` at the clip's size (or ``spec``) and at 640x480, headless and recording, sequential and
    pipelined. The top-level fields are the first source's headless run in the last mode (the pipelined one by
    default: what ``edgeseg run`` does); ``runs`` holds them all."""
    runs = [end_to_end(seg, src, frames, record=rec, pipeline=pipe, gflops=gflops, model_fps=model_fps)
            for src in e2e_sources(spec, frames) for rec in (False, True) for pipe in pipelines]
    head = next(r for r in runs if not r["record"] and r["pipeline"] == pipelines[-1])
    keys = ("source", "frames", "fps", "latency_ms", "stages_ms", "count_mean", "pipeline", "gflops_per_s",
            "outside_share", "vs_model")
    return {**{k: head[k] for k in keys}, "runs": runs}


def accuracy(seg, samples: list | None, data: str | None = None) -> dict:
    """Dice (at the input size, the paper's figure) of ``seg`` on the shipped sample (``samples``), or on ``data``
    (a DSB-layout folder: its test split when it is a canonical one, else every image)."""
    from edgeseg.evaluate import evaluate, evaluate_folder

    if data:
        result = evaluate_folder(seg, data)
        info = result["info"]
        where = f"{Path(data).name} {info.get('split') or 'all images'}"
    else:
        result = evaluate(seg, iter(samples or sample_images()), progress=False)
        where = f"{SAMPLE_DIR.name} (shipped sample)"
    summary = result["summary"]
    return {"dice_256": round(float(summary["dice_256"]), 6), "dice": round(float(summary["dice"]), 6),
            "n_images": summary["n_images"], "data": where}


def _base_row(target: Target, threads: int | None) -> dict:
    card = target.card
    test = card.test_dice if card else None
    fmt = card.format if card else (
        FORMATS.get(target.path.suffix.lower()) if target.path else None)
    return {
        "model": target.model,
        "network": target.network,
        "arch": card.arch if card else None,
        "file": str(target.path) if target.path else None,
        "format": fmt,
        "backend": target.backend,
        "precision": target.precision,
        "executed_precision": None,
        "threads": threads,
        "params": card.params if card else None,
        "gflops": card.gflops if card else None,
        "size_bytes": _file_size(target.path),
        "iterations": None,
        "warmup": None,
        "fps": None,
        "latency_ms": None,
        "dice": test,
        "dice_from": "card: test split" if test is not None else None,
        "dice_test": test,
        "dice_sample": None,
    }


def measure(target: Target, threads: int, cfg: BenchConfig, samples: list | None = None,
            cached_accuracy: dict | None = None) -> dict:
    """One row: the target at ``threads`` threads (``error`` instead of numbers when it cannot run)."""
    row = _base_row(target, threads)
    if target.error:
        row["error"] = target.error
        return row
    try:
        seg = _open(target, threads)
    except EdgesegError as exc:
        row["error"] = str(exc)
        return row
    except Exception as exc:  # a runtime's own exception for a file it cannot run here
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return row
    try:
        info = seg.info
        row["executed_precision"] = info.get("executed_precision")
        row["threads"] = info.get("threads") or threads
        x = model_input(seg, samples)
        row.update(iterations=cfg.iterations, warmup=cfg.warmup)
        row.update({k: v for k, v in time_predictor(seg.predict, x, cfg.iterations, cfg.warmup).items()
                    if k in ("fps", "latency_ms")})
        if cfg.accuracy:
            acc = cached_accuracy if cached_accuracy is not None else accuracy(seg, samples, cfg.data)
            row["accuracy"] = acc
            row["dice_sample"] = acc["dice_256"]
            on = f"{acc['data']}" if cfg.data else "shipped sample"
            row["dice"], row["dice_from"] = acc["dice_256"], f"measured: {acc['n_images']}-image {on}"
        if cfg.e2e:
            row["e2e"] = e2e_profile(seg, cfg.e2e_source, cfg.iterations, gflops=row["gflops"], model_fps=row["fps"])
    except KeyboardInterrupt:
        raise
    except EdgesegError as exc:
        row["error"] = str(exc)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    finally:
        seg.close()
    if row.get("error"):
        row["fps"], row["latency_ms"] = None, None
    return row


def model_input(seg, samples: list | None = None) -> np.ndarray:
    """A real image (the first of the shipped sample), preprocessed exactly as the runtime does."""
    from edgeseg.preprocess import preprocess

    image = (samples or sample_images(1))[0].image
    return np.ascontiguousarray(preprocess(image, seg.input_size, mean=seg.mean, std=seg.std), np.float32)


_input_for = model_input  # the name benchmarks/e2e_table.py imports


def run_bench(cfg: BenchConfig, *, progress: bool = False, on_row: Callable[[dict], None] | None = None) -> dict:
    """Measure every target of ``cfg`` at every thread count; Ctrl-C returns the rows so far (``interrupted``).

    Returns ``{"schema", "created", "hardware", "config", "rows", "recommendation", "interrupted"}``.
    """
    from tqdm.auto import tqdm

    from edgeseg.backends import backend_names

    for b in cfg.backends or ():
        if b not in backend_names():
            raise EdgesegError(f"unknown backend {b!r}", f"use some of: {', '.join(backend_names())}")
    for p in cfg.precisions:
        if p not in PRECISIONS:
            raise EdgesegError(f"unknown precision {p!r}", f"use some of: {', '.join(PRECISIONS)}")
    threads = list(cfg.threads or [usable_cores()])
    if any(t < 1 for t in threads):
        raise EdgesegError(f"bad thread count in {threads}", "give positive numbers, e.g. --threads 1,2,4")
    if cfg.iterations < 1:
        raise EdgesegError(f"--iterations {cfg.iterations} measures nothing", "give at least 1")
    hardware = hardware_report()
    cpu_before = cpu_snapshot()
    targets = plan(cfg)
    jobs = [(t, n) for t in targets for n in ([None] if t.error else threads)]
    samples = sample_images() if cfg.accuracy else sample_images(1)
    rows: list[dict] = []
    interrupted = False
    bar = tqdm(total=len(jobs), desc="bench", unit="run", disable=not progress, file=sys.stderr, leave=False)
    acc_cache: dict[tuple, dict] = {}
    try:
        for target, n in jobs:
            bar.set_postfix_str(f"{target.model} {target.backend} {n or ''}".strip())
            key = (str(target.path), target.backend)
            row = measure(target, n or 0, cfg, samples, acc_cache.get(key))
            if n is None:
                row["threads"] = None
            if row.get("accuracy") and not row.get("error"):
                acc_cache[key] = row["accuracy"]  # the same file on the same backend: score it once
            rows.append(row)
            bar.update(1)
            if on_row is not None:
                on_row(row)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    drops = int8_accuracy(rows, cfg, samples, acc_cache, threads[0]) if cfg.accuracy and not interrupted else []
    hardware["thermal"]["after"] = thermal_sample()
    hardware["other_cpu_share"] = other_cpu_share(cpu_before, cpu_snapshot(), os.cpu_count() or 1)
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware,
        "config": {**asdict(cfg), "threads": threads, "backends": list(cfg.backends or default_backends()),
                   "models": list(cfg.models), "precisions": list(cfg.precisions),
                   "method": f"model only: {cfg.iterations} consecutive single-image inferences at the model's "
                             f"input size after {cfg.warmup} warm-up calls; FPS = iterations / total time"},
        "rows": rows,
        "recommendation": recommend(rows),
        "int8_accuracy": drops,
        "interrupted": interrupted,
    }


def int8_accuracy(rows: list[dict], cfg: BenchConfig, samples: list, scored: dict, threads: int) -> list[dict]:
    """For each INT8/FP16 file scored with --accuracy: its Dice drop against its FP32 twin (scored here too, on the
    same backend where it runs it) measured on this CPU, beside the drop its cards record and its tolerance. Each
    drop is kept in the choice cache: ``edgeseg run --model NETWORK`` rejects a file whose drop here is too large."""
    from . import choose

    cpu, cache, out, seen = choose.cpu_identity(), choose.read_cache(), [], set()
    for r in ok_rows(rows):
        if r["precision"] == "fp32" or not r.get("accuracy") or r["backend"] == "torch" or not r.get("file"):
            continue
        zoo = Zoo(Path(r["file"]).parent)
        ref = next((z for z in zoo.entries if z.path == Path(r["file"]).resolve()), None)
        twin = zoo.fp32_twin(ref) if ref is not None and (r["file"], r["backend"]) not in seen else None
        seen.add((r["file"], r["backend"]))
        if twin is None:
            continue
        be = choose.twin_backend(twin, r["backend"])
        key = (str(twin.path), be)
        if key not in scored:
            with _open(Target(twin.network, twin.name, be, "fp32", twin.path, twin.card), threads) as seg:
                scored[key] = accuracy(seg, samples, cfg.data)
        measured = choose.drop_record(ref, twin, r["accuracy"], scored[key])
        rec = choose.record_drop(cache, ref, twin, r["backend"], cpu, measured)
        choose.forget_choices(cache, ref.network)  # `edgeseg run --model NETWORK` chooses again, with this drop
        tol, on_card = choose.tolerance(ref.card), choose.card_drop(ref, twin)
        out.append({**{k: rec[k] for k in ("model", "fp32_model", "dice", "fp32_dice", "drop", "data", "n_images")},
                    "backend": r["backend"], "target": ref.card.target, "card_drop": on_card, "tolerance": tol,
                    "within": rec["drop"] <= tol, "card_within": on_card is None or on_card <= tol,
                    "flavour": cpu["flavour"]})
    if out:
        choose.write_cache(cache)
    return out


# --------------------------------------------------------------------------- reading the rows


def ok_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r.get("error") and r.get("fps")]


def recommend(rows: list[dict], tolerance: float = DICE_TOLERANCE) -> dict | None:
    """The fastest deployable (exported) file whose Dice is within ``tolerance`` of the best Dice measured."""
    good = ok_rows(rows)
    deployable = [r for r in good if r["backend"] != "torch"] or good
    if not deployable:
        return None
    known = [r for r in deployable if r.get("dice") is not None]
    if known:
        best = max(r["dice"] for r in known)
        pick = max((r for r in known if r["dice"] >= best - tolerance), key=lambda r: r["fps"])
        why = (f"the fastest file whose Dice ({pick['dice']:.4f}, {pick['dice_from']}) is within {tolerance} of "
               f"the best ({best:.4f})")
    else:
        pick = max(deployable, key=lambda r: r["fps"])
        why = "the fastest file (no Dice known: run with --accuracy)"
    base = next((r for r in good if r["backend"] == "torch" and r["network"] == pick["network"]
                 and r["threads"] == pick["threads"]), None)
    speedup = round(pick["fps"] / base["fps"], 2) if base else None
    text = (f"recommended: {pick['model']} on {pick['backend']} ({pick['executed_precision']}, "
            f"{pick['threads']} threads): {pick['fps']:.1f} FPS, {why}"
            + (f"; {speedup}x PyTorch eager FP32" if speedup else ""))
    return {"model": pick["model"], "network": pick["network"], "file": pick["file"], "backend": pick["backend"],
            "precision": pick["precision"], "executed_precision": pick["executed_precision"],
            "threads": pick["threads"], "fps": pick["fps"], "dice": pick.get("dice"),
            "dice_from": pick.get("dice_from"),
            "speedup_vs_torch_fp32": speedup, "tolerance": tolerance, "text": text}


def best_per_network(rows: list[dict], tolerance: float = DICE_TOLERANCE) -> dict[str, dict]:
    """Per network: its PyTorch eager FP32 row, its best deployed file and the FPS ratio measured in this run.

    The best deployed file is the fastest exported file whose Dice is within ``tolerance`` of the network's
    checkpoint (or of its best file when there is no checkpoint row); files without a Dice only count
    when no file of the network has one.
    """
    out = {}
    good = ok_rows(rows)
    for net in dict.fromkeys(r["network"] for r in good):
        mine = [r for r in good if r["network"] == net]
        torch_rows = [r for r in mine if r["backend"] == "torch"]
        base = max(torch_rows, key=lambda r: r["fps"]) if torch_rows else None
        files = [r for r in mine if r["backend"] != "torch"]
        if not files:
            out[net] = {"torch": base, "best": None, "ratio": None}
            continue
        known = [r for r in files if r.get("dice") is not None]
        ref = base["dice"] if base and base.get("dice") is not None else max((r["dice"] for r in known), default=None)
        pool = [r for r in known if ref is not None and r["dice"] >= ref - tolerance] if known else files
        if not pool:
            pool = known
        best = max(pool, key=lambda r: r["fps"])
        same = next((r for r in torch_rows if r["threads"] == best["threads"]), base)
        out[net] = {"torch": same, "best": best, "ratio": round(best["fps"] / same["fps"], 2) if same else None}
    return out


# --------------------------------------------------------------------------- output


def _fmt(v, spec: str = "", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def format_table(rows: list[dict]) -> str:
    """The console table: one line a row, failures at the end with their reason."""
    head = (f"{'model':<26}{'backend':<12}{'precision':<16}{'thr':>4}{'FPS':>9}{'mean':>8}{'p50':>8}{'p90':>8}"
            f"{'p99':>8}{'Dice':>8}{'size':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("error"):
            continue
        lat = r.get("latency_ms") or {}
        prec = r["precision"] if r.get("executed_precision") in (None, r["precision"]) else (
            f"{r['precision']}>{r['executed_precision']}")
        size = f"{r['size_bytes'] / 1e6:.2f}MB" if r.get("size_bytes") else "-"
        line = (f"{r['model'][:25]:<26}{r['backend']:<12}{prec:<16}{_fmt(r.get('threads')):>4}"
                f"{_fmt(r.get('fps'), '.1f'):>9}{_fmt(lat.get('mean'), '.2f'):>8}{_fmt(lat.get('p50'), '.2f'):>8}"
                f"{_fmt(lat.get('p90'), '.2f'):>8}{_fmt(lat.get('p99'), '.2f'):>8}{_fmt(r.get('dice'), '.4f'):>8}"
                f"{size:>9}")
        if r.get("e2e"):
            e = r["e2e"]
            line += f"   e2e {_fmt(e.get('fps'), '.1f')} FPS"
        lines.append(line)
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines.append("")
        lines.append("not measured:")
        for r in errors:
            lines.append(f"  {r['model']} {r['backend']} {r['precision']}: {r['error']}")
    return "\n".join(lines)


def format_e2e(rows: list[dict]) -> str:
    """The e2e profile of each row: one line a run (frame size, headless or recording, sequential or pipelined): FPS
    and its share of the model-only FPS, the stage means in ms and in ms per megapixel, the network's GFLOP/s and
    the share of the wall time spent outside the network."""
    from .runlog import STAGES

    head = (f"{'model':<22}{'thr':>4} {'frame':>8} {'out':<6}{'loop':<6}{'FPS':>8}{'%model':>8}  "
            + " ".join(f"{s[:7]:>7}" for s in STAGES) + "  ms/MP: " + " ".join(f"{s[:7]:>7}" for s in STAGES)
            + f"{'GFLOP/s':>9}{'outside':>8}")
    lines = ["end to end (`edgeseg run` loop; stage means in ms, then ms per megapixel):", head, "-" * len(head)]
    for r in rows:
        for e in (r.get("e2e") or {}).get("runs", []):
            st, per = e.get("stages_ms") or {}, e.get("stages_ms_per_mp") or {}
            lines.append(
                f"{r['model'][:21]:<22}{_fmt(e.get('threads') or r.get('threads')):>4} "
                f"{'x'.join(map(str, e['size'])):>8} {'rec' if e['record'] else 'none':<6}"
                f"{'pipe' if e['pipeline'] else 'seq':<6}{_fmt(e.get('fps'), '.1f'):>8}"
                f"{_fmt(e['vs_model'] * 100 if e.get('vs_model') else None, '.0f'):>7}%  "
                + " ".join(f"{_fmt(st.get(s), '.2f'):>7}" for s in STAGES) + "         "
                + " ".join(f"{_fmt(per.get(s), '.0f'):>7}" for s in STAGES)
                + f"{_fmt(e.get('gflops_per_s'), '.1f'):>9}"
                f"{_fmt(e['outside_share'] * 100 if e.get('outside_share') is not None else None, '.0f'):>7}%")
    return "\n".join(lines)


def format_int8_accuracy(drops: list[dict]) -> str:
    """The --accuracy table of INT8 files: the Dice drop against FP32 measured on this CPU beside the card's."""
    from .choose import FLAVOUR_LABEL

    data = "; ".join(sorted({f"{d['data']}, {d['n_images']} images" for d in drops}))
    head = (f"{'model':<30}{'backend':<12}{'made for':<13}{'Dice':>8}{'FP32':>8}{'drop here':>11}{'card drop':>11}"
            f"{'tolerance':>11}  over")
    lines = [f"INT8 accuracy on this CPU ({FLAVOUR_LABEL.get(drops[0]['flavour'], drops[0]['flavour'])}): Dice@256 "
             f"drop against the FP32 file, measured here on {data}; the card's drop is on the DSB2018 test split",
             head, "-" * len(head)]
    for d in drops:
        over = ", ".join(w for w, ok in (("here", d["within"]), ("card", d["card_within"])) if not ok)
        lines.append(f"{d['model'][:29]:<30}{d['backend']:<12}{d['target'] or 'any':<13}{d['dice']:>8.4f}"
                     f"{d['fp32_dice']:>8.4f}{d['drop']:>11.4f}{_fmt(d['card_drop'], '.4f'):>11}{d['tolerance']:>11}"
                     f"  {over}".rstrip())
    lines.append("a file over its tolerance (here or on its card) is never what `edgeseg run --model NETWORK` picks")
    return "\n".join(lines)


def dice_note(rows: list[dict]) -> str:
    froms = sorted({r["dice_from"] for r in ok_rows(rows) if r.get("dice_from")})
    return "Dice: " + ("; ".join(froms) if froms else "none known (run with --accuracy)")


CSV_COLUMNS = ["model", "network", "file", "format", "backend", "precision", "executed_precision", "threads",
               "params", "gflops", "size_bytes", "iterations", "warmup", "fps", "latency_mean_ms", "latency_p50_ms",
               "latency_p90_ms", "latency_p99_ms", "latency_min_ms", "latency_max_ms", "dice", "dice_from",
               "dice_test", "dice_sample", "e2e_fps", "e2e_source", "e2e_capture_ms", "e2e_preprocess_ms",
               "e2e_inference_ms", "e2e_postprocess_ms", "e2e_render_ms", "e2e_output_ms", "error"]


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        flat = dict(r)
        for k, v in (r.get("latency_ms") or {}).items():
            flat[f"latency_{k}_ms"] = v
        e = r.get("e2e") or {}
        flat["e2e_fps"], flat["e2e_source"] = e.get("fps"), e.get("source")
        for k, v in (e.get("stages_ms") or {}).items():
            flat[f"e2e_{k}_ms"] = v
        w.writerow(flat)
    return buf.getvalue()


def write_outputs(result: dict, json_path: str | None = None, csv_path: str | None = None) -> None:
    if json_path and json_path != "-":
        atomic_write_json(json_path, result)
    if csv_path:
        atomic_write_text(csv_path, csv_text(result["rows"]))


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise EdgesegError("--plot needs matplotlib, which is not installed",
                           "pip install matplotlib (or pip install 'edgeseg[train]')")


def plot_fps_vs_dice(rows: list[dict], path: str | Path, title: str | None = None, paper: bool = True) -> Path:
    """FPS (log axis) against Dice: one point per model file and backend (its best thread count; colour: network,
    marker: backend, hollow: an int8/fp16 file), the paper's three results marked. Rows without a Dice are left
    out (said in the caption)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best: dict[tuple, dict] = {}
    for r in ok_rows(rows):
        key = (r["model"], r["backend"])
        if r.get("dice") is not None and (key not in best or r["fps"] > best[key]["fps"]):
            best[key] = r
    left_out = sorted({f"{r['model']}/{r['backend']}" for r in ok_rows(rows) if r.get("dice") is None})
    nets = list(dict.fromkeys([*PAPER_TABLE1, *(r["network"] for r in best.values())]))
    colours = {n: f"C{i}" for i, n in enumerate(nets)}
    markers = {"torch": "o", "onnxruntime": "s", "openvino": "D"}
    fig, ax = plt.subplots(figsize=(10, 5.6))
    for (_, backend), r in best.items():
        filled = r["precision"] == "fp32"
        ax.scatter(r["fps"], r["dice"], marker=markers.get(backend, "^"), s=60, color=colours[r["network"]],
                   facecolors=colours[r["network"]] if filled else "none", linewidths=1.5, zorder=3)
    if paper:
        for net, p in PAPER_TABLE1.items():
            ax.scatter(p["fps"], p["dice"], marker="*", s=180, color=colours.get(net, "k"), edgecolors="k",
                       linewidths=0.8, zorder=4)
            ax.annotate(f"paper: {p['label']} (i9, PyTorch)", (p["fps"], p["dice"]), textcoords="offset points",
                        xytext=(6, -10), fontsize=7, style="italic")
    ax.set_xscale("log")
    ax.set_xlabel("FPS, model only, single 256x256 inferences (log scale)")
    froms = sorted({r["dice_from"] for r in best.values() if r.get("dice_from")})
    ax.set_ylabel("Dice @256 (" + "; ".join(froms) + ")" if froms else "Dice @256")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker=m, ls="", color="gray", label=b) for b, m in markers.items()]
    handles.append(Line2D([], [], marker="s", ls="", color="gray", label="fp32 file (filled)"))
    handles.append(Line2D([], [], marker="s", ls="", color="gray", markerfacecolor="none", label="int8/fp16 file"))
    if paper:
        handles.append(Line2D([], [], marker="*", ls="", color="gray", markersize=12, label="paper (Table 1)"))
    handles += [Line2D([], [], marker="o", ls="", color=c, label=n) for n, c in colours.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(True, which="both", alpha=0.3)
    xs = [r["fps"] for r in best.values()] + ([p["fps"] for p in PAPER_TABLE1.values()] if paper else [])
    if xs:
        ax.set_xlim(min(xs) / 1.6, max(xs) * 3.0)  # room for the labels right of the points
    caption = title or ""
    if left_out:
        caption += ("\n" if caption else "") + "no Dice, not shown: " + ", ".join(left_out)
    if caption:
        ax.set_title("\n".join(textwrap.fill(line, 110) for line in caption.splitlines()), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def report_text(result: dict, plot_out: str | None = None) -> str:
    """What ``edgeseg bench`` prints: the hardware report, the table, the Dice note, the recommendation, and the
    plot written to ``plot_out`` (when given)."""
    from .hardware import format_report

    lines = [format_report(result["hardware"]), "", format_table(result["rows"]), dice_note(result["rows"])]
    if any(r.get("e2e") for r in result["rows"]):
        lines += ["", format_e2e(result["rows"])]
    if result.get("int8_accuracy"):
        lines += ["", format_int8_accuracy(result["int8_accuracy"])]
    if result["recommendation"]:
        lines.append(result["recommendation"]["text"])
    if plot_out:
        ok = ok_rows(result["rows"])
        lines.append(f"plot: {plot_fps_vs_dice(result['rows'], plot_out)}" if ok else "no row was measured: no plot")
    return "\n".join(lines)
