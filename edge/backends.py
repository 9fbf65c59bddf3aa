"""Inference backends: ONNX Runtime and OpenVINO behind one small interface (torch-free).

A backend is a predictor (see :mod:`edgeseg.evaluate`): float32 ``N x 3 x H x W`` (the output of
:func:`edgeseg.preprocess.preprocess`) in, float32 ``N x C x H x W`` probabilities out, with the
channels in the order of :attr:`Backend.output_names` (``foreground``, then ``boundary`` for a model
with the instance head). Exported files carry the sigmoid inside the graph.

Each backend reads back what it really executes (:attr:`Backend.executed_precision`): OpenVINO runs
an "FP32" file as bf16 on CPUs with AMX and as fp16 on ARM unless told otherwise, and that is what a
benchmark or a card must record.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from .card import CARD_METADATA_KEY
from .errors import ModelError

BACKENDS = ("onnxruntime", "openvino")
OUTPUT_ORDER = ("foreground", "boundary")
_OV_TYPES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8"}


def available_backends() -> list[str]:
    """The backends whose Python package is installed here."""
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def _default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _sorted_outputs(names: list[str]) -> list[str]:
    """Known outputs in the contract's order (foreground, boundary), unknown ones after them."""
    known = [n for n in OUTPUT_ORDER if n in names]
    return known + [n for n in names if n not in known]


def _check_input(x: np.ndarray, shape: tuple, path: Path) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or any(s > 0 and s != d for s, d in zip(shape[1:], x.shape[1:], strict=True)):
        raise ModelError(
            f"{path.name} expects input {tuple(shape)}, got {tuple(x.shape)}",
            "preprocess frames to the size in the model card",
        )
    return x


class Backend:
    """Base class: subclasses fill the attributes and implement :meth:`_run`."""

    name: str = "?"

    def __init__(self, path: Path, threads: int | None):
        self.path = Path(path)
        self.threads = threads
        self.input_name = "image"
        self.input_shape: tuple = (1, 3, 256, 256)
        self.output_names: list[str] = ["foreground"]
        self.executed_precision = "fp32"
        self.details: dict = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = _check_input(x, self.input_shape, self.path)
        if self.input_shape[0] > 0 and x.shape[0] != self.input_shape[0]:  # a static batch: one image at a time
            return np.concatenate([self._run(x[i : i + 1]) for i in range(x.shape[0])])
        return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def info(self) -> dict:
        return {
            "backend": self.name,
            "path": str(self.path),
            "threads": self.threads,
            "input_shape": list(self.input_shape),
            "outputs": list(self.output_names),
            "executed_precision": self.executed_precision,
            **self.details,
        }

    def close(self) -> None:
        """Release the runtime's resources (the object must not be used afterwards)."""


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        super().__init__(path, threads or _default_threads())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise ModelError(f"ONNX Runtime cannot load {path} ({str(exc).splitlines()[0][:160]})",
                             "re-export the model with `edgeseg export`") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)
        self.output_names = _sorted_outputs([o.name for o in self.session.get_outputs()])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        card = _json_or_none(self.metadata.get(CARD_METADATA_KEY))
        # ONNX Runtime's CPU provider runs QDQ int8 graphs with integer kernels and everything else in fp32
        # (fp16 weights are up-cast); there is no hidden bf16 mode as in OpenVINO.
        self.executed_precision = "int8" if (card or {}).get("precision") == "int8" else "fp32"
        self.details = {"provider": "CPUExecutionProvider", "onnxruntime": ort.__version__}

    def _run(self, x: np.ndarray) -> np.ndarray:
        outs = self.session.run(self.output_names, {self.input_name: x})
        return np.concatenate([np.asarray(o, np.float32) for o in outs], axis=1)


class OpenVinoBackend(Backend):
    """OpenVINO on the CPU. ``inference_precision`` None leaves the device's default (bf16 on AMX CPUs)."""

    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None, inference_precision: str | None = None):
        import openvino as ov

        super().__init__(path, threads or _default_threads())
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise ModelError(f"OpenVINO cannot read {path} ({str(exc).splitlines()[0][:160]})",
                             "re-export the model with `edgeseg export`") from exc
        self.rt_card = None
        if model.has_rt_info(CARD_METADATA_KEY):
            self.rt_card = _json_or_none(model.get_rt_info(CARD_METADATA_KEY).astype(str))
        config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY"}
        if inference_precision:
            config["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[inference_precision]
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise ModelError(f"OpenVINO cannot compile {path} ({str(exc).splitlines()[0][:160]})",
                             "re-export the model with `edgeseg export`") from exc
        inp = self.compiled.inputs[0]
        self.input_name = inp.get_any_name()
        self.input_shape = tuple(d.get_length() if d.is_static else -1 for d in inp.get_partial_shape())
        self._outputs = {_output_name(o): o for o in self.compiled.outputs}
        self.output_names = _sorted_outputs(list(self._outputs))
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        float_precision = _OV_TYPES.get(hint, hint)
        quantised = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        # int8 files run their quantised convolutions in int8 and the rest at the device's float precision
        self.executed_precision = f"int8+{float_precision}" if quantised else float_precision
        self.details = {"device": "CPU", "inference_precision_hint": float_precision, "openvino": ov.__version__}
        self.request = self.compiled.create_infer_request()

    def _run(self, x: np.ndarray) -> np.ndarray:
        res = self.request.infer({self.input_name: x})
        return np.concatenate([np.asarray(res[self._outputs[n]], np.float32) for n in self.output_names], axis=1)


def _output_name(port) -> str:
    """A tensor may carry several names (``/Sigmoid_output_0`` and ``foreground``): prefer the contract's."""
    names = port.get_names()
    for n in OUTPUT_ORDER:
        if n in names:
            return n
    return port.get_any_name()


def _json_or_none(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def open_backend(path: str | Path, backend: str = "auto", threads: int | None = None, **options) -> Backend:
    """Open an exported model file (``.onnx`` or OpenVINO ``.xml``) with the chosen backend.

    ``backend="auto"`` picks ONNX Runtime for ``.onnx`` and OpenVINO for ``.xml``; OpenVINO also
    reads ``.onnx``. ``options`` go to the backend (``inference_precision`` for OpenVINO).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found", "give an exported .onnx or .xml file or a zoo name")
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".xml"):
        raise ModelError(f"{path.name} is not an exported model", "export it first: edgeseg export MODEL --format onnx")
    if backend == "auto":
        backend = "openvino" if suffix == ".xml" else "onnxruntime"
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}", f"use one of: auto, {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and suffix == ".xml":
        raise ModelError(f"ONNX Runtime cannot run the OpenVINO file {path.name}",
                         "use --backend openvino, or the .onnx variant of the model")
    if backend not in available_backends():
        raise ModelError(f"backend {backend} is not installed", f"pip install {backend}")
    if backend == "openvino":
        return OpenVinoBackend(path, threads, **options)
    return OnnxRuntimeBackend(path, threads)


def read_embedded_card(path: str | Path) -> dict | None:
    """The model card stored inside an exported file (ONNX metadata_props / OpenVINO rt_info), if any."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"cannot read {path}", "re-export the model") from exc
        return _json_or_none(sess.get_modelmeta().custom_metadata_map.get(CARD_METADATA_KEY))
    if path.suffix.lower() == ".xml":
        import openvino as ov

        model = ov.Core().read_model(str(path))
        if model.has_rt_info(CARD_METADATA_KEY):
            return _json_or_none(model.get_rt_info(CARD_METADATA_KEY).astype(str))
        return None
    return None
