from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import disc_frame

from edgeseg.otsu import MIN_SEPARATION, grey_of, otsu_split, separation


def test_grey_of_an_8bit_frame_is_the_mean_of_its_channels_to_the_bit():
    rng = np.random.default_rng(0)
    for shape in [(5, 7, 3), (64, 48, 4), (31, 33)]:
        frame = rng.integers(0, 256, shape).astype(np.uint8)
        want = frame.astype(np.float32) if frame.ndim == 2 else frame[..., :3].astype(np.float32).mean(axis=2)
        got = grey_of(frame)
        assert got.dtype == np.float32 and np.array_equal(got, want)
    floats = rng.random((8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(grey_of(floats), floats.mean(axis=2), rtol=1e-6)


@pytest.mark.parametrize("kind", ["gaussian", "poisson"])
@pytest.mark.parametrize("level", [5, 20, 200])
@pytest.mark.parametrize("grain", [1, 4])
def test_a_frame_of_noise_alone_is_one_population(kind, level, grain):
    rng = np.random.default_rng([level, grain])
    drawn = (256 // grain, 256 // grain)
    noise = rng.normal(level, 8.0, drawn) if kind == "gaussian" else rng.poisson(level, drawn).astype(float)
    frame = np.clip(noise, 0, 255).astype(np.uint8)
    frame = cv2.resize(frame, (256, 256), interpolation=cv2.INTER_LINEAR) if grain > 1 else frame
    smoothed, fg = otsu_split(grey_of(frame))
    assert 2.0 < separation(smoothed, fg) < MIN_SEPARATION


def test_nuclei_in_noise_are_two_populations():
    frame, _ = disc_frame((256, 256), diameter=12, spacing=30, bright=90, dark=20)
    noisy = np.clip(frame + np.random.default_rng(1).normal(0, 8.0, frame.shape), 0, 255).astype(np.uint8)
    assert separation(*otsu_split(grey_of(noisy))) > 2 * MIN_SEPARATION
    assert separation(np.zeros((4, 4), np.float32), np.ones((4, 4), np.uint8)) == 0.0  # one class: nothing apart
