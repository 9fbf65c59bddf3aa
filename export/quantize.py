"""INT8 post-training quantisation: ``quantize_onnx`` (onnxruntime.quantization, QDQ) and ``quantize_openvino`` (NNCF).

Each converter takes one *strategy* from a ladder that the accuracy guard climbs (see :mod:`.guard`):

ONNX (static QDQ, after ``quant_pre_process``; MinMax calibration unless the strategy says otherwise):
  ``per-tensor``               one scale per weight tensor (the fastest, least accurate)
  ``per-tensor+percentile``    the same graph and speed, activation ranges from the 99.99th percentile of the
                               calibration values instead of their extremes (a few outlying activations no longer
                               stretch a tensor's scale over the values that matter)
  ``per-channel``              one scale per output channel of each weight
  ``per-channel+percentile``   per-channel weights and percentile activation ranges
  ``per-channel+float-ends``   per-channel, and the first convolution and the output head (the last convolution
                               and everything after it: resize, sigmoid, slices) stay in float

OpenVINO (NNCF on the OpenVINO model converted from the FP32 ONNX):
  ``default``                  ``nncf.quantize`` (symmetric "performance" preset, per-channel weights)
  ``mixed+float-ends``         asymmetric activations ("mixed" preset), first convolution and head in float
  ``accuracy-control``         ``nncf.quantize_with_accuracy_control``: layers go back to float, most
                               sensitive first, until the validation Dice drop is within budget

ONNX targets (the device, not this machine): ``x86`` (VNNI: uint8 activations, int8 weights), ``x86-no-vnni``
(the same with 7-bit weights, ``reduce_range``, to avoid the u8s8 saturation of AVX2/AVX-512 without VNNI) and
``arm`` (int8 activations and weights, what ARM64 kernels prefer).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from edgeseg.errors import EdgesegError

from .calibration import CalibrationSet

ONNX_STRATEGIES = ("per-tensor", "per-tensor+percentile", "per-channel", "per-channel+percentile",
                   "per-channel+float-ends")
CALIB_PERCENTILE = 99.99  # per-tensor+percentile: the share of calibration values each activation range covers
OPENVINO_STRATEGIES = ("default", "mixed+float-ends", "accuracy-control")
TARGETS = ("x86", "x86-no-vnni", "arm")


def _onnx_target(target: str) -> dict:
    from onnxruntime.quantization import QuantType

    if target == "x86":
        return {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "reduce_range": False}
    if target == "x86-no-vnni":
        return {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "reduce_range": True}
    if target == "arm":
        return {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8, "reduce_range": False}
    raise EdgesegError(f"unknown target {target!r}", f"use one of {', '.join(TARGETS)}")


def onnx_float_ends(model: onnx.ModelProto) -> list[str]:
    """Names of the first Conv and of the output head (each output's last Conv and every node after it)."""
    nodes = list(model.graph.node)
    producers = {o: n for n in nodes for o in n.output}
    first = next((n for n in nodes if n.op_type == "Conv"), None)
    names = [first.name] if first is not None else []
    stack = [producers[o.name] for o in model.graph.output if o.name in producers]
    seen = set()
    while stack:
        node = stack.pop()
        if node.name in seen or node.op_type == "Constant":
            continue
        seen.add(node.name)
        names.append(node.name)
        if node.op_type == "Conv":
            continue  # the head's convolution: stop here
        stack += [producers[i] for i in node.input if i in producers]
    return list(dict.fromkeys(names))


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    calib: CalibrationSet,
    *,
    strategy: str = "per-tensor",
    target: str = "x86",
    work_dir: str | Path | None = None,
) -> dict:
    """Static QDQ INT8 quantisation of an FP32 ONNX file; returns the settings used (for the card)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if strategy not in ONNX_STRATEGIES:
        raise EdgesegError(
            f"unknown ONNX quantisation strategy {strategy!r}", f"use one of {', '.join(ONNX_STRATEGIES)}"
        )
    settings = _onnx_target(target)
    out_path = Path(out_path)
    work = Path(work_dir or out_path.parent)
    pre = work / f".{out_path.stem}.pre.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)  # ONNX shape inference suffices for CNNs
    exclude = onnx_float_ends(onnx.load(str(pre))) if strategy.endswith("float-ends") else []
    per_channel, percentile = strategy.startswith("per-channel"), strategy.endswith("percentile")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calib.batches())

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"image": x}

    try:
        quantize_static(
            str(pre),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            calibrate_method=CalibrationMethod.Percentile if percentile else CalibrationMethod.MinMax,
            nodes_to_exclude=exclude or None,
            extra_options={"CalibPercentile": CALIB_PERCENTILE} if percentile else None,
            **settings,
        )
    finally:
        pre.unlink(missing_ok=True)
        for extra in work.glob("augmented_model*.onnx"):  # older onnxruntime versions leave this behind
            extra.unlink(missing_ok=True)
    return {
        "tool": "onnxruntime.quantization.quantize_static (after quant_pre_process, skip_symbolic_shape)",
        "format": "QDQ",
        "calibrate_method": f"Percentile {CALIB_PERCENTILE}" if percentile else "MinMax",
        "target": target,
        "activation_type": settings["activation_type"].name,
        "weight_type": settings["weight_type"].name,
        "reduce_range": settings["reduce_range"],
        "per_channel": per_channel,
        "float_nodes": exclude,
    }


def openvino_float_ends(model) -> list[str]:
    """Friendly names of the first convolution and of the output head (each output's last convolution and after)."""
    convs = ("Convolution", "GroupConvolution")
    ops = model.get_ordered_ops()
    names = [next(o.get_friendly_name() for o in ops if o.get_type_name() in convs)]
    stack = [r.input(0).get_source_output().get_node() for r in model.get_results()]
    seen = set()
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in seen or node.get_type_name() in ("Constant", "Parameter"):
            continue
        seen.add(name)
        names.append(name)
        if node.get_type_name() in convs:
            continue
        stack += [i.get_source_output().get_node() for i in node.inputs()]
    return list(dict.fromkeys(names))


def quantize_openvino(
    fp32_onnx: str | Path,
    calib: CalibrationSet,
    *,
    strategy: str = "default",
    target: str = "x86",
    validation: tuple[list, Callable] | None = None,
    max_drop: float = 0.005,
):
    """NNCF INT8 quantisation of the FP32 ONNX graph; returns (openvino.Model, settings for the card).

    ``validation`` = (items, metric_fn) is needed by ``accuracy-control``: ``metric_fn(compiled_model, items)``
    returns the validation Dice (higher is better).
    """
    import nncf

    if strategy not in OPENVINO_STRATEGIES:
        raise EdgesegError(
            f"unknown OpenVINO quantisation strategy {strategy!r}", f"use one of {', '.join(OPENVINO_STRATEGIES)}"
        )
    model = to_openvino_model(fp32_onnx)
    dataset = nncf.Dataset(calib.batches())
    device = nncf.TargetDevice.CPU if target.startswith("x86") else nncf.TargetDevice.ANY
    kw = {"subset_size": len(calib), "target_device": device}
    floats: list[str] = []
    if strategy == "default":
        kw["preset"] = nncf.QuantizationPreset.PERFORMANCE
    else:
        kw["preset"] = nncf.QuantizationPreset.MIXED
        floats = openvino_float_ends(model)
        kw["ignored_scope"] = nncf.IgnoredScope(names=floats, validate=False)
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)  # its INFO lines would drown the export's own report
    # accuracy control measures its drop against the OpenVINO FP32 model; the guard then re-checks the saved
    # file against the FP32 ONNX through the runtime, and that verdict is the one that counts
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if strategy == "accuracy-control":
                if validation is None:
                    raise EdgesegError("accuracy-control needs validation data", "pass --guard-data DIR")
                items, metric = validation
                quantised = nncf.quantize_with_accuracy_control(
                    model, dataset, nncf.Dataset(items), metric, max_drop=max_drop,
                    drop_type=nncf.DropType.ABSOLUTE, **kw,
                )
            else:
                quantised = nncf.quantize(model, dataset, **kw)
    finally:
        nncf_logger.setLevel(level)
    settings = {
        "tool": "nncf.quantize_with_accuracy_control" if strategy == "accuracy-control" else "nncf.quantize",
        "preset": kw["preset"].value,
        "target_device": device.value,
        "subset_size": kw["subset_size"],
        "float_nodes": floats,
    }
    return quantised, settings


def to_openvino_model(onnx_path: str | Path):
    """The OpenVINO model of an ONNX file, reshaped to a static 1 x 3 x H x W input (what the runtime feeds)."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    shape = list(model.inputs[0].get_partial_shape())
    h, w = (d.get_length() for d in shape[2:])
    model.reshape({model.inputs[0].get_any_name(): [1, 3, h, w]})
    return model


def openvino_dice_metric(threshold: float) -> Callable:
    """``metric(compiled_model, items)`` for NNCF's accuracy control: per-image mean Dice at ``threshold``.

    ``items`` are (x 1x3xSxS, ground-truth bool SxS) pairs, ``x`` made by the runtime's preprocessing.
    """
    from edgeseg.metrics import dice

    def metric(compiled, items) -> float:
        out = compiled.output("foreground")
        scores = [dice(np.asarray(compiled(x)[out])[0, 0] > threshold, gt) for x, gt in items]
        return float(np.mean(scores))

    return metric
