"""Odd input files for the fault cases, shared by ``benchmarks/faults_table.py`` and the tests of issue 19
(``tests/test_faults_inputs.py``): each builder exists here once.

Images that only claim a huge size, model files that load but do not do what their card says, or fail when they
run, and TIFF stacks cut short. The scripts run as ``python benchmarks/NAME.py`` and ``import fault_inputs``; the
tests load this file through ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from edgeseg.card import CARD_METADATA_KEY, new_card, write_card


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says ``width`` x ``height`` (8-bit grey) and whose pixel data is a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def random_frames(n: int, size: int = 96) -> np.ndarray:
    """A stack of ``n`` random 8-bit frames (incompressible enough that a truncation cuts the data)."""
    return (np.random.default_rng(0).random((n, size, size)) * 255).astype(np.uint8)


def truncate(path: Path, keep: float) -> Path:
    """Cut ``path`` to the first ``keep`` (0-1) of its bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def bad_output_onnx(path: Path, nodes, inits, out_hw) -> Path:
    """A real ONNX model (image 1x3x256x256 in, "foreground" out of ``out_hw``) whose card says a 256x256 output."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 256, 256])],
        [helper.make_tensor_value_info("foreground", TensorProto.FLOAT, ["N", 1, *out_hw])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    card = new_card("bad_test", name=path.stem, format="onnx")
    entry = m.metadata_props.add()
    entry.key, entry.value = CARD_METADATA_KEY, json.dumps(card)
    onnx.save(m, str(path))
    write_card(path, card)
    return path


def half_output_onnx(path: Path, pool: str = "AveragePool") -> Path:
    """A model whose output is 128x128 (a 2x2 ``pool`` of the input's mean) where its card says 256x256."""
    from onnx import helper

    return bad_output_onnx(path, [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1], keepdims=1),
        helper.make_node(pool, ["m"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Sigmoid", ["p"], ["foreground"])], [], (128, 128))


def failing_onnx(path: Path) -> Path:
    """A model that loads and fails when it runs: a Reshape to 7 x ... that 256 x 256 does not divide."""
    from onnx import TensorProto, helper

    return bad_output_onnx(path, [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["foreground"])],
        [helper.make_tensor("shape", TensorProto.INT64, [4], [7, 1, -1, 256])], (256, 256))


def plays(path: Path) -> bool:
    """Whether a recording opens and gives its first frame (a torn or empty file does not)."""
    cap = cv2.VideoCapture(str(path))
    try:
        return bool(cap.isOpened() and cap.read()[0])
    finally:
        cap.release()
