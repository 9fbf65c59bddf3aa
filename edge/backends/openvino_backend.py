"""OpenVINO on the CPU: the backend for OpenVINO IR (``.xml`` + ``.bin``); it reads ``.onnx`` too."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..card import CARD_METADATA_KEY
from ..errors import ModelError
from . import OUTPUT_ORDER, STACKED_OUTPUT, Backend, channel_layout, default_threads, join_channels, json_or_none

_OV_TYPES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8"}
# OpenVINO's ARM plug-in runs a file in fp16 by default. For an ONNX file that moves the counts: on the emulated
# Pi 5 (Cortex-A76, 5 frames of the shipped clip) shuffle_unet_px-int8.onnx counted 20.0 nuclei a frame in fp16 and
# 14.0 in fp32 (ONNX Runtime: 13.4 there and on x86), its -int8-arm file 20.6 and 13.6, its FP32 file 12.8 and 13.8;
# its OpenVINO IR (NNCF) counts what x86 counts in fp16 (benchmarks/results/pi_smoke_partial.md). So an .onnx on
# ARM runs in fp32 unless the caller asks otherwise.
ARM_ONNX_PRECISION = "fp32"


class OpenVinoBackend(Backend):
    """OpenVINO on the CPU. ``inference_precision`` None leaves the device's default (bf16 on AMX CPUs), except for
    an ``.onnx`` file on ARM, which runs in fp32 (:data:`ARM_ONNX_PRECISION`)."""

    name = "openvino"
    formats = ("openvino", "onnx")
    options = ("inference_precision",)

    def __init__(self, path: Path, threads: int | None = None, card=None, inference_precision: str | None = None):
        import openvino as ov

        super().__init__(path, threads or default_threads(), card)
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise ModelError(f"OpenVINO cannot read {path} ({str(exc).splitlines()[0][:160]})",
                             "re-export the model with `edgeseg export`") from exc
        self.rt_card = None
        if model.has_rt_info(CARD_METADATA_KEY):
            self.rt_card = json_or_none(model.get_rt_info(CARD_METADATA_KEY).astype(str))
        config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY"}
        if inference_precision is None and Path(path).suffix.lower() == ".onnx":
            from ..zoo import cpu_family

            inference_precision = ARM_ONNX_PRECISION if cpu_family() == "arm" else None
        if inference_precision:
            config["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[inference_precision]
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise ModelError(f"OpenVINO cannot compile {path} ({_what(exc)})",
                             "re-export the model with `edgeseg export`") from exc
        inp = self.compiled.inputs[0]
        self.input_name = inp.get_any_name()
        self.input_shape = tuple(d.get_length() if d.is_static else -1 for d in inp.get_partial_shape())
        ports = {_output_name(o): o for o in self.compiled.outputs}
        shape = self.compiled.outputs[0].get_partial_shape()
        width = shape[1].get_length() if len(shape) > 1 and shape[1].is_static else None
        fetch, self.output_names = channel_layout(list(ports), self.rt_card or card, width)
        self._fetch = [ports[n] for n in fetch]
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        float_precision = _OV_TYPES.get(hint, hint)
        quantised = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        # int8 files run their quantised convolutions in int8 and the rest at the device's float precision
        self.executed_precision = f"int8+{float_precision}" if quantised else float_precision
        self.details = {"device": "CPU", "inference_precision_hint": float_precision, "openvino": ov.__version__}
        self.request = self.compiled.create_infer_request()

    def check_first_inference(self) -> None:
        """One inference on a blank input, checked: OpenVINO's ARM plug-in compiles some files on some CPUs (the
        INT8 ONNX files on a Cortex-A72, a Raspberry Pi 4) and then fails at, or returns an empty batch from, the first
        inference. A one-line ModelError then, which :func:`edgeseg.backends.open_backend` answers with ONNX Runtime."""
        size = self.card.size if self.card is not None else 256
        shape = tuple(d if d > 0 else s for d, s in zip(self.input_shape, (1, 3, size, size), strict=True))
        fix = "run it with --backend onnxruntime"
        try:
            out = self._run(np.zeros(shape, np.float32))
        except Exception as exc:
            raise ModelError(f"OpenVINO fails at the first inference of {self.path.name} on this CPU "
                             f"({_what(exc)})", fix) from exc
        want = (shape[0], len(self.output_names), *shape[2:])
        if out.shape != want or not np.isfinite(out).all():
            raise ModelError(f"OpenVINO returns {'non-finite values' if out.shape == want else tuple(out.shape)} "
                             f"instead of {want} for {self.path.name} on this CPU", fix)

    def _run(self, x: np.ndarray) -> np.ndarray:
        res = self.request.infer({self.input_name: x})
        return join_channels([res[o] for o in self._fetch])

    def close(self) -> None:
        self.request = self.compiled = None

    @staticmethod
    def embedded_card(path: Path) -> dict | None:
        """The card stored in an OpenVINO IR's ``rt_info``, if any."""
        import openvino as ov

        try:
            model = ov.Core().read_model(str(path))
        except Exception as exc:
            raise ModelError(f"OpenVINO cannot read {path}", "re-export the model") from exc
        if model.has_rt_info(CARD_METADATA_KEY):
            return json_or_none(model.get_rt_info(CARD_METADATA_KEY).astype(str))
        return None


def _what(exc: Exception) -> str:
    """OpenVINO's message in one short line: its first says where it was raised (``Exception from src/...``), the
    reason comes after (``Convolution node with name ... object is not initialized``)."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    reasons = [x for x in lines if not x.startswith(("Exception from ", "Check '", "[ "))]
    return ((reasons or lines or [type(exc).__name__])[0])[:160]


def _output_name(port) -> str:
    """A tensor may carry several names (``/Sigmoid_output_0`` and ``foreground``): prefer the contract's."""
    names = port.get_names()
    for n in (*OUTPUT_ORDER, STACKED_OUTPUT):
        if n in names:
            return n
    return port.get_any_name()
