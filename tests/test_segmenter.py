import cv2
import numpy as np
import pytest
from conftest import disc_frame, write_threshold_onnx

from edgeseg import Segmenter
from edgeseg.backends import open_backend
from edgeseg.card import write_card
from edgeseg.errors import ModelError
from edgeseg.postprocess import PostprocessConfig, postprocess
from edgeseg.preprocess import preprocess


@pytest.fixture
def model(tmp_path):
    return write_threshold_onnx(tmp_path / "disc-fp32.onnx", dynamic_hw=False)


def test_segmenter_counts_the_discs_of_a_frame_near_the_input_size(model):
    frame, labels = disc_frame((300, 300), diameter=12, spacing=30)
    seg = Segmenter.load(model, threads=1)
    result = seg(frame)
    assert not result.tiled
    assert result.count == labels.max() == 100
    assert result.mask.shape == frame.shape and result.labels.dtype == np.int32
    assert set(result.timings) == {"preprocess", "inference", "postprocess"}
    assert seg.info["backend"] == "onnxruntime" and seg.info["model"] == "disc-fp32"


def test_default_mode_tiles_a_large_frame_at_the_training_scale(model):
    frame, labels = disc_frame((1000, 1000), diameter=24, spacing=50)  # nuclei twice the training scale (12 px)
    seg = Segmenter.load(model, threads=1)
    result = seg(frame)
    assert result.tiled and result.n_tiles > 1
    assert result.scale == pytest.approx(0.5, rel=0.2)
    assert result.count == labels.max()
    resized = Segmenter.load(model, threads=1, tile="never")(frame)
    assert not resized.tiled and resized.scale == pytest.approx(0.256)


def test_tiled_inference_finds_the_same_nuclei_as_untiled_inference(tmp_path):
    path = write_threshold_onnx(tmp_path / "dyn.onnx", dynamic_hw=True)
    frame, labels = disc_frame((700, 600), diameter=12, spacing=33)
    seg = Segmenter.load(path, threads=1, tile="always")  # discs at the training scale: tiles at native scale
    tiled = seg(frame)
    assert tiled.tiled and tiled.scale == 1.0 and tiled.n_tiles == 9
    whole = open_backend(path, threads=1)(preprocess(frame, frame.shape[:2]))[0]  # one pass over the frame
    np.testing.assert_allclose(tiled.probs, whole, atol=1e-5)  # no seams
    _, whole_labels = postprocess(whole, frame.shape, seg.post)
    assert tiled.count == whole_labels.max() == labels.max()
    assert np.array_equal(tiled.labels > 0, whole_labels > 0)


def test_any_frame_format_gives_the_same_count(model):
    frame, labels = disc_frame((256, 256))
    seg = Segmenter.load(model, threads=1)
    rgba = np.dstack([frame, frame, frame, np.full_like(frame, 255)])
    for f in (frame, frame.astype(np.uint16) * 257, np.dstack([frame] * 3), rgba):
        assert seg(f).count == labels.max()


def test_runtime_mode_estimates_the_scale_once_per_frame_size(model):
    frame, _ = disc_frame((1000, 1000), diameter=24, spacing=50)
    backend = open_backend(model, threads=1)
    calls = []

    def predict(x):
        calls.append(len(x))
        return backend(x)

    seg = Segmenter(predict, backend_card(model), tile="auto")
    seg.remember_scale = True
    first = seg(frame)
    n_first = len(calls)
    second = seg(frame)
    assert first.count == second.count and second.tiled
    assert len(calls) - n_first == 1  # the second frame: one batch of tiles, no coarse pass, no refinement
    assert n_first >= 2


def backend_card(path):
    from edgeseg.card import read_card

    return read_card(path)


def test_threshold_override_changes_the_postprocessing(model):
    seg = Segmenter.load(model, threads=1, threshold=0.9)
    assert seg.post.threshold == 0.9 and seg.post.method == "cc"


def test_file_that_does_not_match_its_card_is_refused(model):
    data = bytearray(model.read_bytes())
    data[-3] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the sha256"):
        Segmenter.load(model)


def test_output_count_must_match_the_card(tmp_path):
    path = write_threshold_onnx(tmp_path / "m.onnx", out_channels=1)
    from edgeseg.card import read_card

    write_card(path, {**read_card(path), "out_channels": 2})
    with pytest.raises(ModelError, match="has 1 outputs but its card says 2"):
        Segmenter.load(path)


def test_input_size_must_match_the_card(tmp_path):
    path = write_threshold_onnx(tmp_path / "m.onnx", size=128)
    from edgeseg.card import read_card

    write_card(path, {**read_card(path), "input_size": [256, 256]})
    with pytest.raises(ModelError, match="takes input"):
        Segmenter.load(path)


def test_a_pytorch_checkpoint_points_to_the_exported_variant(tmp_path):
    pt = tmp_path / "fast_scnn.pt"
    pt.write_bytes(b"weights")
    write_card(pt, {"name": "fast_scnn", "arch": "fast_scnn"})
    with pytest.raises(ModelError, match="fast_scnn-int8"):
        Segmenter.load(pt)


def test_a_bare_predictor_wrapped_with_a_watershed_card(tmp_path):
    frame, labels = disc_frame((256, 256), diameter=14, spacing=14)  # touching discs in rows
    card = {"input_size": [256, 256], "postprocess": PostprocessConfig("watershed", 0.5, min_size=4).to_dict()}
    seg = Segmenter(lambda x: 1 / (1 + np.exp(-8 * (x.mean(1, keepdims=True) - 0.5))), card)
    assert seg(frame).count > 1


def test_a_frame_smaller_than_the_input_is_padded_not_enlarged(model):
    frame, labels = disc_frame((130, 130), diameter=12, spacing=26)  # nuclei already at the training scale
    result = Segmenter.load(model, threads=1)(frame)
    assert result.tiled and result.scale == 1.0 and result.n_tiles == 1
    assert result.count == labels.max()
    enlarged = Segmenter.load(model, threads=1, tile="never")(frame)
    assert enlarged.scale == pytest.approx(256 / 130)


def test_per_type_training_scale_keeps_a_modality_learnt_small_resized(model):
    from edgeseg.card import read_card

    frame, _ = disc_frame((1000, 1000), diameter=24, spacing=50)  # 6 px at the input size
    card = read_card(model)
    backend = open_backend(model, threads=1)
    overall = Segmenter(backend, {**card, "training_scale": {"median_nucleus_diameter_px": 12.0}})
    assert overall(frame).tiled  # 6 px < 12 px: tiled
    learnt_small = {"median_nucleus_diameter_px": 12.0, "per_type": {"fluorescence": 5.0, "stained": 12.0}}
    seg = Segmenter(backend, {**card, "training_scale": learnt_small})
    assert seg.target_diameter(frame) == 5.0  # a dark background with bright nuclei reads as fluorescence
    assert not seg(frame).tiled  # this model learnt fluorescence nuclei at 5 px: keep the resize


def test_nucleus_diameter_is_one_nucleus_wide_even_in_a_clump():
    from edgeseg.segmenter import nucleus_diameter

    _, discs = disc_frame((300, 300), diameter=16, spacing=40)
    assert nucleus_diameter(discs) == pytest.approx(16, abs=1.5)
    clumps = np.zeros((300, 300), np.int32)  # chains of 4 overlapping discs, each chain one merged object
    for k, y in enumerate(range(30, 300, 50), start=1):
        for x in (40, 52, 64, 76):
            cv2.circle(clumps, (x, y), 8, k, -1)
    assert nucleus_diameter(clumps) == pytest.approx(16, abs=1.5)  # an area-based diameter would say ~27
    assert nucleus_diameter(np.zeros((50, 50), np.int32)) is None


def test_stage_timings_account_for_the_whole_call_even_when_tiling(model):
    import time

    frame, _ = disc_frame((1000, 1000), diameter=24, spacing=50)  # coarse pass, scale estimate, tiles, refinement
    seg = Segmenter.load(model, threads=1)
    t0 = time.perf_counter()
    result = seg(frame)
    wall_ms = (time.perf_counter() - t0) * 1e3
    assert result.tiled
    assert sum(result.timings.values()) <= wall_ms
    assert wall_ms - sum(result.timings.values()) < max(2.0, 0.1 * wall_ms)  # nothing substantial left untimed


def test_a_network_blind_to_squeezed_nuclei_still_tiles_at_the_training_scale(model):
    """A network with a blurred view (a weak network): squeezed 4x, its 6 px discs melt into faint blobs and
    the whole-frame view shows nothing to measure; the larger views do, so the frame is tiled at the right
    scale (the earlier whole-frame estimate kept the resize and found no nuclei at all)."""
    from edgeseg.card import read_card

    frame, labels = disc_frame((1000, 1000), diameter=24, spacing=50)
    backend = open_backend(model, threads=1)

    def blurred(x):
        return np.stack([cv2.GaussianBlur(p[0], (0, 0), 3.0)[None] for p in backend(x)])

    seg = Segmenter(blurred, read_card(model))
    rgb = np.dstack([frame] * 3)
    # the blur shrinks what the smaller views see (13 px at 0.36x, 19 px at 0.51x, 23 px at native): the median
    assert seg.nucleus_size(rgb, seg.resized_probs(frame)) == pytest.approx(24, rel=0.25)
    result = seg(frame)
    assert result.tiled and result.scale == pytest.approx(0.5, rel=0.25)
    assert result.count == labels.max()


def test_objects_cut_by_the_border_do_not_count_as_narrow_nuclei():
    from edgeseg.segmenter import nucleus_widths

    labels = np.zeros((100, 100), np.int32)
    cv2.circle(labels, (50, 50), 10, 1, -1)
    cv2.circle(labels, (2, 50), 10, 2, -1)  # mostly outside the image: looks narrower than it is
    assert sorted(nucleus_widths(labels)) == pytest.approx([6, 10], abs=0.5)  # the cut disc: 6 px
    assert nucleus_widths(labels, interior_only=True) == pytest.approx([10], abs=0.5)
