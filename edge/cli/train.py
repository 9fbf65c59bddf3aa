"""``edgeseg train``, ``distill`` and ``demo``: training on the CPU (or a GPU), needs ``edgeseg[train]``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import command_line, training_options, user_errors, warn


def _train_config(model: str, default_out: Path, encoder_weights: str | None, *, data, out, instance, workers,
                  **options):
    """The TrainConfig of a `train` or `distill` command line (the options of ``training_options``)."""
    from edgeseg.train.trainer import TrainConfig

    return TrainConfig(model=model, data=",".join(data), out=str(out or default_out), encoder_weights=encoder_weights,
                       out_channels=2 if instance else 1, num_workers=workers, command=command_line(), **options)


@click.command()
@click.argument("model")
@training_options(out_help="Run folder [runs/MODEL].", augment="paper", schedule="constant", warmup_epochs=0,
                  instance=False, instance_help="Add the nucleus-boundary output (instance head).", recipe="paper")
@click.option("--encoder-weights", default="auto", show_default=True,
              help="mobilenetv2_unet encoder: imagenet, a state-dict PATH, none, or auto (imagenet if found offline).")
@user_errors
def train(model, resume, encoder_weights, **options) -> None:
    """Train a network (BCE + Dice, Adam) and keep the best-validation checkpoint.

    \b
    Example:
      edgeseg train fast_scnn --data ../shared/data/dsb2018/stage1_train --epochs 2 --limit 64 --out runs/smoke
    """
    from edgeseg.train.models import check_model_name, resolve_encoder_weights
    from edgeseg.train.trainer import Trainer

    weights = resolve_encoder_weights(check_model_name(model), encoder_weights, warn=warn)
    cfg = _train_config(model, Path("runs") / model, weights, **options)
    summary = Trainer(cfg).fit(resume=resume)
    click.echo(json.dumps({"run": cfg.out, **summary}))


@click.command()
@click.argument("student")
@click.option("--teacher", default="mobilenetv2_unet", show_default=True,
              help="Teacher: a zoo name, a run folder or a .pt checkpoint with its card.")
@click.option("--alpha", default=1.0, show_default=True, help="Weight of the distillation term (0: no teacher).")
@click.option("--temperature", default=2.0, show_default=True, help="Temperature of the soft probabilities.")
@training_options(out_help="Run folder [runs/distill_STUDENT].", augment="light", schedule="cosine", warmup_epochs=2,
                  instance=True, instance_help="Give the student the nucleus-boundary output (instance head).",
                  recipe="distill")
@user_errors
def distill(student, teacher, alpha, temperature, resume, **options) -> None:
    """Train a small network from a teacher's soft predictions (knowledge distillation) plus the ground truth.

    \b
    The loss is BCE + Dice on the ground truth + ALPHA * T^2 * pixel-wise KL between the teacher's and the
    student's temperature-softened probabilities; the teacher runs on the fly on every augmented batch.
    Example:
      edgeseg distill fast_scnn --teacher mobilenetv2_unet --data ../shared/data/dsb2018/stage1_train \\
          --data ../shared/data/monuseg_train@0.6 --epochs 100 --out runs/distill_fast_scnn
    """
    from edgeseg.train.distill import distill as run_distill
    from edgeseg.train.models import check_model_name

    cfg = _train_config(check_model_name(student), Path("runs") / f"distill_{student}", None, **options)
    summary = run_distill(cfg, teacher, alpha=alpha, temperature=temperature, resume=resume)
    click.echo(json.dumps({"run": cfg.out, **summary}))


@click.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path())
@click.option("--epochs", default=3, show_default=True)
@user_errors
def demo(out, epochs) -> None:
    """Train Fast-SCNN briefly on the bundled sample, then evaluate it beside the shipped zoo model.

    \b
    Example:
      edgeseg demo --epochs 3
    """
    import shutil

    from edgeseg.evaluate import evaluate_folder
    from edgeseg.segmenter import Segmenter
    from edgeseg.train.trainer import TrainConfig, Trainer
    from edgeseg.zoo import SAMPLE_DIR

    from .evaluate import eval_text

    shutil.rmtree(out, ignore_errors=True)
    Trainer(TrainConfig(model="fast_scnn", data=str(SAMPLE_DIR), out=str(out), epochs=epochs, batch_size=4,
                        command=command_line())).fit()
    for model, title in ((out, f"after {epochs} epochs on the sample"), ("fast_scnn", "the shipped zoo model")):
        click.echo(f"\n== Fast-SCNN, {title}:")
        with Segmenter.load(str(model)) as seg:
            result = evaluate_folder(seg, SAMPLE_DIR, "all", progress=True, compare_cc=True)
        click.echo(eval_text(seg.name, {**result["info"], **result["summary"], "per_type": result["per_type"]}))
