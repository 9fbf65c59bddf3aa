"""The live pipeline end to end against the model alone: where each frame's time goes, sequential vs pipelined.

    python benchmarks/e2e_table.py            # ~15 minutes on a busy 2-core box; writes results/e2e.md and .json
    python benchmarks/e2e_table.py --rerender # measures nothing: the models and targets again from e2e.json

For fast_scnn-int8, half_unet-int8 and the runtime's default model (``edgeseg run``'s, ONNX Runtime), on the
shipped 130x130 clip and on synthetic 640x480 frames, headless and recording (an mp4 in a temporary folder, every
frame encoded), this runs the real ``edgeseg run`` loop (:func:`edgeseg.device.bench.end_to_end`: ``run_live`` with
the overlay drawn, no display) in both modes with their default network threads on this machine: ``--sequential``
(one thread, the network on all cores) and the pipelined default (capture + preprocess, network, postprocess and
output in four threads joined by single-slot hand-overs, the recording encoded in a fifth; the network on half the
cores). Per run: FPS, the stage means in ms and in ms per megapixel, the network's achieved GFLOP/s (the card's
GFLOPs per 256x256 inference x inferences per second), the share of the wall time spent outside the network, and
FPS against the model alone (the paper's method: consecutive single 256x256 inferences, at the best thread count;
for a frame run as several tiles, per tile). For fast_scnn-int8 it also sweeps the network's threads in both modes
and, under ``taskset`` with one core, emulates a smaller box. Every configuration runs ``--repeats`` times,
interleaved round-robin so that a change in the machine's load touches all of them alike; the run with the median
FPS is reported. The machine, its load average and the issue's targets (met or not) are written with the table.

From the sequential run's stage costs two models follow (:func:`core_model`): what 4 cores would give (this box
has 2), and the ceiling on this box's own cores, which says whether a target is reachable here at all: on 2 cores
the pipelined network has one thread, and on the clip that thread alone is slower than 90 % of the model on both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time

from common import RESULTS, cpu_name, load_average, markdown_table, write_results

from edgeseg.device.bench import E2E_SIZE, default_e2e_source, end_to_end, time_predictor, usable_cores
from edgeseg.device.hardware import hardware_report
from edgeseg.device.live import inference_threads
from edgeseg.device.runlog import STAGES
from edgeseg.segmenter import Segmenter
from edgeseg.zoo import DEFAULT_RUN_MODEL

MODELS = tuple(dict.fromkeys(("fast_scnn-int8", "half_unet-int8", DEFAULT_RUN_MODEL)))  # and the runtime default
SWEEP_MODEL = "fast_scnn-int8"
TARGETS = {"clip_rec": 0.80, "clip_headless": 0.90, "vga_rec": 0.60, "speedup_4": 1.5}
# the end-to-end targets: (what, TARGETS key, frame, recording)
E2E_TARGETS = (("clip, recording", "clip_rec", "clip", True), ("clip, headless", "clip_headless", "clip", False),
               ("640x480, recording", "vga_rec", "vga", True))


def model_only(seg, iterations: int) -> float:
    """FPS of one round of the paper's method on a preprocessed real image."""
    from edgeseg.device.bench import _input_for

    return time_predictor(seg.predict, _input_for(seg, None), iterations, 10)["fps"]


def configs(models, cores: int) -> list[dict]:
    """Every run to measure: (model, threads, source, record, pipeline)."""
    seq_t, pipe_t = inference_threads(cores, pipeline=False), inference_threads(cores, pipeline=True)
    out = []
    for model in models:
        pairs = [(False, seq_t), (True, pipe_t)]
        if model == SWEEP_MODEL:
            pairs += [(False, t) for t in sorted({1, cores} - {seq_t})]
            pairs += [(True, t) for t in sorted({1, cores} - {pipe_t})]
        for source in ("clip", "vga"):
            for record in (False, True):
                for pipeline, threads in pairs:
                    out.append({"model": model, "threads": threads, "frame": source, "record": record,
                                "pipeline": pipeline, "default": threads == (pipe_t if pipeline else seq_t)})
    return out


def measure(models, frames: int, frames_vga: int, repeats: int, iterations: int) -> dict:
    cores = usable_cores()
    specs = {"clip": default_e2e_source(frames), "vga": f"synthetic:{E2E_SIZE[0]}x{E2E_SIZE[1]}:{frames_vga}"}
    n_frames = {"clip": frames, "vga": frames_vga}
    todo = configs(models, cores)
    segs: dict = {}
    for c in todo:
        key = (c["model"], c["threads"])
        if key not in segs:
            segs[key] = Segmenter.load(c["model"], threads=c["threads"], remember_scale=True)
            for spec in specs.values():  # warm up: the scale plan of each frame size is made once, here
                end_to_end(segs[key], spec, 3)
    # the model alone is measured in every round too, so that it sees the same load as the runs beside it
    solo_runs: dict = {key: [] for key in segs}
    runs: list[list[dict]] = [[] for _ in todo]
    for r in range(repeats):
        for key, seg in segs.items():
            solo_runs[key].append(model_only(seg, iterations))
        for i, c in enumerate(todo):
            seg = segs[(c["model"], c["threads"])]
            runs[i].append(end_to_end(seg, specs[c["frame"]], n_frames[c["frame"]], record=c["record"],
                                      pipeline=c["pipeline"], gflops=seg.card.gflops))
        print(f"round {r + 1}/{repeats} done", file=sys.stderr)
    solo = {key: statistics.median(v) for key, v in solo_runs.items()}
    best_solo = {m: max(v for (mm, _), v in solo.items() if mm == m) for m in models}
    for rs, c in zip(runs, todo, strict=True):  # FPS against the model alone (its best thread count)
        for e in rs:
            e["model_fps"] = best_solo[c["model"]]
            e["vs_model"] = round(e["fps"] * e["tiles_mean"] / e["model_fps"], 4) if e["fps"] else None
    rows = []
    for c, rs in zip(todo, runs, strict=True):
        med = sorted(rs, key=lambda e: e["fps"] or 0)[len(rs) // 2]
        rows.append({**med, **c, "fps_runs": [e["fps"] for e in rs],
                     "model_fps_same_threads": solo[(c["model"], c["threads"])]})
    for seg in segs.values():
        seg.close()
    return {"cores": cores, "model_only": {f"{m}@{t}": v for (m, t), v in solo.items()},
            "model_only_runs": {f"{m}@{t}": v for (m, t), v in solo_runs.items()},
            "model_only_best": best_solo, "rows": rows}


def one_core(frames: int, repeats: int) -> dict | None:
    """fast_scnn-int8 on the clip, sequential vs pipelined, both on 1 thread, the process pinned to one core."""
    if shutil.which("taskset") is None:
        return None
    code = (
        "import json, statistics, sys\n"
        "from edgeseg.device.bench import default_e2e_source, end_to_end\n"
        "from edgeseg.segmenter import Segmenter\n"
        f"seg = Segmenter.load({SWEEP_MODEL!r}, threads=1, remember_scale=True)\n"
        f"spec = default_e2e_source({frames}); end_to_end(seg, spec, 3)\n"
        "out = {}\n"
        f"for r in range({repeats}):\n"
        "    for rec in (False, True):\n"
        "        for pipe in (False, True):\n"
        f"            e = end_to_end(seg, spec, {frames}, record=rec, pipeline=pipe)\n"
        "            out.setdefault(f'{rec}-{pipe}', []).append(e['fps'])\n"
        "print(json.dumps({k: statistics.median(v) for k, v in out.items()}))\n"
    )
    proc = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    fps = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"fps": fps, "speedup_headless": round(fps["False-True"] / fps["False-False"], 3),
            "speedup_rec": round(fps["True-True"] / fps["True-False"], 3)}


def core_model(rows: list[dict], cores: int = 4, model_best: float | None = None) -> list[dict]:
    """What ``cores`` cores would give fast_scnn-int8, from this box's stage means (a model, not a measurement).

    The stage costs are those of the sequential run with the network on 1 thread (no thread pool waiting for a
    busy core; on a shared 2-core box that is the cleanest cost of each stage). Sequential, the stages add up:
    FPS = 1000 / their sum. Pipelined, FPS = 1000 / the slowest of its threads, capture (the source read +
    preprocess), network (inference; kept on 1 thread, so a second thread for it on a 4-core board only helps),
    finish (postprocess), output (render + the pipelined hand-over) and the encoder (the sequential run's output
    time, which is the encoding), and at most cores x 1000 / their sum, where the threads outnumber the cores and
    share them perfectly. Stage means on a shared box include the time the other jobs held the core, so read the
    ratio, not the model's FPS."""
    out = []
    for source in ("clip", "vga"):
        for record in (False, True):
            seq = next((r for r in rows if r["model"] == SWEEP_MODEL and r["frame"] == source
                        and r["record"] == record and not r["pipeline"] and r["threads"] == 1), None)
            pipe = next((r for r in rows if r["model"] == SWEEP_MODEL and r["frame"] == source
                         and r["record"] == record and r["pipeline"] and r["threads"] == 1), None)
            if seq is None or pipe is None:
                continue
            st = seq["stages_ms"]
            seq_ms = sum(st[s] for s in STAGES)
            stages = {"capture": st["capture"] + st["preprocess"], "network": st["inference"],
                      "finish": st["postprocess"], "output": st["render"] + pipe["stages_ms"]["output"],
                      "encoder": st["output"] if record else 0.0}
            busiest = max(stages, key=stages.get)
            pipe_ms = max(stages[busiest], sum(stages.values()) / cores)
            pipe_fps = 1000.0 / pipe_ms
            row = {"frame": source, "record": record, "cores": cores, "seq_fps": round(1000.0 / seq_ms, 1),
                   "pipe_fps": round(pipe_fps, 1), "ratio": round(pipe_fps * seq_ms / 1000.0, 2),
                   "bottleneck": busiest if pipe_ms == stages[busiest] else f"all {cores} cores busy",
                   "stages_ms": {k: round(v, 3) for k, v in stages.items()}}
            if model_best:
                row["vs_model"] = round(pipe_fps / model_best, 3)
                # the most the stages besides the network may cost for e2e to reach each target on these cores;
                # None where the network alone, on the one thread the pipeline gives it, is slower than the target
                row["network_alone"] = round(1000.0 / stages["network"] / model_best, 3)
                row["room_ms"] = {k: round(max(cores * 1000.0 / (TARGETS[k] * model_best) - stages["network"], 0.0), 3)
                                  if row["network_alone"] >= TARGETS[k] else None
                                  for _, k, _, _ in E2E_TARGETS}
            out.append(row)
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def _f(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(data: dict) -> str:
    rows, cores = data["rows"], data["cores"]
    size = {"clip": "130x130 clip", "vga": f"{E2E_SIZE[0]}x{E2E_SIZE[1]}"}
    lines = [
        "# End to end: the `edgeseg run` loop against the model alone",
        "",
        f"Machine: {data['machine']} ({cores} usable cores; load average before/after "
        f"{data['load_before']} / {data['load_after']}: other jobs shared the CPU, so absolute FPS are low and "
        "noisy; the ratios of one table were measured interleaved). Command: `python benchmarks/e2e_table.py` "
        f"(median of {data['repeats']} interleaved rounds; {data['frames']} frames a run on the clip, "
        f"{data['frames_vga']} at 640x480). `seq`: `edgeseg run --sequential` (one thread, recording encoded "
        "inline, the network on all cores); `pipe`: the default (capture + preprocess | network | postprocess | "
        "output threads, single-slot hand-overs, encoder thread; the network on half the cores). `%model`: "
        "end-to-end FPS x tiles per frame / model-only FPS (best thread count, measured in each round beside the "
        "runs; over 100 % is noise); `%model same thr`: against the model alone on the threads the run gives "
        "the network. `outside`: share of the wall time the network is not running. `queue ms`: time a frame "
        "waited between stages (a file's frames wait for the slowest stage instead of being dropped).",
        "",
        "## Per model (default threads of each mode)",
        "",
    ]
    head = ["model", "frame", "output", "loop", "thr", "FPS", "model only", "%model", "%model same thr",
            *[f"{s} ms" for s in STAGES],
            "queue ms", *[f"{s} ms/MP" for s in STAGES], "tiles", "GFLOP/s", "outside"]
    body = []
    for r in rows:
        if not r["default"]:
            continue
        st, per = r["stages_ms"], r["stages_ms_per_mp"]
        body.append([r["model"], size[r["frame"]], "mp4" if r["record"] else "none",
                     "pipe" if r["pipeline"] else "seq", r["threads"], _f(r["fps"]),
                     _f(data["model_only_best"][r["model"]]), _pct(r["vs_model"]), _pct(_vs_same(r)),
                     *[_f(st[s], ".2f") for s in STAGES], _f(r.get("queue_ms"), ".2f"),
                     *[_f(per[s], ".0f") for s in STAGES], _f(r["tiles_mean"], ".1f"), _f(r["gflops_per_s"]),
                     _pct(r["outside_share"])])
    lines += [markdown_table(head, body), ""]
    lines += ["## Threads: fast_scnn-int8, network threads x loop", ""]
    head = ["frame", "output", "loop", "threads", "FPS", "%model", "inference ms", "FPS runs"]
    body = [[size[r["frame"]], "mp4" if r["record"] else "none", "pipe" if r["pipeline"] else "seq", r["threads"],
             _f(r["fps"]), _pct(r["vs_model"]), _f(r["stages_ms"]["inference"], ".2f"),
             ", ".join(_f(x) for x in r["fps_runs"])]
            for r in rows if r["model"] == SWEEP_MODEL]
    lines += [markdown_table(head, body), ""]
    mo = data["model_only"]
    lines += ["Model only (FPS, paper's method): " + ", ".join(f"{k} {v:.1f}" for k, v in mo.items()), ""]
    oc = data.get("one_core")
    if oc and "fps" in oc:
        f = oc["fps"]
        one = [["none", _f(f["False-False"]), _f(f["False-True"]), _f(oc["speedup_headless"], ".2f")],
               ["mp4", _f(f["True-False"]), _f(f["True-True"]), _f(oc["speedup_rec"], ".2f")]]
        lines += ["## One core (taskset -c 0), fast_scnn-int8 on the clip, network on 1 thread", "",
                  markdown_table(["output", "seq FPS", "pipe FPS", "pipe / seq"], one), ""]
    lines += ["## Four cores: a model from the stage means above (not measured: this box has 2)", "",
              four_core_doc(),
              "",
              markdown_table(["frame", "output", "seq FPS", "pipe FPS", "pipe / seq", "bottleneck", "stage ms"],
                             [[size[m["frame"]], "mp4" if m["record"] else "none", _f(m["seq_fps"]),
                               _f(m["pipe_fps"]), _f(m["ratio"], ".2f"), m["bottleneck"],
                               ", ".join(f"{k} {v:.2f}" for k, v in m["stages_ms"].items())]
                              for m in data["four_cores"]]), ""]
    box = data.get("this_box") or []
    if box:
        goal = {(record, source): key for _, key, source, record in E2E_TARGETS}
        lines += [f"## The ceiling on this box: the same model with its {data['cores']} cores", "",
                  f"With {data['cores']} cores every thread of the pipeline shares them, so however well the stages "
                  "overlap, a frame costs at least the sum of its stages over the cores. Against the model alone at "
                  f"its best thread count ({_f(data['model_only_best'][SWEEP_MODEL])} FPS: the network on all "
                  "cores, nothing else running) that bounds the end-to-end share. `room ms`: what the stages "
                  "besides the network could cost at most, together, for the target of that row to be reachable "
                  "here (none where the network alone, on the one thread the pipeline gives it, is under the "
                  "target); `now ms`: what they cost.", "",
                  markdown_table(["frame", "output", "ceiling FPS", "ceiling %model", "bound", "target",
                                  "room ms", "now ms"],
                                 [[size[m["frame"]], "mp4" if m["record"] else "none", _f(m["pipe_fps"]),
                                   _pct(m.get("vs_model")), m["bottleneck"],
                                   _f_target(goal.get((m["record"], m["frame"]))),
                                   _room(m, goal.get((m["record"], m["frame"]))),
                                   _f(sum(v for k, v in m["stages_ms"].items() if k != "network"), ".2f")]
                                  for m in box]), ""]
    lines += ["## The issue's targets (fast_scnn-int8, pipelined default)", "",
              markdown_table(["target", "wanted", "measured", "met"],
                             [[t["what"], t["wanted"], t["measured"],
                               t["met"] if isinstance(t["met"], str) else ("yes" if t["met"] else "no")]
                              for t in data["targets"]]), ""]
    return "\n".join(lines) + "\n"


def _room(m: dict, key: str | None) -> str:
    if key is None:
        return "-"
    room = m["room_ms"][key]
    return _f(room, ".2f") if room is not None else f"none (the network alone: {_pct(m['network_alone'])})"


def _f_target(key: str | None) -> str:
    return f">= {TARGETS[key]:.0%}" if key else "-"


def _vs_same(r: dict) -> float | None:
    """End-to-end FPS x tiles over the model alone on the same network threads."""
    same = r.get("model_fps_same_threads")
    return r["fps"] * r["tiles_mean"] / same if r.get("fps") and r.get("tiles_mean") and same else None


def four_core_doc() -> str:
    doc = core_model.__doc__.split("\n\n", 1)[1]
    return " ".join(line.strip() for line in doc.splitlines())


def targets(data: dict) -> list[dict]:
    rows = data["rows"]

    def pick(source, record):
        return next((r for r in rows if r["model"] == SWEEP_MODEL and r["frame"] == source
                     and r["record"] == record and r["pipeline"] and r["default"]), None)

    out = []
    for what, key, source, record in E2E_TARGETS:
        r = pick(source, record)
        v = r["vs_model"] if r else None
        same = _vs_same(r) if r else None
        ceiling = next((m.get("vs_model") for m in data.get("this_box") or []
                        if m["frame"] == source and m["record"] == record), None)
        out.append({"what": f"e2e / model-only, {what}", "wanted": f">= {TARGETS[key]:.0%}",
                    "measured": f"{_pct(v)} (against the model alone on the run's {r['threads'] if r else '?'} "
                                f"network thread(s): {_pct(same)}; the ceiling on these {data['cores']} cores from "
                                f"the stage costs: {_pct(ceiling)})",
                    "met": v is not None and v >= TARGETS[key]})
    best4 = max((m["ratio"] for m in data["four_cores"]), default=None)
    clip4 = next((m["ratio"] for m in data["four_cores"] if m["frame"] == "clip" and m["record"]), None)
    oc = data.get("one_core") or {}
    sweep = [r for r in rows if r["model"] == SWEEP_MODEL]

    def ratios(pipe_default: bool) -> str:
        got = []
        for r in sweep:
            if r["pipeline"] and (r["default"] if pipe_default else r["threads"] == 1):
                seq = next(s for s in sweep if not s["pipeline"] and s["frame"] == r["frame"]
                           and s["record"] == r["record"] and (s["default"] if pipe_default else s["threads"] == 1))
                got.append(f"{r['frame']} {'mp4' if r['record'] else 'none'} {r['fps'] / seq['fps']:.2f}x")
        return ", ".join(got)

    out.append({"what": "throughput with 4 threads available / sequential loop", "wanted": ">= 1.5x",
                "measured": f"model for 4 cores: {_f(clip4, '.2f')}x on the clip with recording (best "
                            f"{_f(best4, '.2f')}x). Measured on these {data['cores']} shared cores, defaults "
                            f"(pipe, 1 thread / seq, 2 threads): {ratios(True)}; both on 1 thread (the overlap "
                            f"alone): {ratios(False)}"
                            + (f"; pinned to 1 core: {oc.get('speedup_headless')}x none, {oc.get('speedup_rec')}x mp4"
                               if oc.get("fps") else ""),
                "met": _met4(data["four_cores"])})
    return out


def _met4(model: list[dict]) -> str:
    """Whether the 4-core model reaches the wanted speed-up: everywhere, nowhere, or where."""
    ok = [m for m in model if m["ratio"] >= TARGETS["speedup_4"]]
    if not model or not ok:
        return "no"
    if len(ok) == len(model):
        return "yes (model)"
    return "model: only " + ", ".join(f"{m['frame']} {'mp4' if m['record'] else 'none'}" for m in ok)


def derive(data: dict) -> None:
    """The models and the targets, from the measured rows."""
    data["four_cores"] = core_model(data["rows"], 4)
    data["this_box"] = core_model(data["rows"], data["cores"], data["model_only_best"][SWEEP_MODEL])
    data["targets"] = targets(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--frames", type=int, default=100, help="frames a run on the clip (looped)")
    ap.add_argument("--frames-vga", type=int, default=40, help="frames a run at 640x480")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=100, help="model-only inferences a round")
    ap.add_argument("--no-one-core", action="store_true", help="skip the taskset one-core emulation")
    ap.add_argument("--rerender", action="store_true",
                    help="measure nothing: derive the models and targets again from results/e2e.json and rewrite "
                         "the table")
    args = ap.parse_args()
    if args.rerender:
        data = json.loads((RESULTS / "e2e.json").read_text())
        derive(data)
        write_results(RESULTS / "e2e", data, markdown(data))
        return
    models = [m for m in args.models.split(",") if m]
    load_before = load_average()
    t0 = time.time()
    data = measure(models, args.frames, args.frames_vga, args.repeats, args.iterations)
    data["one_core"] = None if args.no_one_core else one_core(args.frames, args.repeats)
    data.update(frames=args.frames, frames_vga=args.frames_vga, repeats=args.repeats,
                machine=f"{cpu_name() or '?'}", load_before=load_before, load_after=load_average(),
                minutes=round((time.time() - t0) / 60, 1), hardware=hardware_report())
    derive(data)
    write_results(RESULTS / "e2e", data, markdown(data))


if __name__ == "__main__":
    main()
