"""The `edgeseg` command line: one verb a job. Heavy modules are imported inside each command."""

from __future__ import annotations

import functools
import json
import shlex
import sys
import traceback
from pathlib import Path

import click

from .errors import EdgesegError

SAMPLE_DIR = Path(__file__).resolve().parent / "samples" / "dsb2018_sample"


def user_errors(fn):
    """Turn user-facing failures into one line on stderr and a non-zero exit (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except EdgesegError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except ModuleNotFoundError as exc:
            if debug:
                traceback.print_exc()
            extra = {"torch": "train", "albumentations": "train", "onnx": "export", "nncf": "export"}
            tier = extra.get((exc.name or "").split(".")[0])
            fix = f"pip install 'edgeseg[{tier}]'" if tier else f"pip install {exc.name}"
            click.echo(f"error: this command needs {exc.name}, which is not installed: {fix}", err=True)
            sys.exit(3)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def _command_line() -> str:
    return " ".join(["edgeseg", *map(shlex.quote, sys.argv[1:])])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="edgeseg")
def main(debug: bool) -> None:
    """edgeseg: live nuclei segmentation on the CPU of a microscope's Raspberry Pi or mini-PC.

    \b
    Examples:
      edgeseg models
      edgeseg train fast_scnn --data ../shared/data/dsb2018/stage1_train --out runs/fast_scnn
      edgeseg eval runs/fast_scnn --data ../shared/data/dsb2018/stage1_train --split test --json
    """


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@user_errors
def models(as_json: bool) -> None:
    """List the network architectures and the models shipped in the zoo.

    \b
    Example:
      edgeseg models --json
    """
    from .zoo import zoo_entries

    rows = []
    try:
        from .train.models import MODEL_INFO, build_model, count_params, gflops, list_models
    except ModuleNotFoundError:  # torch-free install: the zoo cards still say everything
        list_models = None
    if list_models is not None:
        for name in list_models():
            m = build_model(name)
            rows.append(
                {
                    "name": name,
                    "kind": "architecture",
                    "arch": name,
                    "params": count_params(m),
                    "gflops": round(gflops(m, 256), 4),
                    "description": MODEL_INFO.get(name, ""),
                }
            )
    for ref in zoo_entries():
        c = ref.card
        rows.append(
            {
                "name": ref.name,
                "kind": "zoo",
                "arch": c.get("arch"),
                "format": ref.format,
                "precision": c.get("precision"),
                "path": str(ref.path),
                "params": c.get("params"),
                "gflops": c.get("gflops"),
                "dice": c.get("metrics", {}).get("test", {}).get("dice_256"),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<28}{'kind':<14}{'format':<10}{'params':>12}{'GFLOPs':>9}  test Dice")
    for r in rows:
        dice = f"{r['dice']:.4f}" if r.get("dice") is not None else ""
        params = f"{r['params'] / 1e6:.3f} M" if r.get("params") else ""
        gf = f"{r['gflops']:.3f}" if r.get("gflops") is not None else ""
        click.echo(
            f"{r['name']:<28}{r['kind']:<14}{r.get('format', '') or '':<10}{params:>12}{gf:>9}  {dice}"
        )


@main.command()
@click.argument("model")
@click.option(
    "--data",
    required=True,
    multiple=True,
    help="Dataset folder (Kaggle or images/+masks/ layout); repeat to mix sources; "
    "PATH@F cuts large images into crops at scale F instead of resizing them.",
)
@click.option("--epochs", default=50, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option("--out", default=None, type=click.Path(), help="Run folder [runs/MODEL].")
@click.option("--limit", type=int, default=None, help="Train on the first N training images (smoke tests).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="Torch CPU threads [all cores].")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="bf16 = bfloat16 autocast + channels-last (fast on CPUs with AMX/AVX512-BF16).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--encoder-weights",
    default="auto",
    show_default=True,
    help="mobilenetv2_unet encoder: imagenet, a state-dict PATH, none, or auto (imagenet if found offline).",
)
@click.option("--augment", type=click.Choice(["paper", "ours", "none"]), default="paper", show_default=True)
@click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True)
@click.option("--warmup-epochs", default=0, show_default=True)
@click.option("--instance/--binary", default=False, help="Add the nucleus-boundary output (instance head).")
@click.option(
    "--mask-fixes", type=click.Path(), default=None, help="Folder of corrected masks (stage1_train_fixes)."
)
@click.option("--workers", default=0, show_default=True, help="Data-loading worker processes.")
@click.option(
    "--recipe", default="paper", show_default=True, help="Label of the recipe, recorded in the card."
)
@user_errors
def train(
    model,
    data,
    epochs,
    batch_size,
    lr,
    weight_decay,
    out,
    limit,
    resume,
    seed,
    threads,
    precision,
    device,
    encoder_weights,
    augment,
    schedule,
    warmup_epochs,
    instance,
    mask_fixes,
    workers,
    recipe,
) -> None:
    """Train a network (BCE + Dice, Adam) and keep the best-validation checkpoint.

    \b
    Example:
      edgeseg train fast_scnn --data ../shared/data/dsb2018/stage1_train --epochs 2 --limit 64 --out runs/smoke
    """
    from .train.models import list_models
    from .train.trainer import TrainConfig, Trainer

    if model not in list_models():
        raise EdgesegError(f"unknown model {model!r}", f"choose one of {', '.join(list_models())}")
    weights = _encoder_weights(model, encoder_weights)
    cfg = TrainConfig(
        model=model,
        data=",".join(data),
        out=str(out or Path("runs") / model),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        limit=limit,
        seed=seed,
        threads=threads,
        precision=precision,
        device=device,
        encoder_weights=weights,
        augment=augment,
        schedule=schedule,
        warmup_epochs=warmup_epochs,
        out_channels=2 if instance else 1,
        mask_fixes=mask_fixes,
        num_workers=workers,
        recipe=recipe,
        command=_command_line(),
    )
    summary = Trainer(cfg).fit(resume=resume)
    click.echo(json.dumps({"run": cfg.out, **summary}))


def _encoder_weights(model: str, spec: str) -> str | None:
    """Resolve --encoder-weights: 'auto' takes ImageNet weights when they are available offline."""
    if model != "mobilenetv2_unet" or spec in ("none", None):
        return None
    if spec != "auto":
        if spec != "imagenet" and not Path(spec).exists():
            raise EdgesegError(
                f"encoder weights file {spec} does not exist", "pass an existing state-dict file"
            )
        return spec
    from .train.models import EncoderWeightsError, build_model

    try:
        build_model(model, encoder_weights="imagenet")
        return "imagenet"
    except EncoderWeightsError:
        click.echo(
            "warning: no offline ImageNet weights found; the encoder starts from random weights "
            "(pass --encoder-weights PATH to use a state-dict file)",
            err=True,
        )
        return None


@main.command("eval")
@click.argument("model")
@click.option(
    "--data", required=True, type=click.Path(), help="Dataset folder (Kaggle or images/+masks/ layout)."
)
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test", "all"]),
    default=None,
    help="Part of a canonical dataset [test; all on any other folder].",
)
@click.option(
    "--mask-fixes", type=click.Path(), default=None, help="Folder of corrected masks (stage1_train_fixes)."
)
@click.option("--threshold", type=float, default=None, help="Override the card's foreground threshold.")
@click.option("--tta", is_flag=True, help="Average over horizontal and vertical flips.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--per-image", is_flag=True, help="With --json: include one row per image.")
@user_errors
def eval_cmd(model, data, split, mask_fixes, threshold, tta, as_json, per_image) -> None:
    """Score a model on a dataset: Dice (256x256 and original size), IoU, DSB mAP, F1@0.5, count MAE.

    \b
    Examples:
      edgeseg eval fast_scnn --data ../shared/data/dsb2018/stage1_train --split test --json
      edgeseg eval runs/fast_scnn --data my_images_and_masks/ --json
    """
    from .data import find_items, load_sample
    from .evaluate import evaluate
    from .postprocess import PostprocessConfig
    from .split import select_items
    from .zoo import resolve_model

    ref = resolve_model(model)
    card = ref.card
    items, info = select_items(find_items(data, mask_fixes), split, where=str(data))
    post = PostprocessConfig.from_dict(card.get("postprocess", {"threshold": card.get("threshold", 0.5)}))
    if threshold is not None:
        post.threshold = threshold
    predict = _predictor(ref, tta)
    result = evaluate(
        predict,
        (load_sample(it) for it in items),
        size=int(card["input_size"][0]),
        normalisation=card.get("normalisation"),
        post=post,
        progress=not as_json,
        total=len(items),
    )
    out = {
        "model": str(model),
        "file": str(ref.path),
        "data": str(data),
        **info,
        **result["summary"],
        "threshold": post.threshold,
        "postprocess": post.to_dict(),
        "per_type": result["per_type"],
    }
    if per_image:
        out["images"] = result["images"]
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    s = result["summary"]
    click.echo(f"{ref.name} on {data} [{info['split']}, {s['n_images']} images]")
    click.echo(
        f"  Dice@256 {s['dice_256']:.4f}  Dice {s['dice']:.4f}  IoU {s['iou']:.4f}  mAP {s['map']:.4f}  "
        f"F1@0.5 {s['f1_50']:.4f}  count MAE {s['count_mae']:.2f}"
    )
    for t, st in result["per_type"].items():
        click.echo(f"  {t:<13} n={st['n_images']:<4} Dice@256 {st['dice_256']:.4f}  F1@0.5 {st['f1_50']:.4f}")


def _predictor(ref, tta: bool):
    if ref.format == "torch":
        from .train.predict import load_checkpoint, torch_predictor

        return torch_predictor(load_checkpoint(ref.path, ref.card), tta=tta)
    raise EdgesegError(
        f"{ref.path.name} is a {ref.format} file", "this edgeseg version evaluates .pt checkpoints"
    )


@main.command()
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

    from .train.trainer import TrainConfig, Trainer

    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(
        model="fast_scnn",
        data=str(SAMPLE_DIR),
        out=str(out),
        epochs=epochs,
        batch_size=4,
        command=_command_line(),
    )
    Trainer(cfg).fit()
    ctx = click.get_current_context()
    for model, title in ((out, f"after {epochs} epochs on the sample"), ("fast_scnn", "the shipped zoo model")):
        click.echo(f"\n== Fast-SCNN, {title}:")
        ctx.invoke(eval_cmd, model=str(model), data=str(SAMPLE_DIR), split="all", mask_fixes=None, threshold=None,
                   tta=False, as_json=False, per_image=False)


if __name__ == "__main__":
    main()
