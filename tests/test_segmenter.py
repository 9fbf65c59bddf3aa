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


def counting(model) -> tuple:
    """A predictor over ``model`` that records the batch size of every call, and that record."""
    backend = open_backend(model, threads=1)
    calls: list[int] = []

    def predict(x):
        calls.append(len(x))
        return backend(x)

    return predict, calls


def test_runtime_mode_estimates_the_scale_once_per_frame_size(model):
    frame, _ = disc_frame((1000, 1000), diameter=24, spacing=50)
    predict, calls = counting(model)
    seg = Segmenter(predict, backend_card(model), tile="auto", remember_scale=True)
    first = seg(frame)
    n_first = len(calls)
    second = seg(frame)
    assert first.count == second.count and second.tiled and second.scale == first.scale
    assert len(calls) - n_first == 1  # the second frame: one batch of tiles, no coarse pass, no refinement
    assert n_first >= 2
    assert (first.scale_source, second.scale_source) == ("estimate", "remembered")
    fresh = Segmenter(predict, backend_card(model), tile="auto")  # no cache: every frame is measured
    n_before = len(calls)
    fresh(frame)
    assert len(calls) - n_before == n_first


def test_a_given_diameter_replaces_the_estimate(model):
    frame, labels = disc_frame((1000, 1000), diameter=24, spacing=50)
    predict, calls = counting(model)
    seg = Segmenter(predict, backend_card(model), diameter=24.0)
    result = seg(frame)
    assert len(calls) == 1  # no coarse pass, no probing windows: straight to the tiles
    assert result.tiled and result.scale == pytest.approx(0.5) and result.scale_source == "diameter"
    assert result.count == labels.max()
    assert seg.info["diameter_px"] == 24.0


def test_a_given_diameter_enlarges_a_frame_of_small_nuclei(model):
    frame, labels = disc_frame((200, 200), diameter=6, spacing=20)  # half the training scale of 12 px
    measured = Segmenter.load(model, threads=1)(frame)  # the frame's own measure (fluorescence) enlarges it too
    assert measured.scale_source == "classical" and 1.5 < measured.scale <= 2.0
    enlarged = Segmenter.load(model, threads=1, diameter=6)(frame)
    assert enlarged.scale == pytest.approx(2.0) and enlarged.n_tiles > 1
    assert enlarged.count == labels.max()


def test_a_diameter_with_tile_never_or_not_positive_is_a_one_line_error(model):
    from edgeseg.errors import EdgesegError

    with pytest.raises(EdgesegError, match="--tile never forbids"):
        Segmenter.load(model, tile="never", diameter=20)
    for bad in (0, -3, float("nan")):
        with pytest.raises(EdgesegError, match="not a size in pixels"):
            Segmenter.load(model, diameter=bad)


def test_segmenter_closes_its_backend_as_a_context_manager(model):
    with Segmenter.load(model, threads=1) as seg:
        assert seg(disc_frame((256, 256))[0]).count > 0
    assert seg.backend.session is None  # released


def test_segmentation_keeps_the_frame_and_reports_a_table_and_a_plot(model, tmp_path):
    frame, labels = disc_frame((256, 256), diameter=12, spacing=30)
    result = Segmenter.load(model, threads=1)(frame)
    assert result.rgb.shape == (256, 256, 3) and result.rgb.dtype == np.uint8
    rows = result.table()
    assert len(rows) == result.count == labels.max()
    areas = np.bincount(result.labels.ravel())[1:]
    assert [r["area"] for r in rows] == areas.tolist()
    first = rows[0]
    ys, xs = np.nonzero(result.labels == first["label"])
    assert first["centroid_y"] == pytest.approx(ys.mean(), abs=1e-3)
    assert (first["bbox_y0"], first["bbox_x1"]) == (ys.min(), xs.max() + 1)
    assert first["mean_intensity"] == pytest.approx(result.rgb[ys, xs].mean(), abs=1e-3)
    wide = (frame.astype(np.uint16) * 100)[..., None] * np.array([1, 2], np.uint16)  # the original: 16-bit, 2 ch
    row = result.table(wide, um_per_px=0.5, frame_index=7)[0]
    assert row["mean_intensity_1"] == pytest.approx(200 * frame[ys, xs].mean(), abs=1e-6)
    assert row["integrated_intensity_0"] == pytest.approx(100 * frame[ys, xs].sum(), abs=1e-6)
    assert row["frame"] == 7 and row["area_um2"] == pytest.approx(first["area"] / 4)
    csv = result.to_csv(tmp_path / "nuclei.csv", wide).read_text().splitlines()
    assert csv[0].startswith("frame,timestamp,label,area,centroid_y") and len(csv) == result.count + 1
    assert csv[0].endswith(",integrated_intensity_1")
    drawn = result.plot()
    assert drawn.shape == (256, 256, 3) and (drawn != cv2.cvtColor(result.rgb, cv2.COLOR_RGB2BGR)).any()
    as_dict = result.to_dict()
    assert as_dict["count"] == result.count and as_dict["scale_source"] == "resize"


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

    write_card(path, read_card(path).replace(out_channels=2))
    with pytest.raises(ModelError, match="has 1 outputs but its card says 2"):
        Segmenter.load(path)


def test_input_size_must_match_the_card(tmp_path):
    path = write_threshold_onnx(tmp_path / "m.onnx", size=128)
    from edgeseg.card import read_card

    write_card(path, read_card(path).replace(input_size=[256, 256]))
    with pytest.raises(ModelError, match="takes input"):
        Segmenter.load(path)


def test_without_torch_a_pytorch_checkpoint_points_to_the_exported_variant(tmp_path):
    import subprocess
    import sys

    pt = tmp_path / "fast_scnn.pt"
    pt.write_bytes(b"weights")
    write_card(pt, {"name": "fast_scnn", "arch": "fast_scnn"})
    code = ("import sys; sys.modules['torch'] = None\nfrom edgeseg import Segmenter\n"
            "from edgeseg.errors import MissingDependency\n"
            f"try:\n    Segmenter.load({str(pt)!r})\nexcept MissingDependency as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'edgeseg[train]'" in out.stdout and "fast_scnn-int8" in out.stdout, out.stderr


def test_a_pytorch_checkpoint_runs_through_the_same_door(tmp_path):
    pytest.importorskip("torch")
    seg = Segmenter.load("fast_scnn", threads=1)  # the zoo's checkpoint, through the torch backend
    with seg:
        frame, _ = disc_frame((256, 256), diameter=12, spacing=30)
        result = seg(frame)
        assert seg.info["backend"] == "torch" and seg.info["format"] == "torch"
        assert result.count > 0
    with pytest.raises(ModelError, match="no option tta"):
        Segmenter.load("fast_scnn-int8", tta=True)


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
    overall = Segmenter(backend, card.replace(training_scale={"median_nucleus_diameter_px": 12.0}))
    assert overall(frame).tiled  # 6 px < 12 px: tiled
    learnt_small = {"median_nucleus_diameter_px": 12.0, "per_type": {"fluorescence": 5.0, "stained": 12.0}}
    seg = Segmenter(backend, card.replace(training_scale=learnt_small))
    assert seg.scale_policy.target_diameter(frame) == 5.0  # a dark background with bright nuclei reads as fluorescence
    assert not seg(frame).tiled  # this model learnt fluorescence nuclei at 5 px: keep the resize


def test_stage_timings_account_for_the_whole_call_even_when_tiling(model):
    import time

    frame, _ = disc_frame((1000, 1000), diameter=24, spacing=50)  # coarse pass, scale estimate, tiles, refinement
    seg = Segmenter.load(model, threads=1)
    t0 = time.perf_counter()
    result = seg(frame)
    wall_ms = (time.perf_counter() - t0) * 1e3
    assert result.tiled
    assert set(result.timings) == {"preprocess", "inference", "postprocess"}
    assert all(v > 0 for v in result.timings.values())
    assert sum(result.timings.values()) <= wall_ms  # stages never overlap or count twice


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
    measured = seg.scale_policy.nucleus_size(rgb, seg.resized_probs(frame), seg._infer)
    assert measured == pytest.approx(24, rel=0.25)
    result = seg(frame)
    assert result.tiled and result.scale == pytest.approx(0.5, rel=0.25)
    assert result.count == labels.max()


def test_prepare_infer_finish_in_a_row_are_the_segmenter_and_hand_the_batch_on_once(model):
    """The three steps a pipelined run puts in separate threads give what seg(frame) gives, for a resized, a tiled
    and a padded frame; infer consumes the prepared batch, and finish needs nothing else."""
    seg = Segmenter.load(model, threads=1)
    for size, diameter, spacing in (((300, 300), 12, 30), ((1000, 1000), 24, 50), ((130, 130), 12, 26)):
        frame, labels = disc_frame(size, diameter=diameter, spacing=spacing)
        prep = seg.prepare(frame)
        assert (prep.batch is None) == (prep.probs is not None)  # a batch for the network, or the planning's map
        inferred = seg.infer(prep)
        assert inferred is prep and prep.batch is None
        got, whole = seg.finish(prep), seg(frame)
        assert got.count == whole.count == labels.max()
        assert np.array_equal(got.labels, whole.labels) and (got.tiled, got.n_tiles) == (whole.tiled, whole.n_tiles)


def test_a_new_frame_size_is_settled_in_prepare_before_the_next_frame_is_planned(model):
    """Pipelined, frame 2 is prepared before frame 1 is finished: the first frame of a size planned at native scale
    is refined inside prepare, so the remembered plan is there for frame 2, as in the sequential loop."""
    small, labels = disc_frame((130, 130), diameter=24, spacing=50)  # nuclei twice the training scale: refined
    seg = Segmenter.load(model, threads=1, remember_scale=True)
    first = seg.prepare(small)
    assert first.probs is not None and first.plan.source == "native" and first.plan.scale == pytest.approx(0.5)
    second = seg.prepare(small)  # before the first is finished
    assert second.plan.source == "remembered" and second.plan.scale == first.plan.scale
    assert seg.finish(seg.infer(second)).count == seg.finish(first).count == labels.max()


def swelling(backend):
    """A network that sees every nucleus 12 input pixels wider than it is (a weak one measuring merged blobs)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (13, 13))
    return lambda x: np.stack([cv2.dilate(p[0], kernel)[None] for p in backend(x)])


def test_a_sizer_measures_the_nuclei_for_a_network_that_sees_them_too_wide(model):
    """A network whose own measure is wrong has the nuclei measured by another (the card's measured_by): the plan's
    diameter and scale are the sizer's, and the sizer opens only when a frame first needs measuring."""
    from edgeseg.card import read_card

    frame, _ = disc_frame((1000, 1000), diameter=24, spacing=50)
    backend = open_backend(model, threads=1)
    alone = Segmenter(swelling(backend), read_card(model))(frame)
    assert alone.diameter_px > 1.5 * 24 and alone.scale < 0.35  # it measures its own swollen blobs
    opened = []

    def open_sizer():
        opened.append(1)
        return Segmenter.load(model, threads=1)

    seg = Segmenter(swelling(backend), read_card(model), sizer=open_sizer)
    seg(disc_frame((300, 300), diameter=12, spacing=30)[0])  # near the input size: resized, nothing measured
    assert opened == []
    result = seg(frame)
    assert result.scale_source == "estimate" and result.diameter_px == pytest.approx(24, rel=0.15)
    assert result.scale == pytest.approx(0.5, rel=0.15) and opened == [1]
    seg(frame)
    assert opened == [1]  # opened once
    seg.close()


def test_a_sizer_refines_a_small_frame_from_its_own_view(model):
    """A frame smaller than the input runs at native scale, then is rescaled from the nuclei seen in it: seen by the
    sizer where there is one (a stained frame, which has no classical measure)."""
    from edgeseg.card import read_card

    grey, _ = disc_frame((200, 200), diameter=6, spacing=20)  # nuclei half the training scale (12 px)
    frame = np.dstack([grey, (grey * 0.6).astype(np.uint8), grey])  # colour: a stained frame
    backend = open_backend(model, threads=1)
    alone = Segmenter(swelling(backend), read_card(model))(frame)
    assert alone.scale < 1.0 and alone.diameter_px > 2 * 6  # 6 px seen as 18: shrunk, the wrong way
    sized = Segmenter(swelling(backend), read_card(model), sizer=lambda: Segmenter.load(model, threads=1))(frame)
    assert sized.scale_source == "native" and 1.4 < sized.scale <= 2.0  # enlarged toward the training scale
    assert sized.diameter_px == pytest.approx(6.5, rel=0.15)


def test_load_takes_the_sizer_from_the_card_and_says_which_file_measures(tmp_path):
    with_sizer = write_threshold_onnx(tmp_path / "a-fp32.onnx", card={
        "training_scale": {"median_nucleus_diameter_px": 12.0, "measured_by": "mobilenetv2_unet"}})
    with Segmenter.load(with_sizer, threads=1) as seg:
        assert seg.info["scale_measured_by"] == "mobilenetv2_unet-fp32"  # the shipped file of the same precision
        assert not isinstance(seg._sizer, Segmenter)  # not opened yet
    with Segmenter.load(with_sizer, threads=1, sizer=False) as seg:
        assert "scale_measured_by" not in seg.info and seg.scale_policy.sizer is None
    missing = write_threshold_onnx(tmp_path / "b-fp32.onnx", card={
        "training_scale": {"median_nucleus_diameter_px": 12.0, "measured_by": "no_such_network"}})
    with Segmenter.load(missing, threads=1) as seg:
        assert seg.info["scale_measured_by"] == "itself (no_such_network is not installed)"
        assert seg.scale_policy.sizer is None


def test_a_sizer_that_cannot_open_leaves_the_network_to_measure_itself(model, capsys):
    """A damaged or vanished measuring network does not stop the run: the frame is planned by the network's own
    measure, stderr and info say so, and the sizer is not tried again."""
    from edgeseg.card import read_card

    tries = []

    def broken():
        tries.append(1)
        raise ModelError("mobilenetv2_unet-int8.onnx does not match its card", "reinstall edgeseg")

    frame, labels = disc_frame((1000, 1000), diameter=24, spacing=50)
    seg = Segmenter(open_backend(model, threads=1), read_card(model), sizer=broken)
    result = seg(frame)
    assert result.scale_source == "estimate" and result.diameter_px == pytest.approx(24, rel=0.15)  # its own measure
    assert result.count == labels.max()
    assert seg.info["scale_measured_by"].startswith("itself (the measuring network failed: mobilenetv2_unet-int8")
    assert "measures them itself" in capsys.readouterr().err
    seg(frame)
    assert tries == [1]
