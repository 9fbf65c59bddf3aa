import cv2
import numpy as np
import pytest
from conftest import disc_frame

from edgeseg.errors import EdgesegError
from edgeseg.postprocess import PostprocessConfig
from edgeseg.scale import ScalePolicy, nucleus_diameter, nucleus_widths


def policy(**kw) -> ScalePolicy:
    return ScalePolicy(256, training_diameter=12.0, measure_post=PostprocessConfig(), **kw)


def disc_probs(tiles):
    """A perfect network on disc frames: the foreground probability is the tile's brightness."""
    return np.stack([t.mean(axis=2)[None] / 255.0 for t in tiles]).astype(np.float32)


def test_nucleus_diameter_is_one_nucleus_wide_even_in_a_clump():
    _, discs = disc_frame((300, 300), diameter=16, spacing=40)
    assert nucleus_diameter(discs) == pytest.approx(16, abs=1.5)
    clumps = np.zeros((300, 300), np.int32)  # chains of 4 overlapping discs, each chain one merged object
    for k, y in enumerate(range(30, 300, 50), start=1):
        for x in (40, 52, 64, 76):
            cv2.circle(clumps, (x, y), 8, k, -1)
    assert nucleus_diameter(clumps) == pytest.approx(16, abs=1.5)  # an area-based diameter would say ~27
    assert nucleus_diameter(np.zeros((50, 50), np.int32)) is None


def test_objects_cut_by_the_border_do_not_count_as_narrow_nuclei():
    labels = np.zeros((100, 100), np.int32)
    cv2.circle(labels, (50, 50), 10, 1, -1)
    cv2.circle(labels, (2, 50), 10, 2, -1)  # mostly outside the image: looks narrower than it is
    assert sorted(nucleus_widths(labels)) == pytest.approx([6, 10], abs=0.5)  # the cut disc: 6 px
    assert nucleus_widths(labels, interior_only=True) == pytest.approx([10], abs=0.5)


def test_plan_estimates_then_tiles_a_large_frame_of_large_nuclei():
    frame, _ = disc_frame((1000, 1000), diameter=24, spacing=50)
    plan = policy().plan(np.dstack([frame] * 3), disc_probs)
    assert plan.source == "estimate" and plan.diameter_px == pytest.approx(24, rel=0.15)
    assert plan.scale == pytest.approx(0.5, rel=0.15) and plan.coarse is not None


def test_plan_without_measuring_when_the_frame_is_near_the_input_size_or_small():
    def never(_tiles):
        raise AssertionError("the network must not run while planning")

    near = policy().plan(np.zeros((300, 280, 3), np.uint8), never)
    assert (near.scale, near.source) == (None, "resize")
    small = policy().plan(np.zeros((130, 130, 3), np.uint8), never)
    assert (small.scale, small.source, small.refine) == (1.0, "native", True)
    given = policy(diameter=24.0).plan(np.zeros((1000, 1000, 3), np.uint8), never)
    assert (given.scale, given.source) == (0.5, "diameter")
    big = policy(diameter=48.0).plan(np.zeros((1000, 1000, 3), np.uint8), never)  # 12 px once squeezed: resize
    assert (big.scale, big.source) == (None, "diameter")


def test_the_remembered_scale_is_stable_whatever_the_later_frames_show():
    cache: dict = {}
    frame, _ = disc_frame((1000, 1000), diameter=24, spacing=50)
    first = policy(cache=cache).plan(np.dstack([frame] * 3), disc_probs)
    other, _ = disc_frame((1000, 1000), diameter=40, spacing=80)  # bigger nuclei later, same frame size
    again = policy(cache=cache).plan(np.dstack([other] * 3), disc_probs)
    assert again.source == "remembered" and again.scale == first.scale
    fresh = policy().plan(np.dstack([other] * 3), disc_probs)  # without the cache the new frame is measured
    assert fresh.scale == pytest.approx(0.3, rel=0.15)
    assert list(cache) == [(1000, 1000)]


def test_a_frame_with_nothing_to_measure_is_not_remembered():
    cache: dict = {}
    plan = policy(cache=cache).plan(np.zeros((1000, 1000, 3), np.uint8), disc_probs)
    assert plan.scale is None and plan.diameter_px is None and cache == {}


def test_bad_diameters_are_refused():
    with pytest.raises(EdgesegError, match="not a size"):
        policy(diameter=-1)
    with pytest.raises(EdgesegError, match="--tile never"):
        policy(diameter=12, tile="never")
    with pytest.raises(ValueError, match="unknown tile mode"):
        policy(tile="sometimes")
