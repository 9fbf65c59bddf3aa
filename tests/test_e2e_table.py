"""benchmarks/e2e_table.py: the core-count model behind its four-core table and this box's ceiling."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def e2e_table():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling common.py
    try:
        spec = importlib.util.spec_from_file_location("e2e_table", BENCH / "e2e_table.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def _row(pipeline: bool, **stages) -> dict:
    base = {"capture": 0.0, "preprocess": 0.0, "inference": 0.0, "postprocess": 0.0, "render": 0.0, "output": 0.0}
    return {"model": "fast_scnn-int8", "frame": "clip", "record": False, "pipeline": pipeline, "threads": 1,
            "stages_ms": {**base, **stages}}


ROWS = [_row(False, capture=0.2, preprocess=0.5, inference=1.0, postprocess=1.3), _row(True)]


def test_two_cores_bound_a_frame_by_the_sum_of_its_stages_over_the_cores(e2e_table):
    (m,) = e2e_table.core_model(ROWS, 2, model_best=1000.0)
    assert m["pipe_fps"] == pytest.approx(1000 / 1.5, abs=0.1)  # 3.0 ms of work on 2 cores, no stage over 1.5 ms
    assert m["bottleneck"] == "all 2 cores busy"
    assert m["vs_model"] == pytest.approx(0.667, abs=1e-3)
    assert m["network_alone"] == pytest.approx(1.0)
    # 90 % of 1000 FPS on 2 cores: 2.222 ms of work a frame, of which the network takes 1.0
    assert m["room_ms"]["clip_headless"] == pytest.approx(1.222, abs=1e-3)


def test_four_cores_bound_a_frame_by_its_slowest_stage(e2e_table):
    (m,) = e2e_table.core_model(ROWS, 4)
    assert m["bottleneck"] == "finish" and m["pipe_fps"] == pytest.approx(1000 / 1.3, abs=0.1)
    assert m["ratio"] == pytest.approx(3.0 / 1.3, abs=0.01) and "room_ms" not in m


def test_no_room_is_left_where_the_network_alone_is_under_the_target(e2e_table):
    (m,) = e2e_table.core_model(ROWS, 2, model_best=1200.0)  # the network on 1 thread: 1000 FPS, 83 % of 1200
    assert m["network_alone"] == pytest.approx(0.833, abs=1e-3)
    assert m["room_ms"]["clip_headless"] is None and m["room_ms"]["clip_rec"] is not None
    assert e2e_table._room(m, "clip_headless") == "none (the network alone: 83 %)"
