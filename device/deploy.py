"""`edgeseg deploy`: copy a bundle to a Raspberry Pi or a mini-PC over ssh, install it, optionally as a service.

Everything goes through the system's own ``ssh`` and ``scp`` (keys, agents, ``~/.ssh/config`` and jump hosts
work as they do for the user). The deployment is a plan of plain commands, printed by ``--dry-run``:

1. check the device's Python (>= 3.10 with ``venv``) and create the remote folder;
2. ``scp`` the bundle and the edgeseg wheel into it;
3. create a venv there (``--system-site-packages`` by default, so Raspberry Pi OS's ``python3-picamera2`` is
   visible) and ``pip install`` the wheel (its dependencies come from the device's package index);
4. ``edgeseg install-bundle`` on the device: verifies every checksum, extracts safely; with ``--service`` it
   also writes the systemd unit with the device's absolute paths;
5. with ``--service``: install the unit into /etc/systemd/system, enable it at boot, (re)start it and check it.

The unit runs ``edgeseg run --bundle DIR --no-display`` headless as the ssh user and restarts it on failure.

edgeseg is not on a package index, so the device cannot find ``edgeseg==VERSION`` there: the wheel goes along by
default - ``--wheel FILE``, else ``dist/edgeseg-VERSION-py3-none-any.whl`` (in the working folder or the source
checkout edgeseg runs from), else one built now from that checkout (``make wheel``'s ``packaging/wheels.py``).
``--no-wheel`` installs ``edgeseg==VERSION`` from the device's index instead (a private index: ``--pip-args``).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.progress import Progress, reporter

_HOST = re.compile(r"^(?:([A-Za-z0-9._][A-Za-z0-9._-]*)@)?([A-Za-z0-9._][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])$")
_REMOTE_PATH = re.compile(r"^[A-Za-z0-9._/+-]+$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SYSTEMD_PLAIN = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")


class DeployError(EdgesegError):
    """A deployment that cannot be planned or whose step failed."""


@dataclass
class Step:
    description: str
    argv: list[str]
    fix: str

    def shell(self) -> str:
        return shlex.join(self.argv)


@dataclass
class DeployOptions:
    host: str  # [USER@]HOST
    bundle: Path  # the local bundle archive
    version: str  # the edgeseg version the bundle was made with (pip installs it unless a wheel is given)
    remote_dir: str = "edgeseg"  # on the device; relative = under the login (home) folder
    python: str = "python3"
    system_site_packages: bool = True
    wheel: Path | None = None
    pip_args: list[str] = field(default_factory=list)
    service: bool = False
    service_name: str = "edgeseg"
    run_args: list[str] = field(default_factory=list)
    identity: Path | None = None
    port: int | None = None
    ssh_config: str | None = None
    ssh_options: list[str] = field(default_factory=list)  # each "Key=Value", passed as -o to ssh and scp


def parse_host(host: str) -> tuple[str | None, str]:
    m = _HOST.match(host or "")
    if not m:
        raise DeployError(f"{host!r} is not USER@HOST", "give the device as USER@HOST, e.g. pi@raspberrypi.local")
    return m.group(1), m.group(2)


def remote_path(path: str) -> str:
    """A remote folder as ssh and scp both read it: ``~/x`` becomes ``x`` (relative to the login folder)."""
    p = path[2:] if path.startswith("~/") else path
    p = p.rstrip("/") or "/"
    if not _REMOTE_PATH.match(p) or any(part == ".." for part in p.split("/")) or p in (".", "/"):
        raise DeployError(
            f"remote folder {path!r} is not a plain path",
            "use letters, digits and ._/+- only, e.g. --remote-dir edgeseg",
        )
    return p


def ssh_common(o: DeployOptions) -> list[str]:
    """Options valid for both ssh and scp."""
    args: list[str] = []
    if o.ssh_config:
        args += ["-F", o.ssh_config]
    if o.identity:
        args += ["-i", str(o.identity)]
    if o.port:
        args += ["-o", f"Port={int(o.port)}"]
    for opt in o.ssh_options:
        if "=" not in opt or opt.startswith("-"):
            raise DeployError(f"ssh option {opt!r} is not Key=Value", "pass e.g. -o ConnectTimeout=10")
        args += ["-o", opt]
    return args


def systemd_quote(arg: str) -> str:
    """Quote one ExecStart word for systemd (which also expands % specifiers and $VARIABLES)."""
    if "\n" in arg or "\r" in arg:
        raise DeployError("a service argument holds a line break", "remove it")
    if _SYSTEMD_PLAIN.match(arg):
        return arg
    esc = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{esc}"'


def systemd_unit(
    *, exe: str, bundle_dir: str, user: str, workdir: str, run_args: list[str] | None = None, name: str = "edgeseg"
) -> str:
    """The unit that runs the bundle headless at boot and restarts it when it fails."""
    cmd = [exe, "run", "--bundle", bundle_dir, "--no-display", *(run_args or [])]
    return "\n".join(
        [
            "[Unit]",
            f"Description=edgeseg live nuclei segmentation ({name}, bundle {bundle_dir})",
            "After=local-fs.target",
            "StartLimitIntervalSec=0",
            "",
            "[Service]",
            "Type=simple",
            f"User={user}",
            f"WorkingDirectory={systemd_quote(workdir)}",
            "Environment=PYTHONUNBUFFERED=1",
            "ExecStart=" + " ".join(systemd_quote(a) for a in cmd),
            "Restart=on-failure",
            "RestartSec=5",
            "KillSignal=SIGTERM",
            "SuccessExitStatus=143",  # edgeseg run exits 143 after a clean SIGTERM stop: not a failure
            "TimeoutStopSec=30",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def _wheel_version(wheel: Path) -> str | None:
    parts = wheel.name.split("-")
    return parts[1] if len(parts) >= 5 and wheel.suffix == ".whl" else None


def deploy_plan(o: DeployOptions) -> list[Step]:
    """Every command the deployment runs, in order (nothing is run here)."""
    user, hostname = parse_host(o.host)
    hostname = hostname.strip("[]")
    host = f"{user}@{hostname}" if user else hostname  # ssh takes IPv6 bare, scp in brackets
    scp_host = host if ":" not in hostname else (f"{user}@[{hostname}]" if user else f"[{hostname}]")
    rdir = remote_path(o.remote_dir)
    if not _REMOTE_PATH.match(o.python):
        raise DeployError(f"python {o.python!r} is not a plain path", "give e.g. --python python3")
    if not _SAFE_NAME.match(o.service_name):
        raise DeployError(f"service name {o.service_name!r} is not plain", "use letters, digits and ._+- only")
    common = ssh_common(o)
    q = shlex.quote
    venv, bundle_dir = f"{rdir}/venv", f"{rdir}/bundle"
    local_files = [o.bundle] + ([o.wheel] if o.wheel else [])
    for f in local_files:
        if not _SAFE_NAME.match(f.name):
            raise DeployError(f"file name {f.name!r} is not plain", "rename it (letters, digits, ._+-)")
    remote_bundle = f"{rdir}/{o.bundle.name}"

    def ssh(cmd: str) -> list[str]:
        return ["ssh", *common, "--", host, cmd]

    steps = [
        Step(
            f"check the device's Python (>= 3.10 with venv) and create {rdir}/",
            ssh(
                f'{q(o.python)} -c "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))"'
                f" && mkdir -p {q(rdir)}"
            ),
            "the device needs ssh access and Python >= 3.10 with venv: on Raspberry Pi OS / Debian "
            "run 'sudo apt install python3-venv' (and python3-picamera2 for the camera), or pass --python",
        ),
    ]
    steps.append(
        Step(
            "copy the bundle" + (" and the wheel" if o.wheel else ""),
            ["scp", *common, "--", *map(str, local_files), f"{scp_host}:{rdir}/"],
            f"check that {rdir}/ on the device is writable and has room",
        )
    )

    def pip(*args: str) -> str:
        return shlex.join([f"{venv}/bin/python", "-m", "pip", "install", *o.pip_args, *args])

    if o.wheel:
        spec = f"{rdir}/{o.wheel.name}"
        # the same version may already be there: reinstall the wheel itself too (its dependencies stay)
        install = f"{pip(spec)} && {pip('--no-deps', '--force-reinstall', spec)}"
        what = f"the wheel {o.wheel.name}"
    else:
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?", o.version):
            raise DeployError(
                f"the bundle was made with edgeseg {o.version}, which is not a release pip can install",
                "build a wheel (make wheel) and drop --no-wheel, or pass --wheel dist/edgeseg-*.whl",
            )
        install = pip(f"edgeseg=={o.version}")
        what = f"edgeseg=={o.version}"
    site = " --system-site-packages" if o.system_site_packages else ""
    steps.append(
        Step(
            f"create the venv {venv} and install {what}",
            ssh(f"{q(o.python)} -m venv{site} {q(venv)} && {install}"),
            "check the device's network or package index (pass --pip-args '--index-url URL'), give a wheel "
            "with --wheel, and on Debian / Raspberry Pi OS install python3-venv",
        )
    )
    unit_remote = f"{rdir}/{o.service_name}.service"
    install_cmd = f"{q(venv)}/bin/edgeseg install-bundle {q(remote_bundle)} --dir {q(bundle_dir)}"
    if o.service:
        install_cmd += f" --service-unit {q(unit_remote)} --service-name {q(o.service_name)}"
        if o.run_args:
            install_cmd += f" --run-args {q(shlex.join(o.run_args))}"
    steps.append(
        Step(
            f"verify the bundle and install it into {bundle_dir}",
            ssh(install_cmd),
            "the copy is damaged or the bundle is not valid: run the deploy again or rebuild the bundle",
        )
    )
    if o.service:
        sudo = "" if user == "root" else "sudo -n "
        name = o.service_name
        steps.append(
            Step(
                f"install, enable at boot and (re)start the systemd service {name}",
                ssh(
                    f"{sudo}install -m 0644 {q(unit_remote)} /etc/systemd/system/{name}.service"
                    f" && {sudo}systemctl daemon-reload && {sudo}systemctl enable {name}.service"
                    f" && {sudo}systemctl restart {name}.service"
                ),
                f"the ssh user needs passwordless sudo (or install {unit_remote} by hand: see the README)",
            )
        )
        steps.append(
            Step(
                f"check that {name} is running",
                ssh(f"sleep 5; systemctl is-active --quiet {name}.service"),
                f"the service does not stay up: on the device, see 'journalctl -u {name} -e'",
            )
        )
    return steps


def dry_run_text(o: DeployOptions, steps: list[Step]) -> str:
    lines = [f"# deploy {o.bundle} to {o.host} ({len(steps)} steps, nothing is run with --dry-run)"]
    for i, s in enumerate(steps, 1):
        lines += [f"# {i}/{len(steps)} {s.description}", s.shell()]
    if o.service:
        rdir = remote_path(o.remote_dir)
        user, _ = parse_host(o.host)
        home = "/root" if user == "root" else f"/home/{user or '<ssh user>'}"
        base = rdir if rdir.startswith("/") else f"{home}/{rdir}"
        unit = systemd_unit(
            exe=f"{base}/venv/bin/edgeseg",
            bundle_dir=f"{base}/bundle",
            user=user or "<ssh user>",
            workdir=base,
            run_args=o.run_args,
            name=o.service_name,
        )
        lines += [
            f"# the unit {o.service_name}.service that step 4 writes, with the device's absolute paths"
            f" (shown here for the home folder {home}):",
            unit,
        ]
    return "\n".join(lines)


def run_plan(
    steps: list[Step],
    progress: Progress | None = print,
    runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> None:
    """Run each step in turn; stop at the first failure with a one-line DeployError naming the step and the fix."""
    for tool in sorted({s.argv[0] for s in steps}):
        if shutil.which(tool) is None:
            raise DeployError(
                f"{tool} is not installed here", "install the OpenSSH client (apt install openssh-client)"
            )
    for i, s in enumerate(steps, 1):
        reporter(progress)(f"[{i}/{len(steps)}] {s.description}")
        sys.stdout.flush()
        proc = runner(s.argv, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise DeployError(f"step {i} ({s.description}) failed with exit code {proc.returncode}", s.fix)


def wheel_file_name(version: str) -> str:
    return f"edgeseg-{version}-py3-none-any.whl"


def source_checkout() -> Path | None:
    """The source tree this edgeseg runs from (an editable install: it can build a wheel), None for an installed
    wheel."""
    import edgeseg

    root = Path(edgeseg.__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "packaging" / "wheels.py").is_file() else None


def find_wheel(version: str) -> Path | None:
    """``dist/edgeseg-VERSION-py3-none-any.whl`` in the working folder or in the source checkout, if there is one."""
    checkout = source_checkout()
    for folder in [Path.cwd() / "dist", *([checkout / "dist"] if checkout else [])]:
        if (folder / wheel_file_name(version)).is_file():
            return folder / wheel_file_name(version)
    return None


def build_wheel(out: Path, progress: Progress | None = print) -> Path:
    """The edgeseg wheel built now from the source checkout into ``out`` (what ``make wheel`` builds)."""
    checkout = source_checkout()
    if checkout is None:
        raise DeployError("no edgeseg wheel to send to the device (this edgeseg is installed, not a checkout)",
                          "pass --wheel edgeseg-VERSION-py3-none-any.whl (`make wheel` in a checkout builds it), or "
                          "--no-wheel with a package index that has edgeseg (--pip-args '--index-url URL')")
    reporter(progress)(f"building the edgeseg wheel from {checkout}")
    proc = subprocess.run([sys.executable, str(checkout / "packaging" / "wheels.py"), str(out), "--runtime-only"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wheels = sorted(out.glob("edgeseg-*-py3-none-any.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        last = (proc.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise DeployError(f"building the edgeseg wheel failed ({last[:160]})", "run `make wheel` and pass --wheel")
    return wheels[0]


def wheel_to_send(version: str, tmp: Path, *, build: bool, progress: Progress | None = print) -> Path:
    """The wheel that goes to the device: ``dist/`` (:func:`find_wheel`), else one built now into ``tmp`` (with
    ``build``; without it, a dry run: the name the built wheel will have)."""
    found = find_wheel(version)
    if found is not None:
        return found
    if not build:
        reporter(progress)("note: no dist/" + wheel_file_name(version) + "; `edgeseg deploy` builds it from the "
                           "checkout (or run `make wheel`)")
        return tmp / wheel_file_name(version)
    return build_wheel(tmp, progress)


def wheel_version_note(wheel: Path, bundle_version: str) -> str | None:
    """A warning when ``wheel`` is another edgeseg version than the one that made the bundle."""
    version = _wheel_version(wheel)
    if version == bundle_version:
        return None
    return f"the wheel is edgeseg {version}, the bundle was made with edgeseg {bundle_version}"


def deploy(host: str, *, bundle: str | Path | None, models: str, target: str, dry_run: bool = False,
           no_wheel: bool = False, progress: Progress | None = print, **options) -> str:
    """``edgeseg deploy``: the bundle (made now from ``models`` for ``target`` when none is given), checked, sent
    and installed over ssh with the edgeseg wheel (``options["wheel"]``, else :func:`wheel_to_send`; ``no_wheel``:
    pip installs edgeseg==VERSION from the device's index). ``options``: the :class:`DeployOptions` fields.
    Returns the closing line, or the plan's text with ``dry_run``."""
    import tempfile

    from .bundle import check_bundle, make_bundle

    with tempfile.TemporaryDirectory(prefix="edgeseg-deploy-") as tmp:
        if bundle is None:
            bundle = Path(tmp) / "bundle.tar.gz"
            for note in make_bundle(models, bundle, target=target)[1]:
                reporter(progress)(f"note: {note}")
        manifest = check_bundle(bundle)
        version = manifest["edgeseg_version"]
        if no_wheel and options.get("wheel"):
            raise DeployError("--wheel and --no-wheel together", "drop one of them")
        if not no_wheel and not options.get("wheel"):
            options["wheel"] = wheel_to_send(version, Path(tmp), build=not dry_run, progress=progress)
        note = wheel_version_note(options["wheel"], version) if options.get("wheel") else None
        if note:
            reporter(progress)(f"warning: {note}")
        opts = DeployOptions(host=host, bundle=Path(bundle), version=version, **options)
        steps = deploy_plan(opts)
        if dry_run:
            return dry_run_text(opts, steps)
        run_plan(steps, progress=progress)
    rdir = opts.remote_dir.removeprefix("~/")
    if opts.service:
        return (f"deployed: {opts.service_name} runs at boot on {host}; "
                f"logs: ssh {host} journalctl -u {opts.service_name} -f")
    return f"deployed: ssh {host} {rdir}/venv/bin/edgeseg run --bundle {rdir}/bundle --no-display"


def write_service_unit(path: str | Path, bundle_dir: str | Path, *, name: str = "edgeseg",
                       run_args: list[str] | None = None) -> Path:
    """Write the systemd unit that runs an installed bundle with this Python's edgeseg, as the current user."""
    import getpass

    from edgeseg.fsutil import atomic_write_text

    exe = Path(sys.executable).parent / "edgeseg"
    cmd = str(exe) if exe.exists() else f"{sys.executable} -m edgeseg.cli"
    bundle_dir = Path(bundle_dir)
    unit = systemd_unit(exe=cmd, bundle_dir=str(bundle_dir), user=getpass.getuser(), workdir=str(bundle_dir.parent),
                        run_args=run_args, name=name)
    return atomic_write_text(path, unit)
