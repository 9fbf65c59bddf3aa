"""Inference backends behind one small interface, picked from a registry (the core names no torch).

A backend is a predictor (see :mod:`edgeseg.evaluate`): float32 ``N x 3 x H x W`` (the output of
:func:`edgeseg.preprocess.preprocess`) in, float32 ``N x C x H x W`` probabilities out, with the channels in the
order of :attr:`Backend.output_names` (``foreground``, then ``boundary`` for a model with the instance head).
Exported files carry the sigmoid inside the graph. A graph gives its channels either as one output each (named
``foreground``, ``boundary``: the earlier files) or as one output ``probabilities`` holding them all, in the order
of its card's ``outputs`` (what the exporter writes for a model with more than one channel: the runtime wants one
array, so the graph splitting it and the backend joining it again cost a real-time network 4-11 % of its
inference in paired runs).

The registry maps a backend's name to its class: ``onnxruntime`` and ``openvino`` here, and whatever an installed
package declares under the ``edgeseg.backends`` entry-point group (``edgeseg.train`` contributes ``torch`` for
``.pt`` checkpoints). A backend's name is the package it needs, so "is it installed" is answered without
importing it; "not installed" is one line from :func:`backend_class`.

Each backend reads back what it really executes (:attr:`Backend.executed_precision`): OpenVINO runs an "FP32"
file as bf16 on CPUs with AMX and as fp16 on ARM unless told otherwise, and that is what a benchmark or a card
must record.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np

from ..errors import EdgesegError, MissingDependency, ModelError
from ..zoo import FORMATS

ENTRY_POINT_GROUP = "edgeseg.backends"
BUILTIN = {
    "onnxruntime": "edgeseg.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "edgeseg.backends.openvino_backend:OpenVinoBackend",
}
EXTRA_FOR = {"torch": "train"}  # the edgeseg extra that installs a backend's package
NATIVE = {"onnx": "onnxruntime", "openvino": "openvino"}
FIX_FOR_FORMAT = {"torch": "PyTorch checkpoints need torch: pip install 'edgeseg[train]', "
                           "or run an exported zoo variant (e.g. fast_scnn-int8)"}
OUTPUT_ORDER = ("foreground", "boundary")
STACKED_OUTPUT = "probabilities"  # one graph output, N x C x H x W: every channel, in the card's "outputs" order


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class Backend:
    """Base class: subclasses set ``name``, ``formats`` (file formats read, the native one first) and ``options``
    (keyword options they take), fill the attributes in ``__init__`` and implement :meth:`_run`."""

    name: str = "?"
    formats: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def __init__(self, path: Path, threads: int | None, card=None):
        self.path = Path(path)
        self.threads = threads
        self.card = card
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


def _check_input(x: np.ndarray, shape: tuple, path: Path) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or any(s > 0 and s != d for s, d in zip(shape[1:], x.shape[1:], strict=True)):
        raise ModelError(
            f"{path.name} expects input {tuple(shape)}, got {tuple(x.shape)}",
            "preprocess frames to the size in the model card",
        )
    return x


def sorted_outputs(names: list[str]) -> list[str]:
    """Known outputs in the contract's order (foreground, boundary), unknown ones after them."""
    known = [n for n in OUTPUT_ORDER if n in names]
    return known + [n for n in names if n not in known]


def channel_layout(graph_outputs: list[str], card=None, channels: int | None = None) -> tuple[list[str], list[str]]:
    """(the graph outputs to fetch, in order; the channel names the joined result holds, in order).

    A graph with the one output :data:`STACKED_OUTPUT` holds the channels its card's ``outputs`` names (``card``: a
    card or its dict), else the first ``channels`` of :data:`OUTPUT_ORDER`; any other graph one channel an output.
    """
    if list(graph_outputs) == [STACKED_OUTPUT]:
        listed = card.get("outputs") if isinstance(card, dict) else getattr(card, "outputs", None)
        names = list(listed or OUTPUT_ORDER[: channels or len(OUTPUT_ORDER)])
        if channels is not None and channels != len(names):
            raise ModelError(f"the model's output holds {channels} channels but its card names {len(names)} "
                             f"({', '.join(names)})", "re-export the model so the file and its card match")
        return [STACKED_OUTPUT], names
    fetch = sorted_outputs(list(graph_outputs))
    return fetch, fetch


def join_channels(arrays: list) -> np.ndarray:
    """The fetched outputs as one float32 N x C x H x W array; a single float32 output is returned as it is."""
    if len(arrays) == 1:
        return np.asarray(arrays[0], np.float32)
    return np.concatenate([np.asarray(a, np.float32) for a in arrays], axis=1)


def json_or_none(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- the registry


@cache
def registry() -> dict[str, str]:
    """Backend name -> ``module:Class``: the built-in ones, then those installed packages declare."""
    found = dict(BUILTIN)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def backend_names() -> list[str]:
    return list(registry())


def available_backends() -> list[str]:
    """The registered backends whose package is installed here."""
    return [b for b in registry() if importlib.util.find_spec(b) is not None]


def backend_class(name: str) -> type[Backend]:
    """The class of backend ``name``; a one-line error when it is unknown or its package is not installed."""
    if name not in registry():
        raise ModelError(f"unknown backend {name!r}", f"use one of: auto, {', '.join(backend_names())}")
    if importlib.util.find_spec(name) is None:
        extra = EXTRA_FOR.get(name)
        raise MissingDependency(f"backend {name} is not installed",
                                f"pip install 'edgeseg[{extra}]'" if extra else f"pip install {name}")
    module, _, attr = registry()[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def backend_for_format(fmt: str) -> str:
    """The backend that runs files of ``fmt`` natively: onnx -> onnxruntime, openvino -> openvino, and for other
    formats the installed plug-in whose first format it is (torch -> torch)."""
    if fmt in NATIVE:
        return NATIVE[fmt]
    for name in available_backends():
        if name not in BUILTIN and backend_class(name).formats[:1] == (fmt,):
            return name
    raise MissingDependency(f"no installed backend runs {fmt} files",
                            FIX_FOR_FORMAT.get(fmt, "give an exported .onnx or .xml file or a zoo name"))


def open_backend(path: str | Path, backend: str = "auto", threads: int | None = None, *, card=None,
                 fallback: bool = True, **options) -> Backend:
    """Open a model file with the chosen backend (``auto``: the one native to its format).

    ``.onnx`` -> ONNX Runtime (OpenVINO reads it too), ``.xml`` -> OpenVINO, ``.pt`` -> torch (with the card, which
    names the architecture). ``options`` go to the backend (``inference_precision`` for OpenVINO, ``tta`` for
    torch); one it does not take is a one-line error. OpenVINO is checked with one inference on a blank input;
    where it cannot run the file on this CPU, ONNX Runtime runs it instead and says so (:func:`_onnxruntime_instead`;
    ``fallback=False``: the one-line error, for a caller that must measure OpenVINO itself).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found", "give an exported .onnx or .xml file or a zoo name")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ModelError(f"{path.name} is not a model file", "give a .onnx, .xml or .pt file, or a zoo name")
    name = backend_for_format(fmt) if backend == "auto" else backend
    cls = backend_class(name)
    if fmt not in cls.formats:
        runs = [b for b in available_backends() if fmt in backend_class(b).formats]
        raise ModelError(f"the {name} backend cannot run the {fmt} file {path.name}",
                         f"use --backend {' or '.join(runs)}" if runs else "export the model to another format")
    unknown = sorted(k for k, v in options.items() if k not in cls.options and v not in (None, False))
    if unknown:
        raise ModelError(f"the {name} backend has no option {', '.join(unknown)}",
                         f"it takes {', '.join(cls.options) or 'none'}; drop it for {fmt} files")
    taken = {k: v for k, v in options.items() if k in cls.options}
    threads = threads or default_threads()
    if name != "openvino":
        return cls(path, threads, card=card, **taken)
    try:
        return _open_checked(cls, path, threads, card, taken)
    except ModelError as exc:
        if not fallback:
            raise
        return _onnxruntime_instead(path, threads, card, exc)


def _open_checked(cls: type[Backend], path: Path, threads: int, card, options: dict) -> Backend:
    """Open ``path`` and run one checked inference (:meth:`OpenVinoBackend.check_first_inference`)."""
    be = cls(path, threads, card=card, **options)
    try:
        be.check_first_inference()
    except ModelError:
        be.close()
        raise
    return be


def _onnxruntime_instead(path: Path, threads: int, card, failure: ModelError) -> Backend:
    """OpenVINO cannot run ``path`` on this CPU: run the same ONNX file with ONNX Runtime (for an OpenVINO IR: the
    ONNX file beside it of the same network, precision, input size and post-processing), say so on stderr and record
    it in the backend's details (the run log's start line); ``failure`` again when there is no such file."""
    onnx_path, onnx_card = (path, card) if FORMATS.get(path.suffix.lower()) == "onnx" else _onnx_twin(path, card)
    if onnx_path is None or importlib.util.find_spec("onnxruntime") is None:
        raise failure
    be = backend_class("onnxruntime")(onnx_path, threads, card=onnx_card)
    ran = onnx_path.name if onnx_path != path else "it"
    print(f"note: {failure.problem}: running {ran} with onnxruntime instead", file=sys.stderr, flush=True)
    be.details.update({"fallback_from": "openvino", "fallback_reason": failure.problem})
    return be


def _onnx_twin(path: Path, card) -> tuple[Path | None, object]:
    """The ONNX file beside the OpenVINO IR ``path`` (in the zoo, a bundle or an export folder) that computes what it
    does (the best one for this CPU), if any."""
    from ..card import read_card
    from ..zoo import Zoo

    try:
        card = card if card is not None else read_card(path, verify=False)
    except EdgesegError:
        return None, None
    for ref in Zoo(path.parent).variants(card.network, precision=card.precision, formats=("onnx",)):
        c = ref.card
        if (c.arch, c.size, c.post_config(), c.mean, c.std) == (card.arch, card.size, card.post_config(), card.mean,
                                                                    card.std):
            return ref.path, c
    return None, None


def read_embedded_card(path: str | Path) -> dict | None:
    """The model card stored inside an exported file (ONNX metadata_props / OpenVINO rt_info), if any."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt in ("onnx", "openvino"):
        return backend_class(backend_for_format(fmt)).embedded_card(path)
    return None
