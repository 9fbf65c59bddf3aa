"""The paper's Table 1 (accuracy and training-time columns) side by side with ours, and training curves.

    python benchmarks/reproduce_table1.py

Reads the committed training logs and test evaluations of the six zoo runs (benchmarks/runs/), the
zoo cards (edge/zoo/) and the CPU epoch timings (benchmarks/results/cpu_epoch_times.json, made by
benchmarks/time_epochs.py), and writes benchmarks/results/table1.md, table1.json and
benchmarks/plots/curves_<network>.png. FPS comes with `edgeseg bench`.
To regenerate the inputs: benchmarks/gpu/train_zoo.sh (training), `edgeseg eval RUN --split test --json`
(test_eval.json) and benchmarks/time_epochs.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import HERE, RESULTS, machine_line, markdown_table, write_results  # noqa: E402

from edgeseg.device.bench import PAPER_TABLE1  # noqa: E402
from edgeseg.zoo import zoo_entries  # noqa: E402

PAPER = {net: {**p, "time5": p["time5_s"]} for net, p in PAPER_TABLE1.items()}  # the paper's Table 1 (i9, PyTorch)


def load_run(name: str) -> dict:
    d = HERE / "runs" / name
    return {
        "log": [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines() if x.strip()],
        "summary": json.loads((d / "summary.json").read_text()),
        "card": json.loads((d / "best.card.json").read_text()),
        "test": json.loads((d / "test_eval.json").read_text()),
    }


def curves(arch: str, runs: dict[str, dict]) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for recipe, run in runs.items():
        ep = [r["epoch"] for r in run["log"]]
        ax1.plot(ep, [r["train_loss"] for r in run["log"]], label=f"{recipe} train")
        ax1.plot(ep, [r["val_loss"] for r in run["log"]], "--", label=f"{recipe} val")
        key = "val_dice_dsb256" if "val_dice_dsb256" in run["log"][0] else "val_dice"
        ax2.plot(ep, [r[key] for r in run["log"]], label=f"{recipe}: DSB val Dice")
        if "val_dice_monuseg06" in run["log"][0]:
            ax2.plot(ep, [r["val_dice_monuseg06"] for r in run["log"]], ":", label=f"{recipe}: MoNuSeg val Dice")
    ax2.axhline(PAPER[arch]["dice"], color="gray", lw=0.8, label="paper test Dice")
    ax1.set(xlabel="epoch", ylabel="loss (BCE + Dice [+ boundary])", title=f"{PAPER[arch]['label']}: loss")
    ax2.set(xlabel="epoch", ylabel="Dice @ threshold 0.5", ylim=(0.4, 1.0), title="validation Dice")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = HERE / "plots" / f"curves_{arch}.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    cpu = json.loads((RESULTS / "cpu_epoch_times.json").read_text())
    cpu_t = {(r["model"], r["precision"]): r["seconds_per_5_epochs"] for r in cpu["rows"]}
    shipped = {r.name: r.card for r in zoo_entries() if r.format == "torch"}
    rows, side_by_side = [], []
    for arch, p in PAPER.items():
        runs = {"paper": load_run(f"paper_{arch}"), "ours": load_run(f"ours_{arch}")}
        curves(arch, runs)
        dp, do = runs["paper"]["test"]["dice_256"], runs["ours"]["test"]["dice_256"]
        params = runs["paper"]["card"]["params"]
        gpu5 = runs["paper"]["summary"]["time_per_5_epochs_s"]
        ship = (shipped[arch].extra.get("recipe") or {}).get("name", "-") if arch in shipped else "-"
        row = {
            "model": arch,
            "params": params,
            "paper": p,
            "dice_paper_recipe": dp,
            "dice_our_recipe": do,
            "shipped_recipe": ship,
            "time5_cpu_fp32": cpu_t.get((arch, "fp32")),
            "time5_cpu_bf16": cpu_t.get((arch, "bf16")),
            "time5_h100_paper_recipe": gpu5,
            "test": {k: runs[k]["test"] for k in runs},
        }
        rows.append(row)
        side_by_side.append([
            p["label"], f"{p['params_m']:.3f} M", f"{params / 1e6:.3f} M", f"{p['dice']:.4f}", f"{dp:.4f}",
            f"{do:.4f}", ship, f"{p['time5']:.1f} s", f"{row['time5_cpu_fp32']} s", f"{row['time5_cpu_bf16']} s",
            f"{gpu5} s",
        ])
    test_rows = [
        [row["model"], recipe, f"{t['dice_256']:.4f}", f"{t['dice']:.4f}", f"{t['iou']:.4f}", f"{t['map']:.4f}",
         f"{t['f1_50']:.4f}", f"{t['count_mae']:.2f}",
         *(f"{t['per_type'][k]['dice_256']:.4f} (n={t['per_type'][k]['n_images']})"
           for k in ("fluorescence", "brightfield", "stained"))]
        for row in rows for recipe, t in row["test"].items()
    ]
    zoo_rows = []
    for arch, c in ((a, shipped.get(a)) for a in PAPER):
        if c:
            t = c.metrics["test"]
            zoo_rows.append([arch, c.extra["recipe"]["name"], c.post_config().method, f"{t['dice_256']:.4f}",
                             f"{t['map']:.4f}", f"{t['f1_50']:.4f}", f"{t['count_mae']:.2f}"])
    lines = [
        markdown_table(["Model", "Params paper", "Params ours", "Dice paper", "Dice ours, paper recipe",
                        "Dice ours, our recipe", "shipped", "Time/5 ep. paper (i9)", "Time/5 ep. ours, this CPU fp32",
                        "bf16", "H100"], side_by_side),
        "",
        "Test split of the canonical DSB2018 split (68 images), per-image mean Dice at 256x256 (the paper's "
        "figure). Other metrics at the original resolution, with each run's untuned post-processing (connected "
        "components for the binary runs, default watershed for the boundary-head runs):",
        "",
        markdown_table(["Model", "recipe", "Dice@256", "Dice", "IoU", "mAP@0.5:0.95", "F1@0.5", "count MAE",
                        "fluorescence", "brightfield", "stained"], test_rows),
        "",
        "The shipped zoo (edge/zoo/*.card.json), post-processing chosen on the validation split:",
        "",
        markdown_table(["Model", "recipe", "post-processing", "Dice@256", "mAP@0.5:0.95", "F1@0.5", "count MAE"],
                       zoo_rows),
        "",
        f"CPU times: {machine_line(cpu['machine']['cpu'], cpu['machine']['threads'])} ({cpu['method']}). "
        "H100 times: the lent GPU box, six runs sharing it (benchmarks/gpu/train_zoo.sh).",
    ]
    write_results(RESULTS / "table1", rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
