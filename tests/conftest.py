from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "edge" / "samples" / "dsb2018_sample"
SHARED = REPO.parent / "shared"


def _load_benchmark_module(name: str):
    """``import NAME`` for a module of benchmarks/ that the tests share (its builders exist there once)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_load_benchmark_module("fault_inputs")  # tests/test_faults_inputs.py: from fault_inputs import png_claiming, ...


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test session uses its own preprocessed-cache folder."""
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture
def kaggle_copy(tmp_path) -> Path:
    """A writable copy of the bundled Kaggle-layout sample."""
    dst = tmp_path / "kaggle"
    shutil.copytree(SAMPLE, dst)
    return dst


def write_disc_pair(folder: Path, name: str, size=(64, 80), centres=((20, 20), (40, 50)), r=8, binary=False):
    """Write a paired-layout image + mask with bright discs on black; returns the label image."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    labels = np.zeros(size, np.uint16)
    for i, (y, x) in enumerate(centres, start=1):
        cv2.circle(labels, (x, y), r, i, -1)
    img = np.where(labels > 0, 200, 10).astype(np.uint8)
    cv2.imwrite(str(folder / "images" / f"{name}.png"), img)
    mask = (labels > 0).astype(np.uint8) * 255 if binary else labels
    cv2.imwrite(str(folder / "masks" / f"{name}.png"), mask)
    return labels


def write_threshold_onnx(path: Path, card: dict | None = None, out_channels: int = 1, size=256, dynamic_hw=False,
                         stacked=False):
    """A real (tiny) exported model, built with onnx.helper: foreground = sigmoid(8 * (mean(image) - 0.5)).

    A pixel-wise model sees the same thing at every scale, so tiled and untiled inference must agree.
    The second output (``boundary``) of a two-channel model is the foreground's complement; ``stacked``: both
    channels in the one output ``probabilities``, as ``edgeseg export`` writes them. The card goes into
    ``metadata_props`` and beside the file, as ``edgeseg export`` does. Returns the path.
    """
    import json

    import onnx
    from onnx import TensorProto, helper

    from edgeseg.card import CARD_METADATA_KEY, new_card, write_card

    h = w = size
    if dynamic_hw:
        h, w = "H", "W"
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["m", "half"], ["d"]),
        helper.make_node("Mul", ["d", "gain"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["foreground"]),
    ]
    outputs = [helper.make_tensor_value_info("foreground", TensorProto.FLOAT, ["N", 1, h, w])]
    inits = [
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [8.0]),
    ]
    if out_channels == 2:
        nodes.append(helper.make_node("Sub", ["one", "foreground"], ["boundary"]))
        inits.append(helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))
        outputs.append(helper.make_tensor_value_info("boundary", TensorProto.FLOAT, ["N", 1, h, w]))
        if stacked:
            nodes.append(helper.make_node("Concat", ["foreground", "boundary"], ["probabilities"], axis=1))
            outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2, h, w])]
    graph = helper.make_graph(
        nodes, "threshold", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, h, w])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = new_card(
        "threshold_test",
        name=Path(path).stem,
        format="onnx",
        out_channels=out_channels,
        outputs=["foreground", "boundary"][:out_channels],
        threshold=0.5,
        **{"postprocess": {"method": "cc", "threshold": 0.5, "min_size": 0},
           "training_scale": {"median_nucleus_diameter_px": 12.0}, **(card or {})},
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_METADATA_KEY, json.dumps(card)
    onnx.save(model, str(path))
    write_card(path, card)
    return Path(path)


def disc_frame(size=(300, 300), diameter=12, spacing=30, bright=230, dark=20):
    """A synthetic fluorescence frame: a grid of bright discs; returns (uint8 frame, int32 labels)."""
    labels = np.zeros(size, np.int32)
    k = 0
    for y in range(spacing // 2, size[0] - diameter, spacing):
        for x in range(spacing // 2, size[1] - diameter, spacing):
            k += 1
            cv2.circle(labels, (x, y), diameter // 2, k, -1)
    return np.where(labels > 0, bright, dark).astype(np.uint8), labels


def two_touching_discs(shape=(60, 80)):
    """Labels of two discs that overlap along a line (nuclei that touch)."""
    labels = np.zeros(shape, np.int32)
    cv2.circle(labels, (30, 30), 12, 1, -1)
    cv2.circle(labels, (52, 30), 12, 2, -1)
    return labels


def sigint_default() -> None:
    """``preexec_fn`` for a subprocess a test stops with SIGINT (Ctrl-C): a test run started in the background by a
    non-interactive shell (``nohup make test &``, some CI runners) hands its children SIGINT *ignored*, and Python
    then installs no KeyboardInterrupt handler, so the Ctrl-C under test would never arrive."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
