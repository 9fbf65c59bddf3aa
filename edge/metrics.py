"""Segmentation metrics: the paper's Dice and IoU, and the 2018 Data Science Bowl's instance metrics.

Pixel metrics take boolean masks; instance metrics take integer label images
(0 = background, any non-negative ids, not necessarily consecutive).

- :func:`dice`, :func:`iou` - foreground overlap (both empty counts as perfect, 1.0);
- :func:`match_instances` - the IoU matrix between predicted and ground-truth objects;
- :func:`dsb_map` - DSB2018 score: precision TP/(TP+FP+FN) averaged over IoU
  thresholds 0.50, 0.55, ..., 0.95;
- :func:`f1_at` - F1 = 2TP/(2TP+FP+FN) at one IoU threshold;
- :func:`count_error` - predicted minus true number of nuclei (signed);
- :func:`image_metrics` / :func:`summarise` - the per-image dict and the means that
  ``edgeseg eval --json`` reports (keys are a contract).

A predicted object matches a ground-truth object when their IoU is strictly above the
threshold. From 0.5 up such matches are necessarily one-to-one; below 0.5 the matching
is made one-to-one greedily, highest IoU first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from .postprocess import connected_components

__all__ = [
    "DSB_THRESHOLDS",
    "InstanceCounts",
    "count_error",
    "count_instances",
    "dice",
    "dsb_map",
    "f1_at",
    "image_metrics",
    "instance_counts",
    "iou",
    "labels_from_mask",
    "match_instances",
    "summarise",
]

#: IoU thresholds of the DSB2018 metric: 0.50, 0.55, ..., 0.95 (rounded, so 0.7 is 0.7).
DSB_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


class InstanceCounts(NamedTuple):
    """Object-level counts at one IoU threshold."""

    tp: int
    fp: int
    fn: int


# --------------------------------------------------------------------------- pixels


def _mask_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    return pred, gt


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two masks; 1.0 when both are empty."""
    pred, gt = _mask_pair(pred, gt)
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(pred & gt) / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union |A∩B| / |A∪B| of two masks; 1.0 when both are empty."""
    pred, gt = _mask_pair(pred, gt)
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


# --------------------------------------------------------------------------- objects


def labels_from_mask(mask: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Label a mask's 8-connected components (dropping those under ``min_size`` pixels), int32 1..N.

    The same function as :func:`edgeseg.postprocess.connected_components`.
    """
    return connected_components(mask, min_size)


def _compact_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Flatten a label image and renumber its objects 0..n (0 = background). Returns (flat, n)."""
    flat = np.asarray(labels).ravel()
    if flat.size == 0:
        return flat.astype(np.int64), 0
    if flat.min() < 0:
        raise ValueError("label images must be non-negative (0 = background)")
    if int(flat.max()) <= 4 * flat.size + 1024:
        present = np.bincount(flat) > 0
        present[0] = True
        lut = np.cumsum(present) - 1
        return lut[flat], int(lut[-1])
    # Sparse, very large ids: sort instead of building a huge lookup table.
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        inverse = inverse + 1
    return inverse.ravel(), int(np.count_nonzero(ids))


def count_instances(labels: np.ndarray) -> int:
    """Number of distinct objects (non-zero labels) in a label image."""
    return _compact_labels(labels)[1]


def match_instances(pred_labels: np.ndarray, gt_labels: np.ndarray) -> np.ndarray:
    """IoU matrix ``(n_pred, n_gt)`` between every predicted and every ground-truth object.

    Rows and columns follow the objects' ids in increasing order. Computed in one pass
    from the joint histogram of the two label images (``np.bincount``), so the cost is
    linear in the number of pixels whatever the number of objects.
    """
    pred_shape, gt_shape = np.shape(pred_labels), np.shape(gt_labels)
    if pred_shape != gt_shape:
        raise ValueError(f"prediction shape {pred_shape} differs from ground truth shape {gt_shape}")
    pred, n_pred = _compact_labels(pred_labels)
    gt, n_gt = _compact_labels(gt_labels)
    joint = np.bincount(pred * (n_gt + 1) + gt, minlength=(n_pred + 1) * (n_gt + 1))
    joint = joint.reshape(n_pred + 1, n_gt + 1)
    intersection = joint[1:, 1:].astype(np.float64)
    area_pred = joint[1:, :].sum(axis=1)
    area_gt = joint[:, 1:].sum(axis=0)
    union = area_pred[:, None] + area_gt[None, :] - intersection
    return intersection / np.maximum(union, 1)


def _counts_at(iou_matrix: np.ndarray, t: float) -> InstanceCounts:
    """TP/FP/FN from an IoU matrix at threshold ``t`` (match when IoU > t, one-to-one)."""
    n_pred, n_gt = iou_matrix.shape
    candidates = iou_matrix > t
    if t >= 0.5:
        # IoU > 0.5 with two disjoint objects at once is impossible: matches are unique.
        tp = int(np.count_nonzero(candidates))
    else:
        rows, cols = np.nonzero(candidates)
        order = np.argsort(-iou_matrix[rows, cols], kind="stable")
        used_pred: set[int] = set()
        used_gt: set[int] = set()
        for r, c in zip(rows[order].tolist(), cols[order].tolist(), strict=True):
            if r not in used_pred and c not in used_gt:
                used_pred.add(r)
                used_gt.add(c)
        tp = len(used_pred)
    return InstanceCounts(tp=tp, fp=n_pred - tp, fn=n_gt - tp)


def instance_counts(pred_labels: np.ndarray, gt_labels: np.ndarray, t: float = 0.5) -> InstanceCounts:
    """True positives, false positives and false negatives at IoU threshold ``t``."""
    return _counts_at(match_instances(pred_labels, gt_labels), t)


def _precision(counts: InstanceCounts) -> float:
    """DSB precision TP / (TP + FP + FN); 1.0 when there is nothing to find and nothing found."""
    denominator = counts.tp + counts.fp + counts.fn
    return 1.0 if denominator == 0 else counts.tp / denominator


def _f1(counts: InstanceCounts) -> float:
    denominator = 2 * counts.tp + counts.fp + counts.fn
    return 1.0 if denominator == 0 else 2 * counts.tp / denominator


def _map_from_iou(iou_matrix: np.ndarray, thresholds: Iterable[float]) -> float:
    precisions = [_precision(_counts_at(iou_matrix, t)) for t in thresholds]
    return float(np.mean(precisions))


def dsb_map(
    pred_labels: np.ndarray, gt_labels: np.ndarray, thresholds: Sequence[float] = DSB_THRESHOLDS
) -> float:
    """The 2018 Data Science Bowl score of one image.

    For each threshold t, precision(t) = TP / (TP + FP + FN) with matches at IoU > t;
    the score is the mean over ``thresholds``. Both images empty gives 1.0, exactly one
    empty gives 0.0.
    """
    return _map_from_iou(match_instances(pred_labels, gt_labels), thresholds)


def f1_at(pred_labels: np.ndarray, gt_labels: np.ndarray, t: float = 0.5) -> float:
    """Object F1 = 2TP / (2TP + FP + FN) at IoU threshold ``t``; 1.0 when both images are empty."""
    return _f1(instance_counts(pred_labels, gt_labels, t))


def count_error(pred_labels: np.ndarray, gt_labels: np.ndarray) -> int:
    """Predicted minus true number of objects (signed: positive = over-counting)."""
    return count_instances(pred_labels) - count_instances(gt_labels)


# --------------------------------------------------------------------------- reports


def image_metrics(pred_mask: np.ndarray, pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[str, Any]:
    """All metrics of one image, as reported by ``edgeseg eval``.

    Keys: ``dice``, ``iou`` (of ``pred_mask`` against ``gt_labels > 0``), ``map``
    (:func:`dsb_map`), ``f1_50`` (:func:`f1_at` 0.5), ``count_err`` (signed),
    ``n_pred``, ``n_gt``.
    """
    gt_mask = np.asarray(gt_labels) > 0
    ious = match_instances(pred_labels, gt_labels)
    n_pred, n_gt = ious.shape
    return {
        "dice": dice(pred_mask, gt_mask),
        "iou": iou(pred_mask, gt_mask),
        "map": _map_from_iou(ious, DSB_THRESHOLDS),
        "f1_50": _f1(_counts_at(ious, 0.5)),
        "count_err": n_pred - n_gt,
        "n_pred": n_pred,
        "n_gt": n_gt,
    }


def summarise(per_image: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over images of :func:`image_metrics` dicts.

    Keys: ``dice``, ``iou``, ``map``, ``f1_50`` (means), ``count_mae`` (mean absolute
    count error), ``count_bias`` (mean signed count error), ``n_images``. With no
    images every mean is NaN.
    """
    n = len(per_image)

    def mean(values: Iterable[float]) -> float:
        return float(np.mean(list(values))) if n else math.nan

    return {
        "dice": mean(m["dice"] for m in per_image),
        "iou": mean(m["iou"] for m in per_image),
        "map": mean(m["map"] for m in per_image),
        "f1_50": mean(m["f1_50"] for m in per_image),
        "count_mae": mean(abs(m["count_err"]) for m in per_image),
        "count_bias": mean(m["count_err"] for m in per_image),
        "n_images": n,
    }
