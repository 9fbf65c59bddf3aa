"""Export the zoo to ONNX / OpenVINO, ship the device files into edge/zoo/, and write the export table.

    python benchmarks/export_zoo.py                          # all three networks (about 20 min on 2 busy cores)
    python benchmarks/export_zoo.py --models fast_scnn       # re-export one network (e.g. after a new checkpoint)

For each network (its PyTorch checkpoint in edge/zoo/) this runs `edgeseg export` (edgeseg.export.export_model) for
ONNX FP32 and INT8 (x86, arm and x86-no-vnni targets, accuracy guard on the validation split, calibration on 100
training images) and OpenVINO FP32, FP16 and INT8, scores every file on the canonical DSB2018 test split (68
images) through the runtime's Segmenter (what `edgeseg eval FILE` does), times the bare model (the paper's single
256x256 inference, interleaved rounds so that a busy machine slows every variant alike), and ships into edge/zoo/:

* ONNX INT8 of every network (what a device runs), in three flavours: ``x86`` (VNNI and AMX CPUs), ``arm`` and
  ``x86-no-vnni`` (AVX2 without VNNI), each through the accuracy guard, so that re-exporting a network keeps the
  file ``edgeseg run --model NETWORK`` picks on every CPU;
* ONNX FP32 where the file is under 20 MB (the reference `edgeseg bench` compares INT8 with; no tracked file
  over 20 MB, and the wheel stays small): MobileNetV2-UNet's checkpoint is float16, so its FP32 graph is
  stored as exact float16 (13.5 MB instead of 26.5 MB with BatchNorm folded; see torch_to_onnx);
* OpenVINO INT8 where OpenVINO runs it faster than the INT8 ONNX file (what OpenVINO reads where there is no IR:
  ``Zoo.variants`` puts ONNX first, so the IR is for ``--backend openvino`` and never changes the default).

benchmarks/results/export_table.json keeps one entry per network (a partial run updates only its networks);
benchmarks/results/export_table.md is rebuilt from it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DSB, RESULTS, cpu_name, load_average, markdown_table, read_json

from edgeseg.card import card_path, library_versions, read_card
from edgeseg.evaluate import evaluate_folder
from edgeseg.export.pipeline import ExportSpec, export_model
from edgeseg.fsutil import atomic_write_json, atomic_write_text
from edgeseg.segmenter import Segmenter
from edgeseg.zoo import ZOO_DIR, Zoo, resolve_model

NETWORKS = ("half_unet", "mobilenetv2_unet", "fast_scnn", "fast_scnn_he", "shuffle_unet_px")
# (format, precision, INT8 target): the x86 INT8 file, and the flavours for other CPUs' integer kernels (ONNX
# Runtime's ARM kernels; AVX2 without VNNI, whose u8 x s8 pairs can saturate: 7-bit weights), which always ship:
# `edgeseg run --model NETWORK` picks the one made for the CPU it runs on (edgeseg.device.choose)
VARIANTS = (("onnx", "fp32", "x86"), ("onnx", "int8", "x86"), ("onnx", "int8", "arm"), ("onnx", "int8", "x86-no-vnni"),
            ("openvino", "fp32", "x86"), ("openvino", "fp16", "x86"), ("openvino", "int8", "x86"))

# the INT8 ONNX guard ladder of a network where the default (edgeseg.export.quantize.ONNX_STRATEGIES in order, the
# first rung within budget) is not the best: shuffle_unet_px's per-channel weights keep its validation Dice (drop
# -0.0002 against per-tensor's +0.0015 for the 300-epoch weights) at the same speed (ONNX Runtime, 2-core EPYC,
# interleaved: 0.97x / 1.05x per-tensor's FPS at 1 / 2 threads). Percentile activation ranges on top
# (per-channel+percentile, fine-tuned weights) scored better on DSB validation with the card's post-processing
# fixed (Dice@256 0.8939 against 0.8927, F1@0.5 0.839 against 0.837), but worse once each file had its own
# post-processing chosen by tune_postprocess (F1@0.5 0.822 against 0.839: stained frames went to plain connected
# components for MoNuSeg's count), so it is not the first rung.
ONNX_INT8_LADDER = {"shuffle_unet_px": ("per-channel", "per-channel+float-ends")}
OV_READS_ONNX = "onnx/int8 on openvino"  # the timing the OpenVINO INT8 IR must beat to ship
SHIP_FP32_BELOW = 20e6  # bytes: no file over 20 MB in the repository
TIMING_ROUNDS, TIMING_ITERATIONS = 3, 40


def variant_key(fmt: str, precision: str, target: str) -> str:
    """``onnx/int8``; a non-x86 INT8 flavour names its target: ``onnx/int8-arm``."""
    return f"{fmt}/{precision}" + ("" if target == "x86" else f"-{target}")


def torch_reference(name: str, data: Path) -> dict:
    """PyTorch FP32 test-split scores of the zoo checkpoint, through the same Segmenter path as `edgeseg eval`."""
    seg = Segmenter.load(name)
    result = evaluate_folder(seg, data, "test")
    return {"test": {**result["info"], **result["summary"]}, "seg": seg, "file": resolve_model(name).path}


def model_only_timings(predictors: dict, rounds: int = TIMING_ROUNDS, iterations: int = TIMING_ITERATIONS) -> dict:
    """Median per-call latency (ms) of each predictor on one 1x3x256x256 input, interleaved over rounds."""
    from edgeseg.device.bench import time_predictor

    x = np.random.default_rng(0).normal(size=(1, 3, 256, 256)).astype(np.float32)
    p50s: dict[str, list[float]] = {k: [] for k in predictors}
    for _ in range(rounds):
        for key, predict in predictors.items():
            p50s[key].append(time_predictor(predict, x, iterations=iterations, warmup=5)["latency_ms"]["p50"])
    return {k: round(float(np.median(v)), 3) for k, v in p50s.items()}


def export_network(name: str, data: Path, calib_size: int, max_drop: float, stage: Path) -> dict:
    t0 = time.time()
    print(f"== {name}: PyTorch FP32 reference on the test split", flush=True)
    torch_ref = torch_reference(name, data)
    rows = []
    for fmt, precision, target in VARIANTS:
        print(f"== {name}: {variant_key(fmt, precision, target)}", flush=True)
        spec = ExportSpec(
            name, fmt, precision, out_dir=stage, calib_data=data, calib_size=calib_size, max_dice_drop=max_drop,
            target=target, test_data=data, command=f"python benchmarks/export_zoo.py --models {name}",
            strategies=ONNX_INT8_LADDER.get(name) if (fmt, precision) == ("onnx", "int8") else None,
        )
        report = export_model(spec, progress=lambda line: print("   " + line, flush=True))
        card = read_card(report["path"]).to_dict()  # the written card, as the table reports it
        rows.append({"key": variant_key(fmt, precision, target), "report": report, "card": card})
    print(f"== {name}: model-only timing", flush=True)
    segs = {"torch/fp32": torch_ref["seg"]}
    for r in rows:
        segs[r["key"]] = Segmenter.load(r["report"]["path"], verify=False)
    by_key = {r["key"]: r for r in rows}
    segs[OV_READS_ONNX] = Segmenter.load(by_key["onnx/int8"]["report"]["path"], backend="openvino", verify=False)
    timings = model_only_timings({k: s.predict for k, s in segs.items()})
    for s in segs.values():
        s.close()
    ov_faster = timings["openvino/int8"] < timings[OV_READS_ONNX]
    ship = {"onnx/int8": True, "onnx/int8-arm": True, "onnx/int8-x86-no-vnni": True,
            "onnx/fp32": by_key["onnx/fp32"]["report"]["size_bytes"] < SHIP_FP32_BELOW,
            "openvino/int8": ov_faster, "openvino/fp32": False, "openvino/fp16": False}
    torch_dice = torch_ref["test"]["dice_256"]
    table = [{
        "variant": "torch/fp32", "file": Path(torch_ref["file"]).name, "in_zoo": True,
        "size_bytes": Path(torch_ref["file"]).stat().st_size, "test_dice_256": round(torch_dice, 4),
        "dice_drop_vs_torch": 0.0, "guard_strategy": None, "val_dice_drop": None,
        "executed_precision": "fp32", "latency_ms_p50": timings["torch/fp32"],
    }]
    for key, r in by_key.items():
        card, rep = r["card"], r["report"]
        test = card["metrics"]["test"]["dice_256"]
        guard = card.get("guard") or {}
        table.append({
            "variant": key, "file": Path(rep["path"]).name, "in_zoo": ship[key], "size_bytes": rep["size_bytes"],
            "test_dice_256": round(test, 4), "dice_drop_vs_torch": round(torch_dice - test, 4),
            "guard_strategy": guard.get("strategy"), "val_dice_drop": guard.get("drop"),
            "executed_precision": card["executed_precision"], "latency_ms_p50": timings[key],
            "parity_max_abs_logit_diff": card["export"]["parity_onnx_fp32"]["max_abs_logit_diff"],
            "parity_max_abs_prob_diff": card["export"]["parity_onnx_fp32"]["max_abs_prob_diff"],
            "guard_attempts": guard.get("attempts"),
        })
    publish(name, {k: by_key[k]["report"]["path"] for k, v in ship.items() if v})
    return {
        "network": name,
        "torch_test": {k: torch_ref["test"][k] for k in ("dice_256", "dice", "map", "f1_50", "n_images",
                                                         "split_hash")},
        "calibration": by_key["onnx/int8"]["card"]["calibration"],
        "rows": table,
        "openvino_int8_ir_faster_than_openvino_reading_onnx_int8": ov_faster,
        "openvino_reads_onnx_int8_latency_ms_p50": timings[OV_READS_ONNX],
        "seconds": round(time.time() - t0, 1),
    }


def publish(name: str, paths: dict[str, str]) -> None:
    """Replace this network's exported files in edge/zoo/ with ``paths`` (model, weights, card)."""
    for ref in Zoo().variants(name):  # this network's earlier exports (found by their cards)
        for f in (ref.card.file, ref.card.weights_file):
            if f:
                (ZOO_DIR / f).unlink(missing_ok=True)
        card_path(ref.path).unlink()
    for path in map(Path, paths.values()):
        files = [path.with_suffix(".bin")] if path.suffix == ".xml" else []
        for f in [*files, path, card_path(path)]:
            shutil.copy2(f, ZOO_DIR / f.name)
    for path in map(Path, paths.values()):  # the copies must verify against their cards
        read_card(ZOO_DIR / path.name, verify=True)


def machine() -> dict:
    from edgeseg.export.pipeline import _executed_on

    return {"cpu": cpu_name(), "features": _executed_on(), "cores": len(os.sched_getaffinity(0)),
            "load_average_at_start": load_average(), "versions": library_versions()}


def openvino_ir_sentence(res: dict) -> str:
    """Why the network's OpenVINO INT8 IR ships or not, by the rule its export ran under."""
    ir = next(r for r in res["rows"] if r["variant"] == "openvino/int8")["latency_ms_p50"]
    if "openvino_int8_ir_faster_than_openvino_reading_onnx_int8" in res:
        ships = res["openvino_int8_ir_faster_than_openvino_reading_onnx_int8"]
        return (f"OpenVINO runs its INT8 IR in {ir:.2f} ms and the INT8 ONNX file in "
                f"{res['openvino_reads_onnx_int8_latency_ms_p50']:.2f} ms, so the IR "
                f"{'ships' if ships else 'is not shipped'}.")
    ships = res["openvino_int8_faster_than_onnx_int8"]  # exported before 2026-12-07: the IR against ONNX Runtime
    return (f"OpenVINO INT8 {'is' if ships else 'is not'} faster than ONNX Runtime INT8 here (the rule of that "
            f"export), {'so it ships' if ships else 'so it is not shipped'}.")


def write_markdown(results: dict) -> str:
    lines = [
        "# Exported zoo: ONNX and OpenVINO, FP32 / FP16 / INT8",
        "",
        "Regenerate: `python benchmarks/export_zoo.py` (one network: `--models fast_scnn`). Test split: the "
        "canonical DSB2018 split (68 images); Dice@256 = per-image mean Dice at 256x256 (the paper's figure), "
        "scored through the runtime's Segmenter (`edgeseg eval FILE`). *Drop* = PyTorch FP32 Dice - file's Dice "
        "(positive = worse). *Guard* = the strategy the INT8 accuracy guard kept and its validation-split Dice "
        "drop against the FP32 ONNX file (budget 0.005). *Executed* = what the runtime really ran on this "
        "machine (OpenVINO runs FP32/FP16 IR as bf16 on a CPU with bf16 instructions: AMX or AVX-512 BF16). "
        "Latency: model only, one 256x256 image, "
        "median of per-call times over interleaved rounds, all cores of this machine; **the 2-core machine was "
        "shared with other jobs while measuring, so absolute times are noisy; compare within a network only**.",
        "",
        markdown_table(
            ["network", "variant", "file", "in zoo", "size (MB)", "test Dice@256", "drop vs PyTorch",
             "guard (val drop)", "executed", "latency p50 (ms)"],
            [[name, r["variant"], r["file"], "yes" if r["in_zoo"] else "no", f"{r['size_bytes'] / 1e6:.2f}",
              f"{r['test_dice_256']:.4f}", f"{r['dice_drop_vs_torch']:+.4f}",
              f"{r['guard_strategy']} ({r['val_dice_drop']:+.4f})" if r.get("guard_strategy") else "-",
              r["executed_precision"], f"{r['latency_ms_p50']:.2f}"]
             for name in NETWORKS for r in (results["networks"].get(name) or {}).get("rows", [])]),
        "",
        "Notes:",
        "",
    ]
    for name in NETWORKS:
        res = results["networks"].get(name)
        if not res:
            continue
        int8 = next(r for r in res["rows"] if r["variant"] == "onnx/int8")
        tried = ", ".join(f"{a['strategy']} {a['drop']:+.4f}" for a in int8.get("guard_attempts") or [])
        lines.append(
            f"* **{name}**: ONNX parity vs PyTorch on the 8 bundled test images: max |dlogit| "
            f"{int8['parity_max_abs_logit_diff']:.1e}, max |dprob| {int8['parity_max_abs_prob_diff']:.1e}. "
            f"INT8 guard ladder tried: {tried}. {openvino_ir_sentence(res)}"
        )
    cal = next(iter(results["networks"].values()))["calibration"]
    m = results["machine"]
    lines += [
        "* MobileNetV2-UNet's checkpoint is float16, so its FP32 ONNX stores those exact float16 weights (BatchNorm "
        "kept as nodes, folded by the runtime at load): 13.5 MB instead of 26.5 MB with BatchNorm folded into "
        "float32 weights, the same FP32 arithmetic (its parity is in the card: "
        "`export.parity_onnx_fp32_fp16_storage`).",
        "* The parity gate is on probabilities (the graph's outputs): max |dprob| <= 1e-4. The logit differences "
        "are reported too: they are fp32 rounding of two different convolution kernels (PyTorch's own fp32 "
        "logits differ from float64 by about 1e-4 on Half-UNet).",
        f"* Calibration: {cal['n_images']} images of the training split, seeded ({cal['seed']}), stratified by "
        f"image type {cal['strata']}, sha256 {cal['sha256'][:16]}... (recorded in each INT8 card).",
        f"* Machine: {m['cpu']}, {m['cores']} cores, {m['features']}; load average at start "
        f"{m['load_average_at_start']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    ap.add_argument("--data", type=Path, default=DSB, help="DSB2018 stage1_train (canonical split)")
    ap.add_argument("--calib-size", type=int, default=100)
    ap.add_argument("--max-dice-drop", type=float, default=0.005)
    args = ap.parse_args(argv)
    json_path = RESULTS / "export_table.json"
    results = read_json(json_path, {"networks": {}})
    results["machine"] = machine()
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"export-{name}-") as stage:
            results["networks"][name] = export_network(name, args.data, args.calib_size, args.max_dice_drop,
                                                       Path(stage))
        results["command"] = "python benchmarks/export_zoo.py"
        atomic_write_json(json_path, results)  # after each network: a long run keeps what it finished
        atomic_write_text(RESULTS / "export_table.md", write_markdown(results))
    print(write_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
