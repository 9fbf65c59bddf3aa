"""Speed of the real-time candidate networks against Fast-SCNN (issue "Real-time and right"), model only.

    python benchmarks/frontier_candidates.py

For every candidate (``CANDIDATES``, random weights: speed does not depend on them) and for ``fast_scnn`` (random
weights too), the script exports an FP32 ONNX file with ``edgeseg.export.onnx.torch_to_onnx`` (what ``edgeseg
export`` writes: opset 17, sigmoid inside, dynamic batch) and quantises it with ``edgeseg.export.quantize.
quantize_onnx``, the function behind ``edgeseg export --precision int8``, at the first rung of its guard ladder
(``per-tensor``, static QDQ, target ``x86``: what the shipped ``fast_scnn-int8`` was built with), calibrated on 16
training images of DSB2018 (the shipped 8-image sample where the data set is absent). The shipped
``edge/zoo/fast_scnn-int8.onnx`` is timed as the reference.

Timing is ``edgeseg bench``'s: ``edgeseg.device.bench.time_predictor`` on the backend object the Segmenter runs
(ONNX Runtime, and OpenVINO reading the same ONNX files), one preprocessed 256x256 sample image, 10 warm-up calls
then 100 timed single inferences, at 2 and 1 threads. Each round measures every file once per backend and thread
count, the files alternating; there are 3 rounds; a cell is the median FPS over the rounds and, in brackets, the
median over rounds of its ratio to the shipped ``fast_scnn-int8`` on the same backend and threads in the same
round. The share of the CPU that other processes took during each measurement is recorded (a busy machine makes
the 2-thread numbers noisy: when another process holds one of the two cores, a 2-thread run waits for it).

Writes ``benchmarks/results/frontier_candidates.md`` and ``.json``; whatever follows the line ``KEEP_MARKER`` in
the Markdown file (the notes and the "Training in progress" section, written by hand) is kept. ``--models``,
``--rounds``, ``--iterations`` and ``--threads`` narrow a quick look (with ``--out`` elsewhere, so that the
committed table stays whole).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DSB, RESULTS, cpu_name, fmt, load_average, markdown_table, time_file, write_results

CANDIDATES = ("shuffle_unet", "shuffle_unet_px", "lite_unet", "lraspp_lite", "mobilenetv2_unet_s")
REFERENCE = "fast_scnn"
SHIPPED = Path(__file__).resolve().parents[1] / "edge" / "zoo" / "fast_scnn-int8.onnx"
SHIPPED_NAME = "fast_scnn-int8 (shipped)"
# where each network's logits are made, and how they reach the input size
OUTPUT_RESOLUTION = {
    "fast_scnn": "1/8, bilinear x8",
    "shuffle_unet": "full (pixel shuffle from 1/4)",
    "shuffle_unet_px": "full (pixel shuffle from 1/4, with the input pixels)",
    "lite_unet": "1/2, bilinear x2",
    "lraspp_lite": "1/4, bilinear x4",
    "mobilenetv2_unet_s": "1/2, bilinear x2",
}
BACKENDS = ("onnxruntime", "openvino")
SHORT = {"onnxruntime": "ORT", "openvino": "OV"}
PRECISIONS = ("int8", "fp32")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
KEEP_MARKER = "<!-- written by hand below this line: kept when the script rewrites the file -->"


def cpu_flags() -> dict[str, bool]:
    from edgeseg.device.hardware import parse_cpuinfo

    try:
        flags = set(parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))["flags"])
    except OSError:
        flags = set()
    return {f: f in flags for f in CPU_FLAGS}


def calibration(n: int):
    """``n`` DSB2018 training images (the canonical split's training part), else the shipped sample."""
    from edgeseg.device.bench import SAMPLE_DIR
    from edgeseg.export.calibration import calibration_set

    return calibration_set(DSB if DSB.is_dir() else SAMPLE_DIR, n)


def build_files(names: list[str], work: Path, calib) -> dict:
    """Export each network (random weights, seeded) to FP32 ONNX and quantise it; return name -> entry."""
    import onnx
    import torch

    from edgeseg.card import new_card
    from edgeseg.export.onnx import set_onnx_card, torch_to_onnx
    from edgeseg.export.quantize import ONNX_STRATEGIES, quantize_onnx
    from edgeseg.train.models import build_model, count_params, gflops

    entries = {}
    for name in names:
        out_channels = 1 if name == REFERENCE else 2  # as shipped / as the candidates train (--instance)
        torch.manual_seed(0)
        net = build_model(name, out_channels=out_channels).eval()
        card = new_card(name, format="onnx", out_channels=out_channels,
                        outputs=["foreground", "boundary"][:out_channels])
        fp32, int8 = work / f"{name}-fp32.onnx", work / f"{name}-int8.onnx"
        torch_to_onnx(net, card, fp32)
        settings = quantize_onnx(fp32, int8, calib, strategy=ONNX_STRATEGIES[0], target="x86", work_dir=work)
        onnx.save(set_onnx_card(onnx.load(str(int8)), {**card, "precision": "int8"}), str(int8))  # as export does
        entries[name] = {"params": count_params(net), "gflops": round(gflops(net, 256), 4),
                         "out_channels": out_channels, "output": OUTPUT_RESOLUTION.get(name, "?"),
                         "files": {"fp32": fp32, "int8": int8}, "quantization": settings}
        print(f"exported {name}: {entries[name]['params']:,} params, {entries[name]['gflops']} GFLOPs", flush=True)
    return entries


def run(entries: dict, args, x: np.ndarray) -> list[dict]:
    files = [(SHIPPED_NAME, "int8", SHIPPED)] + [
        (name, p, e["files"][p]) for name, e in entries.items() for p in PRECISIONS]
    rows = []
    for r in range(args.rounds):
        for backend in args.backends:
            for threads in args.threads:
                for name, precision, path in files:
                    m = time_file(path, backend, threads, x, args.iterations, args.warmup)
                    rows.append({"round": r, "name": name, "precision": precision, "backend": backend,
                                 "threads": threads, **m})
                ref = next(z["fps"] for z in rows[-len(files):] if z["name"] == SHIPPED_NAME)
                for z in rows[-len(files):]:
                    z["ratio"] = round(z["fps"] / ref, 3)
                print(f"round {r + 1}/{args.rounds} {backend} {threads} threads: "
                      + ", ".join(f"{z['name'] if z['name'] == SHIPPED_NAME else z['name'] + ' ' + z['precision']} "
                                  f"{z['fps']:.0f}"
                                  for z in rows[-len(files):]), flush=True)
    return rows


def summary(rows: list[dict]) -> dict:
    """(name, backend, precision, threads) -> median FPS, median ratio, rounds."""
    cells: dict[tuple, list[dict]] = {}
    for z in rows:
        cells.setdefault((z["name"], z["backend"], z["precision"], z["threads"]), []).append(z)
    ref = {(z["round"], z["backend"], z["threads"]): z["p50_ms"] for z in rows if z["name"] == SHIPPED_NAME}
    return {k: {"fps": statistics.median(z["fps"] for z in v), "ratio": statistics.median(z["ratio"] for z in v),
                "p50_ms": statistics.median(z["p50_ms"] for z in v),
                "p50_ratio": statistics.median(ref[z["round"], z["backend"], z["threads"]] / z["p50_ms"] for z in v),
                "fps_rounds": [z["fps"] for z in v], "executed": v[0]["executed"]} for k, v in cells.items()}


def markdown(entries: dict, rows: list[dict], args, meta: dict) -> str:
    cells = summary(rows)
    cols = [(b, p, t) for t in args.threads for b in args.backends for p in PRECISIONS]
    header = ["network", "params", "GFLOPs", "output", *[f"{SHORT[b]} {p.upper()} {t}t" for b, p, t in cols]]

    def cell(name, b, p, t):
        c = cells.get((name, b, p, t))
        return "" if c is None else f"{c['fps']:.0f} ({c['ratio']:.2f}x)"

    def p50(name, b, t):
        c = cells.get((name, b, "int8", t))
        return "" if c is None else f"{c['p50_ms']:.2f} ({c['p50_ratio']:.2f}x)"

    labels = {SHIPPED_NAME: SHIPPED_NAME, **{n: f"{n} (random weights)" if n == REFERENCE else n for n in entries}}
    table = [[SHIPPED_NAME, "152,881", "0.064", OUTPUT_RESOLUTION[REFERENCE],
              *[cell(SHIPPED_NAME, b, p, t) for b, p, t in cols]]]
    for name, e in entries.items():
        table.append([labels[name], f"{e['params']:,}", f"{e['gflops']:.3f}", e["output"],
                      *[cell(name, b, p, t) for b, p, t in cols]])
    lat_cols = [(b, t) for t in args.threads for b in args.backends]
    latency = markdown_table(["network", *[f"{SHORT[b]} INT8 {t}t p50 ms" for b, t in lat_cols]],
                             [[labels[n], *[p50(n, b, t) for b, t in lat_cols]] for n in labels])
    shares = [z["other_cpu_share"] for z in rows if z["other_cpu_share"] is not None]
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in meta["flags"].items())
    executed = sorted({f"{SHORT[k[1]]} {k[2].upper()}: {v['executed']}" for k, v in cells.items()})
    lines = [
        "# Real-time candidates: model-only speed against Fast-SCNN",
        "",
        f"CPU: **{meta['cpu']}** ({flags}); {meta['cores']} logical cores. "
        f"Load average before / after: {meta['load_before']} / {meta['load_after']}; CPU share taken by other "
        f"processes during a measurement: median {fmt(statistics.median(shares) if shares else None, '.2f')}, "
        f"max {fmt(max(shares) if shares else None, '.2f')} (0 = quiet machine). Generated by "
        f"`python benchmarks/frontier_candidates.py` in {meta['seconds']:.0f} s on {meta['date']}.",
        "",
        f"Method: each file timed with `edgeseg.device.bench.time_predictor` (the `edgeseg bench` method) on the "
        f"backend the Segmenter runs, one preprocessed 256x256 sample image, {args.warmup} warm-up calls then "
        f"{args.iterations} consecutive single inferences; {args.rounds} rounds, the files alternating within "
        f"each backend and thread count. Cells: median FPS over the rounds (median ratio to the shipped "
        f"`fast_scnn-int8` on the same backend and threads, measured in the same round). FP32 = "
        f"`torch_to_onnx`; INT8 = `quantize_onnx`, per-tensor static QDQ (x86, the guard's first rung, as "
        f"`fast_scnn-int8` ships), calibrated on {meta['calibration']}. OV = OpenVINO reading the same ONNX "
        f"files. The candidates are exported with 2 outputs (foreground + boundary, as they train with "
        f"`--instance`); Fast-SCNN with 1, as shipped.",
        "",
        markdown_table(header, table),
        "",
        f"The same INT8 files by median latency (p50 of the {args.iterations} calls, median over rounds; in "
        "brackets the shipped `fast_scnn-int8`'s p50 over this one's, same round): less sensitive than FPS to the "
        "moments another process takes a core.",
        "",
        latency,
        "",
        "Params and GFLOPs (2 x MACs at 256x256) are those of the exported network (2 outputs for the candidates).",
        "",
        "Executed precision as the runtimes report it: " + "; ".join(executed) + ".",
        "",
    ]
    return "\n".join(lines)


def kept_section(path: Path) -> str:
    """The hand-written end of an existing result file, from :data:`KEEP_MARKER` on (the marker alone if none)."""
    text = path.read_text() if path.exists() else ""
    i = text.find(KEEP_MARKER)
    return "\n" + (text[i:].rstrip("\n") if i >= 0 else KEEP_MARKER) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(CANDIDATES), help="comma-separated candidate networks")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", default="2,1", help="thread counts, e.g. 2,1")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--calib-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=RESULTS / "frontier_candidates", help="result stem (.md, .json)")
    args = ap.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    args.backends = [b for b in args.backends.split(",") if b]
    names = [REFERENCE, *[m for m in args.models.split(",") if m and m != REFERENCE]]

    from edgeseg.device.bench import sample_images
    from edgeseg.preprocess import DEFAULT_NORMALISATION, preprocess

    start, load_before = time.time(), load_average()
    calib = calibration(args.calib_size)
    norm = DEFAULT_NORMALISATION
    x = np.ascontiguousarray(preprocess(sample_images(1)[0].image, 256, mean=norm["mean"], std=norm["std"]),
                             np.float32)
    with tempfile.TemporaryDirectory(prefix="frontier_") as tmp:
        entries = build_files(names, Path(tmp), calib)
        rows = run(entries, args, x)
    meta = {"cpu": cpu_name(), "flags": cpu_flags(), "cores": os.cpu_count(),
            "load_before": load_before, "load_after": load_average(), "seconds": time.time() - start,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "calibration": f"{len(calib)} images of {Path(calib.info['source']).name}"}
    md = markdown(entries, rows, args, meta) + kept_section(args.out.with_suffix(".md"))
    data = {"meta": meta, "config": {k: v for k, v in vars(args).items() if k != "out"},
            "networks": {n: {k: v for k, v in e.items() if k != "files"} for n, e in entries.items()},
            "rows": rows}
    write_results(args.out, data, md)


if __name__ == "__main__":
    main()
