import json
import os

import pytest
from click.testing import CliRunner
from conftest import write_threshold_onnx

import edgeseg.device.choose as choose
from edgeseg.cli import main
from edgeseg.device.choose import choose_for_run, choose_variant, cpu_flavour, read_cache
from edgeseg.device.live import run_session
from edgeseg.device.options import RunOptions
from edgeseg.device.runlog import read_log
from edgeseg.errors import ModelError
from edgeseg.zoo import Zoo

VNNI_CPU = {"model": "test CPU", "arch": "x86_64", "flags_sha256": "0", "flavour": "x86"}
AVX2_CPU = {**VNNI_CPU, "flags_sha256": "1", "flavour": "x86-no-vnni"}


def _card(precision, dice, target=None, max_drop=0.005):
    card = {"source": {"name": "disc"}, "precision": precision, "metrics": {"test": {"dice_256": dice}}}
    if precision != "fp32":
        card.update(export={"target": target or "x86"}, guard={"max_drop": max_drop})
    return card


@pytest.fixture
def zoo(tmp_path):
    """The network "disc" as an FP32 file, an INT8 file for VNNI CPUs and one for AVX2 CPUs (drops 0.002, 0.003)."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    write_threshold_onnx(folder / "disc-fp32.onnx", card=_card("fp32", 0.800))
    write_threshold_onnx(folder / "disc-int8.onnx", card=_card("int8", 0.798))
    write_threshold_onnx(folder / "disc-int8-x86-no-vnni.onnx", card=_card("int8", 0.797, "x86-no-vnni"))
    return Zoo(folder)


class Timings:
    """An injected calibration bench: fixed latencies, and a count of the calls."""

    def __init__(self, **ms):
        self.ms = {k.replace("_", "-"): v for k, v in ms.items()}
        self.calls = []

    def __call__(self, cands, threads):
        self.calls.append(sorted(c.name for c in cands))
        return {c.name: self.ms.get(c.name, 5.0) for c in cands}


def drops(**by_name):
    """An injected accuracy check: the drop measured "on this CPU" for each file (0 unless given)."""
    def meter(ref, twin, backend, threads):
        d = by_name.get(ref.name.replace("-", "_"), 0.0)
        return {"model": ref.name, "fp32_model": twin.name, "dice": 0.8 - d, "fp32_dice": 0.8, "drop": d,
                "data": "test data", "n_images": 8}
    return meter


def pick(zoo, tmp_path, timer, meter=None, cpu=VNNI_CPU, **kw):
    return choose_variant("disc", 2, zoo=zoo, timer=timer, drop_meter=meter or drops(), cpu=cpu,
                          cache_file=tmp_path / "choices.json", **kw)


def test_the_faster_file_is_chosen_from_the_timings(zoo, tmp_path):
    choice = pick(zoo, tmp_path, Timings(disc_fp32=2.0, disc_int8=1.0))
    assert (choice["model"], choice["precision"], choice["chosen_from"]) == ("disc-int8", "int8", "calibrated")
    assert choice["p50_ms"] == 1.0 and choice["threads"] == 2 and choice["backend"] == "onnxruntime"
    slower = pick(zoo, tmp_path, Timings(disc_fp32=1.0, disc_int8=2.0), recalibrate=True)
    assert slower["model"] == "disc-fp32"  # FP32 where INT8 is slower


def test_int8_must_beat_fp32_by_a_margin_to_be_chosen(zoo, tmp_path):
    choice = pick(zoo, tmp_path, Timings(disc_fp32=1.0, disc_int8=0.99))
    assert choice["model"] == "disc-fp32" and "FP32 keeps the accuracy" in choice["why"]


def test_only_the_int8_flavour_made_for_this_cpu_is_a_candidate(zoo, tmp_path):
    timer = Timings(disc_fp32=2.0, disc_int8=1.0, disc_int8_x86_no_vnni=0.5)
    choice = pick(zoo, tmp_path, timer)
    assert choice["model"] == "disc-int8" and timer.calls == [["disc-fp32", "disc-int8"]]
    other = next(c for c in choice["candidates"] if c["name"] == "disc-int8-x86-no-vnni")
    assert "made for x86 without VNNI" in other["rejected"] and other["p50_ms"] is None
    on_avx2 = pick(zoo, tmp_path, timer, cpu=AVX2_CPU)
    assert on_avx2["model"] == "disc-int8-x86-no-vnni"


def test_an_int8_file_whose_drop_on_this_cpu_is_over_its_tolerance_is_not_chosen(zoo, tmp_path):
    choice = pick(zoo, tmp_path, Timings(disc_fp32=2.0, disc_int8=1.0), drops(disc_int8=0.006))
    assert choice["model"] == "disc-fp32"
    int8 = next(c for c in choice["candidates"] if c["name"] == "disc-int8")
    assert int8["measured_drop"]["drop"] == 0.006 and int8["card_drop"] == 0.002 and int8["tolerance"] == 0.005
    assert "its Dice drop on this CPU, 0.0060" in int8["rejected"]


def test_an_int8_file_whose_card_drop_is_over_its_tolerance_is_not_measured(tmp_path):
    folder = tmp_path / "z"
    folder.mkdir()
    write_threshold_onnx(folder / "disc-fp32.onnx", card=_card("fp32", 0.800))
    write_threshold_onnx(folder / "disc-int8.onnx", card=_card("int8", 0.790, max_drop=0.005))
    timer, measured = Timings(disc_fp32=2.0, disc_int8=1.0), []
    choice = pick(Zoo(folder), tmp_path, timer, lambda *a: measured.append(a))
    assert choice["model"] == "disc-fp32" and measured == [] and timer.calls == [["disc-fp32"]]
    assert "test Dice drop 0.0100 is over its tolerance 0.005" in choice["candidates"][0]["rejected"]


def test_the_choice_is_cached_and_recalibrated_when_a_file_changes(zoo, tmp_path):
    timer = Timings(disc_fp32=2.0, disc_int8=1.0)
    assert pick(zoo, tmp_path, timer)["chosen_from"] == "calibrated"
    again = pick(zoo, tmp_path, timer)
    assert again["chosen_from"] == "cache" and again["model"] == "disc-int8" and len(timer.calls) == 1
    assert pick(zoo, tmp_path, timer, cpu=AVX2_CPU)["chosen_from"] == "calibrated"  # another CPU: its own entry
    assert choose_variant("disc", 1, zoo=zoo, timer=timer, drop_meter=drops(), cpu=VNNI_CPU,
                          cache_file=tmp_path / "choices.json")["chosen_from"] == "calibrated"  # other threads
    calls = len(timer.calls)
    f = zoo.get("disc-int8").path
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file was replaced
    assert pick(Zoo(zoo.folder), tmp_path, timer)["chosen_from"] == "calibrated" and len(timer.calls) == calls + 1
    assert pick(Zoo(zoo.folder), tmp_path, timer, recalibrate=True)["chosen_from"] == "calibrated"
    cached = read_cache(tmp_path / "choices.json")
    assert len(cached["choices"]) == 4 and cached["drops"][0]["model"] == "disc-int8"


def test_a_measured_drop_is_reused_from_the_cache(zoo, tmp_path):
    measured = []

    def meter(*args):
        measured.append(args[0].name)
        return drops()(*args)

    pick(zoo, tmp_path, Timings(disc_fp32=2.0, disc_int8=1.0), meter)
    pick(zoo, tmp_path, Timings(disc_fp32=2.0, disc_int8=1.0), meter, recalibrate=True)
    assert measured == ["disc-int8"]


def test_a_file_that_fails_here_is_not_chosen_and_none_left_is_one_line(zoo, tmp_path):
    def broken(cands, threads):
        return {c.name: "fails here: no kernel" for c in cands}

    with pytest.raises(ModelError, match="no file of disc can run on this machine"):
        pick(zoo, tmp_path, broken)


def test_cpu_flavour_comes_from_the_flags():
    assert cpu_flavour({"avx2", "avx512_vnni"}, "x86_64") == "x86"
    assert cpu_flavour({"avx2", "avx_vnni"}, "x86_64") == "x86"
    assert cpu_flavour({"avx2", "fma"}, "x86_64") == "x86-no-vnni"
    assert cpu_flavour({"asimd", "asimddp"}, "aarch64") == "arm"


def test_a_network_name_is_told_from_a_file_name():
    zoo = Zoo()
    assert zoo.network_name("fast_scnn") == "fast_scnn"  # the checkpoint shares the name: still the network
    assert zoo.network_name("fast_scnn-int8") is None
    assert zoo.network_name("no_such_net") is None
    twin = zoo.fp32_twin(zoo.get("fast_scnn-int8"))
    assert twin.name == "fast_scnn-fp32"


def test_a_zoo_file_name_bypasses_the_choice(monkeypatch):
    monkeypatch.setattr(choose, "choose_variant", lambda *a, **k: pytest.fail("no choice for a file name"))
    opts = RunOptions(model="fast_scnn-int8", threads=1)
    assert choose_for_run(opts) == (opts, {})
    path = RunOptions(model=str(Zoo().get("fast_scnn-fp32").path), threads=1)
    assert choose_for_run(path) == (path, {})


def _fake_calibration(monkeypatch, int8_ms=1.0):
    monkeypatch.setattr(choose, "time_files", lambda cands, threads: {
        c.name: int8_ms if c.precision == "int8" else 2.0 for c in cands})
    monkeypatch.setattr(choose, "sample_drop", drops())


def _counts(log):
    return [r["count"] for r in read_log(log) if r.get("type") == "frame"]


def test_a_network_name_runs_the_chosen_file_with_the_same_counts(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))
    _fake_calibration(monkeypatch)
    said = []
    common = {"display": False, "no_record": True, "max_frames": 6, "sequential": True, "threads": 1}
    by_network = run_session(RunOptions(model="fast_scnn", log=str(tmp_path / "a.jsonl"), **common),
                             progress=said.append)
    by_file = run_session(RunOptions(model="fast_scnn-int8", log=str(tmp_path / "b.jsonl"), **common), progress=None)
    assert by_network.summary["frames"] == by_file.summary["frames"] == 6
    assert _counts(tmp_path / "a.jsonl") == _counts(tmp_path / "b.jsonl") and sum(_counts(tmp_path / "b.jsonl")) > 0
    start = read_log(tmp_path / "a.jsonl")[0]
    assert start["model"] == "fast_scnn-int8" and start["model_choice"]["chosen_from"] == "calibrated"
    assert {c["name"]: c["p50_ms"] for c in start["model_choice"]["candidates"]}["fast_scnn-fp32"] == 2.0
    assert any("fast_scnn: fast_scnn-int8" in line for line in said)
    assert "model_choice" not in read_log(tmp_path / "b.jsonl")[0]
    again = run_session(RunOptions(model="fast_scnn", log=str(tmp_path / "c.jsonl"), **common), progress=None)
    assert again.summary["frames"] == 6 and read_log(tmp_path / "c.jsonl")[0]["model_choice"]["chosen_from"] == "cache"


def test_bench_choose_shows_the_choice_and_recalibrate_measures_again(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))
    _fake_calibration(monkeypatch)
    res = CliRunner().invoke(main, ["bench", "--models", "fast_scnn", "--choose", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "fast_scnn-int8 on onnxruntime [calibrated" in res.output and "fast_scnn-fp32" in res.output
    assert "[cache" in CliRunner().invoke(main, ["bench", "--models", "fast_scnn", "--choose", "--threads", "1"]).output
    _fake_calibration(monkeypatch, int8_ms=3.0)
    res = CliRunner().invoke(main, ["bench", "--models", "fast_scnn", "--recalibrate", "--threads", "1"])
    assert "fast_scnn-fp32 on onnxruntime [calibrated" in res.output
    cache = json.loads((tmp_path / "cache" / "choices.json").read_text())
    assert {c["model"] for c in cache["choices"].values()} == {"fast_scnn-fp32"}  # the same key, replaced


def test_bench_choose_takes_network_names_only(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["bench", "--models", "fast_scnn-int8", "--choose"])
    assert res.exit_code == 2 and "--choose takes network names" in res.output and "fast_scnn," in res.output
