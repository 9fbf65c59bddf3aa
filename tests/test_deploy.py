"""`edgeseg deploy`: the exact command plan, the systemd unit, and a real deployment to an sshd on 127.0.0.1.

The sshd test starts OpenSSH's own server with its own host key, authorized_keys and known_hosts in a temporary
folder, on a free port of 127.0.0.1 (as root inside a private mount namespace, so its privilege-separation folder
never touches the machine's /run). It is skipped where the OpenSSH server is not installed
(`apt install openssh-server`). It never reads or writes ~/.ssh: every ssh call has -F /dev/null, -i and
UserKnownHostsFile.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeseg import __version__
from edgeseg.cli import main
from edgeseg.device.bundle import make_bundle
from edgeseg.device.deploy import (
    DeployError,
    DeployOptions,
    Step,
    deploy_plan,
    dry_run_text,
    remote_path,
    run_plan,
    systemd_quote,
    systemd_unit,
)

REPO = Path(__file__).resolve().parents[1]
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "pi.tar.gz"
    make_bundle(["half_unet-fp32"], out, target="arm", run={"source": "picam"})
    return out


# ------------------------------------------------------------------------------------------------- plan


def test_plan_for_a_pi_with_a_service_is_exactly_these_commands(bundle_file):
    o = DeployOptions(host="pi@raspberrypi.local", bundle=bundle_file, version="0.1.0", service=True)
    steps = deploy_plan(o)
    h = "pi@raspberrypi.local"
    assert [s.argv for s in steps] == [
        [
            "ssh",
            "--",
            h,
            'python3 -c "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))" && mkdir -p edgeseg',
        ],
        ["scp", "--", str(bundle_file), f"{h}:edgeseg/"],
        [
            "ssh",
            "--",
            h,
            "python3 -m venv --system-site-packages edgeseg/venv"
            " && edgeseg/venv/bin/python -m pip install edgeseg==0.1.0",
        ],
        [
            "ssh",
            "--",
            h,
            "edgeseg/venv/bin/edgeseg install-bundle edgeseg/pi.tar.gz --dir edgeseg/bundle"
            " --service-unit edgeseg/edgeseg.service --service-name edgeseg",
        ],
        [
            "ssh",
            "--",
            h,
            "sudo -n install -m 0644 edgeseg/edgeseg.service /etc/systemd/system/edgeseg.service"
            " && sudo -n systemctl daemon-reload && sudo -n systemctl enable edgeseg.service"
            " && sudo -n systemctl restart edgeseg.service",
        ],
        ["ssh", "--", h, "sleep 5; systemctl is-active --quiet edgeseg.service"],
    ]


def test_plan_with_a_wheel_ssh_options_and_no_service(bundle_file, tmp_path):
    wheel = tmp_path / "edgeseg-0.1.0-py3-none-any.whl"
    o = DeployOptions(
        host="root@[::1]",
        bundle=bundle_file,
        version="0.1.0",
        remote_dir="~/opt/seg",
        python="/usr/bin/python3.11",
        system_site_packages=False,
        wheel=wheel,
        pip_args=["--index-url", "http://mirror.lan/simple"],
        identity=Path("/keys/id"),
        port=2222,
        ssh_config="/dev/null",
        ssh_options=["BatchMode=yes"],
    )
    steps = deploy_plan(o)
    common = ["-F", "/dev/null", "-i", "/keys/id", "-o", "Port=2222", "-o", "BatchMode=yes"]
    assert len(steps) == 4
    assert all(s.argv[: 1 + len(common)] == [s.argv[0], *common] for s in steps)
    assert steps[0].argv[-2] == "root@::1"  # ssh takes an IPv6 address bare ...
    assert steps[1].argv[-3:] == [str(bundle_file), str(wheel), "root@[::1]:opt/seg/"]  # ... scp in brackets
    pip = "opt/seg/venv/bin/python -m pip install --index-url http://mirror.lan/simple"
    assert steps[2].argv[-1] == (
        f"/usr/bin/python3.11 -m venv opt/seg/venv && {pip} opt/seg/{wheel.name}"
        f" && {pip} --no-deps --force-reinstall opt/seg/{wheel.name}"
    )
    assert steps[3].argv[-1] == "opt/seg/venv/bin/edgeseg install-bundle opt/seg/pi.tar.gz --dir opt/seg/bundle"


def test_root_needs_no_sudo_and_run_args_reach_the_unit(bundle_file):
    o = DeployOptions(
        host="root@minipc", bundle=bundle_file, version="0.1.0", service=True, service_name="scope1",
        run_args=["--log", "/var/log/scope 1.jsonl"],
    )
    steps = deploy_plan(o)
    assert "sudo" not in steps[4].argv[-1] and "systemctl enable scope1.service" in steps[4].argv[-1]
    remote = shlex.split(steps[3].argv[-1])
    assert remote[remote.index("--run-args") + 1] == "--log '/var/log/scope 1.jsonl'"
    text = dry_run_text(o, steps)
    assert 'ExecStart=/root/edgeseg/venv/bin/edgeseg run --bundle /root/edgeseg/bundle --no-display --log ' \
        '"/var/log/scope 1.jsonl"' in text
    for s in steps:
        assert s.shell() in text


@pytest.mark.parametrize(
    "host", ["-oProxyCommand=touch x", "pi@", "@host", "pi@host;rm", "pi@ho st", "pi@host:22", ""]
)
def test_plan_refuses_hosts_that_are_not_user_at_host(bundle_file, host):
    with pytest.raises(DeployError, match="is not USER@HOST"):
        deploy_plan(DeployOptions(host=host, bundle=bundle_file, version="0.1.0"))


@pytest.mark.parametrize("rdir", ["../x", "a/../../b", "x;rm -rf y", "$(id)", "/", "~", "a b"])
def test_plan_refuses_remote_folders_that_are_not_plain(rdir):
    with pytest.raises(DeployError, match="not a plain path"):
        remote_path(rdir)


def test_plan_refuses_an_unreleased_version_without_a_wheel(bundle_file):
    with pytest.raises(DeployError, match="pass --wheel"):
        deploy_plan(DeployOptions(host="pi@h", bundle=bundle_file, version="0.0.0+src"))
    with pytest.raises(DeployError, match="Key=Value"):
        deploy_plan(DeployOptions(host="pi@h", bundle=bundle_file, version="0.1.0", ssh_options=["-oX"]))


# ------------------------------------------------------------------------------------------------- unit


def test_systemd_unit_runs_headless_at_boot_and_restarts_on_failure():
    unit = systemd_unit(
        exe="/home/pi/edgeseg/venv/bin/edgeseg", bundle_dir="/home/pi/edgeseg/bundle", user="pi",
        workdir="/home/pi/edgeseg", run_args=["--log", "run 100%.jsonl", "--threshold", "0.4"],
    )
    lines = unit.splitlines()
    assert "User=pi" in lines and "Restart=on-failure" in lines and "WantedBy=multi-user.target" in lines
    assert "StartLimitIntervalSec=0" in lines  # a camera not ready at boot keeps being retried
    assert "SuccessExitStatus=143" in lines  # `systemctl stop` (SIGTERM, clean exit 143) is not a failure
    assert (
        'ExecStart=/home/pi/edgeseg/venv/bin/edgeseg run --bundle /home/pi/edgeseg/bundle --no-display '
        '--log "run 100%%.jsonl" --threshold 0.4'
    ) in lines
    assert systemd_quote('a"b$HOME\\') == '"a\\"b$$HOME\\\\"'
    with pytest.raises(DeployError):
        systemd_quote("a\nExecStartPre=/bin/rm")


def test_install_bundle_writes_a_unit_that_systemd_accepts(bundle_file, tmp_path):
    unit = tmp_path / "edgeseg.service"
    res = CliRunner().invoke(
        main,
        ["install-bundle", str(bundle_file), "--dir", str(tmp_path / "b"), "--service-unit", str(unit),
         "--run-args", "--log run.jsonl"],
    )
    assert res.exit_code == 0, res.output
    text = unit.read_text()
    exe = Path(sys.executable).parent / "edgeseg"
    assert f"ExecStart={exe} run --bundle {tmp_path / 'b'} --no-display --log run.jsonl" in text
    assert f"WorkingDirectory={tmp_path}" in text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit text was checked, not systemd's reading of it")
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if str(unit) in line]  # no ignored or bad setting


# ------------------------------------------------------------------------------------------ running a plan


def test_run_plan_stops_at_the_first_failing_step_with_its_fix(tmp_path):
    marker = tmp_path / "ran"
    steps = [
        Step("first", ["true"], "never shown"),
        Step("second", ["sh", "-c", "exit 7"], "do the thing"),
        Step("third", ["touch", str(marker)], "never shown"),
    ]
    seen = []
    with pytest.raises(DeployError) as err:
        run_plan(steps, progress=seen.append)
    assert str(err.value) == "step 2 (second) failed with exit code 7: do the thing"
    assert seen == ["[1/3] first", "[2/3] second"] and not marker.exists()


def test_cli_dry_run_prints_every_command_and_runs_none(bundle_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh, no scp: a dry run must not need them
    monkeypatch.chdir(tmp_path)
    wheel = tmp_path / "dist" / f"edgeseg-{__version__}-py3-none-any.whl"  # what `make wheel` leaves
    wheel.parent.mkdir()
    wheel.write_bytes(b"PK")
    res = CliRunner().invoke(
        main, ["deploy", "pi@raspberrypi.local", "--bundle", str(bundle_file), "--service", "--dry-run"]
    )
    assert res.exit_code == 0, res.output
    # edgeseg is on no package index: the wheel goes along by default, and pip installs that file
    o = DeployOptions(host="pi@raspberrypi.local", bundle=bundle_file, version=__version__, service=True, wheel=wheel)
    steps = deploy_plan(o)
    for s in steps:
        assert s.shell() in res.stdout
    assert steps[1].argv[-3:-1] == [str(bundle_file), str(wheel)]
    assert f"pip install edgeseg/{wheel.name}" in steps[2].argv[-1] and "edgeseg==" not in res.stdout
    assert "[1/" not in res.stdout and "User=pi" in res.stdout and "Restart=on-failure" in res.stdout


def test_cli_dry_run_with_no_wheel_installs_the_version_from_the_index(bundle_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    res = CliRunner().invoke(main, ["deploy", "pi@raspberrypi.local", "--bundle", str(bundle_file), "--no-wheel",
                                    "--dry-run"])
    assert res.exit_code == 0, res.output
    for s in deploy_plan(DeployOptions(host="pi@raspberrypi.local", bundle=bundle_file, version=__version__)):
        assert s.shell() in res.stdout
    assert f"pip install edgeseg=={__version__}" in res.stdout and ".whl" not in res.stdout


def test_without_a_built_wheel_a_checkout_builds_one_and_an_installed_edgeseg_says_how(tmp_path, monkeypatch):
    from edgeseg.device import deploy as deploy_mod

    monkeypatch.chdir(tmp_path)  # no dist/ here
    monkeypatch.setattr(deploy_mod, "source_checkout", lambda: None)  # edgeseg installed from a wheel
    seen = []
    # a dry run names the wheel it would build; a real deploy needs a wheel, and says how to get one in one line
    dry = deploy_mod.wheel_to_send("0.1.0", tmp_path, build=False, progress=seen.append)
    assert dry == tmp_path / "edgeseg-0.1.0-py3-none-any.whl" and "make wheel" in seen[0]
    with pytest.raises(DeployError) as err:
        deploy_mod.wheel_to_send("0.1.0", tmp_path, build=True)
    assert "pass --wheel" in str(err.value) and "--no-wheel" in str(err.value) and "\n" not in str(err.value)


def test_wheel_and_no_wheel_together_is_one_line(bundle_file, tmp_path):
    wheel = tmp_path / f"edgeseg-{__version__}-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    res = CliRunner().invoke(main, ["deploy", "pi@h", "--bundle", str(bundle_file), "--wheel", str(wheel),
                                    "--no-wheel", "--dry-run"])
    assert res.exit_code == 2 and res.stderr.strip() == "error: --wheel and --no-wheel together: drop one of them"


def test_a_checkout_finds_its_dist_wheel():
    from edgeseg.device.deploy import find_wheel, source_checkout

    assert source_checkout() == REPO  # the tests run from the checkout (editable install)
    found = find_wheel(__version__)
    assert found is None or found.name == f"edgeseg-{__version__}-py3-none-any.whl"


def test_cli_deploy_refuses_a_tampered_bundle_before_connecting(bundle_file, tmp_path):
    bad = tmp_path / "bad.tar.gz"
    data = bytearray(bundle_file.read_bytes())
    data[len(data) // 2] ^= 1
    bad.write_bytes(bytes(data))
    res = CliRunner().invoke(main, ["deploy", "pi@h", "--bundle", str(bad), "--dry-run"])
    assert res.exit_code == 2 and "truncated or corrupt" in res.stderr


# ------------------------------------------------------------------------------------- a real sshd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if SSHD is None:
        pytest.skip("OpenSSH server not installed (apt install openssh-server): the command plan is tested above")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n"
        f"PidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\n"
    )
    cmd = [SSHD, "-D", "-e", "-f", str(d / "sshd_config")]
    if os.geteuid() == 0:  # root's sshd wants /run/sshd: give it a private /run instead of touching the machine's
        if shutil.which("unshare") is None:
            pytest.skip("sshd as root needs unshare (util-linux) for a private /run")
        cmd = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs /run && mkdir -m 755 /run/sshd && exec "$@"', "sh",
               *cmd]
    log = open(d / "sshd.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    opts = ["-F", "/dev/null", "-i", str(d / "client_key"), "-o", f"Port={port}", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={d}/known_hosts", "-o", "StrictHostKeyChecking=accept-new",
            "-o", "ConnectTimeout=10"]
    host = f"{user}@127.0.0.1"
    for _ in range(50):
        if proc.poll() is not None:
            break
        if subprocess.run(["ssh", *opts, host, "true"], capture_output=True, timeout=30).returncode == 0:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.skip(f"sshd did not accept connections: {(d / 'sshd.log').read_text()[-500:]}")
    if proc.poll() is not None:
        pytest.skip(f"sshd could not start here: {(d / 'sshd.log').read_text()[-500:]}")
    yield {"host": host, "opts": opts, "port": port, "dir": d, "key": d / "client_key"}
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """An edgeseg wheel built from this source tree (a copy, so the tree gets no build/ folder)."""
    d = tmp_path_factory.mktemp("wheel")
    src = d / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("edge", "train", "export", "device"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(d / "dist"), str(src)],
        check=True, timeout=300,
    )
    (whl,) = (d / "dist").glob("edgeseg-*.whl")
    return whl


def _device_venv_with_offline_deps(device: Path) -> str:
    """Pre-create the device's venv so that pip finds edgeseg's dependencies without a network.

    The dependencies are those of this test's environment, made visible through a .pth file (torch and
    edgeseg itself left out); `edgeseg deploy` then runs `python -m venv` on it and `pip install --no-index`
    of the wheel for real.
    """
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(device / "venv")], check=True, timeout=120)
    site = Path(sysconfig.get_paths()["purelib"])
    deps = device / "deps"
    deps.mkdir()
    skip = ("edgeseg", "__editable__", "torch", "functorch", "pip", "setuptools", "_distutils_hack", "nvidia")
    for entry in site.iterdir():
        if not entry.name.lower().startswith(skip) and not entry.name.endswith(".pth"):
            (deps / entry.name).symlink_to(entry)
    (dev_site,) = (device / "venv" / "lib").glob("python3*/site-packages")
    (dev_site / "zz_test_deps.pth").write_text(f"{deps}\n")
    return base


@pytest.mark.slow
def test_deploy_to_a_real_sshd_installs_the_bundle_in_a_venv(sshd, wheel, bundle_file, tmp_path):
    device = tmp_path / "device"
    device.mkdir()
    base = _device_venv_with_offline_deps(device)
    ssh_args = ["--ssh-config", "/dev/null", "-i", str(sshd["key"]), "--port", str(sshd["port"]),
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={sshd['dir']}/known_hosts",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "ConnectTimeout=10"]
    cmd = [sys.executable, "-m", "edgeseg.cli", "deploy", sshd["host"], "--bundle", str(bundle_file),
           "--wheel", str(wheel), "--remote-dir", str(device), "--python", base, "--pip-args", "--no-index",
           "--no-system-site-packages",
           *ssh_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[4/4] verify the bundle and install it" in proc.stdout
    assert f"deployed: ssh {sshd['host']} {device}/venv/bin/edgeseg run --bundle {device}/bundle" in proc.stdout
    # what landed on the "device": the archive, the wheel, the venv with edgeseg from the wheel, the bundle
    assert (device / bundle_file.name).read_bytes() == bundle_file.read_bytes()
    man = json.loads((device / "bundle" / "manifest.json").read_text())
    assert man["models"][0]["name"] == "half_unet-fp32" and man["run"]["source"] == "picam"
    assert sorted(os.listdir(device / "bundle")) == ["manifest.json", "models"]
    where = subprocess.run(
        [str(device / "venv" / "bin" / "python"), "-c", "import edgeseg; print(edgeseg.__file__, edgeseg.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert where[0].startswith(str(device / "venv")) and where[1] == __version__
    # the deployed edgeseg verifies the installed bundle over ssh, and refuses it once a byte is flipped
    check = ["ssh", *sshd["opts"], sshd["host"], f"{device}/venv/bin/edgeseg install-bundle {device}/bundle --check"]
    ok = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "verified, 1 model(s)" in ok.stdout, ok.stderr
    model = device / "bundle" / "models" / "half_unet-fp32.onnx"
    data = bytearray(model.read_bytes())
    data[100] ^= 1
    model.write_bytes(bytes(data))
    bad = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "half_unet-fp32.onnx does not match its sha256" in bad.stderr
