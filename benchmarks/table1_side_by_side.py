"""The paper's Table 1 side by side with ours, measured on the machine this runs on.

    python benchmarks/table1_side_by_side.py                 # all cores, 100 iterations (the paper's method)
    python benchmarks/table1_side_by_side.py --iterations 20 --zoo /tmp/myzoo --out /tmp/t1   # a quick look

For each network, three rows:

* **paper**: Table 1 of the paper (Intel Core i9, CPU only, PyTorch 1.13);
* **ours, PyTorch eager FP32**: the shipped checkpoint measured by the paper's method (100 consecutive single
  256x256 inferences after 10 warm-up calls, model only) with ``edgeseg.device.bench``;
* **ours, best deployed file**: of every exported zoo file (ONNX Runtime and OpenVINO, FP32/FP16/INT8), the
  fastest whose Dice is within 0.01 of the checkpoint's, measured in the same run at the same thread count.

Params come from the cards; Dice is the test-split Dice@256 recorded in each file's card (68 DSB2018 test
images of the canonical split; the paper's split is unstated); Time/5 epochs is training time, from
``results/cpu_epoch_times.json`` (``benchmarks/time_epochs.py``: this CPU, FP32) - the same for a network's
exported files. What we claim are the FPS ratios measured in one run (best deployed file / PyTorch eager FP32);
the absolute FPS belong to this machine, whose hardware report (and load) is written beside them.

Writes results/table1_side_by_side.md and .json (every bench row, the hardware report, the load before and
after) and plots/fps_vs_dice.png (FPS on a log axis vs Dice, the paper's three results marked).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from edgeseg.device.bench import (
    DICE_TOLERANCE,
    PAPER_TABLE1,
    BenchConfig,
    best_per_network,
    format_table,
    ok_rows,
    plot_fps_vs_dice,
    run_bench,
    usable_cores,
)
from edgeseg.device.hardware import BUSY_SHARE, format_report
from edgeseg.fsutil import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _m(params) -> str:
    return f"{params / 1e6:.3f} M" if params else "-"


def _f(v, spec=".1f", suffix="") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _what(r: dict) -> str:
    ex = r.get("executed_precision")
    prec = r["precision"] if ex in (None, r["precision"]) else f"{r['precision']}, runs {ex}"
    return f"`{Path(r['file']).name}` ({r['backend']}, {prec})"


def table(result: dict, epoch_times: dict) -> tuple[list[str], list[dict]]:
    """The side-by-side Markdown table and its rows (one dict a network)."""
    per_net = best_per_network(result["rows"])
    t5 = {(r["model"], r["precision"]): r["seconds_per_5_epochs"] for r in epoch_times.get("rows", [])}
    cpu = result["hardware"]["cpu"]
    here = f"{cpu.get('model') or '?'}, {result['config']['threads'][0]} threads"
    lines = [
        "| Network | Source | Model / file | Params | FPS | vs PyTorch FP32 | Dice | Time/5 epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    out = []
    for net, p in PAPER_TABLE1.items():
        got = per_net.get(net, {})
        torch_row, best = got.get("torch"), got.get("best")
        lines.append(f"| {p['label']} | paper (Intel Core i9, PyTorch 1.13) | - | {p['params_m']:.3f} M | "
                     f"{p['fps']:.1f} | - | {p['dice']:.4f} | {p['time5_s']:.1f} s |")
        time5 = t5.get((net, "fp32"))
        if torch_row:
            lines.append(f"| | ours, PyTorch eager FP32 ({here}) | `{Path(torch_row['file']).name}` | "
                         f"{_m(torch_row['params'])} | {_f(torch_row['fps'])} | 1.00x | "
                         f"{_f(torch_row.get('dice_test'), '.4f')} | {_f(time5, '.1f', ' s')} |")
        else:
            lines.append(f"| | ours, PyTorch eager FP32 ({here}) | not measured | | | | | {_f(time5, '.1f', ' s')} |")
        if best:
            ratio = f"**{got['ratio']:.2f}x**" if got.get("ratio") else "-"
            lines.append(f"| | ours, best deployed file ({here}) | {_what(best)} | {_m(best['params'])} | "
                         f"{_f(best['fps'])} | {ratio} | {_f(best.get('dice_test'), '.4f')} | "
                         f"(same training) |")
        else:
            lines.append("| | ours, best deployed file | no exported file measured | | | | | |")
        out.append({"network": net, "paper": p, "torch_fp32": torch_row, "best_deployed": best,
                    "fps_ratio_best_over_torch_fp32": got.get("ratio"), "time5_cpu_fp32_s": time5})
    return lines, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=100, help="timed inferences per row (the paper: 100)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="threads for every row [all usable cores]")
    ap.add_argument("--precisions", default="fp32,int8",
                    help="file precisions to measure [fp32,int8: what the zoo ships]")
    ap.add_argument("--zoo", default=None, help="folder of exported files with cards [the shipped zoo]")
    ap.add_argument("--out", default=str(HERE), help="folder receiving results/ and plots/ [benchmarks/]")
    args = ap.parse_args(argv)

    out = Path(args.out)
    threads = args.threads or usable_cores()
    cfg = BenchConfig(models=list(PAPER_TABLE1), backends=["torch", "onnxruntime", "openvino"],
                      precisions=args.precisions.split(","), threads=[threads], iterations=args.iterations,
                      warmup=args.warmup, zoo=args.zoo)
    load_before = _load()
    result = run_bench(cfg, progress=True)
    load_after = _load()
    if result["interrupted"]:
        sys.exit("interrupted: nothing written")
    command = " ".join(["python", "benchmarks/table1_side_by_side.py", *map(shlex.quote, argv or sys.argv[1:])])
    epoch_times = json.loads((HERE / "results" / "cpu_epoch_times.json").read_text())
    lines, rows = table(result, epoch_times)
    cores = result["hardware"]["cpu"]["logical_cores"] or threads
    share = result["hardware"].get("other_cpu_share")
    busy = share is None or share > BUSY_SHARE
    load_note = (f"Machine load: other processes used {_f(share, '.0%')} of the {cores} cores during the run "
                 f"(/proc/stat minus this process); load average (1 min) {load_before[0] if load_before else '?'} "
                 f"before, {load_after[0] if load_after else '?'} after (this run included). "
                 + ("The machine was BUSY: absolute FPS are pessimistic and noisy; the ratios, measured in the "
                    "same run, are what we claim." if busy else "The machine was quiet."))
    ratios = [f"{r['network']}: {r['fps_ratio_best_over_torch_fp32']:.2f}x "
              f"({Path(r['best_deployed']['file']).name}, {r['best_deployed']['backend']})"
              for r in rows if r["fps_ratio_best_over_torch_fp32"]]
    md = [
        "# Table 1 side by side: the paper vs ours, on this machine",
        "",
        f"Regenerate: `{command}`",
        "",
        *lines,
        "",
        f"FPS: model only, {cfg.iterations} consecutive single 256x256 inferences after {cfg.warmup} warm-up calls "
        f"(the paper's method), every row at {threads} threads in one run. Dice: test-split Dice@256 from each "
        "file's card (68 DSB2018 test images of our canonical split; the paper's split is unstated). The best "
        f"deployed file is the fastest exported file whose Dice is within {DICE_TOLERANCE} of the checkpoint's. "
        "Time/5 epochs: training on this CPU in FP32 (results/cpu_epoch_times.json); the paper's on an i9.",
        "",
        "**FPS ratio, best deployed file / PyTorch eager FP32, measured in this run:** " + ("; ".join(ratios) or "-"),
        "",
        load_note,
        "",
        "## Every file measured",
        "",
        "```",
        format_table(result["rows"]),
        "```",
        "",
        "## Hardware",
        "",
        "```",
        format_report(result["hardware"]),
        "```",
        "",
        "Raw data: [table1_side_by_side.json](table1_side_by_side.json). Plot: "
        "[../plots/fps_vs_dice.png](../plots/fps_vs_dice.png).",
    ]
    results = out / "results"
    atomic_write_text(results / "table1_side_by_side.md", "\n".join(md) + "\n")
    atomic_write_json(results / "table1_side_by_side.json", {
        "command": command, "table": rows, "load_average_before": load_before, "load_average_after": load_after,
        "busy": busy, **result})
    if ok_rows(result["rows"]):
        cpu = result["hardware"]["cpu"]
        plot_fps_vs_dice(result["rows"], out / "plots" / "fps_vs_dice.png",
                         title=f"{cpu.get('model')} ({cpu.get('architecture')}), {threads} threads"
                               f"{' (busy machine)' if busy else ''}; Dice: test split, from the cards")
    print("\n".join(md))


if __name__ == "__main__":
    main()
