import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalise,
    preprocess,
    resize_to,
    to_rgb8,
    to_uint8,
)


def test_uint16_is_scaled_by_its_real_range():
    frame = np.array([[1000, 2000], [3000, 4000]], np.uint16)
    out = to_uint8(frame)
    assert out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert out[0, 1] == 85  # (2000 - 1000) / 3000 * 255


def test_constant_frame_becomes_black_not_nan():
    assert to_uint8(np.full((4, 4), 7, np.uint16)).max() == 0


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((10, 12), np.uint8),
        np.zeros((10, 12, 1), np.uint8),
        np.zeros((10, 12, 3), np.uint8),
        np.zeros((10, 12, 4), np.uint8),
        np.zeros((10, 12), np.uint16),
        np.zeros((10, 12, 3), np.float32),
    ],
)
def test_every_frame_kind_becomes_rgb8(frame):
    out = to_rgb8(frame)
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8


def test_bgr_order_is_flipped_to_rgb_and_alpha_dropped():
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0] = 200  # blue in BGR order
    bgra[..., 3] = 255
    assert to_rgb8(bgra, order="bgr")[0, 0].tolist() == [0, 0, 200]


def test_channel_selects_one_fluorescence_channel():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 1] = 90
    assert to_rgb8(rgb, channel="green")[0, 0].tolist() == [90, 90, 90]
    assert to_rgb8(rgb, channel="red")[0, 0].tolist() == [0, 0, 0]


def test_unknown_channel_is_a_user_error():
    with pytest.raises(DataError, match="unknown channel"):
        to_rgb8(np.zeros((2, 2), np.uint8), channel="purple")


def test_preprocess_gives_model_tensor_with_imagenet_normalisation():
    frame = np.full((300, 500, 3), 255, np.uint8)
    x = preprocess(frame, 256)
    assert x.shape == (1, 3, 256, 256) and x.dtype == np.float32
    expected = (1 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(x[0, :, 0, 0], expected, rtol=1e-6)


def test_resize_shrinks_by_area_and_keeps_uint8():
    img = np.zeros((512, 512, 3), np.uint8)
    img[::2] = 255
    out = resize_to(img, 256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert abs(int(out.mean()) - 127) <= 1  # area averaging, not nearest neighbour aliasing


def test_normalise_batches():
    batch = np.zeros((2, 8, 8, 3), np.uint8)
    assert normalise(batch).shape == (2, 3, 8, 8)


def _normalise_by_arithmetic(rgb8, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The formula the tensors were always made with (float32 throughout), written out here as the golden reference."""
    x = rgb8.astype(np.float32) * np.float32(1 / 255)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


@pytest.mark.parametrize("shape", [(7, 9, 3), (3, 33, 17, 3), (256, 256, 3)])
def test_normalise_by_lookup_is_bit_identical_to_the_arithmetic(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    flat = x.reshape(-1, 3)
    n = min(256, len(flat))
    flat[:n] = np.arange(n, dtype=np.uint8)[:, None]  # every level in every channel, where the image is large enough
    for args in ((), ((0.5, 0.4, 0.3), (0.2, 0.3, 0.1))):
        got = normalise(x, *args)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got.view(np.uint32), _normalise_by_arithmetic(x, *args).view(np.uint32))
    flipped = x[..., ::-1]  # a non-contiguous view (BGR as RGB) takes the same path
    assert np.array_equal(normalise(flipped), _normalise_by_arithmetic(flipped))
    floats = x.astype(np.float32)  # other dtypes keep the arithmetic
    assert np.array_equal(normalise(floats), _normalise_by_arithmetic(floats))


def test_to_uint8_in_place_gives_the_same_bytes_as_the_formula():
    rng = np.random.default_rng(3)
    for dtype in (np.uint16, np.int32, np.float32, np.float64):
        frame = (rng.random((40, 50)) * 4000 + 123).astype(dtype)
        x = frame.astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        expected = np.clip(np.rint((x - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        assert np.array_equal(to_uint8(frame), expected)
    gray = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    assert np.array_equal(to_rgb8(gray), np.repeat(gray[:, :, None], 3, axis=2))
