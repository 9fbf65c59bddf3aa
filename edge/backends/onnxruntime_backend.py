"""ONNX Runtime on the CPU: the default backend for ``.onnx`` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..card import CARD_METADATA_KEY
from ..errors import ModelError
from . import Backend, channel_layout, default_threads, join_channels, json_or_none


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    formats = ("onnx",)

    def __init__(self, path: Path, threads: int | None = None, card=None):
        import onnxruntime as ort

        super().__init__(path, threads or default_threads(), card)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 4  # fatal only: a failing node is reported once, by the one-line error that follows
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise ModelError(f"ONNX Runtime cannot load {path} ({str(exc).splitlines()[0][:160]})",
                             "re-export the model with `edgeseg export`") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        card = json_or_none(self.metadata.get(CARD_METADATA_KEY))
        outs = self.session.get_outputs()
        width = outs[0].shape[1] if len(outs[0].shape) > 1 and isinstance(outs[0].shape[1], int) else None
        self._fetch, self.output_names = channel_layout([o.name for o in outs], card or self.card, width)
        # ONNX Runtime's CPU provider runs QDQ int8 graphs with integer kernels and everything else in fp32
        # (fp16 weights are up-cast); there is no hidden bf16 mode as in OpenVINO.
        self.executed_precision = "int8" if (card or {}).get("precision") == "int8" else "fp32"
        self.details = {"provider": "CPUExecutionProvider", "onnxruntime": ort.__version__}

    def _run(self, x: np.ndarray) -> np.ndarray:
        return join_channels(self.session.run(self._fetch, {self.input_name: x}))

    def close(self) -> None:
        self.session = None

    @staticmethod
    def embedded_card(path: Path) -> dict | None:
        """The card stored in an ONNX file's ``metadata_props``, if any."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"cannot read {path}", "re-export the model") from exc
        return json_or_none(sess.get_modelmeta().custom_metadata_map.get(CARD_METADATA_KEY))
