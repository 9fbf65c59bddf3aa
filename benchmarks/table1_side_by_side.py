"""The paper's Table 1 side by side with ours, measured on the machine this runs on.

    python benchmarks/table1_side_by_side.py                 # all cores, 100 iterations (the paper's method)
    python benchmarks/table1_side_by_side.py --iterations 20 --zoo /tmp/myzoo --out /tmp/t1   # a quick look

For each network of the paper, and for the runtime's default network (``edgeseg run``'s model, not in the paper:
no paper row), three rows:

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
import shlex
import sys
from pathlib import Path

from common import HERE, RESULTS, fmt, load_average, machine_line, markdown_table, write_results

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
from edgeseg.zoo import DEFAULT_RUN_NETWORK


def _m(params) -> str:
    return f"{params / 1e6:.3f} M" if params else "-"


def _what(r: dict) -> str:
    ex = r.get("executed_precision")
    prec = r["precision"] if ex in (None, r["precision"]) else f"{r['precision']}, runs {ex}"
    return f"`{Path(r['file']).name}` ({r['backend']}, {prec})"


def networks() -> list[str]:
    """The paper's three networks, then the runtime's default network where it is another one."""
    return list(dict.fromkeys([*PAPER_TABLE1, DEFAULT_RUN_NETWORK]))


def table(result: dict, epoch_times: dict) -> tuple[str, list[dict]]:
    """The side-by-side Markdown table and its rows (one dict a network)."""
    per_net = best_per_network(result["rows"])
    t5 = {(r["model"], r["precision"]): r["seconds_per_5_epochs"] for r in epoch_times.get("rows", [])}
    here = machine_line(result["hardware"]["cpu"].get("model"), result["config"]["threads"][0])
    cells, out = [], []
    for net in networks():
        got = per_net.get(net, {})
        torch_row, best = got.get("torch"), got.get("best")
        p = PAPER_TABLE1.get(net)
        if p:
            cells.append([p["label"], "paper (Intel Core i9, PyTorch 1.13)", "-", f"{p['params_m']:.3f} M",
                          f"{p['fps']:.1f}", "-", f"{p['dice']:.4f}", f"{p['time5_s']:.1f} s"])
        else:
            cells.append([f"{net} (ours: `edgeseg run`'s default)", "not in the paper", "-", "", "", "", "", ""])
        time5 = t5.get((net, "fp32"))
        if torch_row:
            cells.append(["", f"ours, PyTorch eager FP32 ({here})", f"`{Path(torch_row['file']).name}`",
                          _m(torch_row["params"]), fmt(torch_row["fps"], ".1f"), "1.00x",
                          fmt(torch_row.get("dice_test"), ".4f"), fmt(time5, ".1f", " s")])
        else:
            cells.append(["", f"ours, PyTorch eager FP32 ({here})", "not measured", "", "", "", "",
                          fmt(time5, ".1f", " s")])
        if best:
            ratio = f"**{got['ratio']:.2f}x**" if got.get("ratio") else "-"
            cells.append(["", f"ours, best deployed file ({here})", _what(best), _m(best["params"]),
                          fmt(best["fps"], ".1f"), ratio, fmt(best.get("dice_test"), ".4f"), "(same training)"])
        else:
            cells.append(["", "ours, best deployed file", "no exported file measured", "", "", "", "", ""])
        out.append({"network": net, "paper": p, "torch_fp32": torch_row, "best_deployed": best,
                    "fps_ratio_best_over_torch_fp32": got.get("ratio"), "time5_cpu_fp32_s": time5})
    header = ["Network", "Source", "Model / file", "Params", "FPS", "vs PyTorch FP32", "Dice", "Time/5 epochs"]
    return markdown_table(header, cells), out


def report(result: dict, epoch_times: dict, command: str, load_before, load_after) -> tuple[str, dict]:
    """The Markdown page and the JSON of one bench run."""
    cfg = result["config"]
    threads = cfg["threads"][0]
    md_table, rows = table(result, epoch_times)
    cores = result["hardware"]["cpu"]["logical_cores"] or threads
    share = result["hardware"].get("other_cpu_share")
    busy = share is None or share > BUSY_SHARE
    load_note = (f"Machine load: other processes used {fmt(share, '.0%')} of the {cores} cores during the run "
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
        md_table,
        "",
        f"FPS: model only, {cfg['iterations']} consecutive single 256x256 inferences after {cfg['warmup']} warm-up "
        f"calls (the paper's method), every row at {threads} threads in one run. Dice: test-split Dice@256 from each "
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
    data = {"command": command, "table": rows, "load_average_before": load_before, "load_average_after": load_after,
            "busy": busy, **result}
    return "\n".join(md) + "\n", data


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
    cfg = BenchConfig(models=networks(), backends=["torch", "onnxruntime", "openvino"],
                      precisions=args.precisions.split(","), threads=[threads], iterations=args.iterations,
                      warmup=args.warmup, zoo=args.zoo)
    load_before = load_average()
    result = run_bench(cfg, progress=True)
    load_after = load_average()
    if result["interrupted"]:
        sys.exit("interrupted: nothing written")
    command = " ".join(["python", "benchmarks/table1_side_by_side.py", *map(shlex.quote, argv or sys.argv[1:])])
    epoch_times = json.loads((RESULTS / "cpu_epoch_times.json").read_text())
    md, data = report(result, epoch_times, command, load_before, load_after)
    write_results(out / "results" / "table1_side_by_side", data, md)
    if ok_rows(result["rows"]):
        cpu = result["hardware"]["cpu"]
        plot_fps_vs_dice(result["rows"], out / "plots" / "fps_vs_dice.png",
                         title=f"{cpu.get('model')} ({cpu.get('architecture')}), {threads} threads"
                               f"{' (busy machine)' if data['busy'] else ''}; Dice: test split, from the cards")


if __name__ == "__main__":
    main()
