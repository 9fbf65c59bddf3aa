import numpy as np
import pytest

from edgeseg.train.hard_negatives import (
    KINDS,
    HardNegatives,
    hard_negative,
    hazed,
    smoothly_filled,
    speckled,
    with_debris,
    without_nuclei,
)


def gradient_scene(h=128, w=160):
    """A dark fluorescence-like frame with a left-to-right gradient (10 -> 70) and five bright discs."""
    import cv2

    bg = np.tile(np.linspace(10, 70, w, dtype=np.float32), (h, 1))
    labels = np.zeros((h, w), np.uint16)
    for k, (y, x) in enumerate([(30, 30), (30, 120), (90, 60), (100, 130), (64, 90)], 1):
        cv2.circle(labels, (x, y), 7, k, -1)
    image = bg + 150.0 * (labels > 0)
    rgb = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return rgb, labels, bg


def test_smoothly_filled_follows_a_gradient_background_and_leaves_no_disc():
    rgb, labels, bg = gradient_scene()
    filled = smoothly_filled(rgb, labels, np.random.default_rng(0))
    inside = labels > 0
    # the fill is the background's trend where the discs were: within a few grey levels, not 150 brighter
    err = np.abs(filled[..., 0] - bg)
    assert err[inside].mean() < 4.0 and err.max() < 20.0
    assert filled.dtype == np.float32 and filled.shape == rgb.shape


def test_without_nuclei_removes_the_bright_discs():
    rgb, labels, bg = gradient_scene()
    out = without_nuclei(rgb, labels)
    assert out[labels > 0, 0].max() < 80  # the discs were at 160-220


def test_every_kind_is_a_uint8_frame_of_the_same_shape_and_an_unknown_kind_is_refused():
    rgb, labels, _ = gradient_scene()
    bg = smoothly_filled(rgb, labels, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for kind in KINDS:
        out = hard_negative(bg, rng, kind)
        assert out.dtype == np.uint8 and out.shape == rgb.shape
    with pytest.raises(ValueError, match="unknown hard-negative kind"):
        hard_negative(bg, rng, "nuclei")


def test_haze_and_debris_go_towards_the_nuclei_polarity():
    dark = np.full((96, 96, 3), 20.0, np.float32)
    bright = np.full((96, 96, 3), 220.0, np.float32)
    assert hazed(dark, np.random.default_rng(0)).astype(int).sum() > dark.sum()
    assert hazed(bright, np.random.default_rng(0)).astype(int).sum() < bright.sum()
    specks = with_debris(dark, np.random.default_rng(2)).astype(int)[..., 0] - 20
    assert specks.min() >= 0 and specks.max() > 40


def test_speckle_has_the_asked_spread_with_and_without_grain():
    bg = np.full((200, 200, 3), 100.0, np.float32)
    for grain in (0.0, 1.5):
        out = speckled(bg, np.random.default_rng(0), 0.1, 0.0, grain).astype(np.float32)
        assert out[..., 0].std() == pytest.approx(10.0, rel=0.1)
        assert (out[..., 0] == out[..., 2]).all()  # grey speckle: the same factor in every channel


class FakeCached:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels


def test_hard_negatives_give_empty_labels_and_skip_images_with_too_little_background():
    rgb, labels, _ = gradient_scene()
    dense = np.ones_like(labels)  # one nucleus over the whole frame: nothing to fill from
    cached = FakeCached(np.stack([rgb, rgb]), np.stack([labels, dense]))
    hn = HardNegatives()
    image, empty = hn.sample(cached, 0, np.random.default_rng(0))
    assert image.shape == rgb.shape and image.dtype == np.uint8
    assert empty.dtype == np.uint16 and not empty.any()
    assert hn.sample(cached, 1, np.random.default_rng(0)) is None
    assert hn.background(cached, 0) is hn.background(cached, 0)  # filled once, then reused
