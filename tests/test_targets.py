import cv2
import numpy as np

from edgeseg.train.targets import boundary_map, contact_map, make_targets


def _touching_discs(n=3, r=10, gap=-2):
    """n discs in a row, each overlapping the next by -gap pixels (painted in order: later labels win)."""
    labels = np.zeros((40, 30 + n * (2 * r + gap)), np.int32)
    for i in range(n):
        cv2.circle(labels, (15 + i * (2 * r + gap), 20), r, i + 1, -1)
    return labels


def test_touching_discs_give_one_separate_seed_each():
    labels = _touching_discs(3)
    assert cv2.connectedComponents((labels > 0).astype(np.uint8))[0] - 1 == 1  # one blob as a binary mask
    seeds = (labels > 0) & ~boundary_map(labels)
    n, seed_labels = cv2.connectedComponents(seeds.astype(np.uint8), connectivity=8)
    assert n - 1 == 3
    for k in range(1, n):  # each seed lies inside exactly one nucleus
        assert len(np.unique(labels[seed_labels == k])) == 1


def test_boundary_marks_both_sides_of_a_contact_and_the_outline():
    labels = _touching_discs(2, gap=0)
    b = boundary_map(labels, width=2)
    row = labels[20]
    contact = int(np.flatnonzero(np.diff(row) != 0)[1])  # where label 1 meets label 2 on the centre row
    assert b[20, contact] and b[20, contact + 1]
    assert b[20, np.flatnonzero(row)[0]] and b[20, np.flatnonzero(row)[-1]]  # outer outline
    assert not b[20, 15] and not b[labels == 0].any()  # centres and background are not boundary


def test_make_targets_stacks_foreground_and_boundary():
    labels = _touching_discs(2)
    t = make_targets(labels, out_channels=2)
    assert t.shape == (2, *labels.shape) and t.dtype == np.float32
    assert np.array_equal(t[0] > 0, labels > 0)
    assert np.array_equal(t[1] > 0, boundary_map(labels))
    assert make_targets(labels).shape == (1, *labels.shape)


def test_contact_marks_where_nuclei_touch_and_the_gap_between_them_but_not_the_outer_rim():
    touching = _touching_discs(2, gap=0)
    c = contact_map(touching, width=2)
    row = touching[20]
    meet = int(np.flatnonzero(np.diff(row) != 0)[1])
    assert c[20, meet] and c[20, meet + 1]
    assert not c[20, np.flatnonzero(row)[0]] and not c[20, np.flatnonzero(row)[-1]]  # rim against background
    assert c.sum() < boundary_map(touching).sum() / 3
    gap = _touching_discs(2, gap=2)  # a 1-px background gap between the two on the centre row
    g = contact_map(gap, width=2)
    gap_px = np.flatnonzero(gap[20] == 0)
    inner = gap_px[(gap_px > 15) & (gap_px < 15 + 22)]
    assert len(inner) >= 1 and g[20, inner].all()  # the background gap itself is a contact
    alone = np.zeros((30, 30), np.int32)
    cv2.circle(alone, (15, 15), 8, 1, -1)
    assert not contact_map(alone).any()


def test_make_targets_adds_the_contact_weight_plane():
    labels = _touching_discs(2, gap=0)
    t = make_targets(labels, out_channels=2, contact_weight=4.0)
    assert t.shape == (3, *labels.shape)
    assert set(np.unique(t[2])) == {1.0, 5.0}
    assert np.array_equal(t[2] == 5.0, contact_map(labels))
