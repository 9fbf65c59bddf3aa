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

Every ONNX strategy ends with :func:`share_concat_scales`: each concatenation's inputs are quantised to its output's
scale, so that ONNX Runtime's QLinearConcat copies bytes instead of requantising every element.

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


# ops that ONNX Runtime runs in INT8 only when their input and output share quantisation parameters
QDQ_TRANSPARENT = frozenset({"Split", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "MaxPool",
                             "Gather", "DepthToSpace", "SpaceToDepth"})


def share_concat_scales(model: onnx.ModelProto) -> int:
    """Quantise every input of a QDQ Concat straight to one scale, its widest input's, and the output with it.

    ONNX Runtime's QLinearConcat requantises each element of an input whose scale differs from the output's (a
    lookup table per element) and copies bytes when they are equal. The quantiser calibrates each input on its own
    range and the output on the widest, so a decoder's concatenation of an upsampled branch with its skip
    requantises the branch. Giving that input's QuantizeLinear the output's scale rounds the float value once
    instead of twice (to its own grid, then to the output's): the same grid the concatenation produced before,
    without the lookup. Only an input whose QuantizeLinear feeds this Concat alone, and whose value comes from an
    op that computes (not one ONNX Runtime runs in INT8 by sharing its input's scale, e.g. Split), is moved; a
    Concat with an input that cannot move and differs is left alone. Returns the number of inputs moved."""
    from onnx import numpy_helper

    g = model.graph
    values = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def quantised_input(name: str):
        dq = producers.get(name)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            return None
        if any(len(n.input) != 3 or not set(n.input[1:]) <= values.keys() for n in (q, dq)):
            return None  # quantisation parameters that are not constants of the graph: nothing to compare
        source = producers.get(q.input[0])
        movable = (len(consumers[q.output[0]]) == 1 and len(consumers[name]) == 1
                   and (source is None or source.op_type not in QDQ_TRANSPARENT))
        return q, dq, movable

    moved, displaced = 0, set()
    for concat in (n for n in g.node if n.op_type == "Concat"):
        after = consumers.get(concat.output[0], [])
        inputs = [quantised_input(t) for t in concat.input]
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or None in inputs:
            continue
        params = list(max(inputs, key=lambda i: float(values[i[1].input[1]]))[1].input[1:3])
        same = [all(np.array_equal(values[a], values[b]) for a, b in zip(dq.input[1:3], params, strict=True))
                for _, dq, _ in inputs]
        if not all(movable or equal for (_, _, movable), equal in zip(inputs, same, strict=True)):
            continue
        for (q, dq, _), equal in zip(inputs, same, strict=True):
            if not equal:
                displaced.update([*q.input[1:3], *dq.input[1:3]])
                q.input[1:3], dq.input[1:3] = params, params
                moved += 1
        for node in [after[0], *(c for c in consumers.get(after[0].output[0], []) if c.op_type == "DequantizeLinear")]:
            displaced.update(node.input[1:3])
            node.input[1:3] = params
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for init in [i for i in g.initializer if i.name in displaced and i.name not in used]:
        g.initializer.remove(init)  # a parameter no node reads any more (ONNX Runtime would warn at every load)
    return moved


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
    model = onnx.load(str(out_path))
    shared = share_concat_scales(model)
    if shared:
        onnx.save(model, str(out_path))
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
        "concat_inputs_moved_to_output_scale": shared,
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
        out = compiled.output(0)  # foreground, alone or as channel 0 of "probabilities"
        scores = [dice(np.asarray(compiled(x)[out])[0, 0] > threshold, gt) for x, gt in items]
        return float(np.mean(scores))

    return metric
