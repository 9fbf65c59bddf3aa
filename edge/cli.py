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
from .zoo import SAMPLE_CLIP, SAMPLE_DIR  # light: the zoo module needs only the card helpers

DEFAULT_RUN_MODEL = "fast_scnn-int8"  # the model `edgeseg run` uses when none is given (the shipped Fast-SCNN INT8)


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
      edgeseg run                                  # the shipped clip through fast_scnn-int8, FPS summary
      edgeseg run --source picam --serve 0.0.0.0:8080 --token SECRET
      edgeseg models
      edgeseg bench --json bench.json
      edgeseg eval fast_scnn-int8 --data ../shared/data/dsb2018/stage1_train --split test --json
      edgeseg train fast_scnn --data ../shared/data/dsb2018/stage1_train --out runs/fast_scnn
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
                "executed_precision": c.get("executed_precision", c.get("precision")),
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


def training_options(*, out_help: str, augment: str, schedule: str, warmup_epochs: int, instance: bool,
                     instance_help: str, recipe: str):
    """The options `train` and `distill` share, in one place; each command gives its own defaults."""
    options = [
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
        click.option("--recipe", default=recipe, show_default=True, help="Label of the recipe, recorded in the card."),
    ]

    def apply(fn):
        for option in reversed(options):  # as if written top to bottom above the function
            fn = option(fn)
        return fn

    return apply


def _train_config(model: str, default_out: Path, encoder_weights: str | None, *, data, out, instance, workers,
                  **options):
    """The TrainConfig of a `train` or `distill` command line (the options of :func:`training_options`)."""
    from .train.trainer import TrainConfig

    return TrainConfig(model=model, data=",".join(data), out=str(out or default_out), encoder_weights=encoder_weights,
                       out_channels=2 if instance else 1, num_workers=workers, command=_command_line(), **options)


@main.command()
@click.argument("model")
@training_options(out_help="Run folder [runs/MODEL].", augment="paper", schedule="constant", warmup_epochs=0,
                  instance=False, instance_help="Add the nucleus-boundary output (instance head).", recipe="paper")
@click.option(
    "--encoder-weights",
    default="auto",
    show_default=True,
    help="mobilenetv2_unet encoder: imagenet, a state-dict PATH, none, or auto (imagenet if found offline).",
)
@user_errors
def train(model, resume, encoder_weights, **options) -> None:
    """Train a network (BCE + Dice, Adam) and keep the best-validation checkpoint.

    \b
    Example:
      edgeseg train fast_scnn --data ../shared/data/dsb2018/stage1_train --epochs 2 --limit 64 --out runs/smoke
    """
    from .train.models import list_models
    from .train.trainer import Trainer

    if model not in list_models():
        raise EdgesegError(f"unknown model {model!r}", f"choose one of {', '.join(list_models())}")
    cfg = _train_config(model, Path("runs") / model, _encoder_weights(model, encoder_weights), **options)
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
@click.option("--tta", is_flag=True, help="Average over horizontal and vertical flips (PyTorch checkpoints).")
@click.option(
    "--tile",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Scale policy: auto resizes frames near the input size and tiles large ones at the training scale.",
)
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "openvino"]), default="auto",
              show_default=True, help="Runtime for exported files.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--per-image", is_flag=True, help="With --json: include one row per image.")
@user_errors
def eval_cmd(model, data, split, mask_fixes, threshold, tta, tile, backend, as_json, per_image) -> None:
    """Score a model on a dataset: Dice (256x256 and original size), IoU, DSB mAP, F1@0.5, count MAE.

    Instance metrics use the model's own post-processing (its card); the same metrics with plain
    connected components are reported beside them under "cc".

    \b
    Examples:
      edgeseg eval fast_scnn --data ../shared/data/dsb2018/stage1_train --split test --json
      edgeseg eval mobilenetv2_unet --data ../shared/data/monuseg_train --split test   # large tiles: tiled
      edgeseg eval runs/fast_scnn --data my_images_and_masks/ --json
    """
    from .data import find_items, load_sample
    from .evaluate import evaluate
    from .split import select_items
    from .zoo import resolve_model

    ref = resolve_model(model)
    items, info = select_items(find_items(data, mask_fixes), split, where=str(data))
    seg = segmenter_for(ref, tta=tta, tile=tile, threshold=threshold, backend=backend)
    post = seg.post
    result = evaluate(seg, (load_sample(it) for it in items), progress=not as_json, total=len(items), compare_cc=True)
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
    if "cc" in s:
        c = s["cc"]
        click.echo(f"  with plain connected components: mAP {c['map']:.4f}  F1@0.5 {c['f1_50']:.4f}  "
                   f"count MAE {c['count_mae']:.2f}")
    if s.get("n_tiled"):
        click.echo(f"  {s['n_tiled']} large image(s) tiled at the training scale (--tile never: resize all)")
    for t, st in result["per_type"].items():
        click.echo(f"  {t:<13} n={st['n_images']:<4} Dice@256 {st['dice_256']:.4f}  F1@0.5 {st['f1_50']:.4f}")


def segmenter_for(ref, *, tta: bool = False, tile="auto", threshold=None, backend="auto"):
    """A Segmenter for any resolved MODEL (``edgeseg.zoo.resolve_model``): exported files through the torch-free
    backends, PyTorch checkpoints through torch (imported only for them)."""
    from .segmenter import Segmenter

    if ref.format == "torch":
        from .train.predict import torch_segmenter

        return torch_segmenter(ref, tta=tta, tile=tile, threshold=threshold)
    if tta:
        raise EdgesegError("--tta works with PyTorch checkpoints only", "drop --tta for exported files")
    return Segmenter.load(ref.path, backend=backend, threshold=threshold, tile=tile)


@main.command("export")
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
@click.option("--out", default="exported", show_default=True, type=click.Path(), help="Output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@user_errors
def export_cmd(model, fmt, precision, calib_data, calib_size, max_dice_drop, target, guard_data, test_data,
               strategies, name, seed, out, as_json) -> None:
    """Export a checkpoint to ONNX or OpenVINO (fp32/fp16/int8), checked against PyTorch, INT8 guarded.

    \b
    Examples:
      edgeseg export fast_scnn --format onnx --out exported/
      edgeseg export fast_scnn --format onnx --precision int8 --calib-data ../shared/data/dsb2018/stage1_train
      edgeseg export mobilenetv2_unet --format openvino --precision int8 --calib-data DIR --max-dice-drop 0.005
    """
    import contextlib

    from .export.pipeline import check_options, export_model

    check_options(fmt, precision, target, calib_data)  # before torch is imported: bad options fail fast
    with contextlib.redirect_stdout(sys.stderr):  # library progress bars (NNCF) must not mix into --json
        report = export_model(
            model, fmt, precision, out_dir=out, calib_data=calib_data, calib_size=calib_size, seed=seed,
            max_dice_drop=max_dice_drop, target=target, guard_data=guard_data, test_data=test_data, name=name,
            strategies=list(strategies) or None, command=_command_line(),
            log=None if as_json else (lambda msg: click.echo(msg, err=True)),
        )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    g = report.get("guard") or {}
    extra = f", guard: {g['strategy']} (validation Dice drop {g['drop']:+.4f})" if g.get("strategy") else ""
    click.echo(f"wrote {report['path']} ({report['size_bytes'] / 1e6:.2f} MB, executes as "
               f"{report['executed_precision']}{extra})")


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


@main.command()
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
    from .train.distill import distill as run_distill
    from .train.models import list_models

    if student not in list_models():
        raise EdgesegError(f"unknown model {student!r}", f"choose one of {', '.join(list_models())}")
    cfg = _train_config(student, Path("runs") / f"distill_{student}", None, **options)
    summary = run_distill(cfg, teacher, alpha=alpha, temperature=temperature, resume=resume)
    click.echo(json.dumps({"run": cfg.out, **summary}))



@main.command(epilog="""\b
Exit codes: 0 done (end of the source, --max-frames, window closed); 2 bad input (missing or
unreadable source, no camera, model file not matching its card, bad option); 3 missing dependency
(picamera2, a GUI-enabled OpenCV for --display); 4 the source failed mid-run (camera lost after its
retries, video corrupt mid-file: the frames before were processed); 130 Ctrl-C; 143 SIGTERM.
Ctrl-C and SIGTERM finish the frame in flight, finalise the recording and the log, print the summary.""")
@click.option("--model", default=None, help=f"Zoo name or exported .onnx/.xml file [{DEFAULT_RUN_MODEL}].")
@click.option("--bundle", default=None, type=click.Path(),
              help="Run from a bundle (.tar.gz or installed folder): its verified model and its default options; "
              "--model NAME picks another model of the bundle.")
@click.option("--source", default=None,
              help="picam[:N][@WxH], cam:N, a video file, a multi-page TIFF, a folder of images, "
              "or synthetic[:WxH[:N]] [the shipped sample clip].")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "openvino"]), default="auto", show_default=True,
              help="auto: ONNX Runtime for .onnx, OpenVINO for .xml.")
@click.option("--threads", type=int, default=None, help="Inference threads [all cores].")
@click.option("--display/--no-display", default=None,
              help="Show the overlay in a window [when there is a screen and a GUI-enabled OpenCV].")
@click.option("--record", type=click.Path(dir_okay=False), default=None,
              help="Overlay video, .mp4 or .avi [OUT/overlay.mp4 for a file source; none for a camera].")
@click.option("--no-record", is_flag=True, help="Record no video.")
@click.option("--log", type=click.Path(dir_okay=False), default=None,
              help="JSONL log, one line a frame [OUT/run.jsonl].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the log and the recording [edgeseg-runs/YYYYmmdd-HHMMSS].")
@click.option("--max-frames", type=int, default=None, help="Stop after N frames.")
@click.option("--channel", type=click.Choice(["auto", "gray", "red", "green", "blue"]), default="auto",
              show_default=True, help="Fluorescence channel to segment (auto keeps colour).")
@click.option("--tile", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="auto resizes frames near the input size and tiles large ones at the training scale.")
@click.option("--threshold", type=float, default=None, help="Override the card's foreground threshold.")
@click.option("--overlay", type=click.Choice(["contours", "mask", "both"]), default="contours", show_default=True)
@click.option("--pace", is_flag=True, help="Play a file at its frame rate like a camera (late frames are dropped).")
@click.option("--fps", type=float, default=None, help="Frame rate of a file that has none (TIFF, folder) [10].")
@click.option("--loop", is_flag=True, help="Replay a file source endlessly (stop with --max-frames or Ctrl-C).")
@click.option("--serve", default=None, metavar="[HOST:]PORT",
              help="Also stream the overlay to a browser (host 127.0.0.1 unless given; 0.0.0.0 needs a token).")
@click.option("--token", default=None,
              help="Token every --serve request must carry [generated for a non-loopback host].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@user_errors
def run(as_json, **kw) -> None:
    """Segment and count nuclei live from a camera, a video or a stack, on the CPU, logging FPS.

    With no options: the shipped sample clip through the shipped Fast-SCNN INT8 model; the overlay
    video and the JSONL log go to edgeseg-runs/TIMESTAMP/ and an FPS summary is printed.

    \b
    Examples:
      edgeseg run
      edgeseg run --source picam --model fast_scnn-int8
      edgeseg run --source cam:0 --display --log run.jsonl
      edgeseg run --source clip.mp4 --no-display --max-frames 500 --log out.jsonl
      edgeseg run --source picam --serve 0.0.0.0:8080 --token SECRET --no-display
      edgeseg run --bundle fast_scnn-arm.tar.gz --no-display
    """
    from .device.live import RunOptions, apply_bundle, run_session, summary_text

    bundle = kw.pop("bundle")
    if bundle:
        ctx = click.get_current_context()
        explicit = {k for k in kw if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
        kw, note = apply_bundle(kw, bundle, explicit)
        if note:
            click.echo(f"warning: {note}", err=True)
    opts = RunOptions(**{**kw, "model": kw["model"] or DEFAULT_RUN_MODEL, "source": kw["source"] or str(SAMPLE_CLIP)})
    result = run_session(opts, echo=lambda msg: click.echo(msg, err=as_json))
    if as_json:
        click.echo(json.dumps(result.summary))
    else:
        click.echo(summary_text(result.summary))
        where = [f"log {result.log_path}"] if result.log_path else []
        if result.recording:
            where.append(f"recording {result.recording}")
        if where:
            click.echo("  " + ", ".join(where))
    if result.error is not None:
        click.echo(f"error: {result.error}", err=True)
    sys.exit(result.exit_code)


@main.command("bundle")
@click.option("--models", required=True, help="Comma-separated zoo names or model files; the first is the default.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The bundle to write (.tar.gz).")
@click.option("--target", type=click.Choice(["any", "x86", "arm"]), default="any", show_default=True,
              help="arm / x86: take the zoo's variant quantised for that CPU where there is one.")
@click.option("--source", default=None, help="Default `run` source on the device (e.g. picam, cam:0).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "openvino"]), default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="Default inference threads [all cores].")
@click.option("--threshold", type=float, default=None, help="Default foreground threshold [the card's].")
@click.option("--tile", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True)
@click.option("--channel", type=click.Choice(["auto", "gray", "red", "green", "blue"]), default="auto",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@user_errors
def bundle_cmd(models, out, target, source, backend, threads, threshold, tile, channel, as_json) -> None:
    """Pack models, their cards and a verified manifest into one archive for a device.

    \b
    Examples:
      edgeseg bundle --models fast_scnn-int8 --target arm --source picam --out pi.tar.gz
      edgeseg bundle --models fast_scnn-int8,mobilenetv2_unet-int8 --out minipc.tar.gz
    """
    from .device.bundle import make_bundle
    from .fsutil import sha256_file

    run_cfg = {"source": source, "backend": backend, "threads": threads, "threshold": threshold, "tile": tile,
               "channel": channel}
    manifest, notes = make_bundle(models, out, target=target, run=run_cfg)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    digest = sha256_file(out)
    if as_json:
        click.echo(json.dumps({"bundle": str(out), "sha256": digest, "manifest": manifest}, indent=2))
        return
    names = ", ".join(m["name"] for m in manifest["models"])
    click.echo(f"wrote {out} ({Path(out).stat().st_size / 1e6:.2f} MB, target {target}): {names}")
    click.echo(f"  sha256 {digest}")


@main.command("install-bundle")
@click.argument("bundle", type=click.Path())
@click.option("--dir", "dest", type=click.Path(file_okay=False), default=None,
              help="Folder to install into [the archive's name without .tar.gz].")
@click.option("--check", is_flag=True, help="Only verify the archive (or an installed folder); write nothing.")
@click.option("--service-unit", type=click.Path(dir_okay=False), default=None,
              help="Also write a systemd unit running `edgeseg run --bundle DIR --no-display` here.")
@click.option("--service-name", default="edgeseg", show_default=True, help="Name shown in the unit.")
@click.option("--run-args", default="", help="Extra `edgeseg run` options for the unit (one quoted string).")
@click.option("--json", "as_json", is_flag=True, help="Print the installed bundle as JSON.")
@user_errors
def install_bundle_cmd(bundle, dest, check, service_unit, service_name, run_args, as_json) -> None:
    """Verify a bundle (manifest, every sha256, safe paths) and install it into a folder.

    \b
    Examples:
      edgeseg install-bundle pi.tar.gz --dir ~/edgeseg/bundle
      edgeseg install-bundle pi.tar.gz --check
      edgeseg run --bundle ~/edgeseg/bundle --no-display
    """
    import getpass
    import shlex

    from .device.bundle import check_bundle, install_bundle
    from .device.deploy import systemd_unit
    from .fsutil import atomic_write_text

    if check:
        res = check_bundle(bundle)
        info = res.summary() if hasattr(res, "summary") else {"edgeseg_version": res["edgeseg_version"],
                                                               "models": [m["name"] for m in res["models"]]}
        click.echo(json.dumps(info, indent=2) if as_json else f"{bundle}: verified, {len(info['models'])} model(s)")
        return
    if dest is None:
        name = Path(bundle).name
        dest = name[: -len(".tar.gz")] if name.endswith(".tar.gz") else Path(name).stem
    b = install_bundle(bundle, dest)
    note = b.version_note()
    if note:
        click.echo(f"warning: {note}", err=True)
    if service_unit:
        exe = Path(sys.executable).parent / "edgeseg"
        cmd = str(exe) if exe.exists() else f"{sys.executable} -m edgeseg.cli"
        unit = systemd_unit(exe=cmd, bundle_dir=str(b.dir), user=getpass.getuser(), workdir=str(b.dir.parent),
                            run_args=shlex.split(run_args), name=service_name)
        atomic_write_text(service_unit, unit)
    if as_json:
        click.echo(json.dumps(b.summary(), indent=2))
        return
    click.echo(f"installed {bundle} into {b.dir}: {', '.join(m.name for m in b.models)} "
               f"(default {b.run_config['model']}); run it: edgeseg run --bundle {b.dir}")
    if service_unit:
        click.echo(f"  systemd unit written to {service_unit}")


@main.command("deploy")
@click.argument("host")
@click.option("--bundle", "bundle_path", type=click.Path(dir_okay=False), default=None,
              help="Bundle to deploy [one made now from --models and --target].")
@click.option("--models", default=DEFAULT_RUN_MODEL, show_default=True, help="Models for the bundle made now.")
@click.option("--target", type=click.Choice(["any", "x86", "arm"]), default="any", show_default=True,
              help="Target of the bundle made now.")
@click.option("--remote-dir", default="edgeseg", show_default=True,
              help="Folder on the device (relative = under the login folder).")
@click.option("--python", "python_exe", default="python3", show_default=True, help="Python on the device.")
@click.option("--wheel", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Install this edgeseg wheel instead of edgeseg==VERSION from the device's package index.")
@click.option("--pip-args", default="", help="Extra pip options on the device, e.g. '--index-url URL'.")
@click.option("--system-site-packages/--no-system-site-packages", default=True, show_default=True,
              help="Let the venv see the system's packages (Raspberry Pi OS's python3-picamera2).")
@click.option("--service", is_flag=True, help="Install a systemd unit: run the bundle headless at boot.")
@click.option("--service-name", default="edgeseg", show_default=True)
@click.option("--run-args", default="", help="Extra `edgeseg run` options for the service, e.g. '--log run.jsonl'.")
@click.option("-i", "--identity", type=click.Path(dir_okay=False), default=None, help="ssh private key.")
@click.option("--port", type=int, default=None, help="ssh port.")
@click.option("--ssh-config", default=None, help="ssh config file (ssh -F).")
@click.option("-o", "--ssh-option", "ssh_options", multiple=True, help="ssh option Key=Value (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print every command (and the unit) without running anything.")
@user_errors
def deploy_cmd(host, bundle_path, models, target, remote_dir, python_exe, wheel, pip_args, system_site_packages,
               service, service_name, run_args, identity, port, ssh_config, ssh_options, dry_run) -> None:
    """Copy a bundle to a Raspberry Pi or mini-PC over ssh, install it in a venv, optionally as a service.

    \b
    Examples:
      edgeseg deploy pi@raspberrypi.local --bundle pi.tar.gz --service --dry-run
      edgeseg deploy pi@raspberrypi.local --bundle pi.tar.gz --wheel dist/edgeseg-0.1.0-py3-none-any.whl --service
      edgeseg deploy lab@minipc --models mobilenetv2_unet-int8 --target x86 -i ~/.ssh/id_ed25519
    """
    import shlex
    import tempfile

    from .device.bundle import check_bundle, make_bundle
    from .device.deploy import DeployOptions, deploy_plan, dry_run_text, run_plan

    with tempfile.TemporaryDirectory(prefix="edgeseg-deploy-") as tmp:
        if bundle_path is None:
            bundle_path = Path(tmp) / "bundle.tar.gz"
            _, notes = make_bundle(models, bundle_path, target=target)
            for note in notes:
                click.echo(f"note: {note}", err=True)
        manifest = check_bundle(bundle_path)
        if wheel:
            wv = Path(wheel).name.split("-")[1] if Path(wheel).name.count("-") >= 4 else None
            if wv != manifest["edgeseg_version"]:
                click.echo(f"warning: the wheel is edgeseg {wv}, the bundle was made with edgeseg "
                           f"{manifest['edgeseg_version']}", err=True)
        opts = DeployOptions(
            host=host, bundle=Path(bundle_path), version=manifest["edgeseg_version"], remote_dir=remote_dir,
            python=python_exe, system_site_packages=system_site_packages, wheel=Path(wheel) if wheel else None,
            pip_args=shlex.split(pip_args), service=service, service_name=service_name,
            run_args=shlex.split(run_args), identity=Path(identity) if identity else None, port=port,
            ssh_config=ssh_config, ssh_options=list(ssh_options),
        )
        steps = deploy_plan(opts)
        if dry_run:
            click.echo(dry_run_text(opts, steps))
            return
        run_plan(steps, echo=click.echo)
    rdir = opts.remote_dir.removeprefix("~/")
    if service:
        click.echo(f"deployed: {service_name} runs at boot on {host}; logs: ssh {host} journalctl -u {service_name} -f")
    else:
        click.echo(f"deployed: ssh {host} {rdir}/venv/bin/edgeseg run --bundle {rdir}/bundle --no-display")


@main.command("bench")
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
@click.option("--accuracy", is_flag=True, help="Dice of each file on the 8-image DSB2018 sample in the package.")
@click.option("--zoo", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of exported files with their cards [the shipped zoo].")
@click.option("--json", "json_out", default=None, metavar="OUT",
              help="Write hardware report + rows as JSON ('-': print it, the table goes to stderr).")
@click.option("--csv", "csv_out", default=None, metavar="OUT", help="Write the rows as CSV.")
@click.option("--plot", "plot_out", default=None, metavar="OUT.png",
              help="Plot FPS (log axis) vs Dice, the paper's results marked (needs matplotlib).")
@user_errors
def bench_cmd(models, backends, precisions, threads, iterations, warmup, e2e, e2e_source, accuracy, zoo, json_out,
              csv_out, plot_out) -> None:
    """Measure which model, in which format, is fast and accurate enough on this machine.

    Per model x backend x precision x threads: FPS and latency mean/p50/p90/p99 by the paper's method
    (consecutive single 256x256 inferences after a warm-up, model only), the precision the backend really
    executed, params, GFLOPs and file size; a hardware report; a one-line recommendation (the fastest file
    whose Dice is within 0.01 of the best). A combination that cannot run becomes a row with its reason;
    Ctrl-C prints the rows measured so far.

    \b
    Examples:
      edgeseg bench --json bench.json
      edgeseg bench --models fast_scnn --backends onnxruntime,openvino --threads 1,2,4 --accuracy
      edgeseg bench --e2e --csv bench.csv --plot fps_vs_dice.png
    """
    from .device.bench import (
        BenchConfig,
        dice_note,
        format_table,
        ok_rows,
        plot_fps_vs_dice,
        require_matplotlib,
        run_bench,
        write_outputs,
    )
    from .device.hardware import format_report

    def items(text):
        return [t.strip() for t in text.split(",") if t.strip()] if text else None

    if plot_out:
        require_matplotlib()  # before minutes of measuring
    try:
        thread_list = [int(t) for t in items(threads)] if threads else None
    except ValueError:
        raise EdgesegError(f"bad --threads {threads!r}", "give whole numbers, e.g. --threads 1,2,4") from None
    if e2e and e2e_source is None and SAMPLE_CLIP.exists():
        e2e_source = str(SAMPLE_CLIP)
    cfg = BenchConfig(models=items(models) or [], backends=items(backends), precisions=items(precisions) or [],
                      threads=thread_list, iterations=iterations, warmup=warmup, e2e=e2e, e2e_source=e2e_source,
                      accuracy=accuracy, zoo=zoo)
    result = run_bench(cfg, progress=True)
    result["command"] = _command_line()
    write_outputs(result, json_out, csv_out)
    say = functools.partial(click.echo, err=json_out == "-")
    if json_out == "-":
        click.echo(json.dumps(result, indent=2))
    say(format_report(result["hardware"]))
    say("")
    say(format_table(result["rows"]))
    say(dice_note(result["rows"]))
    if result["recommendation"]:
        say(result["recommendation"]["text"])
    if plot_out:
        if ok_rows(result["rows"]):
            say(f"plot: {plot_fps_vs_dice(result['rows'], plot_out)}")
        else:
            say("no row was measured: no plot")
    if result["interrupted"]:
        say(f"interrupted: {len(result['rows'])} row(s) measured" + (f", written to {json_out}" if json_out
                                                                     and json_out != "-" else ""))
        sys.exit(130)


if __name__ == "__main__":
    main()
