import cv2
import numpy as np
import pytest
from conftest import SAMPLE

from edgeseg.data import find_items, read_image, read_labels
from edgeseg.measure import FIELDS, measure

regionprops = pytest.importorskip("skimage.measure").regionprops


def regionprops_columns(labels, image):
    props = regionprops(labels, intensity_image=image)
    cols = {
        "label": [p.label for p in props], "area": [p.area for p in props],
        "centroid_y": [p.centroid[0] for p in props], "centroid_x": [p.centroid[1] for p in props],
        "equivalent_diameter": [p.equivalent_diameter_area for p in props],
        "perimeter": [p.perimeter for p in props], "eccentricity": [p.eccentricity for p in props],
        "solidity": [p.solidity for p in props],
        **{f"bbox_{k}": [p.bbox[i] for p in props] for i, k in enumerate(("y0", "x0", "y1", "x1"))},
    }
    means = np.array([np.atleast_1d(p.intensity_mean) for p in props])
    if image.ndim == 3:
        for c in range(image.shape[2]):
            cols[f"mean_intensity_{c}"] = means[:, c]
            cols[f"integrated_intensity_{c}"] = means[:, c] * np.array(cols["area"])
    cols["mean_intensity"] = means.mean(axis=1)
    return cols


@pytest.mark.parametrize("item", find_items(SAMPLE), ids=lambda it: it.name[:8])
def test_the_table_matches_regionprops_on_the_shipped_samples(item):
    image = read_image(item.image_path)  # as stored: RGBA 8-bit
    labels = read_labels(item, image.shape[:2])
    m = measure(labels, image)
    expected = regionprops_columns(labels, image)
    assert len(m) == len(expected["label"]) > 0
    for name, values in expected.items():
        np.testing.assert_allclose(m.columns[name], np.asarray(values, np.float64), rtol=0, atol=1e-6,
                                   err_msg=name)


def test_a_16_bit_mono_frame_with_gaps_in_the_labels_and_a_pixel_size():
    rng = np.random.default_rng(3)
    labels = np.zeros((60, 80), np.int32)
    cv2.ellipse(labels, (20, 20), (12, 6), 30, 0, 360, 7, -1)
    cv2.circle(labels, (60, 40), 9, 3, -1)
    labels[0, 79] = 12  # a one-pixel object in the corner: eccentricity 0
    labels[40:50, 0:3] = 5  # touching the frame border
    image = rng.integers(0, 65535, labels.shape, dtype=np.uint16)
    m = measure(labels, image, um_per_px=0.25, frame_index=4, timestamp=12.5)
    assert m.fields == FIELDS  # mono: no per-channel columns
    expected = regionprops_columns(labels, image)
    for name in ("label", "area", "perimeter", "eccentricity", "solidity", "mean_intensity", "centroid_x"):
        np.testing.assert_allclose(m.columns[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    rows = m.rows()
    assert [r["label"] for r in rows] == [3, 5, 7, 12]
    corner = rows[-1]
    assert corner["eccentricity"] == 0 and corner["solidity"] == 1 and corner["perimeter"] == 0
    assert corner["integrated_intensity"] == image[0, 79]
    assert all(r["frame"] == 4 and r["timestamp"] == 12.5 for r in rows)
    assert rows[0]["area_um2"] == pytest.approx(rows[0]["area"] / 16)
    assert rows[0]["centroid_x_um"] == pytest.approx(rows[0]["centroid_x"] / 4)
    assert rows[0]["perimeter_um"] == pytest.approx(rows[0]["perimeter"] / 4)
    unknown = measure(labels).rows()[0]  # no frame, no index, no pixel size: left empty
    assert unknown["mean_intensity"] is None and unknown["frame"] is None and unknown["area_um2"] is None


def test_irregular_shapes_match_regionprops():
    """Concave, holed and disconnected shapes: the exact hull and the perimeter code on harder cases."""
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.random((90, 110)), (0, 0), 2)
    labels = cv2.connectedComponents((noise > np.quantile(noise, 0.55)).astype(np.uint8), connectivity=4)[1]
    labels[labels % 5 == 1] = 1  # one label made of several pieces
    m = measure(labels, noise)
    expected = regionprops_columns(labels, noise)
    for name in ("area", "perimeter", "eccentricity", "solidity", "mean_intensity", "bbox_y1"):
        np.testing.assert_allclose(m.columns[name], expected[name], rtol=0, atol=1e-6, err_msg=name)


def test_no_nucleus_gives_an_empty_table():
    m = measure(np.zeros((20, 30), np.uint16), np.zeros((20, 30, 3), np.uint8))
    assert len(m) == 0 and m.rows() == []
    with pytest.raises(ValueError, match="differ in size"):
        measure(np.ones((20, 30), np.int32), np.zeros((10, 30), np.uint8))


def test_remeasuring_a_region_gives_the_rows_of_a_full_measurement():
    from edgeseg.measure import measure_region, replace_rows

    rng = np.random.default_rng(5)
    labels = np.zeros((70, 90), np.int32)
    for i, (y, x) in enumerate([(15, 15), (20, 60), (50, 30), (52, 70)], start=1):
        cv2.circle(labels, (x, y), 9, i, -1)
    image = rng.integers(0, 4096, (70, 90, 2), dtype=np.uint16)
    before = measure(labels, image, um_per_px=0.5, frame_index=3)
    after = labels.copy()
    after[40:62, 30:40][after[40:62, 30:40] == 3] = 5  # nucleus 3 cut in two
    region = (slice(40, 62), slice(20, 40))
    patched = replace_rows(before, measure_region(after, image, region, [3, 5], um_per_px=0.5, frame_index=3))
    full = measure(after, image, um_per_px=0.5, frame_index=3)
    assert patched.fields == full.fields and patched.columns["label"].tolist() == [1, 2, 3, 4, 5]
    for name in full.fields:
        np.testing.assert_allclose(patched.columns[name], full.columns[name], atol=1e-9, err_msg=name)
