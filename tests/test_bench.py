import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import sigint_default, write_threshold_onnx

from edgeseg.cli import main
from edgeseg.device.bench import (
    BenchConfig,
    best_per_network,
    csv_text,
    plan,
    recommend,
    report_text,
    run_bench,
    time_predictor,
)
from edgeseg.device.runlog import STAGES

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture
def zoo(tmp_path):
    """A tiny zoo: the network "disc" as an FP32 and an INT8-labelled ONNX file, each with its card."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    common = {"source": {"name": "disc"}, "params": 123, "gflops": 0.001}
    write_threshold_onnx(folder / "disc-fp32.onnx",
                         card={**common, "precision": "fp32", "metrics": {"test": {"dice_256": 0.80}}})
    write_threshold_onnx(folder / "disc-int8.onnx",
                         card={**common, "precision": "int8", "metrics": {"test": {"dice_256": 0.795}}})
    return folder


def fast(zoo, **kw):
    return BenchConfig(**{"models": ["disc"], "backends": ["onnxruntime", "openvino"], "precisions": ["fp32", "int8"],
                          "threads": [1], "iterations": 4, "warmup": 1, "zoo": str(zoo), **kw})


def test_time_predictor_counts_every_call_and_orders_the_percentiles(monkeypatch):
    import types

    import edgeseg.device.bench as bench_module

    clock = types.SimpleNamespace(now=50.0)  # a fake clock: the i-th timed call takes i ms, exactly
    monkeypatch.setattr(bench_module, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    calls = []

    def predict(x):
        calls.append(1)
        clock.now += max(len(calls) - 3, 1) / 1e3  # warm-up calls take 1 ms each (and are not timed)
        return x

    t = time_predictor(predict, 0, iterations=10, warmup=3)
    assert len(calls) == 13
    lat = t["latency_ms"]
    assert lat["min"] == pytest.approx(1.0) and lat["max"] == pytest.approx(10.0) and lat["mean"] == pytest.approx(5.5)
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert t["total_s"] == pytest.approx(0.055) and t["fps"] == pytest.approx(10 / 0.055, rel=1e-3)


def test_plan_picks_one_file_per_backend_and_precision_and_names_what_is_missing(zoo):
    targets = plan(fast(zoo, precisions=["fp32", "fp16", "int8"], backends=["onnxruntime", "openvino", "torch"]))
    got = {(t.backend, t.precision): (t.path.name if t.path else None, t.error) for t in targets}
    assert got[("onnxruntime", "fp32")] == ("disc-fp32.onnx", None)
    assert got[("onnxruntime", "int8")] == ("disc-int8.onnx", None)
    assert got[("openvino", "int8")] == ("disc-int8.onnx", None)  # no IR: OpenVINO reads the ONNX file
    assert "fp16" in got[("onnxruntime", "fp16")][1] and "OpenVINO IR" in got[("onnxruntime", "fp16")][1]
    assert "edgeseg export disc --format openvino --precision fp16" in got[("openvino", "fp16")][1]
    assert "no PyTorch checkpoint of disc" in got[("torch", "fp32")][1]
    assert ("torch", "int8") not in got  # the baseline is the fp32 checkpoint only


def test_bench_measures_every_combination_and_failures_become_rows(zoo):
    result = run_bench(fast(zoo, precisions=["fp32", "fp16", "int8"]))
    rows = result["rows"]
    assert len(rows) == 6 and not result["interrupted"]
    ok = [r for r in rows if not r.get("error")]
    failed = [r for r in rows if r.get("error")]
    assert {(r["backend"], r["precision"]) for r in ok} == {
        ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")}
    assert {(r["backend"], r["precision"]) for r in failed} == {("onnxruntime", "fp16"), ("openvino", "fp16")}
    for r in ok:
        lat = r["latency_ms"]
        assert r["fps"] > 0 and r["threads"] == 1 and r["iterations"] == 4
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert r["params"] == 123 and r["size_bytes"] == os.path.getsize(r["file"])
        assert r["executed_precision"] in ("fp32", "int8", "bf16", "fp16") or "int8" in r["executed_precision"]
    assert all(r["fps"] is None and r["latency_ms"] is None for r in failed)
    assert result["hardware"]["thermal"]["after"] is not None
    assert 0.0 <= result["hardware"]["other_cpu_share"] <= 1.0


def test_an_openvino_row_that_openvino_cannot_run_is_an_error_not_onnxruntimes_numbers(zoo, monkeypatch):
    """Where OpenVINO fails on this CPU, `edgeseg run` falls back to ONNX Runtime; a bench must not: its OpenVINO
    rows say why they failed, and the ONNX Runtime rows are measured as usual."""
    from edgeseg.backends.openvino_backend import OpenVinoBackend

    real = OpenVinoBackend._run
    monkeypatch.setattr(OpenVinoBackend, "_run", lambda self, x: real(self, x)[:0])  # an empty batch, as on a Pi 4
    rows = run_bench(fast(zoo))["rows"]
    ov = [r for r in rows if r["backend"] == "openvino"]
    assert len(ov) == 2 and all("OpenVINO returns" in r["error"] and r["fps"] is None for r in ov)
    assert all(r["fps"] > 0 and not r.get("error") for r in rows if r["backend"] == "onnxruntime")


def test_an_unknown_model_fails_with_one_line_listing_the_valid_names(zoo):
    res = CliRunner().invoke(main, ["bench", "--zoo", str(zoo), "--models", "disc,TYPO", "--iterations", "1"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'TYPO'")
    assert "a network (disc), a zoo variant (disc-fp32, disc-int8)" in lines[0]
    shipped = CliRunner().invoke(main, ["bench", "--models", "TYPO"])
    assert shipped.exit_code == 2 and len(shipped.output.strip().splitlines()) == 1
    assert "fast_scnn, fast_scnn_he, half_unet" in shipped.output and "fast_scnn-int8," in shipped.output


def test_with_accuracy_every_int8_flavour_is_planned(zoo):
    card = {"source": {"name": "disc"}, "precision": "int8", "export": {"target": "arm"}}
    write_threshold_onnx(zoo / "disc-int8-arm.onnx", card=card)
    one = plan(fast(zoo, backends=["onnxruntime"], precisions=["int8"]))
    assert [t.model for t in one] == ["disc-int8"]  # the file for this CPU's kernels
    every = plan(fast(zoo, backends=["onnxruntime"], precisions=["int8"], accuracy=True))
    assert [t.model for t in every] == ["disc-int8", "disc-int8-arm"]


def test_accuracy_shows_the_int8_drop_measured_here_beside_the_cards_and_keeps_it(zoo, tmp_path, monkeypatch,
                                                                                     sample_dir):
    from edgeseg.device.choose import read_cache, write_cache

    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))
    write_cache({"schema": 1, "choices": {"k1": {"network": "disc"}, "k2": {"network": "other"}}, "drops": []})
    result = run_bench(fast(zoo, backends=["onnxruntime"], accuracy=True))
    [d] = result["int8_accuracy"]
    assert (d["model"], d["fp32_model"], d["backend"]) == ("disc-int8", "disc-fp32", "onnxruntime")
    assert d["drop"] == 0.0 and d["dice"] == d["fp32_dice"] > 0  # the same graph: no drop on any CPU
    assert d["card_drop"] == pytest.approx(0.005) and d["tolerance"] == 0.01 and d["within"] is True
    assert d["n_images"] == 8 and "shipped sample" in d["data"]
    text = report_text(result)
    assert "INT8 accuracy on this CPU" in text and "disc-int8" in text.split("INT8 accuracy")[1]
    kept = read_cache()["drops"]
    assert [(k["model"], k["drop"], k["n_images"]) for k in kept] == [("disc-int8", 0.0, 8)]
    assert list(read_cache()["choices"]) == ["k2"]  # disc's cached choice is made again with the new drop
    on_folder = run_bench(fast(zoo, backends=["onnxruntime"], accuracy=True, data=str(sample_dir)))
    assert on_folder["int8_accuracy"][0]["data"].startswith("dsb2018_sample")
    assert len(read_cache()["drops"]) == 2  # one a data set


def test_ctrl_c_returns_the_rows_measured_so_far(zoo):
    seen = []

    def stop_after_first(row):
        seen.append(row)
        raise KeyboardInterrupt

    result = run_bench(fast(zoo), on_row=stop_after_first)
    assert result["interrupted"] is True
    assert len(result["rows"]) == 1 and result["rows"][0]["fps"] > 0


def test_recommendation_is_the_fastest_file_within_a_hundredth_of_the_best_dice():
    def row(model, backend, fps, dice, network="n", threads=2):
        return {"model": model, "network": network, "file": f"{model}.onnx", "backend": backend, "precision": "fp32",
                "executed_precision": "fp32", "threads": threads, "fps": fps, "dice": dice, "dice_from": "card"}

    rows = [row("n", "torch", 10, 0.80), row("n-fp32", "onnxruntime", 100, 0.80),
            row("n-int8", "onnxruntime", 200, 0.785), row("n-fp32-ov", "openvino", 150, 0.795),
            {**row("n-fp16", "openvino", None, None), "error": "no file"}]
    rec = recommend(rows)
    assert rec["model"] == "n-fp32-ov" and rec["speedup_vs_torch_fp32"] == 15.0
    assert rec["text"].startswith("recommended: n-fp32-ov on openvino") and "15.0x PyTorch eager FP32" in rec["text"]
    best = best_per_network(rows)["n"]
    assert best["best"]["model"] == "n-fp32-ov" and best["ratio"] == 15.0 and best["torch"]["fps"] == 10
    assert recommend([{**rows[-1]}]) is None


def test_cli_writes_json_csv_and_prints_the_table_and_a_recommendation(zoo, tmp_path):
    out, out_csv = tmp_path / "b.json", tmp_path / "b.csv"
    res = CliRunner().invoke(main, ["bench", "--zoo", str(zoo), "--models", "disc", "--backends", "onnxruntime",
                                    "--iterations", "3", "--warmup", "1", "--threads", "1", "--accuracy",
                                    "--json", str(out), "--csv", str(out_csv)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert {"hardware", "rows", "recommendation", "config", "interrupted"} <= set(data)
    assert data["hardware"]["cpu"]["logical_cores"] >= 1 and "python" in data["hardware"]
    assert len(data["rows"]) == 2
    for r in data["rows"]:
        assert {"model", "backend", "precision", "threads", "fps", "latency_ms"} <= set(r)
        assert {"mean", "p50", "p90", "p99"} <= set(r["latency_ms"])
        assert r["accuracy"]["n_images"] == 8 and 0.0 <= r["dice"] <= 1.0
        assert r["dice_from"] == "measured: 8-image shipped sample" and r["dice_test"] in (0.80, 0.795)
    with open(out_csv) as f:
        table = list(csv.DictReader(f))
    assert [t["model"] for t in table] == [r["model"] for r in data["rows"]]
    assert float(table[0]["fps"]) == data["rows"][0]["fps"]
    assert "recommended: disc-" in res.output and "disc-int8" in res.output and "CPU:" in res.output


def test_csv_has_one_line_per_row_with_the_error_column():
    text = csv_text([{"model": "a", "backend": "openvino", "precision": "fp16", "fps": None, "error": "no file"}])
    lines = text.strip().splitlines()
    assert len(lines) == 2 and lines[1].endswith("no file") and lines[0].split(",")[0] == "model"


def test_e2e_runs_the_run_pipeline_and_reports_its_stages(zoo):
    result = run_bench(fast(zoo, backends=["onnxruntime"], precisions=["fp32"], iterations=3, e2e=True,
                            e2e_source="synthetic:320x240:10"))
    e2e = result["rows"][0]["e2e"]
    assert e2e["frames"] == 3 and e2e["fps"] > 0
    assert {"capture", "preprocess", "inference", "postprocess", "render"} <= set(e2e["stages_ms"])
    # the profile: the given source and 640x480, headless and recording, sequential and pipelined
    runs = e2e["runs"]
    assert [(tuple(r["size"]), r["record"], r["pipeline"]) for r in runs] == [
        (size, rec, pipe) for size in ((320, 240), (640, 480)) for rec in (False, True) for pipe in (False, True)]
    row = result["rows"][0]
    for r in runs:
        assert r["frames"] == 3 and r["fps"] > 0 and r["megapixels"] == pytest.approx(r["size"][0] * r["size"][1] / 1e6)
        assert set(r["stages_ms_per_mp"]) == set(STAGES)
        assert r["stages_ms_per_mp"]["inference"] == pytest.approx(r["stages_ms"]["inference"] / r["megapixels"],
                                                                   rel=1e-3, abs=1e-3)
        assert r["inferences_per_s"] == pytest.approx(r["fps"] * r["tiles_mean"], rel=1e-3)
        assert r["gflops_per_s"] == pytest.approx(row["gflops"] * r["inferences_per_s"], rel=1e-3, abs=1e-4)
        assert 0.0 <= r["outside_share"] <= 1.0 and r["vs_model"] > 0 and r["model_fps"] == row["fps"]
        assert (r["recording_dropped"] == 0) if r["record"] else r["recording_dropped"] is None
    assert e2e["pipeline"] is True and e2e["fps"] == runs[1]["fps"]  # the headline: the default loop, headless
    text = report_text(result)
    assert "end to end" in text and "640x480" in text and "ms/MP" in text


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed")
def test_plot_file_is_written(zoo, tmp_path):
    png = tmp_path / "p.png"
    res = CliRunner().invoke(main, ["bench", "--zoo", str(zoo), "--models", "disc", "--backends", "onnxruntime",
                                    "--iterations", "2", "--warmup", "0", "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_row_is_the_paper_baseline_on_the_shipped_checkpoint():
    rows = run_bench(BenchConfig(models=["fast_scnn"], backends=["torch"], precisions=["fp32", "int8"], threads=[1],
                                 iterations=2, warmup=1))["rows"]
    assert len(rows) == 1
    r = rows[0]
    assert r["backend"] == "torch" and r["format"] == "torch" and r["fps"] > 0 and r["threads"] == 1
    assert r["params"] == 152881 and r["dice_test"] == pytest.approx(0.8452, abs=1e-4)


NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['matplotlib'] = None; "


def _cli(args, **kw):
    code = NO_TORCH + "from edgeseg.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, **kw)


def test_bench_module_imports_no_torch():
    code = "import sys, edgeseg.device.bench, edgeseg.device.hardware; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "False", res.stderr


def test_bench_runs_without_torch_and_plot_asks_for_matplotlib(zoo, tmp_path):
    out = tmp_path / "b.json"
    res = _cli(["bench", "--zoo", str(zoo), "--models", "disc", "--iterations", "2", "--warmup", "0",
                "--json", str(out)])
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert "torch" not in data["config"]["backends"]
    assert {r["backend"] for r in data["rows"]} == {"onnxruntime", "openvino"}
    assert all(r["fps"] > 0 for r in data["rows"])
    res = _cli(["bench", "--zoo", str(zoo), "--models", "disc", "--plot", str(tmp_path / "p.png")])
    assert res.returncode != 0 and not (tmp_path / "p.png").exists()
    assert res.stderr.strip().splitlines() == [
        "error: --plot needs matplotlib, which is not installed: pip install matplotlib (or pip install "
        "'edgeseg[train]')"]
    res = _cli(["bench", "--models", "fast_scnn", "--backends", "torch", "--iterations", "1", "--json", "-"])
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["rows"]
    assert len(rows) == 1 and "torch is not installed" in rows[0]["error"]


def test_sigint_prints_and_writes_the_rows_so_far(zoo, tmp_path):
    out = tmp_path / "b.json"
    # fp16 first: a row at once (no file), then an fp32 row too long to finish
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeseg.cli", "bench", "--zoo", str(zoo), "--models", "disc", "--backends",
         "onnxruntime", "--precisions", "fp16,fp32", "--threads", "1", "--iterations", "100000000",
         "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        deadline = time.time() + 180  # a busy machine may take long to import and start
        seen = ""
        while time.time() < deadline and "disc-fp32 onnxruntime 1" not in seen:  # the fp32 row has begun
            seen += proc.stderr.read(1) or ""
            if proc.poll() is not None:
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # a failed test must not leave a 100-million-iteration bench behind
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "interrupted: 1 row(s) measured" in stdout and "no fp16 ONNX file" in stdout
    data = json.loads(out.read_text())
    assert data["interrupted"] is True and len(data["rows"]) == 1
