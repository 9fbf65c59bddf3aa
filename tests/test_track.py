import cv2
import numpy as np
import pytest

from edgeseg.track import Tracker


def frame(discs, shape=(120, 140)):
    """A label image: disc i (y, x, radius) gets label i + 1."""
    labels = np.zeros(shape, np.int32)
    for i, (y, x, r) in enumerate(discs, start=1):
        cv2.circle(labels, (round(x), round(y)), round(r), i, -1)
    return labels


def test_tracks_keep_their_ids_when_the_labels_are_renumbered_and_nuclei_come_and_go():
    tracker = Tracker()
    ids = {}
    for t in range(10):
        discs = {"a": (20 + 2 * t, 20 + t, 6), "b": (80, 100 - 2 * t, 6)}
        if t >= 5:
            discs["c"] = (100, 20 + t, 6)  # enters
        if t >= 8:
            del discs["a"]  # leaves
        names = sorted(discs, reverse=t % 2 == 1)  # label numbers swap every frame
        step = tracker.update(frame([discs[n] for n in names]))
        for name, label in zip(names, range(1, len(names) + 1), strict=True):
            ids.setdefault(name, set()).add(step.mapping()[label])
    assert all(len(v) == 1 for v in ids.values())  # one track id per nucleus
    assert sorted(min(v) for v in ids.values()) == [1, 2, 3]


def test_a_nucleus_missed_for_a_few_frames_keeps_its_track():
    def run(max_gap):
        tracker = Tracker(max_gap=max_gap)
        seen = []
        for t in range(9):
            discs = [(30, 20 + 3 * t, 6), (90, 100, 6)]
            if t in (3, 4):  # the first nucleus is missed twice
                discs = discs[1:]
            step = tracker.update(frame(discs))
            if t not in (3, 4):
                seen.append(step.mapping()[1])
            if t == 5:
                closed = step.gap_closed
        return seen, closed

    seen, closed = run(max_gap=2)
    assert set(seen) == {1} and closed == [1]  # found again where its velocity predicted it
    seen, closed = run(max_gap=1)
    assert seen[:3] == [1, 1, 1] and set(seen[3:]) == {3} and closed == []  # missed too long: a new track


def test_a_division_gives_one_parent_two_daughters():
    tracker = Tracker()
    steps = []
    for t in range(8):
        y, x = 40 + t, 50 + t
        discs = [(y, x, 8)] if t < 4 else [(y - 6 - 2 * (t - 4), x, 5.5), (y + 6 + 2 * (t - 4), x, 5.5)]
        discs.append((100, 120, 7))  # a bystander
        steps.append(tracker.update(frame(discs)))
    assert [s.divisions for s in steps] == [[]] * 4 + [[(1, 3, 4)]] + [[]] * 3
    at = steps[4]
    assert at.ended == [1] and at.started == [3, 4] and at.parents.tolist() == [1, 1, 0]
    assert steps[-1].mapping() == {1: 3, 2: 4, 3: 2} and steps[-1].parents.tolist() == [1, 1, 0]
    plain = Tracker(divisions=False)
    for t in range(6):
        y, x = 40 + t, 50 + t
        discs = [(y, x, 8)] if t < 4 else [(y - 6 - 2 * (t - 4), x, 5.5), (y + 6 + 2 * (t - 4), x, 5.5)]
        step = plain.update(frame(discs))
        assert step.divisions == []
    assert sorted(step.track_ids.tolist()) == [1, 2]  # one daughter continues the parent, one starts


def test_the_assignment_is_optimal_not_greedy():
    """Two nuclei both moved by 5 px: greedily, B would take A's detection (the nearest) and A would be lost."""
    tracker = Tracker(max_distance=8)
    tracker.update(frame([(30, 20, 2), (30, 26, 2)]))
    step = tracker.update(frame([(30, 25, 2), (30, 31, 2)]))
    assert step.mapping() == {1: 1, 2: 2} and step.started == []


def test_memory_holds_only_live_and_recently_missed_tracks():
    tracker = Tracker(max_gap=2, max_distance=10)
    for t in range(30):
        step = tracker.update(frame([(20 + (t % 3) * 40, 20 + (t % 5) * 25, 5)]))  # a new nucleus every frame
        assert tracker.n_tracks <= 3  # seen in this frame or in one of the max_gap = 2 before
    assert step.track_ids.tolist() == [30] and len(step.ended) == 1
    empty = tracker.update(np.zeros((120, 140), np.int32))
    assert empty.n_live == 0 and empty.mapping() == {}
    with pytest.raises(ValueError):
        Tracker(max_distance=0)


def test_nuclei_merged_by_the_segmentation_are_cut_back_into_their_tracks():
    """Two tracked nuclei touch and the segmentation returns them as one object: the tracker cuts it."""
    tracker = Tracker()
    for t in range(4):
        tracker.update(frame([(40, 30 + t, 8), (40, 60 - t, 8)]))
    merged = frame([(40, 34, 8), (40, 56, 8)])
    merged[merged > 0] = 1
    cv2.rectangle(merged, (34, 37), (56, 43), 1, -1)  # joined by a bridge: one label
    step = tracker.update(merged)
    assert step.split_labels is not None and step.split_labels.max() == 2
    assert step.mapping() == {1: 1, 2: 2} and step.divisions == []
    left = step.split_labels == step.labels[step.track_ids == 1][0]
    assert np.nonzero(left)[1].max() < 46  # cut near the middle
    young = Tracker()  # tracks seen for fewer than split_min_age frames are not trusted to be two nuclei
    young.update(frame([(40, 30, 8), (40, 60, 8)]))
    assert young.update(merged).split_labels is None
    off = Tracker(split_merges=False)
    for t in range(4):
        off.update(frame([(40, 30 + t, 8), (40, 60 - t, 8)]))
    assert off.update(merged).split_labels is None
