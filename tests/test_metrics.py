"""Metrics against values computed by hand on tiny images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeseg.metrics import (
    DSB_THRESHOLDS,
    InstanceCounts,
    count_error,
    count_instances,
    dice,
    dsb_map,
    f1_at,
    image_metrics,
    instance_counts,
    iou,
    labels_from_mask,
    match_instances,
    summarise,
)


def square(labels: np.ndarray, label: int, y: int, x: int, size: int) -> np.ndarray:
    labels[y : y + size, x : x + size] = label
    return labels


# --------------------------------------------------------------------------- dice, iou


def test_dice_and_iou_of_overlapping_masks():
    pred = np.array([[1, 1, 0, 0]], bool)
    gt = np.array([[0, 1, 1, 0]], bool)
    assert dice(pred, gt) == pytest.approx(2 * 1 / (2 + 2))
    assert iou(pred, gt) == pytest.approx(1 / 3)


def test_dice_and_iou_are_perfect_when_both_masks_are_empty():
    empty = np.zeros((3, 3), bool)
    assert dice(empty, empty) == 1.0
    assert iou(empty, empty) == 1.0


def test_dice_and_iou_are_zero_when_one_mask_is_empty():
    empty, full = np.zeros((3, 3), bool), np.ones((3, 3), bool)
    assert dice(empty, full) == 0.0
    assert iou(full, empty) == 0.0


def test_pixel_metrics_refuse_masks_of_different_shapes():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


# --------------------------------------------------------------------------- objects


def test_match_instances_gives_the_iou_of_every_pair_in_id_order():
    # pred ids 9 and 5 (not consecutive), gt ids 1 and 2; rows follow pred ids 5, 9.
    pred = np.array([[9, 9, 0, 5, 5, 5]])
    gt = np.array([[1, 1, 1, 0, 2, 2]])
    expected = np.array(
        [
            [0 / 6, 2 / 3],  # pred 5 = cols 3..5: vs gt1 (0 shared), vs gt2 (2 shared, union 3)
            [2 / 3, 0 / 4],  # pred 9 = cols 0..1: vs gt1 (2 shared, union 3)
        ]
    )
    np.testing.assert_allclose(match_instances(pred, gt), expected)


def test_match_instances_handles_huge_sparse_ids_like_small_ones():
    pred = np.array([[7, 7, 0, 3]])
    gt = np.array([[1, 0, 0, 2]])
    big_pred = np.where(pred == 7, 2_000_000_000, pred)
    np.testing.assert_allclose(match_instances(big_pred, gt), match_instances(pred, gt))
    assert count_instances(big_pred) == 2


def test_match_instances_shape_is_objects_by_objects_even_when_empty():
    assert match_instances(np.zeros((4, 4), int), square(np.zeros((4, 4), int), 1, 0, 0, 2)).shape == (0, 1)


def test_dsb_map_is_one_half_for_a_perfect_match_plus_a_false_positive():
    gt = square(np.zeros((10, 10), int), 1, 0, 0, 3)
    pred = square(gt.copy(), 2, 6, 6, 3)
    # Every threshold: TP=1, FP=1, FN=0 -> 1/2.
    assert dsb_map(pred, gt) == pytest.approx(0.5)


def test_dsb_map_counts_an_iou_of_0_7_for_thresholds_up_to_0_65_only():
    gt = np.zeros((1, 12), int)
    gt[0, :10] = 1
    pred = np.zeros((1, 12), int)
    pred[0, :7] = 1  # IoU = 7 / 10
    # 0.50, 0.55, 0.60, 0.65 -> precision 1; 0.70 .. 0.95 (6 thresholds) -> 0/(0+1+1).
    assert dsb_map(pred, gt) == pytest.approx(4 / 10)


def test_dsb_map_averages_a_perfect_and_a_partial_match():
    gt = np.zeros((3, 12), int)
    gt[0, :10] = 1
    gt[2, :4] = 2
    pred = np.zeros((3, 12), int)
    pred[0, :7] = 1  # IoU 0.7 with gt 1
    pred[2, :4] = 2  # perfect match with gt 2
    # t <= 0.65: 2/2; t >= 0.70: TP=1, FP=1, FN=1 -> 1/3.
    assert dsb_map(pred, gt) == pytest.approx((4 * 1 + 6 * (1 / 3)) / 10)


def test_dsb_map_needs_an_iou_strictly_above_the_threshold():
    gt = np.array([[1, 1, 1, 1]])
    pred = np.array([[1, 1, 0, 0]])  # IoU exactly 0.5
    assert dsb_map(pred, gt) == 0.0
    assert dsb_map(pred, gt, thresholds=[0.45]) == 1.0


def test_dsb_thresholds_are_0_50_to_0_95_in_steps_of_0_05():
    assert DSB_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_dsb_map_is_one_when_both_images_are_empty_and_zero_when_one_is():
    empty = np.zeros((5, 5), int)
    one = square(empty.copy(), 1, 1, 1, 2)
    assert dsb_map(empty, empty) == 1.0
    assert dsb_map(one, empty) == 0.0
    assert dsb_map(empty, one) == 0.0


def test_f1_at_counts_hits_misses_and_false_alarms():
    gt = np.zeros((10, 10), int)
    pred = np.zeros((10, 10), int)
    for k, (y, x) in enumerate([(0, 0), (0, 5), (5, 0)], start=1):
        square(gt, k, y, x, 3)  # gt 1, 2, 3
    square(pred, 1, 0, 0, 3)  # hits gt 1
    square(pred, 2, 0, 5, 3)  # hits gt 2
    square(pred, 3, 6, 6, 3)  # false alarm; gt 3 is missed
    assert instance_counts(pred, gt) == InstanceCounts(tp=2, fp=1, fn=1)
    assert f1_at(pred, gt) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_f1_at_a_low_threshold_still_matches_one_to_one():
    gt = np.array([[1, 1, 0, 2, 2]])
    pred = np.array([[1, 1, 1, 1, 1]])  # IoU 2/5 = 0.4 with each gt object
    assert instance_counts(pred, gt, t=0.3) == InstanceCounts(tp=1, fp=0, fn=1)
    assert f1_at(pred, gt, t=0.3) == pytest.approx(2 / 3)
    assert f1_at(pred, gt) == 0.0


def test_f1_at_is_one_when_both_images_are_empty():
    empty = np.zeros((4, 4), int)
    assert f1_at(empty, empty) == 1.0


def test_count_error_is_signed_predicted_minus_true():
    gt = square(np.zeros((10, 10), int), 4, 0, 0, 2)
    pred = square(square(square(np.zeros((10, 10), int), 1, 0, 0, 2), 2, 4, 4, 2), 7, 8, 8, 2)
    assert count_error(pred, gt) == 2
    assert count_error(gt, pred) == -2


def test_labels_from_mask_joins_diagonal_neighbours_and_drops_small_objects():
    mask = np.zeros((8, 8), bool)
    mask[0, 0] = mask[1, 1] = True  # 2 pixels, diagonal: one object under 8-connectivity
    mask[4:7, 4:7] = True  # 9 pixels
    mask[0, 6] = True  # 1 pixel
    assert labels_from_mask(mask).max() == 3
    labels = labels_from_mask(mask, min_size=2)
    assert labels.dtype == np.int32
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert labels[0, 6] == 0 and labels[0, 0] == labels[1, 1] != 0


# --------------------------------------------------------------------------- reports


def test_image_metrics_reports_every_contract_key():
    gt = square(np.zeros((10, 10), int), 1, 0, 0, 3)
    pred = square(gt.copy(), 2, 6, 6, 3)
    m = image_metrics(pred > 0, pred, gt)
    assert m == {
        "dice": pytest.approx(2 * 9 / (18 + 9)),
        "iou": pytest.approx(9 / 18),
        "map": pytest.approx(0.5),
        "f1_50": pytest.approx(2 / 3),
        "count_err": 1,
        "n_pred": 2,
        "n_gt": 1,
    }


def test_summarise_takes_means_and_the_mean_absolute_count_error():
    a = {"dice": 1.0, "iou": 1.0, "map": 0.5, "f1_50": 1.0, "count_err": 2, "n_pred": 3, "n_gt": 1}
    b = {"dice": 0.5, "iou": 0.0, "map": 0.0, "f1_50": 0.5, "count_err": -1, "n_pred": 0, "n_gt": 1}
    assert summarise([a, b]) == {
        "dice": 0.75,
        "iou": 0.5,
        "map": 0.25,
        "f1_50": 0.75,
        "count_mae": 1.5,
        "count_bias": 0.5,
        "n_images": 2,
    }


def test_summarise_of_no_images_is_nan_not_an_error():
    s = summarise([])
    assert s["n_images"] == 0
    assert math.isnan(s["dice"]) and math.isnan(s["count_mae"])
