"""``edgeseg run``: segment and count nuclei live (torch-free)."""

from __future__ import annotations

import json
import sys

import click

from .common import run_options, user_errors


@click.command(epilog="""\b
Exit codes: 0 done (end of the source, --max-frames, window closed); 2 bad input (missing or
unreadable source, no camera, model file not matching its card, bad option); 3 missing dependency
(picamera2, a GUI-enabled OpenCV for --display); 4 the source failed mid-run (camera lost after its
retries, video corrupt mid-file: the frames before were processed); 130 Ctrl-C; 143 SIGTERM.
Ctrl-C and SIGTERM finish the frame in flight, finalise the recording and the log, print the summary.""")
@run_options()
@click.option("--bundle", default=None, type=click.Path(),
              help="Run from a bundle (.tar.gz or installed folder): its verified model and its default options; "
              "--model NAME picks another model of the bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@user_errors
def run(as_json, bundle, **options) -> None:
    """Segment and count nuclei live from a camera, a video or a stack, on the CPU, logging FPS.

    With no options: the shipped sample clip through the default model (shuffle_unet_px-int8); the overlay
    video and the JSONL log go to edgeseg-runs/TIMESTAMP/ and an FPS summary is printed.

    \b
    Examples:
      edgeseg run
      edgeseg run --source picam --model fast_scnn-int8
      edgeseg run --source cam:0 --display --log run.jsonl
      edgeseg run --source clip.mp4 --no-display --max-frames 500 --log out.jsonl
      edgeseg run --source big_tissue.tif --diameter 30
      edgeseg run --source picam --serve 0.0.0.0:8080 --token SECRET --no-display
      edgeseg run --bundle fast_scnn-arm.tar.gz --no-display
    """
    from edgeseg.device.live import RunOptions, apply_bundle, run_session, summary_text

    if bundle:
        ctx = click.get_current_context()
        explicit = {k for k in options if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
        options, note = apply_bundle(options, bundle, explicit)
        if note:
            click.echo(f"warning: {note}", err=True)
    result = run_session(RunOptions(**options), progress=lambda line: click.echo(line, err=as_json))
    if as_json:
        click.echo(json.dumps(result.summary))
    else:
        click.echo(summary_text(result.summary))
        where = [f"log {result.log_path}"] if result.log_path else []
        where += [f"recording {result.recording}"] if result.recording else []
        if where:
            click.echo("  " + ", ".join(where))
    if result.error is not None:
        click.echo(f"error: {result.error}", err=True)
    sys.exit(result.exit_code)
