"""Post-processing: thresholds, instances, resizing to the frame, tiling."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgeseg.postprocess import (
    PostprocessConfig,
    connected_components,
    cut_tiles,
    keep_scored,
    object_scores,
    postprocess,
    postprocess_scored,
    resize_prob,
    stitch,
    threshold,
    tile_grid,
    watershed_instances,
)

TWO_DISCS = [(30, 32), (60, 32)]  # (x, y) centres 30 px apart, radius 18: they overlap
THREE_DISCS = [(25, 30), (55, 30), (40, 56)]  # a triangle of radius-16 discs, all touching


def disc_labels(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int) -> np.ndarray:
    """Label image of filled discs; a later disc overwrites an earlier one where they overlap."""
    labels = np.zeros(shape, np.int32)
    for k, centre in enumerate(centres, start=1):
        cv2.circle(labels, centre, radius, k, thickness=-1)
    return labels


def boundary_of(labels: np.ndarray) -> np.ndarray:
    """Boundary probability: 1 on pixels whose 3x3 neighbourhood holds another label (incl. background)."""
    kernel = np.ones((3, 3), np.uint8)
    as_float = labels.astype(np.float32)
    return (cv2.dilate(as_float, kernel) != cv2.erode(as_float, kernel)).astype(np.float32) * (labels > 0)


def smooth_prob(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A random, smooth probability map in (0, 1), float32."""
    noise = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    blurred = np.stack([cv2.GaussianBlur(c, (0, 0), 8) for c in noise.reshape(-1, *shape[-2:])])
    return (1 / (1 + np.exp(-20 * blurred))).reshape(shape).astype(np.float32)


# --------------------------------------------------------------------------- pixels


def test_threshold_is_strict():
    np.testing.assert_array_equal(threshold(np.array([0.2, 0.5, 0.51]), 0.5), [False, False, True])


def test_resize_prob_reaches_an_odd_frame_size_as_float32():
    prob = smooth_prob((16, 16))
    out = resize_prob(prob, (37, 53))
    assert out.shape == (37, 53) and out.dtype == np.float32
    assert prob.min() - 1e-6 <= out.min() and out.max() <= prob.max() + 1e-6  # bilinear never overshoots


def test_resize_prob_resizes_each_channel_of_a_stack_alike():
    probs = smooth_prob((2, 16, 16))
    out = resize_prob(probs, (37, 53))
    assert out.shape == (2, 37, 53)
    for c in range(2):
        np.testing.assert_allclose(out[c], resize_prob(probs[c], (37, 53)), atol=1e-6)


def test_resize_prob_keeps_a_constant_map_constant():
    np.testing.assert_allclose(resize_prob(np.full((8, 8), 0.7, np.float32), (13, 29)), 0.7, atol=1e-6)


# --------------------------------------------------------------------------- instances


def test_connected_components_drops_objects_under_min_size_and_relabels():
    mask = np.zeros((10, 10), bool)
    mask[0, 0] = True  # 1 px
    mask[3:5, 3:5] = True  # 4 px
    mask[7:10, 7:10] = True  # 9 px
    labels = connected_components(mask, min_size=4)
    assert labels.dtype == np.int32
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert labels[0, 0] == 0
    assert np.count_nonzero(labels) == 4 + 9


def assert_split_evenly(labels: np.ndarray, truth: np.ndarray) -> None:
    """One predicted object per true disc, covering the whole foreground, each mostly its own disc."""
    n = truth.max()
    assert labels.dtype == np.int32
    assert sorted(np.unique(labels).tolist()) == list(range(n + 1))
    np.testing.assert_array_equal(labels > 0, truth > 0)
    for k in range(1, n + 1):
        overlap = np.bincount(truth[labels == k], minlength=n + 1)
        assert overlap.argmax() > 0
        assert overlap.max() / (truth == overlap.argmax()).sum() > 0.9


@pytest.mark.parametrize("seed_window", [0, 37])
def test_watershed_splits_two_touching_discs_by_distance_transform(seed_window):
    truth = disc_labels((64, 96), TWO_DISCS, 18)
    assert connected_components(truth > 0).max() == 1  # one blob to split
    labels = watershed_instances((truth > 0).astype(np.float32), fg_threshold=0.5, seed_window=seed_window)
    assert_split_evenly(labels, truth)


def test_watershed_splits_two_touching_discs_with_a_boundary_map():
    truth = disc_labels((64, 96), TWO_DISCS, 18)
    labels = watershed_instances((truth > 0).astype(np.float32), boundary_of(truth), fg_threshold=0.5)
    assert_split_evenly(labels, truth)


def test_seed_split_cuts_a_seed_that_a_faint_boundary_left_whole():
    truth = disc_labels((64, 100), [(30, 32), (64, 32)], 18)  # a neck 6 px from the background, a third of a radius
    faint = 0.2 * boundary_of(truth)  # the network drew the band between them, too faint for seed_threshold 0.5
    fg = (truth > 0).astype(np.float32)
    assert watershed_instances(fg, faint, fg_threshold=0.5).max() == 1  # one seed: merged
    labels = watershed_instances(fg, faint, fg_threshold=0.5, seed_split=0.4)
    assert_split_evenly(labels, truth)
    one = disc_labels((64, 100), [(48, 32)], 18)  # a single round nucleus keeps one seed
    assert watershed_instances((one > 0).astype(np.float32), 0.2 * boundary_of(one), fg_threshold=0.5,
                               seed_split=0.4).max() == 1
    cfg = PostprocessConfig("watershed", 0.5, seed_split=0.4)
    assert postprocess(np.stack([fg, faint]), fg.shape, cfg)[1].max() == 2  # the card's field reaches the watershed


@pytest.mark.parametrize("with_boundary", [False, True])
def test_watershed_splits_three_touching_discs(with_boundary):
    truth = disc_labels((80, 80), THREE_DISCS, 16)
    assert connected_components(truth > 0).max() == 1
    boundary = boundary_of(truth) if with_boundary else None
    labels = watershed_instances((truth > 0).astype(np.float32), boundary, fg_threshold=0.5)
    assert_split_evenly(labels, truth)


def test_watershed_keeps_objects_that_touch_the_image_border_whole():
    truth = disc_labels((40, 40), [(0, 20), (39, 20)], 10)
    labels = watershed_instances(truth.astype(np.float32), fg_threshold=0.5)
    np.testing.assert_array_equal(labels > 0, truth > 0)
    assert labels.max() == 2


def test_watershed_keeps_an_object_whose_seeds_were_all_removed():
    truth = disc_labels((40, 80), [(15, 20), (60, 20)], 8)
    boundary = np.zeros(truth.shape, np.float32)
    boundary[truth == 2] = 1.0  # all boundary: the second disc has no seed of its own
    labels = watershed_instances((truth > 0).astype(np.float32), boundary, fg_threshold=0.5)
    assert labels.max() == 2
    np.testing.assert_array_equal(labels > 0, truth > 0)
    labels = watershed_instances((truth > 0).astype(np.float32), fg_threshold=0.5, min_seed_size=10_000)
    assert labels.max() == 2


def test_watershed_removes_small_objects_and_returns_zeros_without_foreground():
    truth = disc_labels((40, 80), [(15, 20), (60, 20)], 8)
    truth[0, 0] = 3  # a one-pixel speck
    labels = watershed_instances((truth > 0).astype(np.float32), fg_threshold=0.5, min_size=5)
    assert labels.max() == 2 and labels[0, 0] == 0
    empty = watershed_instances(np.zeros((9, 9), np.float32), fg_threshold=0.5)
    assert empty.dtype == np.int32 and not empty.any()


# --------------------------------------------------------------------------- postprocess


def test_postprocess_cc_maps_one_channel_back_to_the_frame():
    outputs = np.zeros((1, 32, 32), np.float32)
    outputs[0, 4:12, 4:12] = 0.9
    outputs[0, 20:28, 18:30] = 0.8
    mask, labels = postprocess(outputs, (64, 96, 3), PostprocessConfig(method="cc", threshold=0.5))
    assert mask.shape == labels.shape == (64, 96)
    assert mask.dtype == bool and labels.dtype == np.int32
    assert labels.max() == 2
    np.testing.assert_array_equal(mask, labels > 0)
    assert mask[16, 24] and not mask[0, 0]  # centre of the first square, scaled x2 / x3


def test_postprocess_watershed_uses_the_boundary_channel():
    truth = disc_labels((64, 96), TWO_DISCS, 18)
    outputs = np.stack([(truth > 0).astype(np.float32), boundary_of(truth)])
    cfg = PostprocessConfig(method="watershed", threshold=0.5, seed_threshold=0.5, min_size=20)
    mask, labels = postprocess(outputs, (128, 192), cfg)
    assert labels.shape == (128, 192)
    assert labels.max() == 2
    np.testing.assert_array_equal(mask, labels > 0)
    np.testing.assert_array_equal(mask, resize_prob(outputs[0], (128, 192)) > 0.5)  # nothing lost


def test_postprocess_reads_min_size_in_model_pixels_and_scales_it_to_the_frame():
    outputs = np.zeros((1, 32, 32), np.float32)
    outputs[0, 4:12, 4:12] = 1.0  # 64 model pixels, about 384 frame pixels
    outputs[0, 20:22, 20:22] = 1.0  # 4 model pixels, about 24 frame pixels
    frame = (64, 96)  # 6x the area
    _, labels = postprocess(outputs, frame, PostprocessConfig(min_size=10))  # 60 frame pixels
    assert labels.max() == 1 and labels[16, 24] == 1
    _, labels = postprocess(outputs, frame, PostprocessConfig(min_size=0))
    assert labels.max() == 2


def test_postprocess_config_round_trips_through_json():
    cfg = PostprocessConfig(method="watershed", threshold=0.42, min_size=12, seed_threshold=0.3)
    assert PostprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_postprocess_config_rejects_unknown_keys_and_methods():
    with pytest.raises(ValueError, match="thresh"):
        PostprocessConfig.from_dict({"thresh": 0.5})
    with pytest.raises(ValueError, match="method"):
        PostprocessConfig(method="otsu")


# --------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("h, w", [(100, 100), (256, 256), (300, 1000), (1000, 300), (100, 1000)])
def test_tile_grid_covers_the_image_with_overlapping_tiles_flush_with_the_border(h, w):
    tile, overlap = 256, 32
    grid = tile_grid(h, w, tile, overlap)
    covered = np.zeros((max(h, tile), max(w, tile)), int)
    for y, x in grid:
        assert y + tile <= max(h, tile) and x + tile <= max(w, tile)
        covered[y : y + tile, x : x + tile] += 1
    assert covered[:h, :w].min() >= 1
    assert max(y for y, _ in grid) == max(h - tile, 0) and max(x for _, x in grid) == max(w - tile, 0)
    for starts in ({y for y, _ in grid}, {x for _, x in grid}):
        steps = np.diff(sorted(starts))
        assert ((steps > 0) & (steps <= tile - overlap)).all()


def test_cut_tiles_pads_a_small_frame_by_reflection():
    frame = np.arange(100 * 120 * 3, dtype=np.float32).reshape(100, 120, 3)
    (tile,) = cut_tiles(frame, tile_grid(100, 120, 256), 256)
    assert tile.shape == (256, 256, 3)
    np.testing.assert_array_equal(tile[:100, :120], frame)
    np.testing.assert_array_equal(tile[100, :120], frame[98])  # mirrored about the last row


def tiles_of(probs: np.ndarray, grid, tile: int) -> list[np.ndarray]:
    """Cut a (C, h, w) map into (C, tile, tile) tiles."""
    return [np.moveaxis(t, -1, 0) for t in cut_tiles(np.moveaxis(probs, 0, -1), grid, tile)]


@pytest.mark.parametrize("h, w", [(100, 100), (256, 256), (300, 1000), (1000, 1000)])
def test_stitching_tiles_of_a_constant_field_returns_the_constant(h, w):
    grid = tile_grid(h, w, 256, 32)
    out = stitch([np.full((2, 256, 256), 0.25, np.float32)] * len(grid), grid, (h, w), 256, 32)
    assert out.shape == (2, h, w)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


@pytest.mark.parametrize("h, w", [(100, 100), (300, 1000), (1000, 1000)])
def test_stitching_tiles_cut_from_a_smooth_map_returns_the_map(h, w):
    probs = smooth_prob((2, h, w), seed=h + w)
    grid = tile_grid(h, w, 256, 32)
    out = stitch(tiles_of(probs, grid, 256), grid, (h, w), 256, 32)
    assert np.abs(out - probs).max() < 1e-5


def test_stitching_blends_disagreeing_tiles_without_a_hard_seam():
    grid = tile_grid(256, 480, 256, 32)  # two tiles side by side, 32 px of overlap
    assert grid == [(0, 0), (0, 224)]
    out = stitch(
        [np.zeros((256, 256), np.float32), np.ones((256, 256), np.float32)], grid, (256, 480), 256, 32
    )
    row = out[0, 128]
    assert row[0] == 0.0 and row[-1] == 1.0
    assert np.abs(np.diff(row)).max() < 0.1  # a ramp over the overlap, not a 0 -> 1 step


# --------------------------------------------------------------------------- object scores and the filter


def speckle_scene(seed: int = 0):
    """A dark fluorescence frame with multiplicative speckle and read noise, one bright disc (a nucleus) and a
    network that takes the disc AND a flat patch of speckle for nuclei: (uint8 RGB frame, 1 x H x W probabilities)."""
    rng = np.random.default_rng(seed)
    base = np.full((128, 128), 30.0)
    cv2.circle(base, (36, 64), 10, 200.0, -1)  # the nucleus
    noisy = base * (1 + rng.normal(0, 0.1, base.shape)) + rng.normal(0, 2.0, base.shape)
    frame = np.dstack([np.clip(np.rint(noisy), 0, 255).astype(np.uint8)] * 3)
    prob = np.zeros((128, 128), np.float32)
    cv2.circle(prob, (36, 64), 10, 0.95, -1)
    cv2.circle(prob, (92, 64), 10, 0.9, -1)  # the speckle the network mistook for a nucleus
    return frame, prob[None]


def test_the_contrast_filter_drops_a_flat_speckle_blob_and_keeps_a_bright_disc():
    frame, probs = speckle_scene()
    cfg = PostprocessConfig(min_size=4, min_contrast=1.0)
    _, unfiltered = postprocess(probs, frame.shape[:2], PostprocessConfig(min_size=4), frame)
    assert unfiltered.max() == 2
    mask, labels, scores = postprocess_scored(probs, frame.shape[:2], cfg, frame)
    assert labels.max() == 1 and labels[64, 36] == 1 and labels[64, 92] == 0
    assert not mask[64, 92] and mask[64, 36]
    assert scores["contrast"][0] > 5 and scores["confidence"][0] == pytest.approx(0.95, abs=0.01)
    # without the frame there is nothing to compare with: the contrast filter drops nothing
    assert postprocess(probs, frame.shape[:2], cfg)[1].max() == 2


def test_object_scores_measure_the_ring_around_each_object():
    frame, probs = speckle_scene()
    labels = connected_components(probs[0] > 0.5)
    scores = object_scores(labels, probs[0], frame, ring_width=3)
    bright, speckle = (scores["contrast"][labels[64, x] - 1] for x in (36, 92))
    assert bright > 20 and speckle < 0.5
    assert scores["confidence"][labels[64, 92] - 1] == pytest.approx(0.9, abs=1e-4)
    whole = np.ones((20, 20), np.int32)  # an object with no background around it: nothing to compare, kept
    assert np.isinf(object_scores(whole, np.ones((20, 20)), np.full((20, 20), 9.0))["contrast"][0])
    assert np.isnan(object_scores(labels, probs[0])["contrast"]).all()



def _scores_over_the_whole_frame(labels, fg_prob, image, width, fg_threshold):
    """object_scores spelt out on every pixel of the frame (the definition the fast path must equal)."""
    n = int(labels.max())
    flat = labels.ravel()
    inside = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    confidence = np.bincount(flat, weights=fg_prob.astype(np.float32).ravel(), minlength=n + 1)[1:] / inside
    g = image.astype(np.float32).mean(axis=2).ravel().astype(np.float64)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    near = cv2.dilate(labels.astype(np.float32), disc).astype(np.int64).ravel()
    ring = np.flatnonzero((near > 0) & (flat == 0) & (fg_prob.ravel() <= fg_threshold))
    owner, gr = near[ring], g[ring]
    n_ring = np.bincount(owner, minlength=n + 1)[1:].astype(np.float64)
    mean_ring = np.bincount(owner, weights=gr, minlength=n + 1)[1:] / n_ring
    var = np.bincount(owner, weights=gr * gr, minlength=n + 1)[1:] / n_ring - mean_ring**2
    mean_in = np.bincount(flat, weights=g, minlength=n + 1)[1:] / inside
    contrast = np.abs(mean_in - mean_ring) / (np.sqrt(np.maximum(var, 0.0)) + 1.0)
    return confidence.astype(np.float32), contrast.astype(np.float32)


def test_object_scores_read_only_the_objects_and_their_rings_and_equal_the_whole_frame_definition():
    """Objects scattered over a 480x640 frame, some on its borders: the scores computed on the objects' box and
    pixels are the very values of the whole-frame definition."""
    rng = np.random.default_rng(3)
    labels = np.zeros((480, 640), np.int32)
    for k, (y, x) in enumerate([(0, 0), (470, 630), (100, 300), (240, 5), (300, 400), (120, 320)], start=1):
        cv2.circle(labels, (x, y), int(rng.integers(4, 12)), k, -1)
    labels[150:160, 200:212] = 7  # a square one
    fg_prob = np.clip(rng.normal(0.3, 0.2, labels.shape), 0, 1).astype(np.float32)
    fg_prob[labels > 0] = 0.9
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    import edgeseg.postprocess as pp

    for width in (1, 3, 6):
        assert len(pp._windows(labels > 0, width + 1)) >= 4  # the rings are found window by window
        got = object_scores(labels, fg_prob, image, ring_width=width, fg_threshold=0.45)
        confidence, contrast = _scores_over_the_whole_frame(labels, fg_prob, image, width, 0.45)
        assert np.array_equal(got["confidence"], confidence) and np.array_equal(got["contrast"], contrast)
    assert got["confidence"].shape == (7,) and np.isfinite(got["contrast"]).all()

def test_the_confidence_filter_drops_objects_the_network_is_unsure_of():
    probs = np.zeros((1, 64, 64), np.float32)
    cv2.circle(probs[0], (16, 32), 8, 0.95, -1)
    cv2.circle(probs[0], (48, 32), 8, 0.55, -1)
    labels = postprocess(probs, (64, 64), PostprocessConfig(min_confidence=0.7))[1]
    assert labels.max() == 1 and labels[32, 16] == 1 and labels[32, 48] == 0
    kept, scores = keep_scored(labels, {"confidence": np.array([0.9]), "contrast": np.array([np.nan])}, 0.5, 2.0)
    assert kept is labels and len(scores["confidence"]) == 1  # a nan contrast (no frame) passes


def test_a_card_without_the_filter_keys_filters_nothing():
    old = {"method": "watershed", "threshold": 0.45, "min_size": 4, "seed_threshold": 0.3}
    cfg = PostprocessConfig.from_dict(old)
    assert (cfg.min_confidence, cfg.min_contrast) == (0.0, 0.0)
    assert PostprocessConfig.from_dict(cfg.to_dict()) == cfg
    frame, probs = speckle_scene()
    assert postprocess(probs, frame.shape[:2], cfg, frame)[1].max() == 2


def test_the_segmentation_records_each_nucleus_score_in_its_table():
    from edgeseg.segmenter import Segmenter

    frame, _ = speckle_scene()
    card = {"input_size": [128, 128], "postprocess": PostprocessConfig(min_size=4, min_contrast=1.0).to_dict()}
    _, probs = speckle_scene()
    seg = Segmenter(lambda x: np.repeat(probs[None], len(x), axis=0), card, tile="never")
    result = seg(frame)
    assert result.count == 1 and result.scores["contrast"][0] > 5
    row = result.table()[0]
    assert row["confidence"] == pytest.approx(0.95, abs=0.01) and row["contrast"] > 5


def test_stained_frames_get_their_own_instance_step():
    labels = np.zeros((80, 80), np.int32)
    cv2.circle(labels, (30, 40), 12, 1, -1)
    cv2.circle(labels, (52, 40), 12, 2, -1)  # two touching nuclei
    probs = np.stack([(labels > 0).astype(np.float32), boundary_of(labels)])
    cfg = PostprocessConfig("watershed", 0.5, seed_threshold=0.5, stained={"method": "cc"})
    grey = np.full((80, 80, 3), 40, np.uint8)  # a fluorescence-like frame: the watershed splits them
    assert postprocess(probs, (80, 80), cfg, grey)[1].max() == 2
    pink = np.dstack([np.full((80, 80), v, np.uint8) for v in (230, 150, 200)])  # an H&E-like frame: cc
    assert postprocess(probs, (80, 80), cfg, pink)[1].max() == 1
    assert PostprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="for stained frames"):
        PostprocessConfig(stained={"methd": "cc"})
    with pytest.raises(ValueError, match="unknown post-processing method"):
        PostprocessConfig(stained={"method": "magic"})


def test_stained_frames_keep_a_weaker_object_filter_than_the_others():
    labels = np.zeros((80, 80), np.int32)
    cv2.circle(labels, (40, 40), 10, 1, -1)
    probs = np.stack([(labels > 0).astype(np.float32) * 0.65, np.zeros((80, 80), np.float32)])  # an unsure one
    cfg = PostprocessConfig("cc", 0.5, min_confidence=0.8, stained={"min_confidence": 0.6})
    grey = np.full((80, 80, 3), 40, np.uint8)
    pink = np.dstack([np.full((80, 80), v, np.uint8) for v in (230, 150, 200)])
    assert postprocess(probs, (80, 80), cfg, grey)[1].max() == 0  # fluorescence: dropped for its confidence
    assert postprocess(probs, (80, 80), cfg, pink)[1].max() == 1  # dense tissue: its own, weaker filter keeps it


def test_watershed_on_windows_around_the_nuclei_gives_the_whole_frame_labels(monkeypatch):
    """A 480x640 frame with a few clumps of touching nuclei (one on the border, one with a small nucleus beside a
    big one, a lone speck): run on the windows around them or on the whole frame, the labels are the same, numbers
    included, with and without a boundary map."""
    import edgeseg.postprocess as pp

    rng = np.random.default_rng(7)
    labels = np.zeros((480, 640), np.int32)
    clumps = [[(30, 32), (60, 32)], [(600, 470), (630, 440)], [(300, 200), (326, 214), (312, 236)],
              [(100, 400), (122, 400)], [(500, 100)]]
    k = 0
    for clump in clumps:
        for x, y in clump:
            k += 1
            cv2.circle(labels, (x, y), int(rng.integers(8, 18)), k, -1)
    labels[250:252, 500:502] = k + 1  # a speck
    prob = cv2.GaussianBlur((labels > 0).astype(np.float32), (0, 0), 2.0)
    prob = np.clip(prob + rng.normal(0, 0.05, prob.shape).astype(np.float32), 0, 1)
    boundary = boundary_of(labels)
    windows = pp._windows(prob > 0.45)
    assert windows is not None and len(windows) >= 4  # the clumps lie apart: one window each, or so
    on_windows = [watershed_instances(prob, b, fg_threshold=0.45, seed_fraction=0.6, min_size=4, min_seed_size=2)
                  for b in (None, boundary)]
    monkeypatch.setattr(pp, "_windows", lambda fg: None)
    whole = [watershed_instances(prob, b, fg_threshold=0.45, seed_fraction=0.6, min_size=4, min_seed_size=2)
             for b in (None, boundary)]
    for a, b in zip(on_windows, whole, strict=True):
        assert a.dtype == b.dtype == np.int32 and np.array_equal(a, b)
    assert whole[0].max() >= len(clumps) + 3  # the touching nuclei were split
