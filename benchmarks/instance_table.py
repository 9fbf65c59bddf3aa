"""Binary head vs instance head (foreground + nucleus boundary), per network: counting, not blobs.

    python benchmarks/instance_table.py --runs runs/gpu1                   # the six zoo training runs
    python benchmarks/instance_table.py --runs runs/gpu1 --extra runs/gpu2/distill_half_unet_alpha0 \
        runs/gpu2/distill_fast_scnn_alpha0 [--reuse]          # --reuse: re-measure FPS only

For each network, the binary model (paper recipe: one output, connected components or distance watershed)
and the instance model (a second, boundary output and a boundary-seeded watershed), both with the
post-processing chosen on validation and stored in their cards, are scored on the canonical DSB2018 test
split (68 images) exactly as `edgeseg eval` does (post-processing chosen on the validation split by DSB mAP, as
for the zoo): Dice, F1@0.5, DSB mAP, count MAE, and the same instance
metrics with plain connected components on the same probabilities. Params come from the cards; model-only
FPS is the paper's method (100 single 256x256 inferences after 10 warm-ups) on the FP32 ONNX export with ONNX
Runtime, median of 3 rounds interleaved over all runs, and the post-processing's own milliseconds per test
image are measured too.
Writes benchmarks/results/instance_table.md and .json (with the machine it ran on).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    DSB,
    RESULTS,
    machine_line,
    markdown_table,
    read_json,
    split_samples,
    tuned_postprocess,
    write_results,
)

from edgeseg.backends import open_backend
from edgeseg.device.bench import time_predictor
from edgeseg.device.hardware import hardware_report
from edgeseg.evaluate import evaluate
from edgeseg.export.onnx import torch_to_onnx
from edgeseg.postprocess import PostprocessConfig, postprocess
from edgeseg.segmenter import Segmenter
from edgeseg.train.predict import load_checkpoint, torch_predictor
from edgeseg.zoo import resolve_model

NETWORKS = ("half_unet", "mobilenetv2_unet", "fast_scnn")


def model_fps(runs: list[str], threads: int, rounds: int = 3) -> dict[str, dict]:
    """Model-only FPS of each run's FP32 ONNX export, in ``rounds`` interleaved rounds (median FPS per run), so
    that a burst of load on a shared machine hits every run alike instead of one row."""
    with tempfile.TemporaryDirectory() as tmp:
        backends = {}
        for i, run in enumerate(runs):
            ref = resolve_model(run)
            path = torch_to_onnx(load_checkpoint(ref.path, ref.card).float(), ref.card.to_dict(),
                                 Path(tmp) / f"m{i}.onnx")
            backends[run] = (open_backend(path, "onnxruntime", threads=threads),
                             np.zeros((1, 3, *ref.card.input_size), np.float32))
        timings = {run: [] for run in runs}
        for _ in range(rounds):
            for run, (backend, x) in backends.items():
                timings[run].append(time_predictor(backend, x, iterations=100, warmup=10))
    return {run: {**sorted(ts, key=lambda t: t["fps"])[len(ts) // 2], "fps_rounds": [t["fps"] for t in ts]}
            for run, ts in timings.items()}


def score(run: str, samples: list) -> dict:
    """Accuracy of one run on ``samples`` (loaded once for every run: the post-processing is timed on them too)."""
    ref = resolve_model(run)
    card = ref.card.to_dict()
    predict = torch_predictor(load_checkpoint(ref.path, card))
    card["postprocess"] = tuned_postprocess(predict, card, DSB)  # as for the zoo: chosen on validation by mAP
    seg = Segmenter(predict, card, name=ref.name)
    res = evaluate(seg, samples, compare_cc=True, progress=True, total=len(samples))
    cc = PostprocessConfig("cc", seg.post.threshold, min_size=seg.post.min_size)
    own_ms, cc_ms = [], []
    for s in samples:
        probs, _ = seg.probabilities(s.image)
        for cfg, acc in ((seg.post, own_ms), (cc, cc_ms)):
            t0 = time.perf_counter()
            postprocess(probs, s.labels.shape, cfg)
            acc.append((time.perf_counter() - t0) * 1e3)
    return {
        "run": run,
        "arch": card["arch"],
        "head": "instance" if int(card.get("out_channels", 1)) > 1 else "binary",
        "recipe": (card.get("recipe") or {}).get("name"),
        "teacher": (card.get("distillation") or {}).get("teacher"),
        "params": card.get("params"),
        "postprocess": seg.post.to_dict(),
        "summary": res["summary"],
        "per_type": res["per_type"],
        "postprocess_ms": float(np.mean(own_ms)),
        "cc_postprocess_ms": float(np.mean(cc_ms)),
        "card_sha256": ref.card.sha256,
    }


def table(rows: list[dict], hardware: dict) -> str:
    cells = []
    for r in rows:
        s, c = r["summary"], r["summary"]["cc"]
        ratio = c["count_mae"] / s["count_mae"] if s["count_mae"] else float("inf")
        cells.append([
            r["arch"], r["head"], f"{r['recipe'] or ''}{' (distilled)' if r['teacher'] else ''}", f"{r['params']:,}",
            f"{s['dice']:.3f}", f"{s['f1_50']:.3f} / {c['f1_50']:.3f}", f"{s['map']:.3f} / {c['map']:.3f}",
            f"{s['count_mae']:.1f} / {c['count_mae']:.1f}", f"{ratio:.1f}x", f"{r['model_only']['fps']:.0f}",
            f"{r['postprocess_ms']:.1f}",
        ])
    where = machine_line(hardware.get("cpu", {}).get("model"), rows[0]["threads"] if rows else "?")
    lines = [
        "# Binary head vs instance head (DSB2018 canonical test split, 68 images)",
        "",
        "Regenerate: `python benchmarks/instance_table.py --runs runs/gpu1 --extra runs/gpu2/distill_half_unet_alpha0",
        "runs/gpu2/distill_fast_scnn_alpha0` (training runs from `benchmarks/gpu/train_zoo.sh` and",
        "`benchmarks/gpu/train_distill.sh`). Post-processing of every run chosen on the validation split by mAP, as",
        "for the zoo; scored as `edgeseg eval` scores (default scale policy). \"own\" = that post-processing;",
        "\"cc\" = plain connected components on the same probabilities. FPS: model only, FP32 ONNX on ONNX Runtime,",
        f"median of 3 rounds interleaved over all rows, on {where}",
        "(a shared 2-core machine: compare ratios, not absolute numbers). The binary models are the paper recipe,",
        "the instance models ours / ours-light (community-fixed masks, MoNuSeg mixed in, heavier or lighter",
        "augmentation, boundary output): the head is not the only difference, see benchmarks/README.md.",
        "",
        markdown_table(["network", "head", "recipe", "params", "Dice", "F1@0.5 own / cc", "mAP own / cc",
                        "count MAE own / cc", "MAE cc/own", "FPS", "post ms"], cells),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/gpu1", help="Folder with paper_NET and ours_NET training runs.")
    ap.add_argument("--extra", nargs="*", default=[], help="More run folders or zoo names (e.g. distilled).")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "instance_table"))
    ap.add_argument("--reuse", action="store_true", help="Reuse the accuracy of runs already in --out's JSON "
                    "(same checkpoint sha256); FPS is always measured anew.")
    args = ap.parse_args()
    samples = split_samples(DSB, "test")
    runs = [str(Path(args.runs) / f"{recipe}_{net}") for net in NETWORKS for recipe in ("paper", "ours")]
    out = Path(args.out)
    old = {}
    if args.reuse:  # keep the accuracy of unchanged checkpoints
        old = {r["run"]: r for r in read_json(out.with_suffix(".json"), {"rows": []})["rows"]}
    rows = []
    for run in runs + list(args.extra):
        prev = old.get(run)
        if prev and prev.get("card_sha256") == resolve_model(run).card.sha256:
            row = prev
        else:
            row = score(run, samples)
        rows.append(row)
        print(f"{run}: Dice {row['summary']['dice']:.3f} F1 {row['summary']['f1_50']:.3f}", flush=True)
    fps = model_fps([r["run"] for r in rows], args.threads)
    for row in rows:
        row["model_only"], row["threads"] = fps[row["run"]], args.threads
    hw = hardware_report()
    write_results(out, {"hardware": hw, "rows": rows}, table(rows, hw))


if __name__ == "__main__":
    main()
