import csv
import shutil
import warnings
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tifffile

from edgeseg.device.measure_sink import MeasureSink, part_path
from edgeseg.errors import EdgesegError

SHAPE = (90, 120)


def scene(t):
    """Frame t of a small movie: a moving nucleus that is missed at t = 3, 4 and divides at t = 7, a still one."""
    discs = []
    y, x = 25 + t, 20 + 2 * t
    if t < 7 and t not in (3, 4):
        discs.append((y, x, 8))
    elif t >= 7:
        discs += [(y - 6 - 2 * (t - 7), x, 5.5), (y + 6 + 2 * (t - 7), x, 5.5)]
    discs.append((70, 95, 7))
    labels = np.zeros(SHAPE, np.int32)
    for i, (cy, cx, r) in enumerate(discs, start=1):
        cv2.circle(labels, (round(cx), round(cy)), round(r), i, -1)
    return labels


def feed(sink, n=10, order="rgb"):
    """Run ``sink`` over the movie with a 16-bit 3-channel frame (channel c = (c + 1) * 1000 inside nuclei)."""
    records, results = [], []
    for t in range(n):
        labels = scene(t)
        image = (labels > 0)[..., None] * np.array([1000, 2000, 3000], np.uint16)
        if order == "bgr":
            image = image[..., ::-1]
        frame = SimpleNamespace(image=image.astype(np.uint16), index=100 + t, timestamp=1e9 + t / 10, order=order)
        result = SimpleNamespace(labels=labels)
        records.append(sink.process(frame, result))
        results.append(result)
    return records, results


def test_the_csv_has_one_row_a_nucleus_a_frame_with_track_ids(tmp_path):
    sink = MeasureSink(csv=str(tmp_path / "nuclei.csv"), um_per_px=0.5)
    records, results = feed(sink, order="bgr")
    assert not (tmp_path / "nuclei.csv").exists()  # written under a temporary name until closed
    summary = sink.close()
    assert summary["csv"] == [str(tmp_path / "nuclei.csv")] and summary["divisions"] == 1
    assert records[7]["divisions"] == [[1, 3, 4]] and records[7]["tracks"] == 3
    assert results[5].track_ids == {1: 1, 2: 2}  # back after the gap with its own id
    rows = list(csv.DictReader((tmp_path / "nuclei.csv").open()))
    assert len(rows) == summary["nuclei_rows"] == sum(int(r.labels.max()) for r in results)
    assert list(rows[0])[:5] == ["frame", "timestamp", "track_id", "parent_id", "label"]
    first = rows[0]
    assert (first["frame"], first["track_id"], first["parent_id"]) == ("100", "1", "0")
    # intensities of the original 16-bit frame, channels in RGB order although the frame was BGR
    assert [float(first[f"mean_intensity_{c}"]) for c in range(3)] == [1000, 2000, 3000]
    assert float(first["integrated_intensity_0"]) == 1000 * int(first["area"])
    assert float(first["area_um2"]) == pytest.approx(int(first["area"]) / 4)
    daughters = [r for r in rows if r["frame"] == "107" and r["parent_id"] == "1"]
    assert sorted(r["track_id"] for r in daughters) == ["3", "4"]
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(tmp_path / "nuclei.csv")
    assert len(df) == len(rows) and df["track_id"].dtype.kind == "i" and df["solidity"].between(0, 1).all()


def test_the_ctc_output_reads_back_and_scores_perfectly_against_itself(tmp_path):
    sink = MeasureSink(ctc_out=str(tmp_path / "01_RES"))
    _, results = feed(sink)
    sink.close()
    res = tmp_path / "01_RES"
    masks = sorted(res.glob("mask*.tif"))
    assert [m.name for m in masks] == [f"mask{t:03d}.tif" for t in range(10)]
    stack = [tifffile.imread(m) for m in masks]
    assert all(s.dtype == np.uint16 and s.shape == SHAPE for s in stack)
    tracks = [list(map(int, line.split())) for line in (res / "res_track.txt").read_text().splitlines()]
    # L B E P: the moving nucleus before its gap (1), the still one (2), after the gap (3, parent 1),
    # and the two daughters of track 3 (parent 3)
    assert tracks == [[1, 0, 2, 0], [2, 0, 9, 0], [3, 5, 6, 1], [4, 7, 9, 3], [5, 7, 9, 3]]
    for lab, b, e, _ in tracks:
        assert all((stack[f] == lab).any() == (b <= f <= e) for f in range(10))
    for f, r in enumerate(results):  # every nucleus painted, nothing else
        assert np.array_equal(stack[f] > 0, r.labels > 0)

    ctc = pytest.importorskip("ctc_metrics")
    from ctc_metrics.metrics import valid
    from ctc_metrics.utils.filesystem import parse_masks, read_tracking_file
    from ctc_metrics.utils.representations import match

    found = [match(m, m)[1] for m in parse_masks(str(res))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the validator warns about every problem it finds
        assert valid(parse_masks(str(res)), read_tracking_file(str(res / "res_track.txt")), found) == 1
    gt = tmp_path / "01_GT" / "TRA"
    gt.mkdir(parents=True)
    for m in masks:
        shutil.copy(m, gt / m.name.replace("mask", "man_track"))
    shutil.copy(res / "res_track.txt", gt / "man_track.txt")
    scores = ctc.evaluate_sequence(str(res), str(tmp_path / "01_GT"), ["DET", "TRA"], threads=1)
    assert scores["DET"] == scores["TRA"] == 1.0


def test_the_ome_tiff_label_stack_carries_the_pixel_size(tmp_path):
    sink = MeasureSink(labels_out=str(tmp_path / "labels.ome.tif"), um_per_px=0.325)
    _, results = feed(sink)
    assert not (tmp_path / "labels.ome.tif").exists()
    assert sink.close()["labels_out"] == [str(tmp_path / "labels.ome.tif")]
    with tifffile.TiffFile(tmp_path / "labels.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].axes == "TYX" and tif.series[0].shape == (10, *SHAPE)
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        stack = tif.asarray()
    assert pixels["PhysicalSizeX"] == pixels["PhysicalSizeY"] == 0.325
    assert pixels["PhysicalSizeXUnit"] == "µm" and pixels["SizeT"] == 10
    assert stack.dtype == np.uint32
    for f, r in enumerate(results):  # painted with track ids
        lut = np.zeros(int(r.labels.max()) + 1, np.uint32)
        lut[list(r.track_ids)] = list(r.track_ids.values())
        assert np.array_equal(stack[f], lut[r.labels])
    assert set(np.unique(stack[9]).tolist()) == {0, 2, 3, 4}  # the still nucleus and the two daughters
    untracked = MeasureSink(track=False, labels_out=str(tmp_path / "plain.ome.tif"))
    _, plain = feed(untracked, n=2)
    untracked.close()
    assert plain[0].track_ids is None
    assert np.array_equal(tifffile.imread(tmp_path / "plain.ome.tif")[1], plain[1].labels)


def test_endless_runs_rotate_into_parts_and_stop_at_the_limit(tmp_path):
    sink = MeasureSink(csv=str(tmp_path / "n.csv"), ctc_out=str(tmp_path / "ctc"),
                       labels_out=str(tmp_path / "l.ome.tif"), part_rows=7, part_frames=4, max_parts=2)
    records, _ = feed(sink)
    summary = sink.close()
    assert summary["ctc_out"] == [str(tmp_path / "ctc"), str(tmp_path / "ctc-002")]
    assert summary["labels_out"] == [str(tmp_path / "l.ome.tif"), str(tmp_path / "l-002.ome.tif")]
    assert summary["csv"] == [str(tmp_path / "n.csv"), str(tmp_path / "n-002.csv")]
    assert set(summary["outputs_stopped"]) == {"csv", "ctc_out", "labels_out"}
    assert "outputs_stopped" in records[8] and "outputs_stopped" not in records[9]  # said once
    for p in summary["csv"]:
        lines = open(p).read().splitlines()
        assert lines[0].startswith("frame,") and len(lines) == 8
    assert sorted(p.name for p in (tmp_path / "ctc-002").iterdir()) == [
        "mask000.tif", "mask001.tif", "mask002.tif", "mask003.tif", "res_track.txt"]
    # a track crossing into the next part starts again there, without a parent
    assert (tmp_path / "ctc-002" / "res_track.txt").read_text().splitlines()[0] == "1 0 3 0"
    assert tifffile.imread(tmp_path / "l-002.ome.tif").shape == (4, *SHAPE)
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    assert part_path(tmp_path / "a.csv", 12).name == "a-012.csv" and part_path(tmp_path / "d", 2).name == "d-002"


def test_refused_configurations(tmp_path):
    with pytest.raises(EdgesegError, match="tracking is off"):
        MeasureSink(track=False, ctc_out=str(tmp_path / "ctc"))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "mask000.tif").write_bytes(b"")
    with pytest.raises(EdgesegError, match="already exists"):
        MeasureSink(ctc_out=str(tmp_path / "used"))
    with pytest.raises(EdgesegError, match="is not a pixel size"):
        MeasureSink(um_per_px=-1.0)


def test_nuclei_cut_by_the_tracker_are_measured_and_written_as_two(tmp_path):
    sink = MeasureSink(csv=str(tmp_path / "n.csv"))
    for t in range(5):
        labels = np.zeros(SHAPE, np.int32)
        cv2.circle(labels, (30 + t, 40), 8, 1, -1)
        cv2.circle(labels, (60 - t, 40), 8, 1 if t == 4 else 2, -1)  # merged into one label at t = 4
        if t == 4:
            cv2.rectangle(labels, (34, 37), (56, 43), 1, -1)
        result = SimpleNamespace(labels=labels, count=int(labels.max()))
        record = sink.process(SimpleNamespace(image=labels.astype(np.uint8) * 50, index=t, timestamp=0.0), result)
    assert record["split"] == 1 and result.count == 2 and result.labels.max() == 2
    assert result.track_ids == {1: 1, 2: 2}
    sink.close()
    last = [r for r in csv.DictReader((tmp_path / "n.csv").open()) if r["frame"] == "4"]
    assert [r["track_id"] for r in last] == ["1", "2"]
    assert [int(r["area"]) for r in last] == np.bincount(result.labels.ravel())[1:].tolist()  # the cut measured
