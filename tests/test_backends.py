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


def test_one_stacked_output_gives_the_same_channels_as_one_output_a_channel(tmp_path):
    x = preprocess(_frame())
    apart = write_threshold_onnx(tmp_path / "apart.onnx", out_channels=2)
    stacked = write_threshold_onnx(tmp_path / "stacked.onnx", out_channels=2, stacked=True)
    for name in ("onnxruntime", "openvino"):
        opts = {"inference_precision": "fp32"} if name == "openvino" else {}
        a, s = (open_backend(p, name, threads=1, **opts) for p in (apart, stacked))
        assert s.output_names == a.output_names == ["foreground", "boundary"]
        np.testing.assert_array_equal(s(x), a(x))
        assert s(x)[0, 0, 120, 90] > 0.99 and s(x)[0, 1, 120, 90] < 0.01  # channel 0 is the foreground


def test_a_stacked_output_whose_card_names_other_channels_is_a_one_line_error(tmp_path):
    import onnx

    from edgeseg.card import CARD_METADATA_KEY

    path = write_threshold_onnx(tmp_path / "m.onnx", out_channels=2, stacked=True)
    model = onnx.load(str(path))
    entry = next(p for p in model.metadata_props if p.key == CARD_METADATA_KEY)
    entry.value = json.dumps({**json.loads(entry.value), "outputs": ["foreground", "boundary", "centre"]})
    onnx.save(model, str(path))
    for name in ("onnxruntime", "openvino"):  # OpenVINO reads no card from an .onnx: given the one inside
        with pytest.raises(ModelError, match="holds 2 channels but its card names 3"):
            open_backend(path, name, threads=1, card=read_embedded_card(path), fallback=False)


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


def test_openvino_runs_onnx_files_in_fp32_on_arm_unless_asked_otherwise(tmp_path, monkeypatch):
    import openvino as ov

    import edgeseg.zoo

    path = write_threshold_onnx(tmp_path / "m.onnx")
    ov.save_model(ov.Core().read_model(str(path)), str(tmp_path / "m-ov.xml"))
    device_default = open_backend(path, "openvino").info()["inference_precision_hint"]  # this x86: bf16 or fp32
    monkeypatch.setattr(edgeseg.zoo, "cpu_family", lambda: "arm")
    assert open_backend(path, "openvino").info()["inference_precision_hint"] == "fp32"
    asked = open_backend(path, "openvino", inference_precision="bf16").info()["inference_precision_hint"]
    assert asked in ("bf16", device_default)  # the caller's hint goes through (a CPU without bf16 may run fp32)
    assert open_backend(tmp_path / "m-ov.xml", "openvino").info()["inference_precision_hint"] == device_default


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


# ------------------------------------------------------------------ OpenVINO that cannot run a file on this CPU
# (seen on an emulated Raspberry Pi 4, Cortex-A72: every INT8 ONNX file compiles, then the first inference raises or
# returns an empty batch, and one OpenVINO IR does not compile; benchmarks/results/pi_smoke.md)


def _openvino_returns_an_empty_batch(monkeypatch):
    from edgeseg.backends.openvino_backend import OpenVinoBackend

    real = OpenVinoBackend._run
    monkeypatch.setattr(OpenVinoBackend, "_run", lambda self, x: real(self, x)[:0])


def _openvino_cannot_compile(monkeypatch):
    import openvino as ov

    real = ov.Core

    class CoreThatCannotCompile:
        def __init__(self):
            self.core = real()

        def read_model(self, path):
            return self.core.read_model(path)

        def compile_model(self, *args, **kwargs):
            raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\nmore lines")

    monkeypatch.setattr(ov, "Core", CoreThatCannotCompile)


def _openvino_ir_beside(onnx_path):
    """The OpenVINO IR of ``onnx_path`` beside it (``m-ov.xml`` + .bin) with its card, as `edgeseg export` leaves."""
    import openvino as ov

    from edgeseg.card import read_card, write_card

    xml = onnx_path.with_name(onnx_path.stem + "-ov.xml")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml))
    write_card(xml, {**read_card(onnx_path).to_dict(), "name": xml.stem, "format": "openvino"})
    return xml


def test_openvino_failing_at_its_first_inference_falls_back_to_onnxruntime_and_says_so(tmp_path, monkeypatch, capsys):
    path = write_threshold_onnx(tmp_path / "m.onnx")
    _openvino_returns_an_empty_batch(monkeypatch)
    be = open_backend(path, "openvino", threads=1, inference_precision="fp32")
    assert be.name == "onnxruntime" and be.path == path
    assert be.info()["fallback_from"] == "openvino"
    reason = "OpenVINO returns (0, 1, 256, 256) instead of (1, 1, 256, 256) for m.onnx on this CPU"
    assert be.info()["fallback_reason"] == reason
    assert be(preprocess(_frame()))[0, 0, 120, 90] > 0.99  # it runs, and right
    err = capsys.readouterr().err
    assert err.splitlines() == [f"note: {be.info()['fallback_reason']}: running it with onnxruntime instead"]


def test_an_openvino_ir_that_does_not_compile_runs_its_onnx_twin_with_onnxruntime(tmp_path, monkeypatch, capsys):
    onnx_path = write_threshold_onnx(tmp_path / "m.onnx", card={"source": {"name": "net"}})  # exported from net
    xml = _openvino_ir_beside(onnx_path)
    _openvino_cannot_compile(monkeypatch)
    be = open_backend(xml, "auto", threads=1)
    assert (be.name, be.path, be.card.name) == ("onnxruntime", onnx_path, "m")
    reason = f"OpenVINO cannot compile {xml} (more lines)"  # the reason, not where OpenVINO raised it
    assert be.info()["fallback_reason"] == reason
    assert capsys.readouterr().err.splitlines() == [f"note: {reason}: running m.onnx with onnxruntime instead"]


def test_without_an_onnx_twin_an_openvino_failure_stays_one_line(tmp_path, monkeypatch):
    xml = _openvino_ir_beside(write_threshold_onnx(tmp_path / "m.onnx", card={"source": {"name": "net"}}))
    (tmp_path / "m.onnx").unlink()
    _openvino_returns_an_empty_batch(monkeypatch)
    with pytest.raises(ModelError) as err:
        open_backend(xml, threads=1)
    assert str(err.value) == ("OpenVINO returns (0, 1, 256, 256) instead of (1, 1, 256, 256) for m-ov.xml on this "
                              "CPU: run it with --backend onnxruntime")


def test_a_caller_that_measures_openvino_itself_gets_the_error_not_a_fallback(tmp_path, monkeypatch):
    path = write_threshold_onnx(tmp_path / "m.onnx")
    _openvino_returns_an_empty_batch(monkeypatch)
    with pytest.raises(ModelError, match="OpenVINO returns"):
        open_backend(path, "openvino", threads=1, fallback=False)


def test_a_run_whose_openvino_fails_logs_the_backend_that_ran(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edgeseg.cli import main

    path = write_threshold_onnx(tmp_path / "m.onnx")
    _openvino_returns_an_empty_batch(monkeypatch)
    log = tmp_path / "run.jsonl"
    res = CliRunner().invoke(main, ["run", "--model", str(path), "--backend", "openvino", "--max-frames", "2",
                                    "--no-display", "--no-record", "--threads", "1", "--log", str(log)])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and res.stderr.count("running it with onnxruntime instead") == 1
    start = json.loads(log.read_text().splitlines()[0])
    assert (start["type"], start["backend"], start["fallback_from"]) == ("start", "onnxruntime", "openvino")
