"""``edgeseg bundle``, ``install-bundle`` and ``deploy``: getting models onto a device."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from ..zoo import DEFAULT_RUN_MODEL
from .common import json_flag, user_errors, warn

TARGET = click.Choice(["any", "x86", "arm"])


@click.command("bundle")
@click.option("--models", required=True, help="Comma-separated zoo names or model files; the first is the default.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The bundle to write (.tar.gz).")
@click.option("--target", type=TARGET, default="any", show_default=True,
              help="arm / x86: take the zoo's variant quantised for that CPU where there is one.")
@click.option("--source", default=None, help="Default `run` source on the device (e.g. picam, cam:0).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "openvino"]), default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="Default inference threads [all cores].")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Default foreground threshold [the card's].")
@click.option("--tile", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True)
@click.option("--channel", type=click.Choice(["auto", "gray", "red", "green", "blue"]), default="auto",
              show_default=True)
@click.option("--diameter", type=click.FloatRange(min=0, min_open=True), default=None, metavar="PX",
              help="Default nucleus diameter in frame pixels [estimated].")
@json_flag("Print the manifest as JSON.")
@user_errors
def bundle_cmd(models, out, target, as_json, **run_cfg) -> None:
    """Pack models, their cards and a verified manifest into one archive for a device.

    \b
    Examples:
      edgeseg bundle --models fast_scnn-int8 --target arm --source picam --out pi.tar.gz
      edgeseg bundle --models fast_scnn-int8,mobilenetv2_unet-int8 --out minipc.tar.gz
    """
    from edgeseg.device.bundle import make_bundle
    from edgeseg.fsutil import sha256_file

    manifest, notes = make_bundle(models, out, target=target, run=run_cfg)
    for note in notes:
        warn(f"note: {note}")
    digest = sha256_file(out)
    if as_json:
        click.echo(json.dumps({"bundle": str(out), "sha256": digest, "manifest": manifest}, indent=2))
        return
    names = ", ".join(m["name"] for m in manifest["models"])
    click.echo(f"wrote {out} ({Path(out).stat().st_size / 1e6:.2f} MB, target {target}): {names}")
    click.echo(f"  sha256 {digest}")


@click.command("install-bundle")
@click.argument("bundle", type=click.Path())
@click.option("--dir", "dest", type=click.Path(file_okay=False), default=None,
              help="Folder to install into [the archive's name without .tar.gz].")
@click.option("--check", is_flag=True, help="Only verify the archive (or an installed folder); write nothing.")
@click.option("--service-unit", type=click.Path(dir_okay=False), default=None,
              help="Also write a systemd unit running `edgeseg run --bundle DIR --no-display` here.")
@click.option("--service-name", default="edgeseg", show_default=True, help="Name shown in the unit.")
@click.option("--run-args", default="", help="Extra `edgeseg run` options for the unit (one quoted string).")
@json_flag("Print the installed bundle as JSON.")
@user_errors
def install_bundle_cmd(bundle, dest, check, service_unit, service_name, run_args, as_json) -> None:
    """Verify a bundle (manifest, every sha256, safe paths) and install it into a folder.

    \b
    Examples:
      edgeseg install-bundle pi.tar.gz --dir ~/edgeseg/bundle
      edgeseg install-bundle pi.tar.gz --check
      edgeseg run --bundle ~/edgeseg/bundle --no-display
    """
    from edgeseg.device.bundle import check_summary, default_install_dir, install_bundle
    from edgeseg.device.deploy import write_service_unit

    if check:
        info = check_summary(bundle)
        click.echo(json.dumps(info, indent=2) if as_json else f"{bundle}: verified, {len(info['models'])} model(s)")
        return
    b = install_bundle(bundle, dest or default_install_dir(bundle))
    if b.version_note():
        warn(f"warning: {b.version_note()}")
    if service_unit:
        write_service_unit(service_unit, b.dir, name=service_name, run_args=shlex.split(run_args))
    if as_json:
        click.echo(json.dumps(b.summary(), indent=2))
        return
    click.echo(f"installed {bundle} into {b.dir}: {', '.join(m.name for m in b.models)} "
               f"(default {b.run_config['model']}); run it: edgeseg run --bundle {b.dir}")
    if service_unit:
        click.echo(f"  systemd unit written to {service_unit}")


@click.command("deploy")
@click.argument("host")
@click.option("--bundle", "bundle_path", type=click.Path(dir_okay=False), default=None,
              help="Bundle to deploy [one made now from --models and --target].")
@click.option("--models", default=DEFAULT_RUN_MODEL, show_default=True, help="Models for the bundle made now.")
@click.option("--target", type=TARGET, default="any", show_default=True, help="Target of the bundle made now.")
@click.option("--remote-dir", default="edgeseg", show_default=True,
              help="Folder on the device (relative = under the login folder).")
@click.option("--python", "python_exe", default="python3", show_default=True, help="Python on the device.")
@click.option("--wheel", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The edgeseg wheel to send and install [dist/edgeseg-VERSION-py3-none-any.whl, else built now].")
@click.option("--no-wheel", is_flag=True, help="Send no wheel: pip installs edgeseg==VERSION from the device's index.")
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
def deploy_cmd(host, bundle_path, models, target, python_exe, wheel, pip_args, run_args, identity, ssh_options,
               dry_run, **options) -> None:
    """Copy a bundle to a Raspberry Pi or mini-PC over ssh, install it in a venv, optionally as a service.

    \b
    Examples:
      edgeseg deploy pi@raspberrypi.local --bundle pi.tar.gz --service --dry-run
      edgeseg deploy pi@raspberrypi.local --bundle pi.tar.gz --wheel dist/edgeseg-0.1.0-py3-none-any.whl --service
      edgeseg deploy lab@minipc --models mobilenetv2_unet-int8 --target x86 -i ~/.ssh/id_ed25519
    """
    from edgeseg.device.deploy import deploy

    click.echo(deploy(host, bundle=bundle_path, models=models, target=target, dry_run=dry_run, progress=click.echo,
                      python=python_exe, wheel=Path(wheel) if wheel else None,
                      pip_args=shlex.split(pip_args), run_args=shlex.split(run_args),
                      identity=Path(identity) if identity else None, ssh_options=list(ssh_options), **options))
