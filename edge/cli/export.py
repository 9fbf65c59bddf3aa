"""``edgeseg export``: a checkpoint to a checked ONNX / OpenVINO file, needs ``edgeseg[export]``."""

from __future__ import annotations

import json

import click

from .common import command_line, json_flag, user_errors, warn


@click.command("export")
@click.argument("model")
@click.option("--format", "fmt", default="onnx", show_default=True, help="onnx or openvino.")
@click.option("--precision", default="fp32", show_default=True, help="fp32, fp16 (openvino) or int8.")
@click.option("--calib-data", type=click.Path(), default=None,
              help="INT8 calibration folder: its training split when canonical (DSB2018), else all its images.")
@click.option("--calib-size", default=100, show_default=True, help="Calibration images (seeded, stratified).")
@click.option("--max-dice-drop", default=0.005, show_default=True,
              help="INT8 accuracy guard: largest validation Dice drop allowed against FP32.")
@click.option("--target", default="x86", show_default=True,
              help="INT8 ONNX target: x86 (VNNI), x86-no-vnni (7-bit weights) or arm (signed int8).")
@click.option("--guard-data", type=click.Path(), default=None,
              help="Labelled validation folder for the guard [the --calib-data folder's validation split].")
@click.option("--test-data", type=click.Path(), default=None,
              help="Also score the exported file on this folder's test split and record it in the card.")
@click.option("--strategy", "strategies", multiple=True,
              help="Guard ladder to climb (repeatable) [all, in order: see edgeseg.export.quantize].")
@click.option("--name", default=None, help="Variant name [MODEL-PRECISION, -ov for OpenVINO].")
@click.option("--seed", default=0, show_default=True, help="Calibration sample seed.")
@click.option("--out", "out_dir", default="exported", show_default=True, type=click.Path(), help="Output folder.")
@json_flag("Print the export report as JSON.")
@user_errors
def export_cmd(as_json, strategies, **options) -> None:
    """Export a checkpoint to ONNX or OpenVINO (fp32/fp16/int8), checked against PyTorch, INT8 guarded.

    \b
    Examples:
      edgeseg export fast_scnn --format onnx --out exported/
      edgeseg export fast_scnn --format onnx --precision int8 --calib-data ../shared/data/dsb2018/stage1_train
      edgeseg export mobilenetv2_unet --format openvino --precision int8 --calib-data DIR --max-dice-drop 0.005
    """
    import contextlib
    import sys

    from edgeseg.export.pipeline import ExportSpec, export_model

    spec = ExportSpec(**options, strategies=list(strategies) or None, command=command_line())
    spec.check()  # before torch is imported: bad options fail fast
    with contextlib.redirect_stdout(sys.stderr):  # library progress bars (NNCF) must not mix into --json
        report = export_model(spec, progress=None if as_json else warn)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    g = report.get("guard") or {}
    extra = f", guard: {g['strategy']} (validation Dice drop {g['drop']:+.4f})" if g.get("strategy") else ""
    click.echo(f"wrote {report['path']} ({report['size_bytes'] / 1e6:.2f} MB, executes as "
               f"{report['executed_precision']}{extra})")
