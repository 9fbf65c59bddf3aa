"""benchmarks/common.py: the helpers every benchmark script shares."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_common", REPO / "benchmarks" / "common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_markdown_table():
    md = common.markdown_table(["a", "b", "c"], [["x", 1, ""], ["", "`y`", 0.5]])
    assert md == "| a | b | c |\n|---|---|---|\n| x | 1 | |\n| | `y` | 0.5 |"
    assert common.markdown_table(["a"], []) == "| a |\n|---|"


def test_markdown_table_refuses_a_row_of_another_width():
    with pytest.raises(ValueError, match="3 cells under a header of 2"):
        common.markdown_table(["a", "b"], [["x", "y", "z"]])


def test_fmt():
    assert common.fmt(0.12345) == "0.123"
    assert common.fmt(0.12345, ".4f") == "0.1235"
    assert common.fmt(12.0, ".1f", " s") == "12.0 s"
    assert common.fmt(None) == "-" and common.fmt(math.nan, ".2f") == "-"


def test_find_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (b / "run1").mkdir(parents=True)
    (b / "run1" / "best.pt").write_bytes(b"")
    (a / "run1").mkdir(parents=True)  # no best.pt: not a finished run
    assert common.find_run("run1", [a, b]) == str(b / "run1")
    assert common.find_run("zoo:fast_scnn", [a]) == "fast_scnn"
    with pytest.raises(SystemExit, match="run2 not found under .*; pass --runs"):
        common.find_run("run2", [a, b])


def test_result_files(tmp_path, capsys):
    assert common.read_json(tmp_path / "none.json", {"rows": []}) == {"rows": []}
    common.write_results(tmp_path / "t", {"rows": [1]}, "# T\n")
    assert common.read_json(tmp_path / "t.json") == {"rows": [1]}
    assert (tmp_path / "t.md").read_text() == "# T\n"
    assert capsys.readouterr().out == "# T\n"


def test_machine():
    assert common.machine_line("Some CPU", 2) == "Some CPU, 2 threads"
    assert common.machine_line(None, 4) == "?, 4 threads"
    assert common.cpu_name() is None or isinstance(common.cpu_name(), str)
    load = common.load_average()
    assert load is None or len(load) == 3


def test_split_info_leaves_out_the_folder():
    res = {"info": {"data": "/somewhere", "split": "test", "split_file": "f", "split_hash": "h"}}
    assert common.split_info(res) == {"split": "test", "split_file": "f", "split_hash": "h"}
