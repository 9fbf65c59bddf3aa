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
