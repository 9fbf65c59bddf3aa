"""What the benchmark scripts share: the data folders, Markdown tables, result files, finding training runs,
the machine a number came from, the validation-tuned post-processing and opening any model as a Segmenter.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they ``import common``.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from edgeseg.fsutil import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHARED_DATA = HERE.parent.parent / "shared" / "data"
DSB = SHARED_DATA / "dsb2018" / "stage1_train"  # the canonical split's folder (edge/splits/)
MONUSEG = SHARED_DATA / "monuseg_train"


# -- tables and result files -------------------------------------------------------------------------------------

def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A Markdown table (no trailing newline): the header, its ``|---|`` rule and one line a row, cells as
    ``str()`` (an empty one is written ``| |``). A row with another number of cells than the header is an error:
    Markdown would silently drop or pad cells."""
    def line(cells: Sequence) -> str:
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    rows = [list(r) for r in rows]
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"row of {len(r)} cells under a header of {len(header)}: {r}")
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])


def fmt(v, spec: str = ".3f", suffix: str = "") -> str:
    """A number for a table cell: ``-`` for None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:{spec}}{suffix}"


def read_json(path: Path, default=None):
    """The JSON at ``path`` (earlier results that a run keeps or updates), or ``default`` where there is none."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else default


def write_results(stem: Path, data, markdown: str) -> None:
    """Write STEM.json and STEM.md (each atomically) and print the Markdown."""
    stem = Path(stem)
    atomic_write_json(stem.with_suffix(".json"), data)
    atomic_write_text(stem.with_suffix(".md"), markdown)
    print(markdown.rstrip("\n"))


# -- the machine -------------------------------------------------------------------------------------------------

def cpu_name() -> str | None:
    """This machine's CPU model, as /proc/cpuinfo names it (the first ``model name``; ARM cores by part)."""
    from edgeseg.device.hardware import parse_cpuinfo

    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text)["model"] or platform.processor() or None


def machine_line(cpu: str | None, threads: int | str) -> str:
    """Where a time was measured, as every table writes it: ``Intel(R) Xeon(R) Processor, 2 threads``."""
    return f"{cpu or '?'}, {threads} threads"


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- runs, data, models --------------------------------------------------------------------------------------------

def find_run(name: str, roots: Sequence[Path]) -> str:
    """A MODEL argument for ``name``: the first ``ROOT/name`` holding a ``best.pt``, or the zoo model NAME for
    ``zoo:NAME``. Exits with a one-line error naming the roots where the run is nowhere."""
    if name.startswith("zoo:"):
        return name[4:]
    for root in map(Path, roots):
        if (root / name / "best.pt").exists():
            return str(root / name)
    raise SystemExit(f"error: run {name} not found under {', '.join(map(str, roots))}; pass --runs")


def split_samples(root: Path, part: str) -> list:
    """The loaded samples of one part (train / val / test) of ``root``'s canonical split."""
    from edgeseg.data import find_items, load_sample
    from edgeseg.split import select_items

    items, _ = select_items(find_items(root), part, where=str(root))
    return [load_sample(it) for it in items]


def split_info(result: dict) -> dict:
    """The split of an ``evaluate_folder`` result (name, split file, hash) without the folder, a path of this
    machine: what the result files record."""
    return {k: v for k, v in result["info"].items() if k != "data"}


def tuned_postprocess(predict, card: dict, dsb: Path = DSB) -> dict:
    """The zoo's post-processing choice: the method and parameters with the best DSB mAP on the validation split."""
    from edgeseg.evaluate import choose_postprocess, postprocess_candidates

    best, _ = choose_postprocess(
        predict, split_samples(dsb, "val"), postprocess_candidates(card["out_channels"], card["threshold"]),
        size=card["input_size"][0], normalisation=card["normalisation"])
    return best.to_dict()


def time_file(path: Path, backend: str, threads: int, x: np.ndarray, iterations: int, warmup: int) -> dict:
    """One timing of one file on one backend, with the CPU share other processes took meanwhile."""
    from edgeseg.backends import open_backend
    from edgeseg.device.bench import time_predictor
    from edgeseg.device.hardware import cpu_snapshot, other_cpu_share

    be = open_backend(path, backend, threads, fallback=False)  # the backend named, never another one's numbers
    try:
        before = cpu_snapshot()
        t = time_predictor(be, x, iterations, warmup)
        share = other_cpu_share(before, cpu_snapshot(), os.cpu_count() or 1)
        return {"fps": t["fps"], "p50_ms": t["latency_ms"]["p50"], "executed": be.executed_precision,
                "other_cpu_share": share}
    finally:
        be.close()
