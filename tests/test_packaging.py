"""The wheels a user installs, built offline from this tree: every module at its mapped path, the package data, nothing
else (no tests, no benchmarks, no PyTorch checkpoint), and a build without setuptools deprecation warnings; the
zoo's checkpoints in their own data-only wheel (edgeseg-checkpoints), which the torch extras require and the zoo
reads once it is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from edgeseg import __version__

REPO = Path(__file__).resolve().parents[1]
# pyproject.toml's [tool.setuptools] package-dir: source folder -> path in the wheel
MAPPING = {"edge": "edgeseg", "train": "edgeseg/train", "export": "edgeseg/export", "device": "edgeseg/device"}
# its [tool.setuptools.package-data], as (source folder, glob); "**" reaches every depth
PACKAGE_DATA = [("edge", "zoo/*"), ("edge", "samples/**/*"), ("edge", "splits/*"), ("device", "static/*")]
DATA_DIRS = ["edgeseg/zoo", "edgeseg/samples", "edgeseg/splits", "edgeseg/device/static"]
# the zoo's PyTorch checkpoints and their cards: in the edgeseg-checkpoints wheel, not in the runtime one
CHECKPOINTS = sorted(p.name for p in (REPO / "edge" / "zoo").glob("*.pt"))
CHECKPOINT_FILES = sorted(CHECKPOINTS + [n.removesuffix(".pt") + ".card.json" for n in CHECKPOINTS])
# what never goes into the wheel (the copy of the tree leaves out what a fresh checkout does not have)
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache",
                              ".ruff_cache", ".cache", "edgeseg-runs", "runs", "out", ".whl", ".gpu", ".pi-smoke")


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
    expected -= {f"edgeseg/zoo/{n}" for n in CHECKPOINT_FILES}
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


def test_the_runtime_wheel_carries_no_pytorch_checkpoint_nor_its_card(built):
    _, names, _, _ = built
    assert len(CHECKPOINTS) >= 4  # fast_scnn, fast_scnn_he, half_unet, mobilenetv2_unet
    assert not [n for n in names if n.endswith(".pt")]
    zoo = {n.removeprefix("edgeseg/zoo/") for n in names if n.startswith("edgeseg/zoo/")}
    assert not zoo & set(CHECKPOINT_FILES)
    assert "fast_scnn-int8.card.json" in zoo and "half_unet-int8-arm.onnx" in zoo  # the exported files stay


def test_pyproject_leaves_out_exactly_the_checkpoints_of_the_zoo():
    text = (REPO / "pyproject.toml").read_text()
    block = text.split("[tool.setuptools.exclude-package-data]", 1)[1].split("\n[", 1)[0]
    excluded = set(re.findall(r'"zoo/([^"]+)"', block))
    cards = {n for n in CHECKPOINT_FILES if n.endswith(".card.json")}
    assert excluded == {"*.pt"} | cards, "one line per network's checkpoint card (a new network: add its card)"


def test_the_torch_extras_require_the_checkpoints_wheel_of_the_same_version_and_dev_does_not(built):
    wheel, _, _, _ = built
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read("edgeseg-0.1.0.dist-info/METADATA").decode().splitlines()
    requires = [x.removeprefix("Requires-Dist: ") for x in meta if x.startswith("Requires-Dist:")]
    for extra in ("train", "export"):
        assert f'edgeseg-checkpoints=={__version__}; extra == "{extra}"' in requires
    dev = [r for r in requires if r.endswith('extra == "dev"')]
    assert 'edgeseg[export-libs,train-libs]; extra == "dev"' in dev  # the libraries only: `pip install -e '.[dev]'`
    assert not [r for r in dev if "checkpoints" in r]  # needs no dist/ (a source checkout has them in edge/zoo)


@pytest.fixture(scope="module")
def checkpoints_wheel(tmp_path_factory):
    sys.path.insert(0, str(REPO / "packaging"))
    try:
        import wheels
    finally:
        sys.path.remove(str(REPO / "packaging"))
    return wheels.build_checkpoints(tmp_path_factory.mktemp("checkpoints"))


def test_the_checkpoints_wheel_holds_every_checkpoint_with_its_card_and_nothing_else(checkpoints_wheel):
    assert checkpoints_wheel.name == f"edgeseg_checkpoints-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(checkpoints_wheel) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        meta = zf.read(f"edgeseg_checkpoints-{__version__}.dist-info/METADATA").decode()
        for name in CHECKPOINT_FILES:
            assert zf.read(f"edgeseg_checkpoints/{name}") == (REPO / "edge" / "zoo" / name).read_bytes()
    data = sorted(n.removeprefix("edgeseg_checkpoints/") for n in names if not n.startswith("edgeseg_checkpoints-"))
    assert data == sorted(CHECKPOINT_FILES + ["__init__.py"])
    assert "License-Expression: Apache-2.0" in meta.splitlines() and "Requires-Dist" not in meta


def test_the_zoo_finds_the_checkpoints_of_the_installed_wheel(checkpoints_wheel, tmp_path, monkeypatch):
    """An installed runtime (its zoo without any .pt) plus the checkpoints wheel: the torch side sees every network."""
    from edgeseg import zoo as zoo_mod
    from edgeseg.card import verify_files

    site = tmp_path / "site"
    with zipfile.ZipFile(checkpoints_wheel) as zf:
        zf.extractall(site)  # what pip install does with a pure-Python wheel
    runtime_zoo = tmp_path / "zoo"
    runtime_zoo.mkdir()
    for p in (REPO / "edge" / "zoo").glob("half_unet-int8*"):
        shutil.copy(p, runtime_zoo)
    monkeypatch.setattr(zoo_mod, "ZOO_DIR", runtime_zoo)
    assert zoo_mod.checkpoint_folder() is None  # not installed in this venv: a source checkout has them in edge/zoo
    monkeypatch.syspath_prepend(str(site))
    assert zoo_mod.checkpoint_folder() == site / "edgeseg_checkpoints"
    zoo = zoo_mod.Zoo()
    ref = zoo.checkpoint("half_unet")
    assert ref.path == site / "edgeseg_checkpoints" / "half_unet.pt" and ref.format == "torch"
    verify_files(ref.path, ref.card)
    assert {r.name for r in zoo.entries} >= {"half_unet", "half_unet-int8", "mobilenetv2_unet"}
    assert zoo_mod.resolve_model("half_unet").path == ref.path


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
