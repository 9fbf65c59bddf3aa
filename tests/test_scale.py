import cv2
import numpy as np
import pytest
from conftest import disc_frame

from edgeseg.errors import EdgesegError
from edgeseg.postprocess import PostprocessConfig
from edgeseg.scale import (
    SHRINK_TO,
    ScalePolicy,
    classical_diameter,
    nucleus_diameter,
    nucleus_widths,
    otsu_diameter,
    snapped,
)


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


def test_the_remembered_scale_does_not_flip_under_small_noise():
    """Backends and CPUs give slightly different probabilities, hence estimates a few per cent apart: the planned
    (and remembered) scale must be the same."""
    frame, _ = disc_frame((1000, 1000), diameter=28, spacing=50)
    stained = np.dstack([frame, frame // 2, frame])  # a colour frame: the network's estimate alone decides
    scales, diameters = set(), []
    for bias in (-0.04, 0.0, 0.04):  # the same frame, the probabilities' edges a fraction of a pixel apart

        def noisy(tiles, bias=bias):
            blurred = [cv2.GaussianBlur(t[..., 0].astype(np.float32) / 255.0, (0, 0), 2.0) for t in tiles]
            return np.clip(np.stack(blurred)[:, None] + bias, 0, 1).astype(np.float32)

        cache: dict = {}
        plan = ScalePolicy(256, training_diameter=13.0, measure_post=PostprocessConfig(), cache=cache).plan(
            stained, noisy)
        assert plan.source == "estimate" and cache[(1000, 1000)].scale == plan.scale
        scales.add(plan.scale)
        diameters.append(plan.diameter_px)
    assert max(diameters) / min(diameters) > 1.02  # the estimates differ ...
    assert scales == {0.5}  # ... the plan does not
    assert snapped(0.72) == snapped(0.77) == pytest.approx(2 ** -0.5)
    assert snapped(1.0) == 1.0 and snapped(0.25) == 0.25


def test_the_classical_diameter_measures_fluorescence_nuclei_at_any_magnification():
    frame, _ = disc_frame((300, 300), diameter=16, spacing=40)
    rgb = np.dstack([frame] * 3)
    assert classical_diameter(rgb) == pytest.approx(16, rel=0.1)
    twice = cv2.resize(rgb, (600, 600), interpolation=cv2.INTER_LINEAR)
    assert classical_diameter(twice) == pytest.approx(32, rel=0.1)
    stained = rgb.copy()
    stained[..., 0] = 255 - stained[..., 0]  # a colour frame: no single grey threshold, no classical estimate
    assert classical_diameter(stained) is None
    assert classical_diameter(np.zeros((300, 300, 3), np.uint8)) is None


def test_a_frame_near_the_input_size_with_nuclei_far_too_big_is_shrunk_without_the_network():
    def never(_tiles):
        raise AssertionError("the network must not run while planning")

    frame, _ = disc_frame((280, 280), diameter=60, spacing=90)  # 60 px nuclei, 4.4x the training scale once squeezed
    cache: dict = {}
    plan = policy(cache=cache).plan(np.dstack([frame] * 3), never)
    assert plan.source == "classical" and plan.diameter_px == pytest.approx(60, rel=0.1)
    assert plan.scale == pytest.approx(snapped(SHRINK_TO * 12 / 60)) and cache[(280, 280)].scale == plan.scale
    fitting, _ = disc_frame((280, 280), diameter=14, spacing=30)  # nuclei near the training scale: resized as before
    assert policy().plan(np.dstack([fitting] * 3), never).source == "resize"


def test_a_weak_network_that_measures_pieces_of_big_nuclei_is_overruled_on_fluorescence():
    def pieces(tiles):
        """A network that sees every nucleus as a grid of 8 px pieces, whatever their size."""
        out = []
        for t in tiles:
            p = (t.mean(axis=2) / 255.0).astype(np.float32)
            p[::8] = 0
            p[:, ::8] = 0
            out.append(p[None])
        return np.stack(out)

    frame, _ = disc_frame((1000, 1000), diameter=160, spacing=250)  # 41 px once squeezed to 256: too big
    plan = policy().plan(np.dstack([frame] * 3), pieces)
    assert plan.diameter_px == pytest.approx(160, rel=0.1)
    assert plan.scale == pytest.approx(snapped(SHRINK_TO * 12 / plan.diameter_px))


def test_the_image_overrules_the_network_only_when_they_disagree_twofold(monkeypatch):
    """A dense field of small nuclei can fool the image's measure into clumps (a DSB test image: 14.8 px against
    the true 7.6 and the network's 8.0), while a network cuts nuclei far bigger than it learnt into small pieces
    (the shipped clip at x4: 5.5 px against the image's 88)."""
    frame, _ = disc_frame((600, 1200), diameter=6, spacing=9)  # the network (disc_probs) measures 6 px
    rgb = np.dstack([frame] * 3)
    monkeypatch.setattr("edgeseg.scale.classical_diameter", lambda _rgb: 11.0)  # the image's measure of clumps
    plan = policy().plan(rgb, disc_probs)
    assert plan.diameter_px == pytest.approx((11.0 * 6) ** 0.5, rel=0.1)  # the geometric mean
    assert plan.scale == 1.0  # the clumps' measure alone: x1.09, snapped to x1.19
    monkeypatch.setattr("edgeseg.scale.classical_diameter", lambda _rgb: 150.0)  # 25 times larger: pieces
    plan = policy().plan(rgb, disc_probs)
    assert plan.diameter_px == 150.0 and plan.scale == pytest.approx(snapped(SHRINK_TO * 12 / 150))


def test_a_small_frame_with_nuclei_far_too_small_is_enlarged_without_the_network():
    def never(_tiles):
        raise AssertionError("the network must not run while planning")

    frame, _ = disc_frame((128, 128), diameter=6, spacing=16)  # a 256 px frame seen at x0.5: 6 px nuclei
    plan = policy().plan(np.dstack([frame] * 3), never)
    assert plan.source == "classical" and 1.5 < plan.scale <= 2.0
    assert plan.scale == snapped(plan.scale)


def test_specks_of_an_enlarged_noisy_frame_do_not_shrink_the_classical_diameter():
    frame, _ = disc_frame((300, 300), diameter=16, spacing=40)
    dots = (np.random.default_rng(0).random(frame.shape) < 0.02) & (frame < 100)
    frame[dots] = 255  # single-pixel specks: smoothed away at x1, blobs of many pixels once enlarged x4
    rgb = np.dstack([frame] * 3)
    native = classical_diameter(rgb)
    assert native == pytest.approx(16, rel=0.1)
    x4 = cv2.resize(rgb, (1200, 1200), interpolation=cv2.INTER_LINEAR)
    assert otsu_diameter(x4.mean(axis=2).astype(np.float32)) < native  # the specks' width, not the nuclei's
    assert classical_diameter(x4) == pytest.approx(4 * native, rel=0.1)


def test_an_enlarged_fluorescence_frame_with_almost_no_nuclei_is_resized_without_the_network():
    def never(_tiles):
        raise AssertionError("a frame with nothing to measure must not be measured in the network's finer views")

    frame, labels = disc_frame((256, 256), diameter=16, spacing=200)  # one nucleus
    x4 = cv2.resize(np.dstack([frame] * 3), (1024, 1024), interpolation=cv2.INTER_LINEAR)
    plan = policy().plan(x4, never)
    assert labels.max() == 1 and (plan.scale, plan.source, plan.diameter_px) == (None, "estimate", None)


def test_with_a_sizer_the_plan_measures_with_the_sizer_and_not_the_network():
    from edgeseg.scale import Sizer

    def never(_tiles):
        raise AssertionError("the network must not run while a sizer plans")

    frame, _ = disc_frame((1000, 1000), diameter=24, spacing=50)
    plan = policy(sizer=Sizer("perfect", policy(), disc_probs)).plan(np.dstack([frame] * 3), never)
    assert plan.source == "estimate" and plan.diameter_px == pytest.approx(24, rel=0.15)
    assert plan.scale == pytest.approx(0.5, rel=0.15) and plan.coarse is None  # the network runs after planning


def test_a_large_frame_with_nuclei_far_too_big_is_planned_from_the_image_as_a_frame_near_the_input_size_is():
    from edgeseg.scale import Sizer

    def never(_tiles):
        raise AssertionError("no network may measure nuclei far too big for it")

    frame, _ = disc_frame((280, 280), diameter=60, spacing=90)
    near = policy().plan(np.dstack([frame] * 3), never)
    x4 = cv2.resize(np.dstack([frame] * 3), (1120, 1120), interpolation=cv2.INTER_LINEAR)  # a 4x stronger objective
    cache: dict = {}
    far = policy(cache=cache, sizer=Sizer("never", policy(), never)).plan(x4, never)
    assert near.source == far.source == "classical"
    assert far.diameter_px == pytest.approx(4 * near.diameter_px, rel=0.05)
    assert far.scale == pytest.approx(near.scale / 4) and cache[(1120, 1120)].scale == far.scale


@pytest.mark.parametrize("level, sigma", [(20, 8), (5, 2), (60, 20)])
def test_the_classical_measure_finds_no_nuclei_in_blank_noise_at_any_sampling(level, sigma):
    noise = np.random.default_rng(level).normal(level, sigma, (128, 128))
    rgb = np.dstack([np.clip(np.rint(noise), 0, 255).astype(np.uint8)] * 3)
    for factor in (1, 2, 4):  # as grabbed, and through a stronger objective or a digital zoom (smooth grains)
        frame = cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR) if factor > 1 else rgb
        assert classical_diameter(frame) is None


def test_noisy_nuclei_are_still_measured_and_a_small_blank_frame_is_not_enlarged_for_its_grains():
    frame, _ = disc_frame((300, 300), diameter=16, spacing=40, bright=90, dark=20)
    noisy = np.clip(frame + np.random.default_rng(0).normal(0, 8, frame.shape), 0, 255).astype(np.uint8)
    assert classical_diameter(np.dstack([noisy] * 3)) == pytest.approx(16, rel=0.15)
    blank = np.random.default_rng(1).normal(20, 8, (128, 128))
    plan = policy().plan(np.dstack([np.clip(np.rint(blank), 0, 255).astype(np.uint8)] * 3), disc_probs)
    assert (plan.source, plan.scale) == ("native", 1.0)  # not "classical" at x1.68, its noise grains as nuclei
