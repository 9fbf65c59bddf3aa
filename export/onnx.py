"""PyTorch checkpoint -> ONNX (FP32), with the sigmoid inside the graph and the model card embedded.

The exported graph follows the contract of :mod:`edgeseg.backends`: one input ``image`` (float32
N x 3 x S x S, the output of :func:`edgeseg.preprocess.preprocess`; the batch may be dynamic), and
probabilities out: ``foreground`` (N x 1 x S x S) for a one-channel model, else one output ``probabilities``
(N x C x S x S, the channels in the card's "outputs" order: foreground, boundary).
The card travels in ``metadata_props["edgeseg_card"]``.

:func:`logit_parity` is the check that follows the conversion: the largest |logit difference| between
PyTorch and ONNX Runtime on real images (the logits are the sigmoid's input, read from the same graph).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgeseg.backends import OUTPUT_ORDER, STACKED_OUTPUT, join_channels
from edgeseg.card import CARD_METADATA_KEY
from edgeseg.errors import ModelError

OPSET = 17
INPUT_NAME = "image"
PARITY_TOLERANCE = 1e-4


def output_names(card: dict) -> list[str]:
    """The channel names of a card: its "outputs", or one name per output channel."""
    n = int(card.get("out_channels", 1))
    names = list(card.get("outputs") or OUTPUT_ORDER[:n])
    if len(names) != n:
        raise ModelError(
            f"card lists {len(names)} outputs for {n} output channels", "fix the card's outputs/out_channels"
        )
    return names


def graph_outputs(card: dict) -> list[str]:
    """The exported graph's outputs: ``foreground`` for a one-channel model, else the one output
    :data:`~edgeseg.backends.STACKED_OUTPUT` (N x C x S x S, the channels in the card's "outputs" order): the
    runtime wants one array, and splitting it in the graph to join it again in the backend cost the real-time
    network 4-11 % of its INT8 inference in paired runs."""
    names = output_names(card)
    return names if len(names) == 1 else [STACKED_OUTPUT]


class Probabilities(nn.Module):
    """A network's logits -> sigmoid probabilities, all channels in one tensor."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def embedded_card(card: dict) -> str:
    """The card JSON that goes inside a model file (without "file"/"sha256", which describe the file itself)."""
    return json.dumps({k: v for k, v in card.items() if k not in ("file", "sha256")}, sort_keys=False)


def set_onnx_card(model: onnx.ModelProto, card: dict) -> onnx.ModelProto:
    """Put the card into ``metadata_props`` (replacing an earlier one)."""
    props = {p.key: p.value for p in model.metadata_props if p.key != CARD_METADATA_KEY}
    props[CARD_METADATA_KEY] = embedded_card(card)
    onnx.helper.set_model_props(model, props)
    return model


def write_onnx_card(path: str | Path, card: dict) -> Path:
    """Replace the card embedded in the ONNX file ``path`` (the graph and weights stay as they are), written to a
    temporary name and renamed."""
    from edgeseg.fsutil import atomic_path

    model = set_onnx_card(onnx.load(str(path)), card)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


def read_onnx_card(path: str | Path) -> dict | None:
    """The card embedded in an ONNX file, or None."""
    model = onnx.load(str(path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == CARD_METADATA_KEY:
            return json.loads(p.value)
    return None


def torch_to_onnx(
    net: nn.Module,
    card: dict,
    out_path: str | Path,
    *,
    opset: int = OPSET,
    dynamic_batch: bool = True,
    fp16_storage: bool = False,
    example: np.ndarray | None = None,
) -> Path:
    """Export ``net`` (logits) to ``out_path`` as an FP32 ONNX graph with probabilities out and the card inside.

    The graph is the network's inference form (:func:`edgeseg.train.models.reparameterize`; the same function),
    its INT8 ranges equalised on ``example`` (preprocessed calibration images, N x 3 x S x S) where given.
    Uses the TorchScript-based exporter (``dynamo=False``), which exports all three zoo networks to plain
    static graphs. ``out_path`` is written in place: callers write into a temporary folder.

    ``fp16_storage`` (for a network whose weights are all exactly float16, see :func:`fp16_exact`): BatchNorm is
    kept as its own node instead of being folded into the convolutions (folding multiplies the weights into
    values float16 cannot hold), and the weights are stored as float16 behind a Cast (:func:`store_exact_fp16`).
    The runtimes fold both back at load: the same FP32 arithmetic from a file half the size.
    """
    if opset < 17:
        raise ModelError(f"ONNX opset {opset} is too old", "use opset 17 or newer")
    from edgeseg.train.models import reparameterize

    names = graph_outputs(card)
    size = [int(s) for s in card.get("input_size", (256, 256))]
    if not fp16_storage:  # the inference form folds BatchNorm into new weights: not for exact float16 storage
        net = reparameterize(net, None if example is None else torch.from_numpy(np.asarray(example)))
    wrapper = Probabilities(net.eval()).eval()
    dummy = torch.zeros(1, 3, *size)
    axes = {n: {0: "batch"} for n in [INPUT_NAME, *names]} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(out_path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=axes,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.PRESERVE if fp16_storage else torch.onnx.TrainingMode.EVAL,
        )
    model = onnx.load(str(out_path))
    onnx.checker.check_model(model)
    flush_subnormals(model)
    if fp16_storage:
        store_exact_fp16(model)
    set_onnx_card(model, card)
    onnx.save(model, str(out_path))
    return Path(out_path)


def flush_subnormals(model: onnx.ModelProto) -> int:
    """Set float32 initializers below the smallest normal float (|w| < 1.18e-38) to zero; returns how many.

    Training leaves such subnormal weights behind (112k of 6.6M in one of our MobileNetV2-UNet runs), and x86
    CPUs compute with them in microcode: that file ran at 2.9 FPS on ONNX Runtime instead of 33. Their value
    is below anything the network can express, so zero changes no output (the parity check still runs).
    """
    from onnx import numpy_helper

    tiny = np.finfo(np.float32).tiny
    flushed = 0
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(init)
        sub = (np.abs(a) < tiny) & (a != 0)
        if sub.any():
            flushed += int(sub.sum())
            a = np.where(sub, np.float32(0), a).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(a, init.name))
    return flushed


def fp16_exact(net: nn.Module) -> bool:
    """True when every floating-point weight and buffer of ``net`` is exactly a float16 value (a checkpoint
    that was stored in float16, as the zoo's MobileNetV2-UNet is)."""
    tensors = [t for t in net.state_dict().values() if t.is_floating_point()]
    return bool(tensors) and all(torch.equal(t.half().to(t.dtype), t) for t in tensors)


def store_exact_fp16(model: onnx.ModelProto, min_size: int = 16) -> int:
    """Store each float32 initializer that float16 holds exactly (and has at least ``min_size`` values) as float16,
    read through a Cast to float32; returns how many values moved. Lossless: a value that is not exact stays
    float32. ONNX Runtime and OpenVINO fold the Casts at load, so the network computes as before."""
    from onnx import TensorProto, helper, numpy_helper

    casts, moved = [], 0
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(init)
        half = a.astype(np.float16)
        if a.size < min_size or not np.array_equal(half.astype(np.float32), a):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, f"{name}.fp16"))
        casts.append(helper.make_node("Cast", [f"{name}.fp16"], [name], to=TensorProto.FLOAT, name=f"{name}.cast"))
        moved += a.size
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return moved


def sigmoid_inputs(model: onnx.ModelProto) -> list[str]:
    """The tensors that feed the graph's final Sigmoid nodes (the logits), in output order."""
    producers = {o: n for n in model.graph.node for o in n.output}
    found: list[str] = []
    for out in model.graph.output:
        node = producers.get(out.name)
        while node is not None and node.op_type != "Sigmoid":
            node = producers.get(node.input[0]) if node.input else None
        if node is None:
            raise ModelError(f"output {out.name!r} does not come from a Sigmoid", "export with edgeseg export")
        if node.input[0] not in found:
            found.append(node.input[0])
    return found


def logit_parity(net: nn.Module, onnx_path: str | Path, x: np.ndarray) -> dict:
    """Compare PyTorch with ONNX Runtime on a batch ``x``: max |logit diff| and max |probability diff|.

    The logits are read from the exported graph itself (the Sigmoid's input is added as an extra output of
    an in-memory copy), so the check covers the very file that ships.
    """
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    logit_names = sigmoid_inputs(model)
    prob_names = [o.name for o in model.graph.output]
    for name in logit_names:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref_logits = net.eval()(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
    ref_probs = 1 / (1 + np.exp(-ref_logits.astype(np.float64)))
    got_logits, got_probs = [], []
    for i in range(len(x)):  # one image at a time: the shipped graph's 1 x 3 x S x S case
        outs = sess.run(prob_names + logit_names, {INPUT_NAME: x[i : i + 1]})
        got_probs.append(join_channels(outs[: len(prob_names)]))
        got_logits.append(outs[len(prob_names)])
    got_logits = np.concatenate(got_logits)
    got_probs = np.concatenate(got_probs)
    return {
        "images": int(len(x)),
        "max_abs_logit_diff": float(np.max(np.abs(got_logits - ref_logits))),
        "max_abs_prob_diff": float(np.max(np.abs(got_probs - ref_probs))),
        "tolerance": PARITY_TOLERANCE,
        "compared": "logits (sigmoid input inside the exported graph) vs PyTorch",
    }
