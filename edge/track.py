"""Linking nuclei from frame to frame: stable track ids, gap closing, divisions (torch-free: numpy + scipy).

    from edgeseg.track import Tracker
    tracker = Tracker()                       # max_distance: auto (one nucleus diameter a frame)
    for result in results:
        step = tracker.update(result.labels)  # or update(labels, measurements) to reuse a table
        step.mapping()                        # {label: track id}
        step.divisions                        # [(parent, daughter, daughter), ...]

Each frame is linked to the tracks of the frames before in one optimal assignment (the Hungarian method, as
``scipy.optimize.linear_sum_assignment``, a maintained C++ implementation with wheels for x86-64 and aarch64):

- candidates: the tracks seen in the previous frame and those missed for up to ``max_gap`` frames;
- cost of a link: ``(1 - IoU) + distance / max_distance + gap_penalty * (missed frames)``, where the IoU is the
  overlap of the track's last mask with the detection (tracks seen in the previous frame), and the distance is
  from the track's position predicted with its velocity to the detection's centroid;
- a link is allowed where the masks overlap or the distance is within ``max_distance`` (grown by half for each
  missed frame); the assignment maximises the number of allowed links, then minimises their cost;
- a detection left unlinked starts a new track, unless it and another detection make a **division** of a
  track seen in the previous frame: both close to the track's predicted position (within one parent diameter
  plus ``max_distance``), each smaller than ``daughter_max_area`` of the parent and together
  ``division_area_range`` of it. The parent ends; the two daughters start new tracks whose parent is it;
- a track missed for more than ``max_gap`` frames ends;
- ``split_merges``: a detection that holds most of the previous masks of two or more tracks, each seen for at
  least ``split_min_age`` frames, and is about their size, is taken for touching nuclei that the segmentation
  merged: it is cut between them (each pixel to the nearest predicted centre, in units of the track's radius)
  and :attr:`TrackStep.split_labels` holds the corrected label image (the caller measures and shows that one).

Track ids start at 1 and are never reused. The state is the live and recently missed tracks plus the previous
label image: memory does not grow with the length of a run (lineage is reported as it happens, in
:class:`TrackStep`, for the writers to keep).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .measure import Measurements, measure, measure_region, replace_rows

NO_LINK = 1e3  # the cost of "not linked": above every allowed link


@dataclass
class TrackStep:
    """What one :meth:`Tracker.update` found. ``labels``, ``track_ids`` and ``parents`` have one entry per nucleus
    of the frame (in the order of the measurements: increasing label)."""

    index: int  # the tracker's frame counter (0, 1, ...)
    labels: np.ndarray
    track_ids: np.ndarray
    parents: np.ndarray  # parent track id per nucleus (0: none); set on the frames of a daughter's track
    divisions: list[tuple[int, int, int]] = field(default_factory=list)  # (parent, daughter, daughter)
    started: list[int] = field(default_factory=list)  # new track ids (daughters included)
    ended: list[int] = field(default_factory=list)  # tracks that ended: divided, or missed for > max_gap frames
    gap_closed: list[int] = field(default_factory=list)  # tracks found again after missed frames
    split_labels: np.ndarray | None = None  # the frame's labels with merged nuclei split (None: unchanged)
    split_region: tuple[slice, slice] | None = None  # where split_labels differ: a box holding every cut nucleus
    split_changed: np.ndarray | None = None  # the labels of the cut nuclei (the merged label and the new ones)

    def mapping(self) -> dict[int, int]:
        """``{label: track id}`` for this frame."""
        return dict(zip(self.labels.tolist(), self.track_ids.tolist(), strict=True))

    @property
    def n_live(self) -> int:
        return int(self.track_ids.size)


class Tracker:
    """Frame-to-frame linking with gap closing and divisions; see the module docstring for the rules.

    ``max_distance`` (pixels a frame): None measures it from the nuclei (their median equivalent diameter,
    updated as the run goes). ``max_gap``: frames a track may be missed and still be continued.
    ``divisions=False`` never reports a division (every unlinked nucleus starts a new track)."""

    def __init__(self, *, max_distance: float | None = None, max_gap: int = 3, gap_penalty: float = 0.5,
                 divisions: bool = True, daughter_max_area: float = 0.85,
                 division_area_range: tuple[float, float] = (0.5, 1.6), split_merges: bool = True,
                 split_min_age: int = 3):
        if max_distance is not None and not max_distance > 0:
            raise ValueError(f"max_distance {max_distance} must be positive")
        if max_gap < 0:
            raise ValueError(f"max_gap {max_gap} must be 0 or more")
        from scipy.optimize import linear_sum_assignment  # imported here, not in the first frame of a live run

        self._assign = linear_sum_assignment
        self.max_distance = max_distance
        self.max_gap = int(max_gap)
        self.gap_penalty = float(gap_penalty)
        self.divisions = bool(divisions)
        self.daughter_max_area = float(daughter_max_area)
        self.division_area_range = tuple(map(float, division_area_range))
        self.split_merges = bool(split_merges)
        self.split_min_age = int(split_min_age)
        self.index = -1
        self._diameter: float | None = None  # running median nucleus diameter (auto max_distance)
        self._next_id = 1
        # the state of the live and missed tracks, one entry a track
        self._id = np.zeros(0, np.int64)
        self._parent = np.zeros(0, np.int64)
        self._last = np.zeros(0, np.int64)  # frame counter when last seen
        self._seen = np.zeros(0, np.int64)  # frames seen
        self._pos = np.zeros((0, 2))  # centroid (y, x) when last seen
        self._vel = np.zeros((0, 2))  # pixels a frame
        self._area = np.zeros(0)
        self._diam = np.zeros(0)
        self._prev_labels: np.ndarray | None = None  # the previous frame's labels
        self._prev_row = np.zeros(0, np.int64)  # previous label -> row in the state (-1: none)

    @property
    def n_tracks(self) -> int:
        """Tracks held: seen in the last frame or missed for up to ``max_gap`` frames."""
        return int(self._id.size)

    def distance_limit(self) -> float:
        """The ``max_distance`` in use (pixels a frame)."""
        if self.max_distance is not None:
            return float(self.max_distance)
        return max(4.0, self._diameter or 10.0)

    def update(self, labels: np.ndarray, measurements: Measurements | None = None) -> TrackStep:
        """Link the nuclei of the next frame (``labels``: H x W, 0 background; ``measurements``: its table from
        :func:`edgeseg.measure.measure`, computed here when not given)."""
        self.index += 1
        t = self.index
        labels = np.asarray(labels)
        m = measurements if measurements is not None else measure(labels, shape=False)
        inter = self._intersections(labels, m.columns["label"])
        split = self._split_merged(labels, m, inter) if self.split_merges and inter is not None else None
        if split is not None:
            labels, region, changed = split
            m = replace_rows(m, measure_region(labels, None, region, changed, shape=False))
            inter = self._intersections(labels, m.columns["label"])
        det_label = m.columns["label"].astype(np.int64)
        det_pos = np.stack([m.columns["centroid_y"], m.columns["centroid_x"]], axis=1).astype(np.float64)
        det_area = m.columns["area"].astype(np.float64)
        det_diam = m.columns["equivalent_diameter"].astype(np.float64)
        n_det = det_label.size
        if n_det:
            med = float(np.median(det_diam))
            self._diameter = med if self._diameter is None else 0.8 * self._diameter + 0.2 * med
        dmax = self.distance_limit()

        step = TrackStep(t, det_label, np.zeros(n_det, np.int64), np.zeros(n_det, np.int64))
        if split is not None:
            step.split_labels, step.split_region, step.split_changed = split
        n_tr = self._id.size
        gap = t - self._last  # 1: seen in the previous frame
        pred = self._pos + self._vel * gap[:, None]
        link = np.full(n_det, -1, np.int64)  # detection -> state row
        if n_tr and n_det:
            dist = np.hypot(pred[:, None, 0] - det_pos[None, :, 0], pred[:, None, 1] - det_pos[None, :, 1])
            iou = self._iou(inter, det_area)
            allowed = (iou > 0) | (dist <= dmax * (1 + 0.5 * (gap[:, None] - 1)))
            cost = (1 - iou) + dist / dmax + self.gap_penalty * (gap[:, None] - 1)
            cost = np.where(allowed, cost, NO_LINK)
            rows, cols = self._assign(cost)
            ok = cost[rows, cols] < NO_LINK
            link[cols[ok]] = rows[ok]

        divided: dict[int, tuple[int, int]] = {}
        if self.divisions and n_tr and n_det:
            divided = self._find_divisions(link, gap, pred, det_pos, det_area, dist, dmax)

        # update the state: linked tracks move; divided parents end; the rest of the detections start tracks
        linked = np.flatnonzero(link >= 0)
        for r in divided:
            linked = linked[link[linked] != r]
        rows = link[linked]
        seen_gap = gap[rows]
        moved = (det_pos[linked] - self._pos[rows]) / seen_gap[:, None]
        first_move = (self._seen[rows] == 1)[:, None]
        self._vel[rows] = np.where(first_move, moved, 0.5 * self._vel[rows] + 0.5 * moved)
        self._seen[rows] += 1
        self._pos[rows] = det_pos[linked]
        self._area[rows] = det_area[linked]
        self._diam[rows] = det_diam[linked]
        self._last[rows] = t
        step.track_ids[linked] = self._id[rows]
        step.parents[linked] = self._parent[rows]
        step.gap_closed.extend(self._id[rows[seen_gap > 1]].tolist())

        new = np.flatnonzero(step.track_ids == 0)
        new_ids = np.arange(self._next_id, self._next_id + new.size)
        self._next_id += new.size
        step.track_ids[new] = new_ids
        step.started.extend(new_ids.tolist())
        parent_of_new = np.zeros(new.size, np.int64)
        position = {int(d): i for i, d in enumerate(new)}
        for r, (a, b) in divided.items():
            pid = int(self._id[r])
            parent_of_new[position[a]] = parent_of_new[position[b]] = pid
            step.divisions.append((pid, int(step.track_ids[a]), int(step.track_ids[b])))
            step.ended.append(pid)
        step.parents[new] = parent_of_new
        if divided:
            self._keep(~np.isin(np.arange(self._id.size), list(divided)))
        self._id = np.r_[self._id, new_ids]
        self._parent = np.r_[self._parent, parent_of_new]
        self._last = np.r_[self._last, np.full(new.size, t)]
        self._seen = np.r_[self._seen, np.ones(new.size, np.int64)]
        self._pos = np.r_[self._pos, det_pos[new]]
        self._vel = np.r_[self._vel, np.zeros((new.size, 2))]
        self._area = np.r_[self._area, det_area[new]]
        self._diam = np.r_[self._diam, det_diam[new]]

        # end the tracks that the next frame may no longer continue (missed for max_gap frames now)
        alive = t - self._last <= self.max_gap
        if not alive.all():
            step.ended.extend(self._id[~alive].tolist())
            self._keep(alive)

        # remember this frame's masks (by label -> state row) for the next frame's overlaps
        self._prev_labels = labels
        prev_row = np.full(int(det_label.max(initial=0)) + 1, -1, np.int64)
        prev_row[det_label] = np.searchsorted(self._id, step.track_ids)  # ids are kept in increasing order
        self._prev_row = prev_row
        return step

    # ------------------------------------------------------------------ internals

    def _keep(self, keep: np.ndarray) -> None:
        """Keep the state rows where ``keep`` is True (and re-point the previous frame's labels at them)."""
        new_index = np.cumsum(keep) - 1
        if self._prev_row.size:
            valid = self._prev_row >= 0
            mapped = np.where(valid, new_index[np.maximum(self._prev_row, 0)], -1)
            self._prev_row = np.where(valid & keep[np.maximum(self._prev_row, 0)], mapped, -1)
        for name in ("_id", "_parent", "_last", "_seen", "_pos", "_vel", "_area", "_diam"):
            setattr(self, name, getattr(self, name)[keep])

    def _intersections(self, labels: np.ndarray, det_label: np.ndarray) -> np.ndarray | None:
        """Pixels shared by each state row's previous mask (rows seen in the previous frame) and each detection;
        None when there is no previous frame of this size."""
        n_tr, n_det = self._id.size, det_label.size
        prev = self._prev_labels
        if prev is None or prev.shape != labels.shape or not self._prev_row.size or not n_tr or not n_det:
            return None
        pf, cf = prev.ravel(), labels.ravel()
        both = np.flatnonzero((pf != 0) & (cf != 0))
        col_of = np.full(int(det_label.max(initial=0)) + 1, -1, np.int64)
        col_of[det_label] = np.arange(n_det)
        rows = self._prev_row[np.minimum(pf[both], self._prev_row.size - 1)]
        rows[pf[both] >= self._prev_row.size] = -1
        cols = col_of[cf[both]]
        ok = rows >= 0
        return np.bincount(rows[ok] * n_det + cols[ok], minlength=n_tr * n_det).reshape(n_tr, n_det)

    def _iou(self, inter: np.ndarray | None, det_area: np.ndarray) -> np.ndarray:
        """IoU of each state row's previous mask (rows seen in the previous frame) with each detection, from
        their intersections (None: no previous frame)."""
        iou = np.zeros((self._id.size, det_area.size))
        if inter is None:
            return iou
        union = self._area[:, None] + det_area[None, :] - inter  # _area: the previous mask's, for rows seen then
        np.divide(inter, union, out=iou, where=union > 0)
        return iou

    def _split_merged(self, labels: np.ndarray, m: Measurements, inter: np.ndarray):
        """Split the nuclei that two or more established tracks merged into (a segmentation that joins touching
        nuclei): a detection holding most (>= 1/2) of the previous masks of >= 2 tracks seen for at least
        ``split_min_age`` frames, and about their size (>= 3/4 of their areas together), is cut between them,
        each pixel going to the nearest predicted centre (distance in radii of the track). Returns the new label
        image, the box holding the cut nuclei and their labels; None when nothing was merged."""
        det_label = m.columns["label"].astype(np.int64)
        eligible = (self.index - self._last == 1) & (self._seen >= self.split_min_age)
        owns = (inter >= 0.5 * np.maximum(self._area, 1)[:, None]) & eligible[:, None]
        merged = np.flatnonzero(owns.sum(axis=0) >= 2)
        out = None
        next_label = int(det_label.max(initial=0)) + 1
        changed, box = [], [labels.shape[0], labels.shape[1], 0, 0]
        for j in merged:
            rows = np.flatnonzero(owns[:, j])
            if m.columns["area"][j] < 0.75 * self._area[rows].sum():
                continue
            y0, x0, y1, x1 = (int(m.columns[k][j]) for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"))
            ys, xs = np.nonzero(labels[y0:y1, x0:x1] == det_label[j])
            centre = self._pos[rows] + self._vel[rows] - (y0, x0)
            radius = np.sqrt(self._area[rows] / np.pi)
            who = (np.hypot(ys[:, None] - centre[:, 0], xs[:, None] - centre[:, 1]) / radius).argmin(axis=1)
            if out is None:
                out = labels.astype(np.int32, copy=True)
            changed.append(det_label[j])
            for k in range(1, rows.size):
                out[y0 + ys[who == k], x0 + xs[who == k]] = next_label
                changed.append(next_label)
                next_label += 1
            box = [min(box[0], y0), min(box[1], x0), max(box[2], y1), max(box[3], x1)]
        if out is None:
            return None
        return out, (slice(box[0], box[2]), slice(box[1], box[3])), np.array(changed, np.int64)

    def _find_divisions(self, link, gap, pred, det_pos, det_area, dist, dmax) -> dict[int, tuple[int, int]]:
        """Divisions of tracks seen in the previous frame: ``{state row: (daughter, daughter)}`` (detection
        indices). A daughter is the track's own linked detection or a detection nobody linked."""
        free = np.flatnonzero(link < 0)
        if not free.size:
            return {}
        linked_to = np.full(self._id.size, -1, np.int64)
        has = link >= 0
        linked_to[link[has]] = np.flatnonzero(has)
        lo, hi = self.division_area_range
        radius = self._diam + dmax  # how far a daughter may lie from the parent's predicted centre
        close = (dist[:, free] <= radius[:, None]) & (gap == 1)[:, None]
        candidates = []
        for r in np.flatnonzero(close.any(axis=1)):
            near = free[close[r]]
            # a linked track divides into its own detection and a free one; an unlinked one into two free ones
            own = int(linked_to[r])
            pairs = ([(own, int(b)) for b in near] if own >= 0 else
                     [(int(a), int(b)) for i, a in enumerate(near) for b in near[i + 1:]])
            parent_area = self._area[r]
            for a, b in pairs:
                aa, ab = det_area[a], det_area[b]
                if max(aa, ab) > self.daughter_max_area * parent_area:
                    continue
                if not lo * parent_area <= aa + ab <= hi * parent_area:
                    continue
                # the daughters lie on either side of the parent: their midpoint is near its centre
                mid = (det_pos[a] + det_pos[b]) / 2
                off = float(np.hypot(*(mid - pred[r])))
                if off > radius[r] / 2:
                    continue
                score = abs(aa + ab - parent_area) / parent_area + off / radius[r]
                candidates.append((score, int(r), a, b))
        chosen: dict[int, tuple[int, int]] = {}
        used: set[int] = set()
        for _, r, a, b in sorted(candidates):
            if r in chosen or a in used or b in used:
                continue
            chosen[r] = (a, b)
            used.update((a, b))
        return chosen
