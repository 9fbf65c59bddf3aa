"""The real-time network's training runs (contact weight, hard negatives, fine-tunes) on the VALIDATION splits.

    python benchmarks/hard_negatives_table.py [--runs runs] [--names shuffle_unet_px_dsb300 ...]

Each run (a folder with ``best.pt`` and its card, found under ``--runs``) is exported to FP32 ONNX here
(``torch_to_onnx``) and run through the runtime's ``Segmenter`` with one post-processing for all: the shipped
``shuffle_unet_px`` card's (instance step, stained override and object filter, chosen by
``benchmarks/tune_postprocess.py`` for the shipped run), so that the rows differ by their weights only. The
threshold is each run's own (chosen on validation Dice at the end of training). Scored on

* the DSB2018 validation split (canonical split): Dice@256, F1@0.5, mAP, count MAE;
* the MoNuSeg validation tiles: count MAE (40x H&E, which no run here saw);
* background-only frames made from the DSB validation images by ``benchmarks/frontier.py``'s ``background_sets``
  (nuclei inpainted away, as is and with speckle): mean false nuclei per frame (the right answer is 0).

Writes ``benchmarks/results/hard_negatives.md`` and ``.json``. The runs' records (config, log, card, summary) are
in ``benchmarks/runs/``; the weights of all but the shipped one stay out of git.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DSB, MONUSEG, RESULTS, find_run, fmt, markdown_table, split_samples, write_results
from frontier import background_sets, counts, lscpu, say

NAMES = ("shuffle_unet_px_dsb300", "shuffle_unet_px_dsb300_hn", "shuffle_unet_px_hn", "shuffle_unet_px_hnb2",
         "shuffle_unet_px_hn_ours", "shuffle_unet_px_hn_lr1", "shuffle_unet_px_dsb300_hn_c3",
         "shuffle_unet_px_dsb300_hn_c8", "shuffle_unet_px_scratch_c8", "shuffle_unet_px_scratch_hn_c8",
         "shuffle_unet_px_c8_hn_c8", "shuffle_unet_px_c8_hn_c8_e50", "shuffle_unet_px_scratch_c8_e450",
         "shuffle_unet_px_scratch_c12", "shuffle_unet_px_ft60_noema", "shuffle_unet_px_ft60_ema",
         "shuffle_unet_px_ft150_ema", "shuffle_unet_px_ft150_ema_lr6")
SHIPPED_CARD = Path(__file__).resolve().parents[1] / "edge" / "zoo" / "shuffle_unet_px.card.json"
BACKGROUND_KINDS = ("dsb_inpainted", "dsb_speckle")


def export(run: str, postprocess: dict, training_scale: dict, work: Path) -> Path:
    """The run's FP32 ONNX file with the shared post-processing in its card."""
    from edgeseg.export.onnx import torch_to_onnx
    from edgeseg.train.predict import load_checkpoint
    from edgeseg.zoo import resolve_model

    ref = resolve_model(run)
    name = Path(run).name
    card = {**ref.card.to_dict(), "format": "onnx", "precision": "fp32", "name": f"{name}-fp32",
            "postprocess": {**postprocess, "threshold": ref.card.threshold}, "training_scale": training_scale}
    return torch_to_onnx(load_checkpoint(ref.path, ref.card).float(), card, work / f"{name}-fp32.onnx")


def score(path: Path, dsb: list, monuseg: list, background: dict) -> dict:
    from edgeseg.evaluate import evaluate
    from edgeseg.segmenter import Segmenter

    with Segmenter.load(str(path), threads=2) as seg:
        d, m = evaluate(seg, dsb)["summary"], evaluate(seg, monuseg)["summary"]
        false = {f"false_{k}": float(np.mean(counts(seg, background[k]))) for k in BACKGROUND_KINDS}
    return {"dice_256": d["dice_256"], "f1_50": d["f1_50"], "map": d["map"], "count_mae": d["count_mae"],
            "monuseg_count_mae": m["count_mae"], **false}


def recipe(run: str) -> str:
    cfg = json.loads((Path(run) / "config.json").read_text())
    start = (f"+{cfg['epochs']} epochs from `{Path(cfg['init']).name}`" if cfg.get("init")
             else f"from scratch, {cfg['epochs']} epochs")
    return (f"{start}: {cfg['augment']} augmentation, lr {cfg['lr']}, "
            f"hard negatives {cfg.get('hard_negatives', 0):.2f}, boundary weight {cfg.get('boundary_weight', 1.0)}, "
            f"contact weight {cfg.get('contact_weight', 0.0)}, "
            + (f"weight EMA {cfg['ema']} (validated and kept), " if cfg.get("ema") else "")
            + f"keeps the {cfg.get('keep', 'best')} epoch")


def markdown(rows: list[dict], meta: dict) -> str:
    table = markdown_table(
        ["run", "recipe", "best.pt epoch", "DSB val Dice@256", "F1@0.5", "mAP", "count MAE", "MoNuSeg val count MAE",
         "false nuclei/frame: DSB bg inpainted / + speckle"],
        [[f"`{r['name']}`", r["recipe"], r["epoch"], fmt(r["dice_256"], ".4f"), fmt(r["f1_50"]), fmt(r["map"]),
          fmt(r["count_mae"], ".2f"), fmt(r["monuseg_count_mae"], ".1f"),
          f"{fmt(r['false_dsb_inpainted'], '.2f')} / {fmt(r['false_dsb_speckle'], '.2f')}"] for r in rows])
    return (
        "# Hard negatives for the real-time network (validation splits)\n\n"
        f"Command: `{meta['command']}` ({meta['minutes']:.1f} min, {meta['date']}). CPU (lscpu): {meta['cpu']}.\n\n"
        "Every run's `best.pt`, exported to FP32 ONNX and run through the `Segmenter` with the shipped "
        "`shuffle_unet_px` card's post-processing (its own threshold). DSB2018 validation split "
        f"({meta['n_dsb']} images), MoNuSeg validation tiles ({meta['n_monuseg']}), background-only frames made "
        f"from the DSB validation images as `benchmarks/frontier.py` makes them from the test images "
        f"({meta['n_background']} of each kind). `--hard-negatives P` replaces a share P of the training items by a "
        "nucleus-free frame made from the item's own image (`train/hard_negatives.py`).\n\n"
        f"{table}\n"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", default=[Path("runs")], help="folders holding the runs")
    ap.add_argument("--names", nargs="+", default=list(NAMES))
    ap.add_argument("--out", type=Path, default=RESULTS / "hard_negatives")
    args = ap.parse_args()
    t0 = time.time()
    shipped = json.loads(SHIPPED_CARD.read_text())
    dsb, monuseg = split_samples(DSB, "val"), split_samples(MONUSEG, "val")
    background = {k: v for k, v in background_sets(dsb, 1).items() if k in BACKGROUND_KINDS}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            run = find_run(name, args.runs)
            say(f"{name}: export and score")
            path = export(run, shipped["postprocess"], shipped["training_scale"], Path(tmp))
            summary = json.loads((Path(run) / "summary.json").read_text())
            rows.append({"name": name, "recipe": recipe(run), "epoch": summary["best_epoch"],
                         **score(path, dsb, monuseg, background)})
    meta = {"command": " ".join(["python", "benchmarks/hard_negatives_table.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "minutes": (time.time() - t0) / 60,
            "cpu": lscpu()["model"] or "?",
            "postprocess": shipped["postprocess"], "n_dsb": len(dsb), "n_monuseg": len(monuseg),
            "n_background": len(background["dsb_inpainted"])}
    write_results(args.out, {"meta": meta, "rows": rows}, markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
