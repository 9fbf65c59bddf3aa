import json

import numpy as np
import pytest
from conftest import write_threshold_onnx

from edgeseg.backends import available_backends, open_backend, read_embedded_card
from edgeseg.errors import ModelError
from edgeseg.preprocess import preprocess


def _frame():
    img = np.full((256, 256), 20, np.uint8)
    img[100:150, 60:120] = 230
    return img


def test_both_backends_give_the_same_probabilities_in_contract_order(tmp_path):
    path = write_threshold_onnx(tmp_path / "m.onnx", out_channels=2)
    x = preprocess(_frame())
    outs = {}
    for name in ("onnxruntime", "openvino"):
        be = open_backend(path, name, threads=1, **({"inference_precision": "fp32"} if name == "openvino" else {}))
        assert be.output_names == ["foreground", "boundary"]
        outs[name] = be(x)
        assert outs[name].shape == (1, 2, 256, 256)
    np.testing.assert_allclose(outs["onnxruntime"], outs["openvino"], atol=1e-5)
    fg, boundary = outs["onnxruntime"][0]
    assert fg[120, 90] > 0.99 and fg[10, 10] < 0.01  # bright square vs dark background
    np.testing.assert_allclose(fg + boundary, 1.0, atol=1e-6)


def test_a_batch_of_two_frames_gives_two_results(tmp_path):
    path = write_threshold_onnx(tmp_path / "m.onnx")
    be = open_backend(path, threads=1)
    x = np.concatenate([preprocess(_frame()), preprocess(255 - _frame())])
    y = be(x)
    assert y.shape == (2, 1, 256, 256)
    assert y[0, 0, 120, 90] > 0.99 and y[1, 0, 120, 90] < 0.01


def test_executed_precision_is_read_back(tmp_path):
    path = write_threshold_onnx(tmp_path / "m.onnx")
    assert open_backend(path, "onnxruntime").executed_precision == "fp32"
    ov_forced = open_backend(path, "openvino", inference_precision="fp32")
    assert ov_forced.executed_precision == "fp32"
    ov_default = open_backend(path, "openvino")
    assert ov_default.executed_precision in ("fp32", "bf16", "fp16")  # bf16 on AMX CPUs, fp16 on ARM
    assert ov_default.info()["inference_precision_hint"] == ov_default.executed_precision


def test_embedded_card_reads_back_from_onnx_and_openvino(tmp_path):
    import openvino as ov

    from edgeseg.card import CARD_METADATA_KEY

    path = write_threshold_onnx(tmp_path / "m.onnx", card={"precision": "fp32"})
    assert read_embedded_card(path)["name"] == "m"
    model = ov.convert_model(str(path))
    model.set_rt_info(json.dumps({"name": "m-ov"}), CARD_METADATA_KEY)
    ov.save_model(model, str(tmp_path / "m-ov.xml"))
    assert read_embedded_card(tmp_path / "m-ov.xml") == {"name": "m-ov"}
    assert open_backend(tmp_path / "m-ov.xml").name == "openvino"  # .xml -> openvino under "auto"


def test_wrong_input_shape_is_a_model_error(tmp_path):
    be = open_backend(write_threshold_onnx(tmp_path / "m.onnx"), threads=1)
    with pytest.raises(ModelError, match=r"expects input \(-1, 3, 256, 256\)"):
        be(np.zeros((1, 3, 128, 128), np.float32))


@pytest.mark.parametrize(
    "name, backend, message",
    [
        ("missing.onnx", "auto", "not found"),
        ("m.onnx", "tensorrt", "unknown backend"),
        ("m.xml", "onnxruntime", "cannot run the openvino file m.xml: use --backend openvino"),
        ("m.pt", "onnxruntime", "cannot run the torch file"),
        ("m.txt", "auto", "not a model file"),
    ],
)
def test_bad_backend_requests_are_one_line_model_errors(tmp_path, name, backend, message):
    write_threshold_onnx(tmp_path / "m.onnx")
    (tmp_path / "m.xml").write_text("<net/>")
    (tmp_path / "m.pt").write_bytes(b"x")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ModelError, match=message) as info:
        open_backend(tmp_path / name, backend)
    assert "\n" not in str(info.value)


def test_corrupt_onnx_file_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(ModelError, match="cannot load"):
        open_backend(bad, "onnxruntime")


def test_available_backends_lists_the_installed_runtimes():
    import importlib.util

    torch = {"torch"} if importlib.util.find_spec("torch") else set()
    assert set(available_backends()) == {"onnxruntime", "openvino"} | torch


def test_the_torch_backend_comes_from_the_train_package_through_an_entry_point():
    from edgeseg.backends import BUILTIN, registry

    assert "torch" not in BUILTIN  # the core names nothing from train
    assert registry()["torch"] == "edgeseg.train.torch_backend:TorchBackend"


def test_a_missing_backend_package_is_one_line_with_the_install_command():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\nfrom edgeseg.backends import available_backends, backend_class\n"
            "print(available_backends())\ntry:\n    backend_class('torch')\nexcept Exception as e:\n"
            "    print(type(e).__name__, e.exit_code, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.splitlines() == ["['onnxruntime', 'openvino']",
                                "MissingDependency 3 backend torch is not installed: pip install 'edgeseg[train]'"]


def test_options_a_backend_does_not_take_are_refused(tmp_path):
    path = write_threshold_onnx(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="the onnxruntime backend has no option tta"):
        open_backend(path, "onnxruntime", tta=True)
    assert open_backend(path, "onnxruntime", tta=False).name == "onnxruntime"  # an option left off is fine
