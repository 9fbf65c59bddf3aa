"""Per-modality accuracy of the zoo: DSB2018 fluorescence, DSB2018 brightfield/stained, MoNuSeg H&E test tiles.

    python benchmarks/modality_table.py                       # every shipped network
    python benchmarks/modality_table.py --models fast_scnn benchmarks/runs/paper_fast_scnn

Every model is scored the way `edgeseg eval` scores it (same Segmenter, default scale policy: large
frames such as the 1000x1000 MoNuSeg tiles are tiled at the model's training scale), on the canonical
DSB2018 test split (68 images) and the MoNuSeg test tiles of edge/splits/monuseg_train.json (4 tiles,
4 organs). Writes benchmarks/results/modality_table.md and .json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import DSB, MONUSEG, RESULTS, markdown_table, split_info, write_results

from edgeseg.evaluate import evaluate_folder
from edgeseg.segmenter import Segmenter
from edgeseg.zoo import resolve_model

DATA = {"dsb": DSB, "monuseg": MONUSEG}
TARGETS = {"mobilenetv2_unet": 0.80, "fast_scnn": 0.75}  # MoNuSeg test Dice targets of the stained-tissue issue


def score(spec: str) -> dict:
    ref = resolve_model(spec)
    seg = Segmenter.load(spec)
    out = {"model": spec, "name": ref.name, "arch": ref.card.arch, "format": ref.format,
           "licence": ref.card.extra.get("licence"), "recipe": (ref.card.extra.get("recipe") or {}).get("name")}
    for key, root in DATA.items():
        t0 = time.perf_counter()
        res = evaluate_folder(seg, root, "test", progress=True)
        out[key] = {"summary": res["summary"], "per_type": res["per_type"], "split": split_info(res),
                    "seconds_per_image": (time.perf_counter() - t0) / max(len(res["images"]), 1)}
    return out


def dice_f1_mae(s: dict) -> str:
    return f"{s['dice']:.3f} / {s['f1_50']:.3f} / {s['count_mae']:.1f}"


def table(rows: list[dict]) -> str:
    cells = []
    for r in rows:
        dsb = r["dsb"]["per_type"]
        other = [dsb[t] for t in ("brightfield", "stained") if t in dsb]
        n = sum(o["n_images"] for o in other)
        mixed = {k: sum(o[k] * o["n_images"] for o in other) / n for k in ("dice", "f1_50", "count_mae")}
        target = TARGETS.get(r["arch"])
        mon = r["monuseg"]["summary"]
        verdict = "" if target is None else (f"{target:.2f}: {'met' if mon['dice'] >= target else 'not met'}")
        cells.append([r["name"], r["recipe"] or "", dice_f1_mae(dsb["fluorescence"]), dice_f1_mae(mixed),
                      dice_f1_mae(mon), verdict])
    lines = [
        "# Per-modality accuracy of the zoo",
        "",
        "Regenerate: `python benchmarks/modality_table.py`. Dice, F1@0.5 and count MAE at the original resolution,",
        "with each model's own post-processing and the default scale policy (MoNuSeg's 1000x1000 tiles are tiled at",
        "the training scale). DSB2018: canonical test split (55 fluorescence, 13 brightfield/stained images);",
        "MoNuSeg: the 4 test tiles of `edge/splits/monuseg_train.json` (one organ each).",
        "",
        markdown_table(["model", "recipe", "DSB fluorescence Dice / F1 / MAE",
                        "DSB brightfield+stained Dice / F1 / MAE", "MoNuSeg test Dice / F1 / MAE", "MoNuSeg target"],
                       cells),
        "",
        "Licences: " + "; ".join(f"{r['name']}: {r['licence']}" for r in rows),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+",
                    default=["mobilenetv2_unet", "half_unet", "shuffle_unet_px", "fast_scnn", "fast_scnn_he"])
    ap.add_argument("--out", default=str(RESULTS / "modality_table"))
    args = ap.parse_args()
    rows = [score(m) for m in args.models]
    out = Path(args.out)
    write_results(out, {"rows": rows}, table(rows))
    print(json.dumps({"written": [str(out.with_suffix(".md")), str(out.with_suffix(".json"))]}))


if __name__ == "__main__":
    main()
