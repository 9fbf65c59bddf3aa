"""``edgeseg bench``: which model, in which format, is fast and accurate enough on this machine (torch-free)."""

from __future__ import annotations

import functools
import json
import sys

import click

from .common import command_line, user_errors


def _items(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _thread_counts(text: str | None) -> list[int] | None:
    try:
        return [int(t) for t in _items(text)] if text else None
    except ValueError:
        raise click.BadParameter(f"{text!r}: give whole numbers, e.g. 1,2,4", param_hint="--threads") from None


@click.command("bench")
@click.option("--models", default="half_unet,mobilenetv2_unet,fast_scnn", show_default=True,
              help="Comma-separated: zoo networks (every exported file of each), zoo variants or model files.")
@click.option("--backends", default=None,
              help="Comma-separated: onnxruntime, openvino, torch [every installed one; torch only where installed].")
@click.option("--precisions", default="fp32,int8", show_default=True,
              help="Comma-separated file precisions: fp32, fp16, int8 (torch: the fp32 checkpoint).")
@click.option("--threads", default=None, help="Comma-separated thread counts, e.g. 1,2,4 [all cores].")
@click.option("--iterations", default=100, show_default=True,
              help="Timed consecutive single inferences per row (the paper's method: 100).")
@click.option("--warmup", default=10, show_default=True, help="Untimed inferences before them.")
@click.option("--e2e", is_flag=True,
              help="Also end-to-end FPS through the `edgeseg run` pipeline (capture to overlay), per stage.")
@click.option("--source", "e2e_source", default=None, help="Source for --e2e [the shipped sample clip].")
@click.option("--accuracy", is_flag=True,
              help="Dice of each file on the 8-image DSB2018 sample in the package (every INT8 flavour), and each "
              "INT8 file's drop against FP32 measured on this CPU beside its card's.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="--accuracy on this DSB-layout folder instead (its test split when canonical).")
@click.option("--choose", is_flag=True,
              help="Show which file `edgeseg run --model NETWORK` picks on this CPU for each network of --models, "
              "and the timings and accuracy behind it (calibrated once, then cached).")
@click.option("--recalibrate", is_flag=True, help="With --choose: measure again instead of using the cached choice.")
@click.option("--zoo", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of exported files with their cards [the shipped zoo].")
@click.option("--json", "json_out", default=None, metavar="OUT",
              help="Write hardware report + rows as JSON ('-': print it, the table goes to stderr).")
@click.option("--csv", "csv_out", default=None, metavar="OUT", help="Write the rows as CSV.")
@click.option("--plot", "plot_out", default=None, metavar="OUT.png",
              help="Plot FPS (log axis) vs Dice, the paper's results marked (needs matplotlib).")
@user_errors
def bench_cmd(models, backends, precisions, threads, json_out, csv_out, plot_out, choose, recalibrate,
              **options) -> None:
    """Measure which model, in which format, is fast and accurate enough on this machine.

    Per model x backend x precision x threads: FPS and latency mean/p50/p90/p99 by the paper's method
    (consecutive single 256x256 inferences after a warm-up, model only), the precision the backend really
    executed, params, GFLOPs and file size; a hardware report; a one-line recommendation (the fastest file
    whose Dice is within 0.01 of the best). A combination that cannot run becomes a row with its reason;
    Ctrl-C prints the rows measured so far. --choose shows the file `edgeseg run --model NETWORK` runs here.

    \b
    Examples:
      edgeseg bench --json bench.json
      edgeseg bench --models fast_scnn --backends onnxruntime,openvino --threads 1,2,4 --accuracy
      edgeseg bench --e2e --csv bench.csv --plot fps_vs_dice.png
      edgeseg bench --models fast_scnn,half_unet --choose --recalibrate
    """
    from edgeseg.device.bench import BenchConfig, report_text, require_matplotlib, run_bench, write_outputs

    if choose or recalibrate:
        from edgeseg.device.choose import choose_report

        backend = (_items(backends) or ["auto"])[0]
        click.echo(choose_report(_items(models) or [], (_thread_counts(threads) or [None])[0], backend, recalibrate))
        return
    if plot_out:
        require_matplotlib()  # before minutes of measuring
    cfg = BenchConfig(models=_items(models) or [], backends=_items(backends), precisions=_items(precisions) or [],
                      threads=_thread_counts(threads), **options)
    result = run_bench(cfg, progress=True)
    result["command"] = command_line()
    write_outputs(result, json_out, csv_out)
    if json_out == "-":
        click.echo(json.dumps(result, indent=2))
    say = functools.partial(click.echo, err=json_out == "-")
    say(report_text(result, plot_out))
    if result["interrupted"]:
        saved = f", written to {json_out}" if json_out and json_out != "-" else ""
        say(f"interrupted: {len(result['rows'])} row(s) measured{saved}")
        sys.exit(130)
