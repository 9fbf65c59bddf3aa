"""What every verb shares: one-line errors, the command line as typed, and the option groups declared once."""

from __future__ import annotations

import functools
import shlex
import sys
import traceback
from dataclasses import fields

import click

from edgeseg.errors import EdgesegError

EXTRA_FOR_MODULE = {"torch": "train", "albumentations": "train", "onnx": "export", "nncf": "export"}


def user_errors(fn):
    """Turn user-facing failures into one line on stderr and a non-zero exit (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except EdgesegError as exc:
            _fail(debug, str(exc), exc.exit_code)
        except ModuleNotFoundError as exc:
            tier = EXTRA_FOR_MODULE.get((exc.name or "").split(".")[0])
            fix = f"pip install 'edgeseg[{tier}]'" if tier else f"pip install {exc.name}"
            _fail(debug, f"this command needs {exc.name}, which is not installed: {fix}", 3)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def _fail(debug: bool, message: str, code: int) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def command_line() -> str:
    """The command as the user typed it (recorded in cards and reports)."""
    return " ".join(["edgeseg", *map(shlex.quote, sys.argv[1:])])


def warn(message: str) -> None:
    click.echo(message, err=True)


def stack(*options):
    """One decorator applying ``options`` as if written top to bottom above the function."""

    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def json_flag(help: str = "Print one JSON object."):
    return click.option("--json", "as_json", is_flag=True, help=help)


TILE_HELP = "Scale policy: auto resizes frames near the input size and tiles large ones at the training scale."


def model_options(*, backends: tuple[str, ...] = ("auto", "onnxruntime", "openvino")):
    """How a MODEL is run, for eval: runtime, scale policy, threshold, nucleus diameter."""
    return stack(
        click.option("--backend", type=click.Choice(backends), default="auto", show_default=True,
                     help="Runtime [the one native to the file: .onnx ONNX Runtime, .xml OpenVINO, .pt torch]."),
        click.option("--tile", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
                     help=TILE_HELP),
        click.option("--threshold", type=click.FloatRange(0, 1), default=None,
                     help="Override the card's foreground threshold."),
        click.option("--diameter", type=click.FloatRange(min=0, min_open=True), default=None, metavar="PX",
                     help="Nucleus diameter in image pixels: rescale to the training scale instead of estimating it."),
    )


def run_options():
    """The options of ``edgeseg run``, generated from :class:`edgeseg.device.options.RunOptions` (declared there
    once, with their defaults and help)."""
    from edgeseg.device.options import RunOptions

    options = []
    for f in fields(RunOptions):
        meta = f.metadata
        flags = meta["flags"] or (f"--{f.name.replace('_', '-')}",)
        kw = {"default": f.default, "help": meta["help"]}
        if meta["choices"]:
            kw.update(type=click.Choice(meta["choices"]), show_default=True)
        elif meta["path"]:
            kw["type"] = click.Path(dir_okay=meta["path"] == "dir", file_okay=meta["path"] == "file")
        elif meta["type"] is not None:
            kw["type"] = meta["type"]
        if flags[0].count("/") == 0 and isinstance(f.default, bool):
            kw["is_flag"] = True
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        options.append(click.option(*flags, f.name, **kw))
    return stack(*options)


def training_options(*, out_help: str, augment: str, schedule: str, warmup_epochs: int, instance: bool,
                     instance_help: str, recipe: str):
    """The options `train` and `distill` share, in one place; each command gives its own defaults."""
    return stack(
        click.option("--data", required=True, multiple=True,
                     help="Dataset folder (Kaggle or images/+masks/ layout); repeat to mix sources; "
                     "PATH@F cuts large images into crops at scale F instead of resizing them."),
        click.option("--epochs", default=50, show_default=True),
        click.option("--batch-size", default=8, show_default=True),
        click.option("--lr", default=1e-3, show_default=True),
        click.option("--weight-decay", default=1e-4, show_default=True),
        click.option("--out", default=None, type=click.Path(), help=out_help),
        click.option("--limit", type=int, default=None, help="Train on the first N training images (smoke tests)."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint."),
        click.option("--seed", default=0, show_default=True),
        click.option("--threads", type=int, default=None, help="Torch CPU threads [all cores]."),
        click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
                     help="bf16 = bfloat16 autocast + channels-last (fast on CPUs with AMX/AVX512-BF16)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--augment", type=click.Choice(["paper", "light", "ours", "none"]), default=augment,
                     show_default=True),
        click.option("--schedule", type=click.Choice(["constant", "cosine"]), default=schedule, show_default=True),
        click.option("--warmup-epochs", default=warmup_epochs, show_default=True),
        click.option("--instance/--binary", default=instance, show_default=True, help=instance_help),
        click.option("--mask-fixes", type=click.Path(), default=None,
                     help="Folder of corrected masks (stage1_train_fixes)."),
        click.option("--workers", default=0, show_default=True, help="Data-loading worker processes."),
        click.option("--boundary-weight", default=1.0, show_default=True,
                     help="Weight of the boundary output's loss against the foreground's (with --instance)."),
        click.option("--contact-weight", default=0.0, show_default=True,
                     help="Extra cross-entropy weight on the pixels where two nuclei touch (U-Net's weight map)."),
        click.option("--hard-negatives", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
                     help="Share of training items replaced by a nucleus-free frame made from their own background "
                     "(inpainted; plain, speckle, haze or debris), with an empty target."),
        click.option("--init", type=click.Path(exists=True), default=None,
                     help="Start from these weights (a run folder or a .pt) instead of from scratch: fine-tuning."),
        click.option("--keep", type=click.Choice(["best", "last"]), default="best", show_default=True,
                     help="Which epoch best.pt holds: the best validation Dice, or the last (fine-tuning with "
                     "--hard-negatives, whose negatives validation Dice does not see)."),
        click.option("--ema", type=float, default=0.0, show_default=True,
                     help="Validate and keep an exponential moving average of the weights, with this decay per "
                     "step (0.999: about the last 1000 steps); 0: the trained weights."),
        click.option("--recipe", default=recipe, show_default=True, help="Label of the recipe, recorded in the card."),
    )
