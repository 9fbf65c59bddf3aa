"""The wheel a user installs, built offline from this tree: every module at its mapped path, the package data, nothing
else (no tests, no benchmarks), and a build without setuptools deprecation warnings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]
# pyproject.toml's [tool.setuptools] package-dir: source folder -> path in the wheel
MAPPING = {"edge": "edgeseg", "train": "edgeseg/train", "export": "edgeseg/export", "device": "edgeseg/device"}
# its [tool.setuptools.package-data], as (source folder, glob); "**" reaches every depth
PACKAGE_DATA = [("edge", "zoo/*"), ("edge", "samples/**/*"), ("edge", "splits/*"), ("device", "static/*")]
DATA_DIRS = ["edgeseg/zoo", "edgeseg/samples", "edgeseg/splits", "edgeseg/device/static"]
# what never goes into the wheel (the copy of the tree leaves out what a fresh checkout does not have)
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache",
                              ".ruff_cache", ".cache", "edgeseg-runs", "runs", "out", ".whl", ".gpu")


def _source_files(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel path, its file names, the build's output, the copied source tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=SKIP, symlinks=True)  # a clean copy: the build writes build/ and egg-info there
    out = tmp / "dist"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--check-build-dependencies",
         "--no-index", "-v", "-w", str(out), str(src)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    wheels = list(out.glob("edgeseg-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
    print(f"\n{wheels[0].name}: {wheels[0].stat().st_size / 1e6:.1f} MB, {len(names)} files")
    return wheels[0], names, output, src


def test_the_package_dir_mapping_is_the_one_in_pyproject():
    text = (REPO / "pyproject.toml").read_text()
    line = next(x for x in text.splitlines() if x.startswith("package-dir"))
    assert dict(re.findall(r'"([\w.]+)" = "(\w+)"', line)) == {v.replace("/", "."): k for k, v in MAPPING.items()}


def test_every_module_is_in_the_wheel_at_its_mapped_path(built):
    _, names, _, src = built
    expected = {f"{prefix}/{p.relative_to(src / folder).as_posix()}"
                for folder, prefix in MAPPING.items() for p in _source_files(src / folder) if p.suffix == ".py"}
    got = {n for n in names if n.endswith(".py")}
    assert expected - got == set(), f"modules missing from the wheel: {sorted(expected - got)}"
    assert got - expected == set(), f"modules in the wheel that are not in the source: {sorted(got - expected)}"
    # every subpackage, found without a list: train/models (missed by the old hand-written list) and edge's own
    assert "edgeseg/train/models/__init__.py" in got and "edgeseg/train/models/registry.py" in got
    packages = {PurePosixPath(n).parent.as_posix() for n in got if n.endswith("/__init__.py")}
    assert packages == {f"{prefix}/{p.parent.relative_to(src / folder).as_posix()}".rstrip("/.")
                        for folder, prefix in MAPPING.items() for p in (src / folder).rglob("__init__.py")
                        if "__pycache__" not in p.parts}


def test_package_data_is_in_the_wheel_and_data_folders_are_not_packages(built):
    _, names, _, src = built
    expected = {f"{MAPPING[folder]}/{p.relative_to(src / folder).as_posix()}"
                for folder, pattern in PACKAGE_DATA for p in (src / folder).glob(pattern) if p.is_file()}
    got = set(names)
    assert expected - got == set(), f"package data missing from the wheel: {sorted(expected - got)}"
    # the data the runtime and the tests rely on, by name
    for needed in ("edgeseg/zoo/fast_scnn-int8.onnx", "edgeseg/zoo/fast_scnn-int8.card.json",
                   "edgeseg/samples/clip/cancer_cell_migration_crop.tif", "edgeseg/samples/clip/LICENSE-CC-BY-4.0.txt",
                   "edgeseg/samples/CREDITS.md", "edgeseg/splits/dsb2018_stage1_train.json",
                   "edgeseg/device/static/index.html"):
        assert needed in got, needed
    assert sum(n.startswith("edgeseg/samples/dsb2018_sample/") and "/images/" in n for n in names) == 8
    # the data folders stay folders of data: no __init__.py or module made up for them
    assert not [n for n in names if n.endswith(".py") and any(n.startswith(d + "/") for d in DATA_DIRS)]


def test_nothing_else_sneaks_into_the_wheel(built):
    _, names, _, src = built
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"edgeseg", "edgeseg-0.1.0.dist-info"}, tops
    assert not [n for n in names if re.search(r"(^|/)(tests?|benchmarks|docs)/|(^|/)(test_\w+|conftest)\.py$", n)]
    sources = {f"{prefix}/{p.relative_to(src / folder).as_posix()}"
               for folder, prefix in MAPPING.items() for p in _source_files(src / folder)}
    stray = [n for n in names if not n.startswith("edgeseg-0.1.0.dist-info/") and n not in sources]
    assert not stray, f"files in the wheel that are not in the mapped folders: {stray}"


def test_metadata_declares_the_license_the_pep_639_way(built):
    wheel, _, _, _ = built
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read("edgeseg-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta.splitlines()
    assert not [x for x in meta.splitlines() if x.startswith("License:")]  # the deprecated free-text field


def test_the_build_prints_no_setuptools_deprecation_warning(built):
    _, _, output, _ = built
    assert "SetuptoolsDeprecationWarning" not in output
    # pip relays the backend's warnings as BuildBackendWarning; any Python warning class at all is a regression
    warnings = sorted(set(re.findall(r"\b[A-Z]\w*Warning\b", output)))
    assert not warnings, [x for x in output.splitlines() if "Warning" in x][:20]
    assert "deprecated" not in output.lower(), [x for x in output.splitlines() if "deprecated" in x.lower()][:20]
