"""``edgeseg eval``: score a model on a labelled folder."""

from __future__ import annotations

import json

import click

from .common import json_flag, model_options, user_errors


@click.command("eval")
@click.argument("model")
@click.option("--data", required=True, type=click.Path(), help="Dataset folder (Kaggle or images/+masks/ layout).")
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]), default=None,
              help="Part of a canonical dataset [test; all on any other folder].")
@click.option("--mask-fixes", type=click.Path(), default=None, help="Folder of corrected masks (stage1_train_fixes).")
@model_options(backends=("auto", "onnxruntime", "openvino", "torch"))
@click.option("--tta", is_flag=True, help="Average over horizontal and vertical flips (PyTorch checkpoints).")
@json_flag()
@click.option("--per-image", is_flag=True, help="With --json: include one row per image.")
@user_errors
def eval_cmd(model, data, split, mask_fixes, threshold, tta, tile, diameter, backend, as_json, per_image) -> None:
    """Score a model on a dataset: Dice (256x256 and original size), IoU, DSB mAP, F1@0.5, count MAE.

    Instance metrics use the model's own post-processing (its card); the same metrics with plain
    connected components are reported beside them under "cc".

    \b
    Examples:
      edgeseg eval fast_scnn --data ../shared/data/dsb2018/stage1_train --split test --json
      edgeseg eval mobilenetv2_unet --data ../shared/data/monuseg_train --split test   # large tiles: tiled
      edgeseg eval runs/fast_scnn --data my_images_and_masks/ --json
    """
    from edgeseg.evaluate import evaluate_folder
    from edgeseg.segmenter import Segmenter

    with Segmenter.load(model, backend=backend, threshold=threshold, tile=tile, diameter=diameter, tta=tta) as seg:
        result = evaluate_folder(seg, data, split, mask_fixes=mask_fixes, progress=not as_json, compare_cc=True)
        report = {"model": str(model), "file": seg.info.get("path"), **result["info"], **result["summary"],
                  "threshold": seg.post.threshold, "postprocess": seg.post.to_dict(), "per_type": result["per_type"],
                  "scale_measured_by": seg.info.get("scale_measured_by", "itself")}
    if per_image:
        report["images"] = result["images"]
    click.echo(json.dumps(report, indent=2) if as_json else eval_text(seg.name, report))


def eval_text(name: str, r: dict) -> str:
    """The human form of an eval report."""
    lines = [f"{name} on {r['data']} [{r['split']}, {r['n_images']} images]",
             f"  Dice@256 {r['dice_256']:.4f}  Dice {r['dice']:.4f}  IoU {r['iou']:.4f}  mAP {r['map']:.4f}  "
             f"F1@0.5 {r['f1_50']:.4f}  count MAE {r['count_mae']:.2f}"]
    if "cc" in r:
        c = r["cc"]
        lines.append(f"  with plain connected components: mAP {c['map']:.4f}  F1@0.5 {c['f1_50']:.4f}  "
                     f"count MAE {c['count_mae']:.2f}")
    if r.get("n_tiled"):
        lines.append(f"  {r['n_tiled']} large image(s) tiled at the training scale (--tile never: resize all)")
    if r.get("scale_measured_by", "itself") != "itself":
        lines.append(f"  nuclei measured for the scale by {r['scale_measured_by']} (the model card's measured_by)")
    for t, st in r["per_type"].items():
        lines.append(f"  {t:<13} n={st['n_images']:<4} Dice@256 {st['dice_256']:.4f}  F1@0.5 {st['f1_50']:.4f}")
    return "\n".join(lines)
