"""Per-nucleus measurements of a label image, in one vectorised pass (torch-free: numpy only).

    from edgeseg.measure import measure
    m = measure(result.labels, frame, um_per_px=0.65, frame_index=12, timestamp=t)
    m.columns["area"], m.rows(), m.fields

One row per label present in the image (labels need not be consecutive). Every column is computed for all
nuclei at once: ``np.bincount`` over the foreground pixels, gathers of their neighbours, and a convex hull
built from the horizontal runs of every label together; there is no loop over objects, so the cost grows with
the foreground area, not with the number of nuclei.

The shape columns are defined exactly as scikit-image's ``regionprops`` defines them (and checked against it
to 1e-6 in tests/test_measure.py):

- ``centroid_y``, ``centroid_x``: the mean row and column of the pixels (pixel centres at integer coordinates).
- ``area``: the pixel count; ``equivalent_diameter``: ``sqrt(4 * area / pi)`` (regionprops
  ``equivalent_diameter_area``).
- ``perimeter``: regionprops ``perimeter`` (``skimage.measure.perimeter(image, neighborhood=4)`` of the object
  alone): the border pixels are the object's pixels with a 4-neighbour outside the object (or outside the
  frame); each border pixel is classified by which of its 8 neighbours are border pixels of the same object
  (code ``1 + 2 * edge neighbours + 10 * corner neighbours``) and contributes 1, sqrt(2) or (1 + sqrt(2)) / 2.
- ``eccentricity``: from the eigenvalues l1 >= l2 of the inertia tensor (central second moments over the area):
  ``sqrt(1 - l2 / l1)``, 0 for a single pixel.
- ``solidity``: ``area / convex area``, where the convex area is regionprops ``area_convex``: the number of
  pixel centres inside or on the convex hull of the pixels, each pixel taken as the four midpoints of its edges
  (``convex_hull_image`` with ``offset_coordinates=True``). The hull is computed exactly in integer arithmetic.
- ``bbox_y0``, ``bbox_x0`` (inclusive), ``bbox_y1``, ``bbox_x1`` (exclusive): regionprops ``bbox``.

Intensities come from the frame as stored (8/16-bit, float; mono or multi-channel; never the 8-bit display
copy unless that is all the caller has): ``mean_intensity`` / ``integrated_intensity`` (the mean and the sum of
the pixel values over the nucleus, averaged over the channels for a multi-channel frame), and for a frame of C
> 1 channels ``mean_intensity_<c>`` / ``integrated_intensity_<c>`` per channel in the frame's channel order
(regionprops ``intensity_mean`` per channel). With ``um_per_px`` the ``*_um`` / ``*_um2`` columns give centroid,
area, diameter and perimeter in micrometres (empty without it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# the columns of every table, in order (channel columns follow for a multi-channel frame)
FIELDS = ("frame", "timestamp", "label", "area", "centroid_y", "centroid_x", "equivalent_diameter", "perimeter",
          "eccentricity", "solidity", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "mean_intensity",
          "integrated_intensity", "centroid_y_um", "centroid_x_um", "area_um2", "equivalent_diameter_um",
          "perimeter_um")
INT_FIELDS = frozenset({"frame", "label", "area", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"})

# regionprops' perimeter weights, indexed by the border-pixel code 1 + 2 * edge + 10 * corner neighbours
_PERIMETER_WEIGHTS = np.zeros(50, np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0


def channel_fields(n_channels: int) -> tuple[str, ...]:
    """The per-channel columns of a frame with ``n_channels`` channels (none for a mono frame)."""
    if n_channels <= 1:
        return ()
    return (*(f"mean_intensity_{c}" for c in range(n_channels)),
            *(f"integrated_intensity_{c}" for c in range(n_channels)))


@dataclass
class Measurements:
    """The columns of one frame's table: ``columns[name]`` is an array with one value per nucleus."""

    columns: dict[str, np.ndarray]
    fields: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.columns["label"])

    def rows(self) -> list[dict]:
        """One dict a nucleus with plain Python values (ints for counts and indices, None where a value is
        unknown: no frame index, no timestamp, no pixel size)."""
        cols = [self.columns[f].tolist() for f in self.fields]
        ints = [f in INT_FIELDS for f in self.fields]
        out = []
        for values in zip(*cols, strict=True):
            out.append({f: (None if v is None or v != v else int(v) if is_int else float(v))
                        for f, v, is_int in zip(self.fields, values, ints, strict=True)})
        return out


def measure(labels: np.ndarray, image: np.ndarray | None = None, *, um_per_px: float | None = None,
            frame_index: int | None = None, timestamp: float | None = None, shape: bool = True) -> Measurements:
    """Measure every nucleus of ``labels`` (H x W integers, 0 background) on ``image`` (H x W or H x W x C, any
    dtype; None: no intensities). See the module docstring for the definitions. ``shape=False`` leaves out the
    perimeter and the convex hull (``perimeter``, ``solidity`` empty): what a tracker needs, for less."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be a 2-D image, not shape {lab.shape}")
    if lab.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, not {lab.dtype}")
    h, w = lab.shape
    flat = lab.ravel()
    fg = flat != 0
    idx = np.flatnonzero(fg)
    lab_fg = flat[idx].astype(np.intp)
    n_max = int(lab_fg.max()) if lab_fg.size else 0
    counts = np.bincount(lab_fg, minlength=n_max + 1)
    present = np.flatnonzero(counts[1:]) + 1
    k = present.size
    if k == n_max:  # labels 1..n, all present: the label is the row + 1
        li = lab_fg - 1
    else:
        lut = np.zeros(n_max + 1, np.intp)
        lut[present] = np.arange(k)
        li = lut[lab_fg]
    ys = np.repeat(np.arange(h), np.count_nonzero(fg.reshape(h, w), axis=1))  # idx is in raster order
    xs = idx - ys * w

    area = counts[present].astype(np.int64)
    cy = np.bincount(li, weights=ys, minlength=k) / np.maximum(area, 1)
    cx = np.bincount(li, weights=xs, minlength=k) / np.maximum(area, 1)

    # second central moments -> eigenvalues of the inertia tensor -> eccentricity
    dy = ys - cy[li]
    dx = xs - cx[li]
    mu_rr = np.bincount(li, weights=dy * dy, minlength=k)
    mu_cc = np.bincount(li, weights=dx * dx, minlength=k)
    mu_rc = np.bincount(li, weights=dy * dx, minlength=k)
    a, c, b = mu_cc / area, mu_rr / area, -mu_rc / area
    half_sum, root = (a + c) / 2, np.sqrt(((a - c) / 2) ** 2 + b * b)
    l1, l2 = half_sum + root, np.maximum(half_sum - root, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / l1, 0.0, 1.0)), 0.0)

    # horizontal runs of each label (raster order: the k-th start pairs with the k-th end)
    left = np.empty(idx.size, bool)
    right = np.empty(idx.size, bool)
    if idx.size:
        left[:] = (xs == 0) | (flat[idx - 1] != lab_fg)
        right[:] = (xs == w - 1) | (flat[np.minimum(idx + 1, flat.size - 1)] != lab_fg)
    run_label, run_y, run_x0, run_x1 = li[left], ys[left], xs[left], xs[right]

    y0 = np.full(k, h, np.int64)
    x0 = np.full(k, w, np.int64)
    y1 = np.zeros(k, np.int64)
    x1 = np.zeros(k, np.int64)
    np.minimum.at(y0, run_label, run_y)
    np.minimum.at(x0, run_label, run_x0)
    np.maximum.at(y1, run_label, run_y + 1)
    np.maximum.at(x1, run_label, run_x1 + 1)

    if shape:
        perimeter = _perimeter(lab, idx, ys, xs, lab_fg, li, k)
        solidity = area / np.maximum(_convex_area(run_label, run_y, run_x0, run_x1, y0, y1, h, k), 1)
    else:
        perimeter = solidity = np.full(k, np.nan)

    columns = {
        "frame": np.full(k, np.nan if frame_index is None else frame_index, np.float64 if frame_index is None
                         else np.int64),
        "timestamp": np.full(k, np.nan if timestamp is None else float(timestamp), np.float64),
        "label": present.astype(np.int64), "area": area, "centroid_y": cy, "centroid_x": cx,
        "equivalent_diameter": np.sqrt(4.0 * area / np.pi), "perimeter": perimeter, "eccentricity": ecc,
        "solidity": solidity, "bbox_y0": y0, "bbox_x0": x0, "bbox_y1": y1,
        "bbox_x1": x1,
    }
    extra: tuple[str, ...] = ()
    if image is None:
        columns["mean_intensity"] = columns["integrated_intensity"] = np.full(k, np.nan)
    else:
        img = np.asarray(image)
        if img.shape[:2] != (h, w):
            raise ValueError(f"image {img.shape} and labels {lab.shape} differ in size")
        n_ch = 1 if img.ndim == 2 else img.shape[2]
        if n_ch == 1:
            sums = np.bincount(li, weights=img.reshape(h * w)[idx], minlength=k)[:, None]
        else:
            values = img.reshape(h * w, n_ch)[idx]
            sums = np.stack([np.bincount(li, weights=values[:, ch], minlength=k) for ch in range(n_ch)], axis=1)
        means = sums / np.maximum(area, 1)[:, None]
        columns["mean_intensity"] = means.mean(axis=1)
        columns["integrated_intensity"] = sums.mean(axis=1)
        extra = channel_fields(n_ch)
        if extra:
            for ch in range(n_ch):
                columns[f"mean_intensity_{ch}"] = means[:, ch]
                columns[f"integrated_intensity_{ch}"] = sums[:, ch]
    s = np.nan if um_per_px is None else float(um_per_px)
    columns.update({"centroid_y_um": cy * s, "centroid_x_um": cx * s, "area_um2": area * s * s,
                    "equivalent_diameter_um": columns["equivalent_diameter"] * s, "perimeter_um": perimeter * s})
    return Measurements(columns, FIELDS + extra)


def _perimeter(lab, idx, ys, xs, lab_fg, li, k) -> np.ndarray:
    """regionprops ``perimeter`` (4-connectivity border, weighted by the 8-neighbourhood) of every label."""
    h, w = lab.shape
    if not idx.size:
        return np.zeros(k)
    pw = w + 2
    padded = np.zeros((h + 2, pw), lab.dtype)
    padded[1:-1, 1:-1] = lab
    pf = padded.ravel()
    pidx = (ys + 1) * pw + xs + 1
    edges = (-pw, pw, -1, 1)
    corners = (-pw - 1, -pw + 1, pw - 1, pw + 1)
    inner = np.ones(idx.size, bool)
    for o in edges:
        inner &= pf[pidx + o] == lab_fg
    border = ~inner
    is_border = np.zeros(pf.size, bool)
    bp = pidx[border]
    is_border[bp] = True
    bl = lab_fg[border]
    code = np.ones(bp.size, np.intp)
    for o, weight in [(o, 2) for o in edges] + [(o, 10) for o in corners]:
        code += weight * ((pf[bp + o] == bl) & is_border[bp + o])
    return np.bincount(li[border], weights=_PERIMETER_WEIGHTS[code], minlength=k)


def _convex_area(run_label, run_y, run_x0, run_x1, y0, y1, h, k) -> np.ndarray:
    """regionprops ``area_convex`` of every label: pixel centres inside or on the convex hull of the pixels'
    edge midpoints, in exact integer arithmetic (coordinates doubled so that every vertex is an integer).

    The hull of a label is the hull of its runs' end pixels; at each doubled row ``t`` only the leftmost and the
    rightmost candidate matter, so the hull's right side is the least concave majorant of ``(t, max x)`` and its
    left side the greatest convex minorant of ``(t, min x)``, both found for all labels at once."""
    if not run_label.size:
        return np.zeros(k, np.int64)
    stride = 2 * h + 3
    # candidates, doubled: the run's row (t = 2y) reaches x0 - 1/2 .. x1 + 1/2; the rows above and below
    # (t = 2y -+ 1) reach x0 .. x1
    t = np.concatenate([2 * run_y, 2 * run_y - 1, 2 * run_y + 1])
    lo = np.concatenate([2 * run_x0 - 1, 2 * run_x0, 2 * run_x0])
    hi = np.concatenate([2 * run_x1 + 1, 2 * run_x1, 2 * run_x1])
    lbl = np.tile(run_label, 3)
    key = lbl.astype(np.int64) * stride + t + 1
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    g_key = key[starts]
    g_lo = np.minimum.reduceat(lo[order], starts)
    g_hi = np.maximum.reduceat(hi[order], starts)
    g_label = g_key // stride
    g_t = g_key % stride - 1

    # pixel rows of every label: y0 .. y1 - 1, as (label, t = 2y) queries
    n_rows = (y1 - y0).astype(np.int64)
    q_label = np.repeat(np.arange(k), n_rows)
    first = np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    q_y = np.repeat(y0, n_rows) + (np.arange(q_label.size) - first)
    q_key = q_label * stride + 2 * q_y + 1

    # both sides in one peeling: the left side as labels k..2k-1, negated (a convex minorant is the concave
    # majorant of the negated values)
    offset = k * stride
    num, den = _chain_at(np.r_[g_label, g_label + k], np.r_[g_key, g_key + offset], np.r_[g_t, g_t],
                         np.r_[g_hi, -g_lo], np.r_[q_key, q_key + offset], np.r_[2 * q_y, 2 * q_y])
    n_q = q_key.size
    right_num, right_den, left_num, left_den = num[:n_q], den[:n_q], num[n_q:], den[n_q:]
    # doubled x on the right side: right_num / right_den; count integers x with left <= x <= right
    x_max = np.floor_divide(right_num, 2 * right_den)
    x_min = -np.floor_divide(left_num, 2 * left_den)  # left side = -(left_num / left_den) doubled: ceil
    per_row = np.maximum(x_max - x_min + 1, 0)
    return np.bincount(q_label, weights=per_row, minlength=k).astype(np.int64)


def _chain_at(g_label, g_key, g_t, g_v, q_key, q_t) -> tuple[np.ndarray, np.ndarray]:
    """The least concave majorant of the points ``(g_t, g_v)`` of each label (sorted by label then t), evaluated
    at the queries ``q_t`` of the same labels, as exact fractions ``num / den`` (den > 0).

    The majorant's vertices are found by peeling: every point on or below the chord of its two neighbours is
    dropped, for all labels at once, until none is (dropping points that are not vertices never changes the
    majorant, and a chain left with no such point is concave)."""
    keep = np.arange(g_key.size)
    while keep.size > 2:
        a, b, c = keep[:-2], keep[1:-1], keep[2:]
        interior = (g_label[a] == g_label[b]) & (g_label[b] == g_label[c])
        cross = (g_v[b] - g_v[a]) * (g_t[c] - g_t[a]) - (g_v[c] - g_v[a]) * (g_t[b] - g_t[a])
        drop = interior & (cross <= 0)
        if not drop.any():
            break
        keep = np.r_[keep[0], b[~drop], keep[-1]]
    v_key, v_t, v_v = g_key[keep], g_t[keep], g_v[keep]
    pos = np.searchsorted(v_key, q_key, side="right")
    lo = pos - 1  # the vertex at or above the query row (same label: the chain spans all its rows)
    hi = np.minimum(pos, v_key.size - 1)
    exact = v_key[lo] == q_key
    hi = np.where(exact, lo, hi)
    dt = v_t[hi] - v_t[lo]
    den = np.where(exact, 1, dt)
    num = np.where(exact, v_v[lo], v_v[lo] * dt + (v_v[hi] - v_v[lo]) * (q_t - v_t[lo]))
    return num, den


def measure_region(labels: np.ndarray, image: np.ndarray | None, region: tuple[slice, slice], which,
                   **kwargs) -> Measurements:
    """Measure only the labels ``which``, which lie inside ``region`` (a pair of slices) of the frame, with
    coordinates in the frame: what changed after a few nuclei were redrawn, without measuring the whole frame
    again. ``kwargs`` as for :func:`measure`."""
    sub = labels[region]
    sub = np.where(np.isin(sub, which), sub, 0)
    m = measure(sub, None if image is None else image[region], **kwargs)
    oy, ox = region[0].start or 0, region[1].start or 0
    c = m.columns
    for name, off in (("centroid_y", oy), ("bbox_y0", oy), ("bbox_y1", oy), ("centroid_x", ox), ("bbox_x0", ox),
                      ("bbox_x1", ox)):
        c[name] = c[name] + off
    s = kwargs.get("um_per_px")
    s = np.nan if s is None else float(s)
    c["centroid_y_um"], c["centroid_x_um"] = c["centroid_y"] * s, c["centroid_x"] * s
    return m


def replace_rows(m: Measurements, new: Measurements) -> Measurements:
    """``m`` with the rows of ``new``'s labels replaced or added, in label order."""
    keep = ~np.isin(m.columns["label"], new.columns["label"])
    cols = {f: np.concatenate([m.columns[f][keep], new.columns[f]]) for f in m.columns}
    order = np.argsort(cols["label"], kind="stable")
    return Measurements({f: v[order] for f, v in cols.items()}, m.fields)
