import math
from dataclasses import fields

import pytest

from edgeseg.device.options import BUNDLE_KEYS, RunOptions, check_run_options, run_defaults
from edgeseg.errors import EdgesegError


def test_the_run_command_takes_exactly_the_declared_options():
    from edgeseg.cli import main

    params = {p.name for p in main.commands["run"].params}
    assert params - {"bundle", "as_json"} == RunOptions.fields()
    defaults = {p.name: p.default for p in main.commands["run"].params}
    assert all(defaults[f.name] == f.default for f in fields(RunOptions))


def test_a_bundle_carries_run_options_with_their_runtime_defaults():
    assert set(BUNDLE_KEYS) <= RunOptions.fields()
    assert run_defaults() == {"model": None, "source": None, "backend": "auto", "threads": None, "threshold": None,
                              "tile": "auto", "channel": "auto", "diameter": None}


@pytest.mark.parametrize("change, message", [
    ({"threads": 0}, "--threads 0 is not a usable thread count"),
    ({"threads": 100000}, "--threads 100000 is not a usable thread count"),
    ({"threshold": 2.0}, "--threshold 2.0 is not a probability"),
    ({"threshold": math.nan}, "is not a probability"),
    ({"diameter": -4.0}, "--diameter -4.0 is not a size in pixels"),
    ({"max_frames": 0}, "--max-frames 0 processes nothing"),
    ({"fps": 0.0}, "--fps 0.0 is not a frame rate"),
])
def test_options_that_cannot_work_are_refused_before_anything_opens(change, message):
    with pytest.raises(EdgesegError, match=message):
        check_run_options(RunOptions(**change))
    check_run_options(RunOptions(threads=1, threshold=0.5, diameter=12.0, max_frames=1, fps=10.0))  # all fine
