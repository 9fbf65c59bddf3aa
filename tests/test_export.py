"""edgeseg.export: ONNX / OpenVINO export with parity checks, INT8 with the accuracy guard, and the error paths.

The model is the shipped Fast-SCNN (0.15 M parameters: tiny, and trained, so Dice means something); the data
are the 8 bundled DSB2018 images, copied under new names so that they form an ad-hoc (non-canonical) folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from edgeseg.backends import open_backend, read_embedded_card
from edgeseg.card import CARD_METADATA_KEY, new_card, read_card, write_card
from edgeseg.cli import main
from edgeseg.errors import DataError, EdgesegError, ModelError
from edgeseg.export.calibration import calibration_set, guard_set, stratified_sample
from edgeseg.export.guard import GuardFailed, climb, file_dice
from edgeseg.export.onnx import (
    flush_subnormals,
    fp16_exact,
    logit_parity,
    output_names,
    store_exact_fp16,
    torch_to_onnx,
)
from edgeseg.export.pipeline import ExportSpec, export_model, parity_inputs
from edgeseg.export.quantize import onnx_float_ends
from edgeseg.segmenter import Segmenter
from edgeseg.train.models import build_model
from edgeseg.zoo import resolve_model


@pytest.fixture(scope="module")
def adhoc_data(tmp_path_factory):
    """The 8 sample images in Kaggle layout under new ids: a labelled folder with no canonical split."""
    from conftest import SAMPLE

    dst = tmp_path_factory.mktemp("adhoc") / "data"
    for i, src in enumerate(sorted(p for p in SAMPLE.iterdir() if p.is_dir())):
        new = dst / f"img{i}"
        (new / "images").mkdir(parents=True)
        shutil.copy(next((src / "images").iterdir()), new / "images" / f"img{i}.png")
        shutil.copytree(src / "masks", new / "masks")
    return dst


@pytest.fixture(scope="module")
def fast_scnn():
    from edgeseg.train.predict import load_checkpoint

    ref = resolve_model("fast_scnn")
    return ref, load_checkpoint(ref.path, ref.card)


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory):
    """`edgeseg export fast_scnn --json`: the FP32 ONNX file most tests look at (exported once)."""
    out = tmp_path_factory.mktemp("fp32")
    r = CliRunner().invoke(main, ["export", "fast_scnn", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _files(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_onnx_round_trip_matches_pytorch_on_real_images(fast_scnn, fp32_export):
    ref, net = fast_scnn
    path = fp32_export["path"]
    model = onnx.load(path)
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["image"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 256, 256]
    assert [o.name for o in model.graph.output] == ["foreground"]
    x = parity_inputs(ref.card.to_dict())
    parity = logit_parity(net, path, x)
    assert parity["images"] == 8
    assert parity["max_abs_prob_diff"] <= 1e-4
    assert parity["max_abs_logit_diff"] <= 1e-3  # fp32 rounding of two different kernels, not a bug
    # the shipped graph's outputs are probabilities: the same as sigmoid(PyTorch) through the runtime backend
    be = open_backend(path)
    with torch.no_grad():
        want = torch.sigmoid(net(torch.from_numpy(x[:2]))).numpy()
    np.testing.assert_allclose(be(x[:2]), want, atol=1e-4)


def test_two_channel_model_exports_foreground_and_boundary_in_one_output(tmp_path):
    torch.manual_seed(0)
    net = build_model("half_unet", out_channels=2).eval()
    card = new_card("half_unet", out_channels=2, outputs=["foreground", "boundary"])
    path = torch_to_onnx(net, card, tmp_path / "two.onnx")
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["probabilities"]
    assert [n.op_type for n in graph.node][-1] == "Sigmoid"  # not split in the graph to be joined by the backend
    assert open_backend(path).output_names == ["foreground", "boundary"]
    x = np.random.default_rng(0).normal(size=(1, 3, 256, 256)).astype(np.float32)
    with torch.no_grad():
        want = torch.sigmoid(net(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(open_backend(path)(x), want, atol=1e-4)
    assert logit_parity(net, path, x)["max_abs_prob_diff"] <= 1e-4


def test_exported_graph_is_the_inference_form_reading_the_image_once(tmp_path):
    torch.manual_seed(0)
    net = build_model("shuffle_unet_px", out_channels=2)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
        net.stem[0][1].weight.fill_(0.1)  # the stem's activations narrower than the pixel skip's
    net.eval()
    card = new_card("shuffle_unet_px", out_channels=2, outputs=["foreground", "boundary"])
    path = torch_to_onnx(net, card, tmp_path / "px.onnx")
    graph = onnx.load(str(path)).graph
    assert [n.op_type for n in graph.node if "image" in n.input] == ["Conv"]  # stem and pixel skip: one conv
    assert sum(isinstance(m, torch.nn.Conv2d) and m.in_channels == 3 for m in net.modules()) == 2  # untouched
    x = np.random.default_rng(0).normal(size=(1, 3, 256, 256)).astype(np.float32)
    assert logit_parity(net, path, x)["max_abs_prob_diff"] <= 1e-4

    # given calibration images, the merged convolution's stem rows are scaled up to the pixel skip's range (see
    # test_models): another graph, the same probabilities
    from onnx import numpy_helper

    equalised = torch_to_onnx(net, card, tmp_path / "px-eq.onnx", example=x)

    def stem_rows(p):
        g = onnx.load(str(p)).graph
        conv = next(n for n in g.node if "image" in n.input)
        w = next(numpy_helper.to_array(i) for i in g.initializer if i.name == conv.input[1])
        return np.abs(w[:16]).max()

    assert stem_rows(equalised) > 3 * stem_rows(path)
    assert logit_parity(net, equalised, x)["max_abs_prob_diff"] <= 1e-4


def test_export_flushes_subnormal_weights_that_slow_x86_cpus(tmp_path):
    torch.manual_seed(0)
    net = build_model("fast_scnn").eval()
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        first_conv.weight.view(-1)[:5] = torch.tensor([1e-40, -3e-39, 1e-39, 2.0, 0.0])  # 3 subnormals
    path = torch_to_onnx(net, new_card("fast_scnn"), tmp_path / "f.onnx")
    tiny = np.finfo(np.float32).tiny
    weights = [onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer if i.data_type == 1]
    assert sum(int(((np.abs(w) < tiny) & (w != 0)).sum()) for w in weights) == 0
    init = onnx.numpy_helper.from_array(np.array([1e-40, 2.0, -3e-39, 0.0], np.float32), "w")
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [init]))
    assert flush_subnormals(model) == 2
    assert model.graph.initializer[0].name == "w"
    assert onnx.numpy_helper.to_array(model.graph.initializer[0]).tolist() == [0.0, 2.0, 0.0, 0.0]  # normal kept
    x = np.random.default_rng(0).normal(size=(1, 3, 256, 256)).astype(np.float32)
    assert logit_parity(net, path, x)["max_abs_prob_diff"] <= 1e-4


def test_fp16_checkpoint_exports_fp32_graph_from_exact_fp16_storage(tmp_path):
    torch.manual_seed(0)
    net = build_model("half_unet").eval()
    assert not fp16_exact(net)  # a float32 network: nothing to store as float16
    with torch.no_grad():  # what a float16 checkpoint loads to: every weight and BN statistic a float16 value
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    assert fp16_exact(net)
    folded = torch_to_onnx(net, new_card("half_unet"), tmp_path / "folded.onnx")
    stored = torch_to_onnx(net, new_card("half_unet"), tmp_path / "stored.onnx", fp16_storage=True)
    model = onnx.load(str(stored))
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" in ops  # kept, so the conv weights stay exact float16
    sizes = {t.data_type: 0 for t in model.graph.initializer}
    for t in model.graph.initializer:
        sizes[t.data_type] += int(np.prod(t.dims))
    assert sizes[onnx.TensorProto.FLOAT16] > 0.99 * sum(sizes.values())
    assert stored.stat().st_size < 0.6 * folded.stat().st_size
    x = np.random.default_rng(0).normal(size=(2, 3, 256, 256)).astype(np.float32)
    assert logit_parity(net, stored, x)["max_abs_prob_diff"] <= 1e-5
    np.testing.assert_allclose(open_backend(stored)(x), open_backend(folded)(x), atol=1e-5)


def test_export_of_a_float16_checkpoint_ships_fp32_from_exact_float16_storage(tmp_path):
    """`edgeseg export` on a checkpoint stored in float16 (as the zoo's MobileNetV2-UNet is)."""
    ref = resolve_model("half_unet")
    state = torch.load(ref.path, weights_only=True)
    ckpt = tmp_path / "half16.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, ckpt)
    write_card(ckpt, ref.card.replace(name="half16"))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    path = Path(json.loads(r.stdout)["path"])
    card = read_card(path).to_dict()
    assert card["export"]["weight_storage"].startswith("float16, exact")
    assert card["export"]["parity_onnx_fp32_fp16_storage"]["max_abs_prob_diff"] <= 1e-4
    kinds = {t.data_type for t in onnx.load(str(path)).graph.initializer if len(t.dims) == 4}
    assert kinds == {onnx.TensorProto.FLOAT16}  # every conv weight
    assert card["executed_precision"] == "fp32"


def test_store_exact_fp16_keeps_values_float16_cannot_hold():
    exact = onnx.numpy_helper.from_array(np.arange(32, dtype=np.float32) / 4, "exact")
    inexact = onnx.numpy_helper.from_array(np.full(32, 0.1, np.float32), "inexact")
    node = onnx.helper.make_node("Add", ["exact", "inexact"], ["y"])
    out = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [32])
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [], [out], [exact, inexact]))
    assert store_exact_fp16(model) == 32
    kinds = {t.name: t.data_type for t in model.graph.initializer}
    assert kinds == {"exact.fp16": onnx.TensorProto.FLOAT16, "inexact": onnx.TensorProto.FLOAT}
    assert [n.op_type for n in model.graph.node] == ["Cast", "Add"]
    onnx.checker.check_model(model)
    import onnxruntime as ort

    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    np.testing.assert_array_equal(y, np.arange(32, dtype=np.float32) / 4 + np.float32(0.1))


def test_output_names_must_match_out_channels():
    assert output_names({"out_channels": 2}) == ["foreground", "boundary"]
    with pytest.raises(ModelError, match="outputs"):
        output_names({"out_channels": 2, "outputs": ["foreground"]})


def test_float_ends_are_the_first_conv_and_the_head(fp32_export):
    model = onnx.load(fp32_export["path"])
    ends = onnx_float_ends(model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert ends[0] == convs[0]
    assert convs[-1] in ends and convs[1] not in ends
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {ops[n] for n in ends} == {"Conv", "Resize", "Sigmoid"}


def test_onnx_fp32_export_embeds_the_card_and_writes_it_beside(fp32_export):
    path = Path(fp32_export["path"])
    assert path.name == "fast_scnn-fp32.onnx"
    assert _files(path.parent) == ["fast_scnn-fp32.card.json", "fast_scnn-fp32.onnx"]
    assert fp32_export["executed_precision"] == "fp32" and fp32_export["size_bytes"] == path.stat().st_size
    beside = read_card(path, verify=True).to_dict()
    inside = read_embedded_card(path)
    assert inside["name"] == beside["name"] == "fast_scnn-fp32"
    assert inside["format"] == "onnx" and inside["precision"] == "fp32" and beside["executed_precision"] == "fp32"
    assert {k: v for k, v in beside.items() if k not in ("file", "sha256")} == inside
    assert beside["export"]["parity_onnx_fp32"]["max_abs_prob_diff"] <= 1e-4
    assert beside["source"]["file"] == "fast_scnn.pt"
    meta = {p.key for p in onnx.load(str(path)).metadata_props}
    assert CARD_METADATA_KEY in meta


def test_openvino_fp16_export_carries_the_card_in_rt_info(tmp_path, adhoc_data):
    import openvino as ov

    out = tmp_path / "ov"
    export_model(ExportSpec("fast_scnn", "openvino", "fp16", out_dir=out, guard_data=adhoc_data, max_dice_drop=0.02))
    xml = out / "fast_scnn-fp16-ov.xml"
    assert _files(out) == ["fast_scnn-fp16-ov.bin", "fast_scnn-fp16-ov.card.json", "fast_scnn-fp16-ov.xml"]
    model = ov.Core().read_model(str(xml))
    inside = json.loads(model.get_rt_info(CARD_METADATA_KEY).astype(str))
    card = read_card(xml, verify=True).to_dict()
    assert inside["name"] == card["name"] == "fast_scnn-fp16-ov" and inside["precision"] == "fp16"
    assert card["weights_file"] == "fast_scnn-fp16-ov.bin"
    assert card["export"]["parity_openvino_f32"]["max_abs_prob_diff_vs_onnx"] < 1e-2
    assert abs(card["guard"]["drop"]) <= 0.02
    assert card["executed_precision"] == open_backend(xml).executed_precision
    # the fp16 IR is half the FP32 weights: Fast-SCNN's 0.15 M parameters in well under 0.6 MB
    assert (out / "fast_scnn-fp16-ov.bin").stat().st_size < 0.6e6
    seg = Segmenter.load(xml)
    assert seg.info["format"] == "openvino" and seg.input_size == 256


def test_a_retuned_side_card_goes_back_inside_onnx_and_openvino_files(tmp_path, fp32_export):
    from edgeseg.card import card_path
    from edgeseg.export.openvino import onnx_to_openvino
    from edgeseg.export.pipeline import refresh_embedded_card
    from edgeseg.fsutil import atomic_write_json

    src = Path(fp32_export["path"])
    card = json.loads(card_path(src).read_text())
    onnx_file = tmp_path / src.name
    shutil.copy(src, onnx_file)
    write_card(onnx_file, card)
    ov_card = {**card, "name": "fast_scnn-fp32-ov", "format": "openvino"}
    xml = onnx_to_openvino(src, tmp_path / "fast_scnn-fp32-ov.xml", ov_card)
    write_card(xml, ov_card)
    weights = xml.with_suffix(".bin").read_bytes()
    x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    for path in (onnx_file, xml):
        before = open_backend(path, threads=1)(x)
        side = json.loads(card_path(path).read_text())
        side["postprocess"] = {**side["postprocess"], "min_contrast": 1.25, "seed_split": 0.4}
        atomic_write_json(card_path(path), side)
        assert read_embedded_card(path)["postprocess"] != side["postprocess"]
        refresh_embedded_card(path)
        assert read_embedded_card(path)["postprocess"] == side["postprocess"]
        assert read_card(path, verify=True).postprocess == side["postprocess"]  # the sha256 follows the file
        assert np.array_equal(open_backend(path, threads=1)(x), before)  # the network is the same
    assert xml.with_suffix(".bin").read_bytes() == weights


def test_a_file_that_its_card_does_not_describe_is_not_given_the_card(tmp_path, fp32_export):
    from edgeseg.card import card_path
    from edgeseg.export.pipeline import refresh_embedded_card

    src = Path(fp32_export["path"])
    onnx_file = tmp_path / src.name
    shutil.copy(src, onnx_file)
    write_card(onnx_file, json.loads(card_path(src).read_text()))
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")  # changed after its card was written
    with pytest.raises(ModelError, match="does not match the sha256"):
        refresh_embedded_card(onnx_file)


def test_int8_onnx_passes_the_guard_and_records_calibration_and_strategy(tmp_path, adhoc_data):
    out = tmp_path / "q"
    said = []
    report = export_model(ExportSpec("fast_scnn", "onnx", "int8", out_dir=out, calib_data=adhoc_data, calib_size=6,
                                     max_dice_drop=0.05), progress=said.append)
    assert said[0].startswith("exporting fast_scnn to ONNX")
    assert any(m.startswith("calibration: 6 images") for m in said)
    assert any(m.strip().startswith("per-tensor: validation Dice") for m in said)
    path = out / "fast_scnn-int8.onnx"
    card = read_card(path).to_dict()
    assert card["precision"] == "int8" and card["executed_precision"] == "int8"
    cal = card["calibration"]
    assert cal["n_images"] == 6 and cal["split"] == "all" and len(cal["sha256"]) == 64
    g = card["guard"]
    assert g["strategy"] == g["attempts"][-1]["strategy"] == "per-tensor"
    assert g["reference_dice"] - g["dice"] == pytest.approx(g["drop"], abs=1e-5) and g["drop"] <= 0.05
    assert g["data"]["n_images"] == 8
    # the guard's number is what the runtime gets: re-score the shipped file through the Segmenter
    assert file_dice(path, guard_set(adhoc_data)).dice == pytest.approx(g["dice"], abs=1e-6)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert report["size_bytes"] == path.stat().st_size


def test_int8_guard_fails_cleanly_when_no_strategy_meets_the_budget(tmp_path, adhoc_data):
    out = tmp_path / "never"
    with pytest.raises(GuardFailed, match="every strategy") as err:
        export_model(ExportSpec("fast_scnn", "onnx", "int8", out_dir=out, calib_data=adhoc_data, calib_size=2,
                                max_dice_drop=-1.0, strategies=["per-tensor", "per-channel"]))
    assert "per-tensor" in str(err.value) and "per-channel" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()  # nothing half-written, not even the folder it made


def test_int8_guard_escalates_when_drop_too_large(fast_scnn, tmp_path, adhoc_data):
    """A ladder whose first rung is a real but worse model (untrained weights) climbs to the next rung."""
    ref, net = fast_scnn
    torch.manual_seed(0)
    bad = torch_to_onnx(build_model("fast_scnn").eval(), ref.card.replace(name="bad").to_dict(), tmp_path / "bad.onnx")
    good = torch_to_onnx(net, ref.card.replace(name="good").to_dict(), tmp_path / "good.onnx")
    guard = guard_set(adhoc_data)
    reference = file_dice(good, guard).dice
    built = []
    ladder = [(name, lambda p=p, name=name: built.append(name) or p) for name, p in
              (("weak", bad), ("strong", good), ("unused", bad))]
    path, report = climb(ladder, guard, reference, 0.005)
    assert path == good and report.strategy == "strong" and built == ["weak", "strong"]
    assert report.attempts[0]["passed"] is False and report.attempts[0]["drop"] > 0.005
    assert report.attempts[1]["drop"] == 0.0


@pytest.mark.parametrize("target, act_type, weight_limit", [("x86", "UINT8", 127), ("x86-no-vnni", "UINT8", 64),
                                                           ("arm", "INT8", 127)])
def test_int8_targets_set_the_integer_types(fp32_export, adhoc_data, tmp_path, target, act_type, weight_limit):
    from onnx import TensorProto, numpy_helper

    from edgeseg.export.quantize import quantize_onnx

    out = tmp_path / "q.onnx"
    settings = quantize_onnx(fp32_export["path"], out, calibration_set(adhoc_data, 2), strategy="per-channel",
                             target=target)
    assert settings["target"] == target and settings["per_channel"] is True
    model = onnx.load(str(out))
    inits = {t.name: t for t in model.graph.initializer}
    act_zero_points = {inits[n.input[2]].data_type for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert act_zero_points == {getattr(TensorProto, act_type)}
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8
               and len(t.dims) == 4]
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert largest == 127 if weight_limit == 127 else largest <= weight_limit  # 7-bit weights without VNNI


def test_stratified_sample_is_seeded_and_proportional():
    names = [f"f{i}" for i in range(80)] + [f"s{i}" for i in range(16)] + ["b0", "b1"]
    strata = ["fl"] * 80 + ["st"] * 16 + ["bf"] * 2
    a = stratified_sample(names, strata, 20, seed=0)
    assert a == stratified_sample(names, strata, 20, seed=0) != stratified_sample(names, strata, 20, seed=1)
    assert len(a) == 20 and sum(n.startswith("b") for n in a) >= 1
    assert sum(n.startswith("f") for n in a) == 16 and sum(n.startswith("s") for n in a) == 3


def test_calibration_hash_depends_on_the_sample(adhoc_data):
    a = calibration_set(adhoc_data, 4, seed=0)
    assert a.inputs.shape == (4, 3, 256, 256) and a.info["n_images"] == 4
    assert calibration_set(adhoc_data, 4, seed=0).info["sha256"] == a.info["sha256"]
    assert calibration_set(adhoc_data, 4, seed=3).info["sha256"] != a.info["sha256"]


def test_calibration_reads_plain_image_folders(tmp_path, adhoc_data):
    for p in adhoc_data.glob("*/images/*.png"):
        shutil.copy(p, tmp_path / p.name)
    cal = calibration_set(tmp_path, 100)
    assert cal.info["layout"] == "plain" and cal.info["n_images"] == 8 and cal.info["available"] == 8


def test_canonical_folder_calibrates_on_its_training_split_only(sample_dir):
    # the bundled sample is 8 images of the canonical TEST split: none may be used for calibration
    with pytest.raises(DataError, match="training split"):
        calibration_set(sample_dir, 10)


# ---------------------------------------------------------------- bad input: one line, non-zero, nothing written


def _cli(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "tflite"], "unknown format 'tflite'"),
        (["--precision", "int4"], "unknown precision 'int4'"),
        (["--precision", "int8"], "needs calibration images"),
        (["--format", "onnx", "--precision", "fp16"], "ONNX fp16 is not offered"),
        (["--precision", "int8", "--calib-data", "SAMPLE", "--target", "riscv"], "unknown target"),
    ],
)
def test_bad_options_fail_with_one_line(tmp_path, sample_dir, args, message):
    args = [str(sample_dir) if a == "SAMPLE" else a for a in args]
    r = _cli("fast_scnn", *args, "--out", tmp_path / "o")
    assert r.exit_code == 2 and message in r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_export_spec_checks_options_and_names_the_variant(tmp_path):
    spec = ExportSpec("fast_scnn", "openvino", "int8", calib_data=tmp_path, target="arm", strategies=["default"])
    spec.check()
    assert spec.strategies == ("default",) and spec.guard_from == tmp_path  # guard data: the calibration folder
    assert spec.variant("fast_scnn") == "fast_scnn-int8-arm-ov"
    assert ExportSpec("fast_scnn").variant("fast_scnn") == "fast_scnn-fp32"
    assert ExportSpec("fast_scnn", name="mine").variant("fast_scnn") == "mine"
    with pytest.raises(EdgesegError, match="ONNX fp16 is not offered"):
        ExportSpec("fast_scnn", "onnx", "fp16").check()
    with pytest.raises(DataError, match="needs calibration images"):
        ExportSpec("fast_scnn", precision="int8").check()


def test_calibration_folder_without_usable_images_fails(tmp_path):
    empty = tmp_path / "frames"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    r = _cli("fast_scnn", "--precision", "int8", "--calib-data", empty, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "holds no usable images" in r.output and r.output.count("\n") == 1
    assert not (tmp_path / "o").exists()


def _checkpoint(tmp_path, arch: str, state=None, data: bytes | None = None):
    pt = tmp_path / f"{arch}.pt"
    if data is not None:
        pt.write_bytes(data)
    else:
        torch.save(state, pt)
    write_card(pt, new_card(arch))
    return pt


def test_corrupt_checkpoint_fails_with_one_line(tmp_path):
    pt = _checkpoint(tmp_path, "fast_scnn", data=b"not a checkpoint")
    r = _cli(pt, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "cannot load checkpoint" in r.output and r.output.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_checkpoint_of_another_architecture_fails_with_one_line(tmp_path):
    pt = _checkpoint(tmp_path, "fast_scnn", state=build_model("half_unet").state_dict())
    r = _cli(pt, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "does not fit architecture fast_scnn" in r.output
    assert not (tmp_path / "o").exists()


def test_unwritable_output_folder_fails_with_one_line(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    r = _cli("fast_scnn", "--out", blocker / "sub")
    assert r.exit_code == 2 and "is not writable" in r.output and r.output.count("\n") == 1


def test_exported_files_cannot_be_exported_again(tmp_path, fp32_export):
    with pytest.raises(EdgesegError, match="already a onnx file"):
        export_model(ExportSpec(fp32_export["path"], "onnx", "int8", out_dir=tmp_path / "o", calib_data=tmp_path))
    assert not (tmp_path / "o").exists()


def test_eval_scores_an_exported_file_through_the_runtime(fp32_export, adhoc_data):
    r = CliRunner().invoke(main, ["eval", fp32_export["path"], "--data", str(adhoc_data), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["n_images"] == 8 and 0.5 < out["dice_256"] <= 1.0


@pytest.mark.slow
def test_openvino_int8_export_through_nncf(tmp_path, adhoc_data):
    out = tmp_path / "ovq"
    export_model(ExportSpec("fast_scnn", "openvino", "int8", out_dir=out, calib_data=adhoc_data, calib_size=6,
                            max_dice_drop=0.05, strategies=["default"]))
    xml = out / "fast_scnn-int8-ov.xml"
    card = read_card(xml)
    assert card.precision == "int8" and card.executed.startswith("int8")
    assert read_embedded_card(xml)["guard"]["strategy"] == "default"
    import openvino as ov

    assert any(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(xml)).get_ops())


def test_percentile_calibration_keeps_one_outlier_from_stretching_an_activation_scale(tmp_path):
    """A 1x1 conv that copies its input: one calibration image holds a single huge pixel. MinMax's scale covers
    it; the per-tensor+percentile rung's scale covers the values that matter, and its file is as fast a graph."""
    from onnx import helper, numpy_helper

    from edgeseg.export.calibration import CalibrationSet
    from edgeseg.export.quantize import ONNX_STRATEGIES, quantize_onnx

    assert ONNX_STRATEGIES.index("per-tensor+percentile") == 1  # just after plain per-tensor: the same speed
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["y"]), helper.make_node("Relu", ["y"], ["out"])], "copy",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3, 64, 64])], [w])
    fp32 = tmp_path / "copy.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    x = np.random.default_rng(0).uniform(0, 1, (8, 3, 64, 64)).astype(np.float32)
    x[3, 0, 10, 10] = 1000.0
    calib = CalibrationSet(x, [f"im{i}" for i in range(8)])

    def input_scale(strategy: str) -> float:
        out = tmp_path / f"{strategy}.onnx"
        settings = quantize_onnx(fp32, out, calib, strategy=strategy, work_dir=tmp_path)
        model = onnx.load(str(out))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image")
        return float(inits[q.input[1]]), settings

    minmax, s1 = input_scale("per-tensor")
    pct, s2 = input_scale("per-tensor+percentile")
    assert s1["calibrate_method"] == "MinMax" and s2["calibrate_method"].startswith("Percentile")
    assert not s2["per_channel"]
    assert minmax == pytest.approx(1000.0 / 255, rel=0.01)
    assert pct < 1.5 / 255  # the 0-1 values get the whole uint8 range
    both, s3 = input_scale("per-channel+percentile")  # the two combine: per-channel weights, percentile ranges
    assert s3["per_channel"] and s3["calibrate_method"].startswith("Percentile") and both == pytest.approx(pct)


def test_concat_inputs_are_quantised_to_the_output_scale_so_the_runtime_copies_them(tmp_path):
    """A decoder's concatenation: a narrow branch (through a float Resize, as ONNX Runtime runs it) beside a wide
    skip. After quantize_onnx every input of the Concat has the output's scale (QLinearConcat then copies bytes),
    and the INT8 file still computes the float network's function."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from edgeseg.export.calibration import CalibrationSet
    from edgeseg.export.quantize import quantize_onnx, share_concat_scales

    rng = np.random.default_rng(0)
    w_narrow = numpy_helper.from_array(rng.normal(0, 0.05, (4, 3, 1, 1)).astype(np.float32), "w_narrow")
    w_wide = numpy_helper.from_array(rng.normal(0, 1.0, (4, 3, 1, 1)).astype(np.float32), "w_wide")
    w_out = numpy_helper.from_array(rng.normal(0, 0.5, (2, 8, 1, 1)).astype(np.float32), "w_out")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("MaxPool", ["image"], ["half"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["half", "w_narrow"], ["n0"]), helper.make_node("Relu", ["n0"], ["n1"]),
        helper.make_node("Resize", ["n1", "", "scales"], ["up"], mode="linear"),
        helper.make_node("Conv", ["image", "w_wide"], ["s0"]), helper.make_node("Relu", ["s0"], ["skip"]),
        helper.make_node("Concat", ["up", "skip"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w_out"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "decoder", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 2, 32, 32])],
        [w_narrow, w_wide, w_out, scales])
    fp32 = tmp_path / "decoder.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    calib = CalibrationSet(rng.uniform(0, 1, (8, 3, 32, 32)).astype(np.float32), [f"im{i}" for i in range(8)])
    out = tmp_path / "int8.onnx"
    settings = quantize_onnx(fp32, out, calib, strategy="per-tensor", work_dir=tmp_path)
    assert settings["concat_inputs_moved_to_output_scale"] == 1  # the narrow branch; the skip is the widest

    model = onnx.load(str(out))
    inits = {i.name: float(numpy_helper.to_array(i)) for i in model.graph.initializer if not i.dims}
    producers = {o: n for n in model.graph.node for o in n.output}
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    after = next(n for n in model.graph.node if concat.output[0] in n.input)
    in_scales = {inits[producers[t].input[1]] for t in concat.input}
    assert in_scales == {inits[after.input[1]]}
    assert share_concat_scales(model) == 0  # done once
    read = {i for n in model.graph.node for i in n.input}
    assert all(i.name in read for i in model.graph.initializer)  # the displaced parameters are gone

    # still the float network's function to within INT8 rounding (the branch is rounded once, to the grid the
    # Concat requantised it to before)
    x = rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
    new = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert np.abs(new - ref).max() < 0.05 * np.abs(ref).max()
