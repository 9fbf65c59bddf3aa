"""The segmentation networks (the paper's three and the real-time candidates): shapes, parameter counts, encoder
weights, export."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from edgeseg.train.models import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_INFO,
    EncoderWeightsError,
    UnknownModelError,
    build_model,
    count_params,
    gflops,
    list_models,
    register_model,
    registry,
)

WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared/weights/mobilenet_v2_imagenet_features.pth"
PAPER_ORDER = ["half_unet", "mobilenetv2_unet", "fast_scnn"]
# the real-time candidates of the "real-time and right" issue, registered after the paper's networks
CANDIDATES = ["shuffle_unet", "shuffle_unet_px", "lite_unet", "lraspp_lite", "mobilenetv2_unet_s"]
ALL_MODELS = PAPER_ORDER + CANDIDATES

# name -> (paper's Table 1 count, tolerance, exact count of this implementation)
PARAMS = {
    "half_unet": (0.118e6, 0.10, 121_281),
    "mobilenetv2_unet": (6.629e6, 0.01, 6_628_817),
    "fast_scnn": (0.154e6, 0.10, 152_881),
}
# name -> exact count of the candidates (no paper figure to match), and what each extra output channel adds
CANDIDATE_PARAMS = {
    "shuffle_unet": (194_096, 272),  # pixel-shuffle head: 16 filters (16 weights + bias) per output channel
    "shuffle_unet_px": (197_088, 528),  # its head reads the 32-channel fuse: 16 filters of 32 weights + bias
    "lite_unet": (192_809, 9),
    "lraspp_lite": (161_659, 107),  # three 1x1 classifiers: 64 + 24 + 16 weights + 3 biases
    "mobilenetv2_unet_s": (262_465, 9),
}
# GFLOPs (2 x MACs) at 1x3x256x256, measured when the networks were written
GFLOPS_256 = {"half_unet": 0.6435, "mobilenetv2_unet": 6.673, "fast_scnn": 0.06399,
              "shuffle_unet": 0.09300, "shuffle_unet_px": 0.11698,
              "lite_unet": 0.09018, "lraspp_lite": 0.1094, "mobilenetv2_unet_s": 0.1619}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry_lists_the_three_paper_networks_in_paper_order_then_the_candidates():
    assert list_models() == ALL_MODELS


def test_every_model_has_a_one_line_description():
    for name in ALL_MODELS:
        assert MODEL_INFO[name] and "\n" not in MODEL_INFO[name]


@pytest.mark.parametrize("out_channels", [1, 2])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_returns_logits_at_the_input_size(name, out_channels):
    model = build_model(name, out_channels=out_channels).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 256, 256))
    assert y.shape == (2, out_channels, 256, 256)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_accepts_non_square_multiples_of_32(name):
    model = build_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 192)).shape == (1, 1, 128, 192)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_out_channels_defaults_to_one_foreground_channel(name):
    assert count_params(build_model(name)) == count_params(build_model(name, out_channels=1))


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_parameter_count_matches_the_paper(name):
    target, tol, exact = PARAMS[name]
    n = count_params(build_model(name))
    assert abs(n - target) <= tol * target, f"{name}: {n} params, paper {target:.0f} +- {tol:.0%}"
    assert n == exact, f"{name}: architecture changed ({n} params, was {exact})"


@pytest.mark.parametrize("name, last_width", [("half_unet", 16), ("mobilenetv2_unet", 16), ("fast_scnn", 44)])
def test_second_output_channel_only_adds_one_classifier_filter(name, last_width):
    extra = count_params(build_model(name, out_channels=2)) - count_params(build_model(name))
    assert extra == last_width + 1


@pytest.mark.parametrize("name", CANDIDATES)
def test_candidate_parameter_counts(name):
    exact, per_channel = CANDIDATE_PARAMS[name]
    assert count_params(build_model(name)) == exact, f"{name}: architecture changed"
    assert count_params(build_model(name, out_channels=2)) - exact == per_channel


def test_unknown_name_raises_listing_the_choices():
    expected = ("unknown model 'foo': choose one of half_unet, mobilenetv2_unet, fast_scnn, "
                "shuffle_unet, shuffle_unet_px, lite_unet, lraspp_lite, mobilenetv2_unet_s")
    with pytest.raises(UnknownModelError) as err:
        build_model("foo")
    assert str(err.value) == expected
    assert issubclass(UnknownModelError, ValueError)


def test_register_model_adds_a_factory_and_rejects_duplicates(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "MODEL_INFO", dict(registry.MODEL_INFO))

    @register_model
    def tiny_net(out_channels: int = 1):
        """A 1x1 conv.

        More text."""
        return torch.nn.Conv2d(3, out_channels, 1)

    assert registry.list_models()[-1] == "tiny_net"
    assert registry.MODEL_INFO["tiny_net"] == "A 1x1 conv."
    assert isinstance(build_model("tiny_net", out_channels=2), torch.nn.Conv2d)
    with pytest.raises(ValueError, match="already registered"):
        register_model(tiny_net)


def test_imagenet_normalisation_constants():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


def test_encoder_has_torchvision_mobilenet_v2_features_layout():
    sd = build_model("mobilenetv2_unet").encoder.state_dict()
    assert len(sd) == 312
    assert list(sd)[:2] == ["0.0.weight", "0.1.weight"] and list(sd)[-1] == "18.1.num_batches_tracked"
    assert sd["1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # t=1 block: depthwise first
    assert sd["1.conv.1.weight"].shape == (16, 32, 1, 1)
    assert sd["2.conv.0.0.weight"].shape == (96, 16, 1, 1)  # t=6 block: expansion first
    assert sd["2.conv.3.running_var"].shape == (24,)
    assert sd["18.0.weight"].shape == (1280, 320, 1, 1)
    encoder = build_model("mobilenetv2_unet").encoder
    assert count_params(encoder) == 2_223_872


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"shared ImageNet encoder weights not present at {WEIGHTS}")
def test_encoder_loads_the_imagenet_features_file_strictly():
    sd = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    model = build_model("mobilenetv2_unet")
    model.encoder.load_state_dict(sd, strict=True)
    assert list(model.encoder.state_dict()) == list(sd)
    loaded = build_model("mobilenetv2_unet", encoder_weights=WEIGHTS)
    assert torch.equal(loaded.encoder[17].conv[0][0].weight, sd["17.conv.0.0.weight"])
    assert torch.equal(loaded.encoder[18][1].running_var, sd["18.1.running_var"])


def test_wrong_keys_file_raises_encoder_weights_error(tmp_path):
    bad = tmp_path / "resnet_like.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, bad)
    with pytest.raises(EncoderWeightsError) as err:
        build_model("mobilenetv2_unet", encoder_weights=str(bad))
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg
    assert "missing 312 keys, unexpected 1 keys: it is not a MobileNetV2 features state dict" in msg
    assert "mobilenet_v2_imagenet_features.pth" in msg  # the fix
    assert isinstance(err.value, ValueError)


def test_wrong_shapes_file_raises_encoder_weights_error(tmp_path):
    sd = build_model("mobilenetv2_unet").encoder.state_dict()
    sd["0.0.weight"] = torch.zeros(16, 3, 3, 3)
    bad = tmp_path / "narrow.pth"
    torch.save(sd, bad)
    with pytest.raises(EncoderWeightsError, match=r"1 tensors have the wrong shape \(e.g. '0.0.weight'"):
        build_model("mobilenetv2_unet", encoder_weights=bad)


def test_full_torchvision_state_dict_is_accepted(tmp_path):
    source = build_model("mobilenetv2_unet").encoder.state_dict()
    full = {f"features.{k}": v for k, v in source.items()}
    full["classifier.1.weight"] = torch.zeros(1000, 1280)
    path = tmp_path / "mobilenet_v2_full.pth"
    torch.save(full, path)
    model = build_model("mobilenetv2_unet", encoder_weights=path)
    assert torch.equal(model.encoder[0][0].weight, source["0.0.weight"])


def test_missing_or_unreadable_weights_file_raises_encoder_weights_error(tmp_path):
    with pytest.raises(EncoderWeightsError, match="not found"):
        build_model("mobilenetv2_unet", encoder_weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(EncoderWeightsError, match="cannot be read as a plain state dict"):
        build_model("mobilenetv2_unet", encoder_weights=junk)


def test_imagenet_weights_without_torchvision_say_how_to_pass_a_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(EncoderWeightsError, match="no offline ImageNet weights: pass --encoder-weights PATH"):
        build_model("mobilenetv2_unet", encoder_weights="imagenet")


@pytest.mark.parametrize("name", ALL_MODELS)
def test_state_dict_round_trips_with_weights_only(name, tmp_path):
    model = build_model(name, out_channels=2).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    clone = build_model(name, out_channels=2).eval()
    clone.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_gflops_match_the_measured_values(name):
    model = build_model(name).train()
    assert gflops(model) == pytest.approx(GFLOPS_256[name], rel=0.01)
    assert model.training  # gflops restores the mode


def test_gflops_scale_with_pixels_and_count_two_flops_per_mac():
    model = build_model("half_unet")  # fully convolutional: every MAC scales with the pixel count
    assert gflops(model, size=512) == pytest.approx(4 * gflops(model, size=256), rel=1e-6)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert gflops(conv, size=32) == pytest.approx(2 * 32 * 32 * 8 * 3 * 9 / 1e9)


def test_count_params_counts_parameters_not_buffers():
    assert count_params(torch.nn.BatchNorm2d(4)) == 8
    assert count_params(torch.nn.Conv2d(3, 4, 3, bias=False)) == 108


@pytest.mark.parametrize("size", [256, 512])
def test_fast_scnn_pyramid_pooling_handles_power_of_two_sizes(size):
    model = build_model("fast_scnn").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 1, size, size)


def test_fast_scnn_exports_to_a_static_onnx_graph(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = build_model("fast_scnn").eval()
    x = torch.randn(1, 3, 256, 256)
    path = tmp_path / "fast_scnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in torch >= 2.9
        torch.onnx.export(
            model,
            (x,),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
        )
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert not ops & {"Shape", "GlobalAveragePool", "If", "Loop"}, ops
    assert "AveragePool" in ops
    dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 256, 256]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert abs(y - expected).max() < 1e-4


@pytest.mark.parametrize("name", CANDIDATES)
def test_candidates_export_to_static_onnx_graphs_with_two_output_channels(name, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from edgeseg.card import new_card
    from edgeseg.export.onnx import torch_to_onnx

    model = build_model(name, out_channels=2).eval()
    path = torch_to_onnx(model, new_card(name, out_channels=2, outputs=["foreground", "boundary"]),
                         tmp_path / f"{name}.onnx", dynamic_batch=False)
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert not ops & {"Shape", "GlobalAveragePool", "If", "Loop", "ConvTranspose"}, ops
    assert [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output] == [[1, 2, 256, 256]]
    x = torch.randn(1, 3, 256, 256)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = torch.sigmoid(model(x)).numpy()
    assert abs(probs - expected).max() < 1e-4


@pytest.mark.parametrize("name", ALL_MODELS)
def test_the_inference_form_computes_the_same_logits_and_leaves_the_model_alone(name):
    from edgeseg.train.models import reparameterize

    torch.manual_seed(0)
    net = build_model(name, out_channels=2)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so that folding them matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = reparameterize(net)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(fast(x), net(x), atol=1e-5)
    assert net.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())

    def input_convs(m):
        return sum(isinstance(c, torch.nn.Conv2d) and c.in_channels == 3 for c in m.modules())

    # shuffle_unet_px reads the input once (one patch embedding for stem and pixel skip); the others are unchanged
    assert input_convs(fast) == (1 if name == "shuffle_unet_px" else input_convs(net))
    assert input_convs(net) == (2 if name == "shuffle_unet_px" else input_convs(fast))


def test_the_inference_form_equalises_the_merged_embeddings_ranges_on_example_images():
    """The two patch embeddings share one INT8 scale once merged: given example inputs, each stem channel is
    scaled to the pixel skip's range (its depthwise reader scaled back), so both fill it; the logits stay."""
    from edgeseg.train.models import reparameterize

    torch.manual_seed(0)
    net = build_model("shuffle_unet_px", out_channels=2)
    with torch.no_grad():
        net.stem[0][1].weight.fill_(0.1)  # the stem's channels span a tenth of the pixel skip's
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.rand(4, 3, 64, 64)
    plain, equalised = reparameterize(net), reparameterize(net, example=x)
    with torch.no_grad():
        assert torch.allclose(equalised(x), net(x), atol=1e-4)
        assert torch.allclose(plain(x), net(x), atol=1e-4)

        def group_max(model):
            out = model.embed(x).amax(dim=(0, 2, 3))
            return out[:16], out[16:].max()

        before, skip = group_max(plain)
        assert before.max() < skip / 3  # merged as is: the stem's channels would get a third of the INT8 levels
        after, skip_after = group_max(equalised)
    from edgeseg.train.models.shuffle_unet import MAX_EQUALISATION

    assert torch.allclose(skip_after, skip)
    reachable = before * MAX_EQUALISATION >= skip  # a nearly dead channel is scaled at most MAX_EQUALISATION
    assert reachable.sum() >= 12
    assert torch.allclose(after[reachable], skip.expand(int(reachable.sum())), rtol=1e-4)
    assert torch.allclose(after[~reachable], before[~reachable] * MAX_EQUALISATION, rtol=1e-4)
