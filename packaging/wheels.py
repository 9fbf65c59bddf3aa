"""Build the two wheels a user installs without a package index (what `make wheel` runs):

    python packaging/wheels.py dist     # dist/edgeseg-VERSION-py3-none-any.whl + dist/edgeseg_checkpoints-VERSION-*.whl
    python packaging/wheels.py OUT --runtime-only   # the edgeseg wheel only (what `edgeseg deploy` builds)

``edgeseg``: the package, built from a clean copy of the tree (pyproject.toml, README.md and the mapped folders):
no stale build/ or egg-info of an earlier build can add a file. ``edgeseg-checkpoints``: the zoo's PyTorch
checkpoints (``edge/zoo/*.pt`` with their cards), data only.

The runtime wheel (``edgeseg``) leaves the checkpoints out (pyproject's ``exclude-package-data``): a torch-free
device cannot load them. The ``[train]`` and ``[export]`` extras depend on this data-only wheel, of the same version,
and :func:`edgeseg.zoo.checkpoint_folder` finds them through its package ``edgeseg_checkpoints``, offline:

    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    pip install --find-links dist 'dist/edgeseg-0.1.0-py3-none-any.whl[train,export]'

A source checkout (``pip install -e '.[dev]'``) reads them where they are, in edge/zoo/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "edge" / "zoo"
PACKAGE = "edgeseg_checkpoints"
SOURCES = ("pyproject.toml", "README.md", "edge", "train", "export", "device")  # what the edgeseg wheel is built from


def version() -> str:
    m = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    if not m:
        sys.exit("wheels: no version in pyproject.toml")
    return m.group(1)


def checkpoints() -> list[Path]:
    """The checkpoints of the zoo, each with its card beside it."""
    return sorted(p for p in ZOO.glob("*.pt") if p.with_name(p.stem + ".card.json").is_file())


PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "edgeseg-checkpoints"
version = "{version}"
description = "The PyTorch checkpoints of the edgeseg model zoo (data only; for edgeseg[train] and edgeseg[export])."
requires-python = ">=3.10"
license = "Apache-2.0"
authors = [{{ name = "edgeseg developers" }}]

[tool.setuptools]
packages = ["{package}"]
include-package-data = false

[tool.setuptools.package-data]
{package} = ["*.pt", "*.card.json"]
"""

INIT = '''"""The PyTorch checkpoints of the edgeseg model zoo, and their cards (data only): edgeseg.zoo reads them."""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
'''


def pip_wheel(src: Path, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(out), str(src)], check=True)


def build_runtime(out: Path) -> Path:
    """dist/edgeseg-VERSION-py3-none-any.whl from a clean copy of the tree."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("edgeseg-*.whl"):
        old.unlink()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".edgeseg-export-*")
    with tempfile.TemporaryDirectory(prefix="edgeseg-wheel-") as tmp:
        for name in SOURCES:
            (shutil.copytree(REPO / name, Path(tmp) / name, ignore=ignore) if (REPO / name).is_dir()
             else shutil.copy2(REPO / name, Path(tmp) / name))
        pip_wheel(Path(tmp), out)
    (wheel,) = out.glob("edgeseg-*.whl")
    print(f"wheels: {wheel} ({wheel.stat().st_size / 1e6:.1f} MB)")
    return wheel


def build_checkpoints(out: Path) -> Path:
    """dist/edgeseg_checkpoints-VERSION-py3-none-any.whl: the zoo's checkpoints and their cards."""
    files = checkpoints()
    if not files:
        sys.exit(f"wheels: no checkpoint with a card in {ZOO}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeseg-checkpoints-") as tmp:
        src = Path(tmp)
        (src / "pyproject.toml").write_text(PYPROJECT.format(version=version(), package=PACKAGE))
        pkg = src / PACKAGE
        pkg.mkdir()
        (pkg / "__init__.py").write_text(INIT)
        for pt in files:
            shutil.copy2(pt, pkg / pt.name)
            shutil.copy2(pt.with_name(pt.stem + ".card.json"), pkg)
        for old in out.glob(f"{PACKAGE}-*.whl"):
            old.unlink()
        pip_wheel(src, out)
    (wheel,) = out.glob(f"{PACKAGE}-*.whl")
    print(f"wheels: {wheel} ({wheel.stat().st_size / 1e6:.1f} MB, {len(files)} checkpoints)")
    return wheel


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    target = Path(args[0] if args else REPO / "dist")
    build_runtime(target)
    if "--runtime-only" not in sys.argv:  # `edgeseg deploy` needs the runtime wheel only
        build_checkpoints(target)
