"""The accuracy-speed frontier (issue "Real-time and right"): every network, speed beside what it gets right.

    python benchmarks/frontier.py                                    # every network in the zoo
    python benchmarks/frontier.py --extra runs/shuffle_unet_dsb      # + a training run (FP32 export, needs torch)
    python benchmarks/frontier.py --models fast_scnn,half_unet --quick --out /tmp/frontier   # a smoke test

Per network (``--models``: default every network of ``edgeseg.zoo.Zoo().networks()``; ``--extra``: more zoo
networks, exported ``.onnx`` / ``.xml`` files, or training runs, which are exported to a temporary FP32 ONNX file
with ``edgeseg.export.onnx.torch_to_onnx``):

1. Model-only FPS: the zoo's files (``Zoo.variants(network, precision=...)`` in the order each backend reads
   them; OpenVINO reads the ``.onnx`` where there is no IR), ONNX Runtime and OpenVINO, FP32 and INT8, 2 threads
   and 1, timed as ``edgeseg bench`` times them (``edgeseg.device.bench.time_predictor``: 10 warm-up calls, 100
   consecutive single inferences of one preprocessed 256x256 sample image); ``--rounds`` rounds (5: on a shared
   2-core VM one 2-thread ratio moves by up to 10 %); in each, per backend and thread count, every file once,
   each between two timings of ``fast_scnn-int8`` (R A R B R ..., the order rotated from round to round), its
   ratio taken to the mean of those two; a cell is the median FPS and the median ratio over the rounds.
2. DSB2018 canonical test split (68 images), scored as ``edgeseg eval`` scores it
   (``edgeseg.evaluate.evaluate_folder``): Dice@256, F1@0.5, mAP, count MAE; the INT8 file the runtime would use
   (``Zoo.variants(network, precision="int8")[0]``) and the FP32 file.
3. MoNuSeg test tiles (4): count MAE with the model's own post-processing and with plain connected components
   (``compare_cc=True``).
4. Background-only frames, whose true count is 0: (a) the DSB test images with the nuclei (mask dilated by
   ``DILATE_PX``) inpainted away (``cv2.inpaint``, Telea; the fill held to the background's grey levels), as is
   and with speckle added (multiplicative Gaussian, sigma
   ``SPECKLE_SIGMA``, plus additive read noise); (b) flat frames at a dark and a bright level with Gaussian or
   Poisson noise, 8-bit, 256x256 and 640x480. Mean count per frame, every frame planned on its own (the
   ``Segmenter.load`` defaults, as ``edgeseg eval``). Seeded.
5. Magnification: the shipped clip (``edgeseg.zoo.SAMPLE_CLIP``) resized x0.5, x1, x2, x4 (``cv2.resize``,
   INTER_AREA down, INTER_LINEAR up), mean count per frame with ``edgeseg run``'s defaults
   (``Segmenter.load(model, remember_scale=True)``, one Segmenter per magnification, every frame); and the DSB
   test images resized the same way, mean count per image (one Segmenter per magnification too, each image planned
   on its own: they are independent pictures, and a remembered plan would carry one image's scale to the next
   of the same size). Each as the ratio to x1 (target: within +-15 %).

Accuracy, background and magnification use the INT8 file (ONNX Runtime for an .onnx file) at 2 threads.
``--quick``: 8 DSB images, 2 MoNuSeg tiles, 12 clip frames, 1 noise frame per kind, 1 round of 30 timed calls
(written to a temporary folder unless ``--out`` is given). Writes ``benchmarks/results/frontier.md`` and
``.json``; progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from common import (
    DSB,
    MONUSEG,
    RESULTS,
    fmt,
    load_average,
    machine_line,
    markdown_table,
    split_samples,
    time_file,
    write_results,
)

from edgeseg.train import hard_negatives

REFERENCE = ("fast_scnn", "int8")  # the speed reference: the shipped fast_scnn-int8, same round/backend/threads
BACKENDS = ("onnxruntime", "openvino")
SHORT = {"onnxruntime": "ORT", "openvino": "OV"}
PRECISIONS = ("int8", "fp32")
THREADS = (2, 1)
EVAL_BACKEND, EVAL_THREADS = "onnxruntime", 2
MAGNIFICATIONS = (0.5, 1.0, 2.0, 4.0)
MAG_TOLERANCE = 0.15
SEED = 0
DILATE_PX = hard_negatives.DILATE_PX  # nuclei masks grown by this before inpainting
INPAINT_RADIUS = hard_negatives.INPAINT_RADIUS
SPECKLE_SIGMA = 0.1  # multiplicative speckle, per pixel
READ_NOISE = 2.0  # additive Gaussian noise, grey levels
NOISE_LEVELS = {"dark": 20, "bright": 200}  # flat frame levels (fluorescence-like, brightfield-like)
GAUSS_SIGMA = 8.0
NOISE_SIZES = ((256, 256), (480, 640), (128, 128))  # (h, w); the first two as in the runs before 2026-12-07 14:00
GRAINS = (1, 4)  # noise grain size (px): as a camera grabs it, and drawn at 1/4 size and enlarged (a digital zoom)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
T0 = time.time()


def say(msg: str) -> None:
    """One progress line on stderr."""
    print(f"[frontier {time.time() - T0:6.0f} s] {msg}", file=sys.stderr, flush=True)


# -- the machine ---------------------------------------------------------------------------------------------------

def lscpu() -> dict:
    """``lscpu``'s model name, family/model and flags (``/proc/cpuinfo`` where lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name"), "family": fields.get("cpu family"), "cpu_model": fields.get("model"),
            "cpus": fields.get("cpu(s)"), "hypervisor": fields.get("hypervisor vendor"),
            "flags": {f: f in flags for f in CPU_FLAGS}}


# -- what is measured ----------------------------------------------------------------------------------------------

@dataclass
class Entry:
    """One row: a network and its files, ``(backend, precision) -> path``."""

    label: str
    source: str  # zoo | file | run
    files: dict = field(default_factory=dict)
    params: int | None = None
    note: str = ""

    def eval_file(self, precision: str) -> Path | None:
        """The file the runtime would run at ``precision`` (ONNX Runtime's, else OpenVINO's)."""
        return self.files.get((EVAL_BACKEND, precision)) or self.files.get(("openvino", precision))


def backend_formats(backend: str) -> tuple[str, ...]:
    from edgeseg.backends import backend_class

    return backend_class(backend).formats


def zoo_entry(network: str, zoo) -> Entry:
    """A zoo network: per backend and precision, the file ``Zoo.variants`` ranks first for that backend."""
    entry = Entry(network, "zoo")
    for backend in BACKENDS:
        for precision in PRECISIONS:
            found = zoo.variants(network, precision=precision, formats=backend_formats(backend))
            if found:
                entry.files[backend, precision] = found[0].path
                entry.params = entry.params or found[0].card.params
    return entry


def file_entry(path: Path) -> Entry:
    """One exported file, on every backend that reads its format, in the column of its card's precision."""
    from edgeseg.zoo import resolve_model

    ref = resolve_model(path, verify=False)
    entry = Entry(ref.name, "file", params=ref.card.params)
    for backend in BACKENDS:
        if ref.format in backend_formats(backend):
            entry.files[backend, ref.card.precision] = ref.path
    return entry


def run_entry(run: Path, work: Path) -> Entry:
    """A training run folder (``best.pt`` + card) or a ``.pt`` checkpoint: its FP32 ONNX export, made here into
    ``work``; no INT8 file."""
    from edgeseg.export.onnx import torch_to_onnx
    from edgeseg.train.predict import load_checkpoint
    from edgeseg.zoo import resolve_model

    ref = resolve_model(run)
    name = run.name if run.is_dir() else run.stem
    card = {**ref.card.to_dict(), "format": "onnx", "precision": "fp32", "name": f"{name}-fp32"}
    path = torch_to_onnx(load_checkpoint(ref.path, ref.card).float(), card, work / f"{name}-fp32.onnx")
    say(f"exported {run} to a temporary FP32 ONNX file")
    files = {(b, "fp32"): path for b in BACKENDS}
    return Entry(name, "run", files, ref.card.params, note=f"`{run}`: checkpoint exported to FP32 ONNX here "
                 "(torch_to_onnx); no INT8 file yet")


def reference_files() -> dict[str, Path]:
    """Backend -> the file of ``fast_scnn-int8`` it reads (every ratio's denominator)."""
    from edgeseg.zoo import Zoo

    ref = zoo_entry(REFERENCE[0], Zoo())
    refs = {b: ref.files.get((b, REFERENCE[1])) for b in BACKENDS}
    if not all(refs.values()):
        raise SystemExit(f"error: no {'-'.join(REFERENCE)} file in the zoo for every backend: {refs}")
    return refs


def make_entries(models: list[str], extra: list[str], work: Path) -> list[Entry]:
    from edgeseg.zoo import Zoo

    zoo = Zoo()
    entries = []
    for spec in [*models, *extra]:
        if spec in zoo.networks():
            entry = zoo_entry(spec, zoo)
        elif Path(spec).is_dir() or Path(spec).suffix == ".pt":
            entry = run_entry(Path(spec), work)
        elif Path(spec).is_file():
            entry = file_entry(Path(spec))
        else:
            raise SystemExit(f"error: {spec} is neither a zoo network ({', '.join(zoo.networks())}), a model file "
                             "nor a training run folder")
        if entry.label in {e.label for e in entries}:
            entry.label = f"{entry.label} ({spec})"
        entries.append(entry)
    return entries


# -- 1. model-only speed -------------------------------------------------------------------------------------------

def bench_input(path: Path) -> np.ndarray:
    """The first image of the shipped sample, preprocessed with the file's card (as ``edgeseg bench``)."""
    from edgeseg.device.bench import sample_images
    from edgeseg.preprocess import preprocess
    from edgeseg.segmenter import Segmenter

    with Segmenter.load(path, verify=False) as seg:
        size, mean, std = seg.input_size, seg.mean, seg.std
    return np.ascontiguousarray(preprocess(sample_images(1)[0].image, size, mean=mean, std=std), np.float32)


def timed_files(entries: list[Entry], reference: Path, backend: str) -> list[Path]:
    """Every distinct file timed on ``backend``, but the reference."""
    paths = [e.files[backend, p] for e in entries for p in PRECISIONS if (backend, p) in e.files]
    return [p for p in dict.fromkeys(paths) if p != reference]


def time_group(paths: list[Path], ref: Path, where: dict, args, inputs: dict) -> list[dict]:
    """One round on one backend and thread count: the reference, then each file followed by the reference again
    (R A R B R ...); a file's ratio is its FPS over the mean of the two reference timings beside it, so that load
    that comes and goes on a busy machine hits both sides of a ratio alike."""
    def one(path: Path) -> dict:
        if path not in inputs:
            inputs[path] = bench_input(path)
        m = time_file(path, where["backend"], where["threads"], inputs[path], args.iterations, args.warmup)
        return {**where, "file": path.name, "reference": path == ref, **m}

    rows = [{**one(ref), "ratio": 1.0}]
    for path in paths:
        row, after = one(path), {**one(ref), "ratio": 1.0}
        row["ratio"] = round(row["fps"] / ((rows[-1]["fps"] + after["fps"]) / 2), 4)
        rows += [row, after]
    return rows


def speed_rounds(entries: list[Entry], refs: dict, args) -> list[dict]:
    """``args.rounds`` rounds; in each, every file once per backend and thread count between two timings of the
    reference, the order of the files rotated from round to round."""
    inputs: dict[Path, np.ndarray] = {}
    rows = []
    for r in range(args.rounds):
        for backend in BACKENDS:
            paths = timed_files(entries, refs[backend], backend)
            k = r % max(len(paths), 1)
            for threads in THREADS:
                where = {"round": r, "backend": backend, "threads": threads}
                group = time_group(paths[k:] + paths[:k], refs[backend], where, args, inputs)
                rows += group
                say(f"speed round {r + 1}/{args.rounds} {SHORT[backend]} {threads}t: " + ", ".join(
                    f"{z['file']} {z['fps']:.0f} ({z['ratio']:.2f}x)" for z in group if not z["reference"]))
    return rows


def speed_cells(rows: list[dict]) -> dict:
    """(file, backend, threads) -> median FPS, median ratio, every FPS, executed precision."""
    groups: dict[tuple, list[dict]] = {}
    for z in rows:
        groups.setdefault((z["file"], z["backend"], z["threads"]), []).append(z)
    return {k: {"fps": statistics.median(z["fps"] for z in v), "ratio": statistics.median(z["ratio"] for z in v),
                "fps_all": [z["fps"] for z in v], "ratios": [z["ratio"] for z in v], "executed": v[0]["executed"]}
            for k, v in groups.items()}


# -- 2, 3. DSB2018 and MoNuSeg -------------------------------------------------------------------------------------

def native_backend(path: Path) -> str:
    """The backend ``Segmenter.load`` opens ``path`` with (``auto``): OpenVINO for an IR, else ONNX Runtime."""
    return "openvino" if path.suffix.lower() == ".xml" else EVAL_BACKEND


def open_seg(path: Path, **kw):
    """A Segmenter for one file, on the backend native to its format (as ``edgeseg eval`` opens it)."""
    from edgeseg.segmenter import Segmenter

    return Segmenter.load(path, threads=EVAL_THREADS, verify=False, **kw)


def score(path: Path, root: Path, limit: int | None, compare_cc: bool = False) -> dict:
    """``evaluate_folder`` on the canonical test split of ``root`` (``evaluate`` on its first ``limit`` images)."""
    from edgeseg.evaluate import evaluate, evaluate_folder

    with open_seg(path) as seg:
        if limit is None:
            res = evaluate_folder(seg, root, "test", compare_cc=compare_cc)
        else:
            res = evaluate(seg, split_samples(root, "test")[:limit], compare_cc=compare_cc)
    keys = ("dice_256", "dice", "f1_50", "map", "count_mae", "count_bias", "n_images", "n_tiled", "cc")
    return {k: res["summary"][k] for k in keys if k in res["summary"]}


# -- 4. background-only frames -------------------------------------------------------------------------------------

def without_nuclei(sample) -> np.ndarray:
    """The sample's image with its nuclei and their glow inpainted away (float32 RGB)."""
    return hard_negatives.without_nuclei(sample.image, sample.labels, DILATE_PX)


def speckled(bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``bg`` with multiplicative speckle (``SPECKLE_SIGMA``) and additive read noise (``READ_NOISE``), uint8."""
    return hard_negatives.speckled(bg, rng, SPECKLE_SIGMA, READ_NOISE)


def noise_frame(level: int, kind: str, size: tuple[int, int], rng: np.random.Generator, grain: int = 1) -> np.ndarray:
    """A flat 8-bit mono frame at ``level`` with Gaussian (sigma ``GAUSS_SIGMA``) or Poisson noise; ``grain`` > 1:
    the noise drawn at 1 / ``grain`` of the size and enlarged (INTER_LINEAR), grains ``grain`` pixels wide."""
    drawn = (max(size[0] // grain, 1), max(size[1] // grain, 1))
    if kind == "gaussian":
        x = rng.normal(level, GAUSS_SIGMA, drawn)
    else:
        x = rng.poisson(level, drawn).astype(np.float64)
    x = hard_negatives.as_uint8(x)
    return x if grain == 1 else cv2.resize(x, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def background_sets(samples: list, per_kind: int) -> dict[str, list[np.ndarray]]:
    """The seeded background-only frames by kind: ``dsb_inpainted``, ``dsb_speckle`` (the same with speckle) and
    ``noise/<level>/<kind>/<h>x<w>`` (``<kind>-x<grain>`` for noise with coarser grains)."""
    bgs = [without_nuclei(s) for s in samples]
    sets = {"dsb_inpainted": [hard_negatives.as_uint8(bg) for bg in bgs],
            "dsb_speckle": [speckled(bg, np.random.default_rng([SEED, i])) for i, bg in enumerate(bgs)]}
    for li, (name, level) in enumerate(NOISE_LEVELS.items()):
        for ki, kind in enumerate(("gaussian", "poisson")):
            for (si, size), grain in itertools.product(enumerate(NOISE_SIZES), GRAINS):
                seed = [SEED, 1000 + li, ki, si] + ([] if grain == 1 else [grain])  # the grain-1 frames as before
                sets[f"noise/{name}/{kind}{'' if grain == 1 else f'-x{grain}'}/{size[0]}x{size[1]}"] = [
                    noise_frame(level, kind, size, np.random.default_rng([*seed, j]), grain) for j in range(per_kind)]
    return sets


def counts(seg, frames) -> list[int]:
    return [seg(f).count for f in frames]


def background_counts(path: Path, sets: dict) -> dict:
    """Mean count per frame of each kind (each frame planned on its own)."""
    with open_seg(path) as seg:
        return {kind: {"mean": float(np.mean(c)), "max": int(max(c)), "frames": len(c), "counts": c}
                for kind, c in ((k, counts(seg, v)) for k, v in sets.items())}


def pooled(bg: dict, prefix: str, suffix: str = "", within: str = "") -> float:
    """Mean count per frame over the kinds starting with ``prefix``, ending with ``suffix`` and holding ``within``."""
    picked = [v for k, v in bg.items() if k.startswith(prefix) and k.endswith(suffix) and within in k]
    return sum(v["mean"] * v["frames"] for v in picked) / max(sum(v["frames"] for v in picked), 1)


# -- 5. magnification ----------------------------------------------------------------------------------------------

def magnify(frame: np.ndarray, factor: float) -> np.ndarray:
    """``frame`` resized by ``factor``: INTER_AREA down, INTER_LINEAR up."""
    if factor == 1.0:
        return frame
    h, w = frame.shape[:2]
    size = (max(round(w * factor), 1), max(round(h * factor), 1))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def clip_frames(limit: int | None) -> list[np.ndarray]:
    """The frames of the shipped clip (a multi-page TIFF), as stored."""
    import tifffile

    from edgeseg.zoo import SAMPLE_CLIP

    stack = tifffile.imread(SAMPLE_CLIP)
    frames = list(stack) if stack.ndim >= 3 and stack.shape[-1] not in (3, 4) else [stack]
    return frames[:limit]


def plan_summary(results: list) -> dict:
    """How the scale policy ran the frames: how many by each source, the median scale, the mean tile count."""
    sources: dict[str, int] = {}
    for r in results:
        sources[r.scale_source] = sources.get(r.scale_source, 0) + 1
    return {"sources": dict(sorted(sources.items(), key=lambda kv: -kv[1])),
            "median_scale": round(float(np.median([r.scale for r in results])), 4),
            "mean_tiles": round(float(np.mean([r.n_tiles for r in results])), 2)}


def magnification_counts(path: Path, frames: list[np.ndarray], remember: bool) -> dict:
    """Per factor: mean count per frame (one Segmenter per factor) and how the frames were planned."""
    out = {}
    for factor in MAGNIFICATIONS:
        with open_seg(path, remember_scale=remember) as seg:
            results = [seg(magnify(f, factor)) for f in frames]
            measured_by = seg.info.get("scale_measured_by", "itself")
        out[str(factor)] = {"mean": float(np.mean([r.count for r in results])),
                            "size_first": list(magnify(frames[0], factor).shape[:2]),
                            "plan": plan_summary(results), "frames": len(results), "measured_by": measured_by}
    base = out["1.0"]["mean"]
    for v in out.values():
        v["ratio"] = v["mean"] / base if base else None
    return out


def ratio_text(mag: dict) -> str:
    """x0.5 / x2 / x4 counts over x1, as a cell; an asterisk marks a ratio outside +-15 %."""
    def one(f: str) -> str:
        r = mag[f]["ratio"]
        return "-" if r is None else f"{r:.2f}{'*' if abs(r - 1) > MAG_TOLERANCE else ''}"

    return " / ".join(one(f) for f in ("0.5", "2.0", "4.0"))


# -- the report ----------------------------------------------------------------------------------------------------

def speed_table(entries: list[Entry], cells: dict) -> str:
    cols = [(b, p, t) for t in THREADS for b in BACKENDS for p in PRECISIONS]

    def cell(e: Entry, b: str, p: str, t: int) -> str:
        path = e.files.get((b, p))
        c = cells.get((path.name, b, t)) if path else None
        return "" if c is None else f"{c['fps']:.0f} ({fmt(c['ratio'], '.2f')}x)"

    def files(e: Entry) -> str:
        return ", ".join(sorted({p.name for p in e.files.values()}))

    header = ["network", "params", *[f"{SHORT[b]} {p.upper()} {t}t" for b, p, t in cols], "files"]
    return markdown_table(header, [[e.label, fmt(e.params, ","), *[cell(e, *c) for c in cols], files(e)]
                                   for e in entries])


def accuracy_table(entries: list[Entry], acc: dict) -> str:
    rows = []
    for e in entries:
        for p in PRECISIONS:
            a = acc.get(e.label, {}).get(p)
            if a is None:
                continue
            d, m = a["dsb"], a.get("monuseg")
            rows.append([e.label, a["file"], fmt(d["dice_256"], ".4f"), fmt(d["f1_50"], ".4f"), fmt(d["map"]),
                         fmt(d["count_mae"], ".2f"),
                         "" if m is None else f"{m['count_mae']:.1f} / {m['cc']['count_mae']:.1f}",
                         "" if m is None else f"{m['f1_50']:.3f} / {m['cc']['f1_50']:.3f}"])
    return markdown_table(["network", "file", "DSB Dice@256", "DSB F1@0.5", "DSB mAP", "DSB count MAE",
                           "MoNuSeg count MAE own / cc", "MoNuSeg F1@0.5 own / cc"], rows)


def dsb_cell(kind: dict, types: list[str]) -> str:
    """Mean count per DSB background frame: all (fluorescence / the others), and the largest."""
    c = np.asarray(kind["counts"], float)
    fluo = np.asarray([t == "fluorescence" for t in types])
    part = [fmt(float(c[m].mean()) if m.any() else None, ".1f") for m in (fluo, ~fluo)]
    return f"{c.mean():.2f} ({part[0]} / {part[1]}), max {int(c.max())}"


def background_table(entries: list[Entry], bg: dict, types: list[str]) -> str:
    kinds = [f"{lv}/{k}" for lv in NOISE_LEVELS for k in ("gaussian", "poisson")]
    rows = []
    for e in entries:
        b = bg.get(e.label)
        if b is None:
            continue
        rows.append([e.label, dsb_cell(b["dsb_inpainted"], types), dsb_cell(b["dsb_speckle"], types),
                     *[fmt(pooled(b, f"noise/{k}"), ".2f") for k in kinds],
                     *[fmt(pooled(b, "noise/", f"/{h}x{w}"), ".2f") for h, w in NOISE_SIZES],
                     *[fmt(pooled(b, "noise/", within=f"-x{g}/"), ".2f") for g in GRAINS if g > 1]])
    header = ["network", "DSB bg inpainted: all (fluorescence / others)", "DSB bg + speckle",
              *[f"noise {k}" for k in kinds], *[f"noise {w}x{h}" for h, w in NOISE_SIZES],
              *[f"noise, {g} px grains" for g in GRAINS if g > 1]]
    return markdown_table(header, rows)


def plan_text(factor: float, v: dict) -> str:
    source, n = next(iter(v["plan"]["sources"].items()))
    return f"x{factor:g}: {source} ({n}/{v['frames']}) x{v['plan']['median_scale']:.2f} {v['plan']['mean_tiles']:.1f}"


def magnification_table(entries: list[Entry], mags: dict) -> str:
    rows = []
    for e in entries:
        m = mags.get(e.label)
        if m is None:
            continue
        for what in ("clip", "dsb"):
            v = m[what]
            by = v["1.0"].get("measured_by", "itself")
            rows.append([e.label if by == "itself" else f"{e.label} (nuclei measured by {by})",
                         "clip (per frame)" if what == "clip" else "DSB test (per image)",
                         *[f"{v[str(f)]['mean']:.1f}" for f in MAGNIFICATIONS], ratio_text(v),
                         "; ".join(plan_text(f, v[str(f)]) for f in MAGNIFICATIONS)])
    header = ["network", "frames", *[f"x{f:g}" for f in MAGNIFICATIONS], "x0.5 / x2 / x4 over x1",
              "scale plans: commonest source (frames), median scale, mean tiles"]
    return markdown_table(header, rows)


def frontier_table(entries: list[Entry], cells: dict, acc: dict, bg: dict, mags: dict) -> str:
    """The one-line-a-network summary: runtime file speed, DSB, MoNuSeg, background, magnification."""
    rows = []
    for e in entries:
        p = "int8" if e.eval_file("int8") else "fp32"
        a = acc.get(e.label, {}).get(p)
        path = e.eval_file(p)
        backend = native_backend(path)
        speed = [cells.get((path.name, backend, t)) for t in THREADS]
        b, m = bg.get(e.label), mags.get(e.label)
        rows.append([
            e.label, f"{p.upper()} {SHORT[backend]}",
            *["" if c is None else f"{c['fps']:.0f} ({fmt(c['ratio'], '.2f')}x)" for c in speed],
            *(["-"] * 4 if a is None else [fmt(a["dsb"]["dice_256"], ".4f"), fmt(a["dsb"]["f1_50"], ".4f"),
                                           fmt(a["dsb"]["map"]),
                                           fmt(a["dsb"]["count_mae"], ".1f")]),
            "-" if a is None or a.get("monuseg") is None else
            f"{a['monuseg']['count_mae']:.0f} / {a['monuseg']['cc']['count_mae']:.0f}",
            "-" if b is None else f"{b['dsb_inpainted']['mean']:.1f} / {b['dsb_speckle']['mean']:.1f} / "
                                  f"{pooled(b, 'noise/'):.1f}",
            "-" if m is None else ratio_text(m["clip"]), "-" if m is None else ratio_text(m["dsb"])])
    header = ["network", "file", *[f"FPS {t}t (x fast_scnn-int8)" for t in THREADS],
              "DSB Dice@256", "F1@0.5", "mAP", "count MAE", "MoNuSeg count MAE own / cc",
              "false nuclei/frame: DSB bg / + speckle / noise", "clip count x0.5 / x2 / x4 vs x1",
              "DSB count x0.5 / x2 / x4 vs x1"]
    return markdown_table(header, rows)


def header_lines(meta: dict) -> list[str]:
    cpu = meta["cpu"]
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in cpu["flags"].items())
    shares = meta["other_cpu_share"]
    return [
        "# The accuracy-speed frontier: every network, speed beside what it gets right",
        "",
        f"Command: `{meta['command']}` ({meta['seconds'] / 60:.1f} min, {meta['date']}).",
        "",
        f"CPU (lscpu): **{cpu['model']}** (family {cpu['family']}, model {cpu['cpu_model']}, {cpu['cpus']} CPUs, "
        f"hypervisor {cpu['hypervisor'] or 'none'}); flags: {flags}. Timings: "
        f"{machine_line(cpu['model'], '2 and 1')}. Load average (1/5/15 min) before / after: {meta['load_before']} "
        f"/ {meta['load_after']}; CPU share other processes took during a timing: median "
        f"{fmt(shares['median'], '.2f')}, max {fmt(shares['max'], '.2f')} (0 = a quiet machine). A busy 2-core "
        "machine: compare ratios (measured in the same round), not absolute FPS.",
    ]


def method_lines(meta: dict) -> list[str]:
    q = meta["config"]
    return [
        f"Speed: model only, `time_predictor` ({q['warmup']} warm-up calls, {q['iterations']} consecutive single "
        f"256x256 inferences of one preprocessed sample image), {q['rounds']} rounds; in each, per backend and "
        "thread count, every file timed once between two timings of `fast_scnn-int8` (R A R B R ..., the order "
        "rotated each round), its ratio = its FPS over the mean of those two. Cells: median FPS (median ratio) "
        "over the rounds; the per-timing numbers are in the JSON. Files: `Zoo.variants(network, precision=...)`, "
        "first in each backend's order (OpenVINO: the `-ov` IR where there is one, else the `.onnx`; its "
        "reference is `fast_scnn-int8.onnx` read by OpenVINO). "
        "Accuracy, background and magnification: the file in the `file` column (the one `edgeseg run` would "
        f"run: `Zoo.variants(network, precision=\"int8\")[0]`) on its native backend at {EVAL_THREADS} threads, "
        "default scale policy (`Segmenter.load`); the frontier's FPS are that file's. "
        f"DSB2018: canonical test split ({meta['n_dsb']} images); MoNuSeg: test tiles "
        f"({meta['n_monuseg']}); \"cc\" = plain connected components on the same probabilities.",
        "",
        f"False nuclei/frame: frames with no nucleus (the right count is 0). \"DSB bg\": the {meta['n_dsb']} DSB "
        f"test images with the nuclei (masks dilated {DILATE_PX} px) inpainted away (OpenCV Telea, radius "
        f"{INPAINT_RADIUS}; the filled pixels held to the interquartile range of the rest of the background, so "
        "that no ghost of the glow is left): \"inpainted\" as is, \"+ speckle\" with multiplicative speckle "
        f"(sigma {SPECKLE_SIGMA}) and read noise (sigma {READ_NOISE} grey levels) added; DSB masks miss some faint "
        "nuclei, which stay and may be counted. \"noise\": "
        f"flat 8-bit mono frames at level {NOISE_LEVELS['dark']} (dark) and {NOISE_LEVELS['bright']} (bright), "
        f"Gaussian (sigma {GAUSS_SIGMA}) or Poisson noise, "
        f"{', '.join(f'{w}x{h}' for h, w in NOISE_SIZES)}, with grains of "
        f"{' or '.join(str(g) for g in GRAINS)} px (drawn at 1/4 size and enlarged: a digital zoom), "
        f"{q['noise_frames']} of each (seed {SEED}); the columns pool over the others. Each frame planned on its "
        "own.",
        "",
        f"Magnification: the shipped clip ({meta['n_clip']} frames, {meta['clip_size']}) and the DSB test images "
        "resized x0.5 / x1 / x2 / x4 (INTER_AREA down, INTER_LINEAR up); mean count per frame with `edgeseg "
        "run`'s defaults (`Segmenter.load(model, remember_scale=True)`, one Segmenter per magnification); the DSB "
        "images with one Segmenter per magnification, each image planned on its own. Ratios to x1; * = outside "
        f"+-{MAG_TOLERANCE:.0%} (the target). A network whose card names another to measure its nuclei "
        "(`training_scale.measured_by`, chosen on validation: `benchmarks/results/sizer.md`) is measured by it, as "
        "in `edgeseg run`; the table says so beside its name.",
    ]


def rounds_table(entries: list[Entry], rows: list[dict]) -> str:
    """ONNX Runtime INT8, round by round: each network's ratio and the reference's median FPS in that round (a
    round where the host slowed every 2-thread timing shows as a low reference FPS). The reference is the file
    the rows mark as such (``time_group``)."""
    rows = [z for z in rows if z["backend"] == EVAL_BACKEND]
    rounds = sorted({z["round"] for z in rows})
    ref_name = next((z["file"] for z in rows if z["reference"]), None)

    def of(name: str, threads: int, r: int, key: str) -> list[float]:
        return [z[key] for z in rows if z["file"] == name and z["threads"] == threads and z["round"] == r]

    lines = []
    for threads in THREADS:
        if ref_name:
            lines.append([f"`{ref_name}` FPS", f"{threads}", *(
                fmt(statistics.median(v), ".0f") if (v := of(ref_name, threads, r, "fps")) else "-"
                for r in rounds)])
        for e in entries:
            path = e.files.get((EVAL_BACKEND, "int8"))
            if path is None or path.name == ref_name:
                continue
            lines.append([e.label, f"{threads}", *(
                f"{v[0]:.2f}x" if (v := of(path.name, threads, r, "ratio")) else "-" for r in rounds)])
    return markdown_table(["", "threads", *(f"round {r + 1}" for r in rounds)], lines)


def markdown(entries: list[Entry], results: dict, meta: dict) -> str:
    cells, acc, bg, mags = results["speed"], results["accuracy"], results["background"], results["magnification"]
    notes = [f"* {e.label}: {e.note}" for e in entries if e.note]
    parts = [
        *header_lines(meta), "", *method_lines(meta), "",
        "## The frontier (one line a network: the file the runtime uses)", "",
        frontier_table(entries, cells, acc, bg, mags), "",
        "## Model-only FPS (x `fast_scnn-int8`, same backend, threads and round)", "",
        speed_table(entries, cells), "",
        *(["Round by round, ONNX Runtime INT8 (ratio to `fast_scnn-int8` in the round; the first line is that "
           "reference's median FPS in the round):", "", rounds_table(entries, results["speed_rows"]), ""]
          if results.get("speed_rows") else []),
        "Executed precision as the runtimes report it: " + "; ".join(sorted(
            {f"{SHORT[k[1]]} {k[0]}: {v['executed']}" for k, v in cells.items()})) + ".", "",
        "## Accuracy (DSB2018 test, MoNuSeg test tiles)", "",
        accuracy_table(entries, acc), "",
        "## Background-only frames: mean count per frame (right answer 0)", "",
        background_table(entries, bg, meta["dsb_types"]), "",
        "## Magnification: mean count per frame", "",
        f"DSB test images, ground truth at x1: {meta['dsb_gt_mean']:.1f} nuclei per image.", "",
        magnification_table(entries, mags), "",
        *(["## Notes", "", *notes, ""] if notes else []),
    ]
    return "\n".join(parts)


# -- the run -------------------------------------------------------------------------------------------------------

def measure_entry(e: Entry, args, data: dict) -> tuple[dict, dict, dict]:
    """Accuracy (INT8 and FP32), background and magnification counts of one network."""
    acc = {}
    for p in PRECISIONS:
        path = e.eval_file(p)
        if path is None:
            continue
        say(f"{e.label} {p}: DSB test ({path.name})")
        acc[p] = {"file": path.name, "dsb": score(path, DSB, args.limit)}
        if p == PRECISIONS[0] or e.eval_file("int8") is None:
            say(f"{e.label} {p}: MoNuSeg test tiles")
            acc[p]["monuseg"] = score(path, MONUSEG, args.monuseg_limit, compare_cc=True)
    path = e.eval_file("int8") or e.eval_file("fp32")
    say(f"{e.label}: background-only frames ({path.name})")
    bg = background_counts(path, data["background"])
    say(f"{e.label}: magnification, clip")
    mag = {"file": path.name, "clip": magnification_counts(path, data["clip"], remember=True)}
    say(f"{e.label}: magnification, DSB test images")
    mag["dsb"] = magnification_counts(path, [s.image for s in data["dsb"]], remember=False)
    return acc, bg, mag


def monuseg_images(acc: dict) -> int | None:
    """How many MoNuSeg tiles were scored (the same for every network)."""
    found = [a["monuseg"]["n_images"] for per in acc.values() for a in per.values() if "monuseg" in a]
    return found[0] if found else None


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated zoo networks [every network in the zoo]")
    ap.add_argument("--extra", nargs="*", default=[], metavar="RUN_OR_FILE",
                    help="more rows: zoo networks, .onnx/.xml files, training run folders (exported to FP32 ONNX)")
    ap.add_argument("--rounds", type=int, default=None, help="speed rounds [5; 1 with --quick]")
    ap.add_argument("--iterations", type=int, default=None, help="timed calls [100; 30 with --quick]")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="a smoke test: few images, 1 round")
    ap.add_argument("--out", type=Path, default=None, help="result stem (.md, .json) [benchmarks/results/frontier]")
    ap.add_argument("--rerender", action="store_true",
                    help="measure nothing: write the tables again from the result stem's .json")
    args = ap.parse_args()
    q = args.quick
    args.rounds = args.rounds or (1 if q else 5)
    args.iterations = args.iterations or (30 if q else 100)
    args.limit, args.monuseg_limit = (8, 2) if q else (None, None)
    args.clip_limit, args.noise_frames = (12, 1) if q else (None, 4)
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "frontier_quick" if q else RESULTS / "frontier"
    return args


def rerender(stem: Path) -> None:
    """The tables again from a frontier .json (after a change to how they are written; nothing is measured)."""
    data = json.loads(stem.with_suffix(".json").read_text())
    entries = [Entry(e["label"], e["source"], {tuple(k.split("/")): Path(v) for k, v in e["files"].items()},
                     e["params"], e["note"]) for e in data["entries"]]
    cells = {}
    for key, cell in data["speed"].items():  # "file/backend/threads", as main writes speed_cells' keys
        file, backend, threads = key.rsplit("/", 2)
        cells[(file, backend, int(threads))] = cell
    results = {"speed": cells, **{k: data[k] for k in ("accuracy", "background", "magnification", "speed_rows")}}
    write_results(stem, data, markdown(entries, results, data["meta"]))


def main() -> None:
    from edgeseg.zoo import Zoo

    args = parse_args()
    if args.rerender:
        rerender(args.out)
        return
    command = " ".join(["python", "benchmarks/frontier.py", *map(shlex.quote, sys.argv[1:])])
    load_before = load_average()
    models = args.models.split(",") if args.models else Zoo().networks()
    say(f"networks: {', '.join(models + args.extra)}")
    with tempfile.TemporaryDirectory(prefix="frontier_") as tmp:
        entries = make_entries(models, args.extra, Path(tmp))
        refs = reference_files()
        say("loading the DSB test split, the clip; making the background frames")
        dsb = split_samples(DSB, "test")[:args.limit]
        data = {"dsb": dsb, "clip": clip_frames(args.clip_limit), "background": background_sets(dsb, args.noise_frames)}
        acc, bg, mags = {}, {}, {}
        for e in entries:
            acc[e.label], bg[e.label], mags[e.label] = measure_entry(e, args, data)
        say("model-only speed")
        rows = speed_rounds(entries, refs, args)
    cells = speed_cells(rows)
    shares = [z["other_cpu_share"] for z in rows if z["other_cpu_share"] is not None]
    meta = {"command": command, "cpu": lscpu(), "load_before": load_before, "load_after": load_average(),
            "seconds": time.time() - T0, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "other_cpu_share": {"median": statistics.median(shares) if shares else None,
                                "max": max(shares) if shares else None},
            "config": {k: v for k, v in vars(args).items() if k != "out"},
            "n_dsb": len(dsb), "n_monuseg": monuseg_images(acc),
            "n_clip": len(data["clip"]), "clip_size": "x".join(map(str, data["clip"][0].shape[:2])),
            "dsb_gt_mean": float(np.mean([s.labels.max() for s in dsb])), "dsb_types": [s.image_type for s in dsb]}
    results = {"speed": cells, "accuracy": acc, "background": bg, "magnification": mags, "speed_rows": rows}
    md = markdown(entries, results, meta)
    data_out = {"meta": meta, "entries": [{"label": e.label, "source": e.source, "params": e.params, "note": e.note,
                                           "files": {f"{b}/{p}": str(v.name) for (b, p), v in e.files.items()}}
                                          for e in entries],
                "speed_rows": rows, "speed": {"/".join(map(str, k)): v for k, v in cells.items()},
                "accuracy": acc, "background": bg, "magnification": mags}
    write_results(args.out, data_out, md)
    say(f"wrote {args.out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
