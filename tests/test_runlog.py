"""The run log: one JSON object a line, flushed as written, percentiles in constant memory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeseg.device.runlog import STAGES, LatencyHistogram, RunLog, RunStats, read_log


def test_histogram_percentiles_match_numpy_within_half_a_percent():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.lognormal(3, 0.5, 5000), rng.uniform(100, 400, 50)])
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    for q in (50, 90, 99):
        assert h.percentile(q) == pytest.approx(np.percentile(values, q, method="inverted_cdf"), rel=0.005)
    assert h.mean == pytest.approx(values.mean()) and h.max == values.max()
    size = h.bins.nbytes
    for v in values:
        h.add(v)
    assert h.bins.nbytes == size  # constant memory
    assert LatencyHistogram().percentile(50) is None


def test_lines_are_on_disk_as_soon_as_they_are_written(tmp_path):
    path = tmp_path / "run.jsonl"
    log = RunLog(path)
    log.write({"type": "start", "model": "m"})
    log.event("camera_lost", attempt=np.int64(1))
    with open(path) as other:  # another reader sees both lines before close
        lines = [json.loads(x) for x in other]
    assert [x["type"] for x in lines] == ["start", "event"] and lines[1]["attempt"] == 1
    log.close()
    log.close()  # idempotent


def test_a_torn_last_line_is_ignored_by_the_reader(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text('{"type":"start"}\n{"type":"frame","index":0}\n{"type":"fra')
    assert [x["type"] for x in read_log(path)] == ["start", "frame"]


def test_nan_is_refused_rather_than_written(tmp_path):
    log = RunLog(tmp_path / "r.jsonl")
    with pytest.raises(ValueError):
        log.write({"type": "frame", "latency_ms": float("nan")})
    log.close()


def test_summary_has_the_contract_fields():
    stats = RunStats({"model": "fast_scnn-int8", "backend": "onnxruntime", "precision": "int8",
                      "executed_precision": "int8", "threads": 2})
    t = 0.0
    for i in range(10):
        rec = {f"{s}_ms": 1.0 for s in STAGES}
        rec.update(inference_ms=5.0, latency_ms=10.0, count=i, dropped=i // 3)
        stats.add(rec, t, t + 0.01)
        t += 0.02
    s = stats.summary(stopped="end")
    assert s["type"] == "summary" and s["frames"] == 10 and s["dropped"] == 3
    assert s["fps"] == pytest.approx(9 / 0.19 * 10 / 9, rel=1e-3)  # 10 frames over 0.19 s
    assert s["latency_ms"]["p50"] == pytest.approx(10.0, rel=0.005)
    assert s["stages_ms"]["inference"] == 5.0 and s["model_fps"] == 200.0
    assert s["count"] == {"mean": 4.5, "min": 0, "max": 9}
    assert s["model"] == "fast_scnn-int8" and s["executed_precision"] == "int8" and s["stopped"] == "end"
    json.dumps(s, allow_nan=False)
    empty = RunStats().summary()
    assert empty["frames"] == 0 and empty["fps"] is None
