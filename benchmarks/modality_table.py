"""Per-modality accuracy of the zoo: DSB2018 fluorescence, DSB2018 brightfield/stained, MoNuSeg H&E test tiles.

    python benchmarks/modality_table.py                       # the three zoo networks
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

from edgeseg.cli import segmenter_for
from edgeseg.data import find_items, load_sample
from edgeseg.evaluate import evaluate
from edgeseg.fsutil import atomic_write_json, atomic_write_text
from edgeseg.split import select_items
from edgeseg.zoo import resolve_model

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
DATA = {
    "dsb": SHARED / "dsb2018" / "stage1_train",
    "monuseg": SHARED / "monuseg_train",
}
TARGETS = {"mobilenetv2_unet": 0.80, "fast_scnn": 0.75}  # MoNuSeg test Dice targets of the stained-tissue issue


def score(spec: str) -> dict:
    ref = resolve_model(spec)
    seg = segmenter_for(ref)
    out = {"model": spec, "name": ref.name, "arch": ref.card.get("arch"), "format": ref.format,
           "licence": ref.card.get("licence"), "recipe": (ref.card.get("recipe") or {}).get("name")}
    for key, root in DATA.items():
        items, info = select_items(find_items(root), "test", where=str(root))
        t0 = time.perf_counter()
        res = evaluate(seg, (load_sample(it) for it in items), progress=True, total=len(items))
        out[key] = {"summary": res["summary"], "per_type": res["per_type"], "split": info,
                    "seconds_per_image": (time.perf_counter() - t0) / max(len(items), 1)}
    return out


def fmt_row(label: str, s: dict) -> str:
    return f"{s['dice']:.3f} | {s['f1_50']:.3f} | {s['count_mae']:.1f}"


def table(rows: list[dict]) -> str:
    lines = [
        "# Per-modality accuracy of the zoo",
        "",
        "Regenerate: `python benchmarks/modality_table.py`. Dice, F1@0.5 and count MAE at the original resolution,",
        "with each model's own post-processing and the default scale policy (MoNuSeg's 1000x1000 tiles are tiled at",
        "the training scale). DSB2018: canonical test split (55 fluorescence, 13 brightfield/stained images);",
        "MoNuSeg: the 4 test tiles of `edge/splits/monuseg_train.json` (one organ each).",
        "",
        "| model | recipe | DSB fluorescence Dice / F1 / MAE | DSB brightfield+stained Dice / F1 / MAE "
        "| MoNuSeg test Dice / F1 / MAE | MoNuSeg target |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        dsb = r["dsb"]["per_type"]
        other = [dsb[t] for t in ("brightfield", "stained") if t in dsb]
        n = sum(o["n_images"] for o in other)
        mixed = {k: sum(o[k] * o["n_images"] for o in other) / n for k in ("dice", "f1_50", "count_mae")}
        target = TARGETS.get(r["arch"])
        mon = r["monuseg"]["summary"]
        verdict = "" if target is None else (f"{target:.2f}: {'met' if mon['dice'] >= target else 'not met'}")
        lines.append(
            f"| {r['name']} | {r['recipe'] or ''} | {fmt_row('', dsb['fluorescence'])} | {fmt_row('', mixed)} "
            f"| {fmt_row('', mon)} | {verdict} |"
        )
    lines += ["", "Licences: " + "; ".join(f"{r['name']}: {r['licence']}" for r in rows), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["half_unet", "fast_scnn", "mobilenetv2_unet"])
    ap.add_argument("--out", default=str(HERE / "results" / "modality_table"))
    args = ap.parse_args()
    rows = [score(m) for m in args.models]
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), {"rows": rows})
    atomic_write_text(out.with_suffix(".md"), table(rows))
    print(table(rows))
    print(json.dumps({"written": [str(out.with_suffix(".md")), str(out.with_suffix(".json"))]}))


if __name__ == "__main__":
    main()
