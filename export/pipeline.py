"""`edgeseg export`: a checkpoint -> a checked ONNX / OpenVINO file (FP32, FP16 or guarded INT8) with its card.

An :class:`ExportSpec` holds the options; :func:`export_model` runs one route, each starting from the FP32 ONNX
export and its parity check against PyTorch on real test images (:func:`_reference_onnx`):

    _onnx_fp32        the FP32 ONNX as checked (exact float16 storage for a float16 checkpoint: parity again)
    _openvino_float   OpenVINO IR, fp32/fp16 weights -> parity check (OpenVINO forced to f32) and, with
                      validation data, the Dice check
    _onnx_int8        quantize_onnx     -> accuracy guard (climbs the strategy ladder)
    _openvino_int8    quantize_openvino -> accuracy guard (climbs the strategy ladder)

Everything is built in a hidden temporary folder inside the output folder and moved into place (model file,
weights, card) only when every check has passed, so a failure leaves nothing behind.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.card import card_path, library_versions, write_card
from edgeseg.data import find_items, load_sample
from edgeseg.errors import DataError, EdgesegError, ModelError
from edgeseg.fsutil import sha256_file
from edgeseg.preprocess import preprocess
from edgeseg.progress import Progress, reporter
from edgeseg.zoo import ModelRef, variant_name

from .calibration import DEFAULT_CALIB_SIZE, DEFAULT_SEED, CalibrationSet, GuardSet, calibration_set, guard_set
from .guard import DEFAULT_MAX_DICE_DROP, FileScore, climb, file_dice
from .quantize import ONNX_STRATEGIES, OPENVINO_STRATEGIES, TARGETS

FORMATS = ("onnx", "openvino")
PRECISIONS = ("fp32", "fp16", "int8")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}

Saver = Callable[[dict, Path], None]  # writes the chosen candidate, with the card inside, to a path
Rung = Callable[[str, int], tuple[Path, Saver, dict]]  # (strategy, index) -> (candidate file, its saver, settings)


def _parity_dir() -> Path:
    import edgeseg

    return Path(edgeseg.__file__).resolve().parent / "samples" / "dsb2018_sample"


@dataclass(frozen=True)
class ExportSpec:
    """Every option of one export: ``model`` (zoo name, run folder or .pt) to ``fmt`` at ``precision``.

    ``guard_data`` defaults to ``calib_data`` (its validation split when canonical). ``test_data``, when given,
    scores the final file on that folder's test split (through the runtime) and records it in the card.
    ``strategies`` is the guard ladder to climb (None: every strategy of the format, in order).
    """

    model: str | Path
    fmt: str = "onnx"
    precision: str = "fp32"
    out_dir: str | Path = "."
    calib_data: str | Path | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    seed: int = DEFAULT_SEED
    max_dice_drop: float = DEFAULT_MAX_DICE_DROP
    target: str = "x86"
    guard_data: str | Path | None = None
    test_data: str | Path | None = None
    name: str | None = None
    strategies: tuple[str, ...] | None = None
    command: str | None = None

    def __post_init__(self) -> None:
        if self.strategies is not None:  # a list from a caller: kept as a tuple, so the spec stays immutable
            object.__setattr__(self, "strategies", tuple(self.strategies))

    def check(self) -> None:
        """One-line errors for combinations that cannot be exported, before any work is done (torch not imported)."""
        if self.fmt not in FORMATS:
            raise EdgesegError(f"unknown format {self.fmt!r}", f"use one of {', '.join(FORMATS)}")
        if self.precision not in PRECISIONS:
            raise EdgesegError(f"unknown precision {self.precision!r}", f"use one of {', '.join(PRECISIONS)}")
        if self.target not in TARGETS:
            raise EdgesegError(f"unknown target {self.target!r}", f"use one of {', '.join(TARGETS)}")
        if self.fmt == "onnx" and self.precision == "fp16":
            raise EdgesegError(
                "ONNX fp16 is not offered (ONNX Runtime's CPU provider runs fp16 graphs slower than fp32)",
                "use --precision int8, or --format openvino --precision fp16",
            )
        if self.precision == "int8" and not self.calib_data:
            raise DataError("INT8 export needs calibration images", "pass --calib-data DIR (e.g. the training data)")

    def variant(self, base: str) -> str:
        """The exported file's name without suffix: ``name``, or ``base`` (the checkpoint's card name) + variant."""
        return self.name or variant_name(base, self.fmt, self.precision, self.target)

    @property
    def guard_from(self) -> str | Path | None:
        return self.guard_data or self.calib_data


def check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".edgeseg-write-test-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EdgesegError(
            f"output folder {out_dir} is not writable ({exc.strerror or type(exc).__name__})",
            "choose another --out folder",
        ) from None


def parity_inputs(card: dict, folder: Path | None = None) -> np.ndarray:
    """The bundled real test images (8 DSB2018 test-split images), preprocessed as the runtime does."""
    size = int(card.get("input_size", [256])[0])
    norm = card["normalisation"]
    items = find_items(folder or _parity_dir())
    return np.concatenate([preprocess(load_sample(it).image, size, mean=norm["mean"], std=norm["std"]) for it in items])


def _executed_on() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        flags = []
    feats = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "asimddp") if f in flags]
    return f"{platform.machine()} ({', '.join(feats) or 'no AVX2'})"


def _base_card(ref, name: str, fmt: str, precision: str) -> dict:
    """The exported file's card being built (a dict): the checkpoint's, less what describes the checkpoint file."""
    src = ref.card
    dropped = ("file", "sha256", "metrics", "weights_file", "weights_sha256")
    card = {k: v for k, v in src.to_dict().items() if k not in dropped}
    card.update(
        name=name,
        format=fmt,
        precision=precision,
        source={
            "name": src.name,
            "file": ref.path.name,
            "sha256": src.sha256 or sha256_file(ref.path),
            "format": "torch",
            "test_dice_256": src.test_dice,
        },
        metrics={},
        versions=library_versions(),  # the export's libraries (onnx, onnxruntime, openvino, nncf, torch)
        created_with=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )
    return card


def export_model(spec: ExportSpec, progress: Progress | None = None) -> dict:
    """Export ``spec.model`` as ``spec`` says and return a report (path, card, checks, size).

    Everything is built in a hidden temporary folder inside ``spec.out_dir`` and moved into place only when every
    check has passed.
    """
    say = reporter(progress)
    spec.check()
    out_dir = Path(spec.out_dir)
    created = not out_dir.exists()
    check_writable(out_dir)
    try:
        return _export(spec, out_dir, say)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # leave no empty folder behind either
        raise


@dataclass
class _Build:
    """One export in progress, what every route works with: the spec, the source network and its card, the card
    being filled, the work folder, then the data sets (:func:`_load_data`) and the checked FP32 ONNX, the parity
    inputs and the reference Dice (:func:`_reference_onnx`)."""

    spec: ExportSpec
    ref: ModelRef
    net: Any  # the PyTorch network (torch is imported only once the options are checked)
    card: dict
    work: Path
    final: Path  # the shipped file, inside ``work`` until it is moved into place
    say: Progress
    calib: CalibrationSet | None = None
    guard: GuardSet | None = None
    fp32: Path | None = None
    fp32_card: dict | None = None
    x: np.ndarray | None = None
    reference: FileScore | None = None

    def parity(self, path: Path, what: str) -> dict:
        """The PyTorch parity gate on the bundled test images: max |probability diff| <= PARITY_TOLERANCE."""
        from .onnx import PARITY_TOLERANCE, logit_parity

        parity = logit_parity(self.net, path, self.x)
        self.say(f"{what} parity vs PyTorch on {parity['images']} test images: "
                 f"max |dlogit| {parity['max_abs_logit_diff']:.2e}, max |dprob| {parity['max_abs_prob_diff']:.2e}")
        if parity["max_abs_prob_diff"] > PARITY_TOLERANCE:
            raise ModelError(
                f"the {what} graph differs from PyTorch by {parity['max_abs_prob_diff']:.2e} in probability "
                f"(> {PARITY_TOLERANCE})",
                "report this with the model card; try another torch/onnx version",
            )
        parity["gate"] = f"max_abs_prob_diff <= {PARITY_TOLERANCE} (probabilities = the graph's outputs)"
        return parity


def _export(spec: ExportSpec, out_dir: Path, say: Progress) -> dict:
    from edgeseg.train.predict import load_checkpoint
    from edgeseg.zoo import resolve_model

    ref = resolve_model(spec.model)
    if ref.format != "torch":
        raise ModelError(
            f"{ref.path.name} is already a {ref.format} file",
            "export from the PyTorch checkpoint (a zoo name, a run folder or a .pt file)",
        )
    net = load_checkpoint(ref.path, ref.card)
    name = spec.variant(ref.card.name)
    card = _base_card(ref, name, spec.fmt, spec.precision)
    card["export"] = {"command": spec.command, "opset": None,
                      "target": spec.target if spec.precision == "int8" else None}
    work = Path(tempfile.mkdtemp(prefix=".edgeseg-export-", dir=out_dir))
    try:
        final = work / (name + SUFFIX[spec.fmt])
        report = _build(_Build(spec, ref, net, card, work, final, say))
        moved = _move_into_place(final, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.update(path=str(out_dir / final.name), card=str(card_path(out_dir / final.name)))
    report["size_bytes"] = sum(p.stat().st_size for p in moved if not p.name.endswith(".card.json"))
    return report


def _move_into_place(final: Path, out_dir: Path) -> list[Path]:
    """Weights, model, card: the card (what resolves a model) arrives last."""
    files = [final.with_suffix(".bin")] if final.suffix == ".xml" else []
    moved = []
    for f in [*files, final, card_path(final)]:
        os.replace(f, out_dir / f.name)
        moved.append(out_dir / f.name)
    return moved


def _build(b: _Build) -> dict:
    """The data, the checked FP32 ONNX every route starts from, the route of (format, precision), the card."""
    _load_data(b)
    _reference_onnx(b)
    route = {
        ("onnx", "fp32"): _onnx_fp32,
        ("onnx", "int8"): _onnx_int8,
        ("openvino", "fp32"): _openvino_float,
        ("openvino", "fp16"): _openvino_float,
        ("openvino", "int8"): _openvino_int8,
    }[b.spec.fmt, b.spec.precision]
    return _finish(b, route(b))


def _load_data(b: _Build) -> None:
    """The data first: a bad folder fails in a second, before any conversion."""
    spec = b.spec
    if spec.precision == "int8":
        b.calib = calibration_set(spec.calib_data, spec.calib_size, seed=spec.seed,
                                  size=int(b.card["input_size"][0]), normalisation=b.card["normalisation"])
    if spec.guard_from and (spec.precision != "fp32" or spec.fmt == "openvino"):
        b.guard = guard_set(spec.guard_from)


def _reference_onnx(b: _Build) -> None:
    """PyTorch -> FP32 ONNX, its parity against PyTorch and, with validation data, its Dice (the guard's
    reference)."""
    from .onnx import OPSET, torch_to_onnx

    b.fp32_card = dict(b.card, format="onnx", precision="fp32", name=b.card["name"])
    b.fp32 = b.work / "fp32.onnx"
    b.say(f"exporting {b.ref.name} to ONNX (opset {OPSET})")
    torch_to_onnx(b.net, b.fp32_card, b.fp32, example=None if b.calib is None else b.calib.inputs)
    b.card["export"]["opset"] = OPSET
    b.x = parity_inputs(b.card)
    b.card["export"]["parity_onnx_fp32"] = b.parity(b.fp32, "ONNX")
    if b.guard is not None:
        b.reference = file_dice(b.fp32, b.guard)
        b.say(f"FP32 ONNX reference: validation Dice {b.reference.dice:.4f} on {len(b.guard)} images")


def _onnx_fp32(b: _Build) -> Saver:
    """The FP32 ONNX as checked; from a float16 checkpoint, the same graph from exact float16 storage."""
    from .onnx import fp16_exact, set_onnx_card, torch_to_onnx

    shipped = b.fp32
    if fp16_exact(b.net):  # a float16 checkpoint: ship the same FP32 graph from float16 storage (lossless)
        shipped = b.work / "fp32-fp16-storage.onnx"
        torch_to_onnx(b.net, b.fp32_card, shipped, fp16_storage=True)
        b.card["export"]["parity_onnx_fp32_fp16_storage"] = b.parity(shipped, "ONNX (fp16 storage)")
        b.card["export"]["weight_storage"] = (
            "float16, exact: the checkpoint's weights are float16 values; BatchNorm kept as nodes so that they "
            "stay exact, folded by the runtime at load; FP32 arithmetic")
        b.say(f"weights stored as exact float16: {b.fp32.stat().st_size / 1e6:.1f} MB -> "
              f"{shipped.stat().st_size / 1e6:.1f} MB")
    return _onnx_saver(shipped, set_onnx_card)


def _openvino_float(b: _Build) -> Saver:
    """OpenVINO IR with fp32 or fp16 weights: parity against ONNX Runtime and, with validation data, the Dice
    check (an fp16 IR that loses more than the budget fails)."""
    from .openvino import save_openvino
    from .quantize import to_openvino_model

    precision, max_drop = b.spec.precision, b.spec.max_dice_drop
    ov_model = to_openvino_model(b.fp32)
    cand = b.work / f"cand-{precision}.xml"
    save_openvino(ov_model, cand, b.card, fp16_weights=precision == "fp16")
    b.card["export"]["parity_openvino_f32"] = _openvino_parity(cand, b.fp32, b.x)
    if b.guard is not None:
        score = file_dice(cand, b.guard)
        drop = b.reference.dice - score.dice
        b.card["guard"] = {
            "metric": "dice_256 via Segmenter", "data": b.guard.info, "reference": "FP32 ONNX (onnxruntime)",
            "reference_dice": round(b.reference.dice, 6), "dice": round(score.dice, 6), "drop": round(drop, 6),
            "max_drop": max_drop, "strategy": f"{precision} weights", "attempts": [],
        }
        b.say(f"{precision} IR: validation Dice {score.dice:.4f} (drop {drop:+.4f})")
        if precision == "fp16" and drop > max_drop:
            raise EdgesegError(
                f"the fp16 IR loses {drop:.4f} validation Dice (> {max_drop})", "ship the fp32 IR instead"
            )
    return _openvino_saver(ov_model, precision == "fp16")


def _onnx_int8(b: _Build) -> Saver:
    """Static QDQ INT8 ONNX (onnxruntime.quantization), guarded: the first strategy within budget ships."""
    from .onnx import set_onnx_card
    from .quantize import quantize_onnx

    def build(strategy: str, i: int) -> tuple[Path, Saver, dict]:
        cand = b.work / f"cand{i}.onnx"
        settings = quantize_onnx(b.fp32, cand, b.calib, strategy=strategy, target=b.spec.target, work_dir=b.work)
        _onnx_saver(cand, set_onnx_card)(dict(b.card, quantization=settings), cand)
        return cand, _onnx_saver(cand, set_onnx_card), settings

    return _guarded_int8(b, ONNX_STRATEGIES, build)


def _openvino_int8(b: _Build) -> Saver:
    """INT8 OpenVINO IR (NNCF), guarded: the first strategy within budget ships."""
    from .openvino import save_openvino
    from .quantize import openvino_dice_metric, quantize_openvino

    def build(strategy: str, i: int) -> tuple[Path, Saver, dict]:
        validation = None
        if strategy == "accuracy-control":
            validation = (_validation_items(b.guard, b.card), openvino_dice_metric(float(b.card["threshold"])))
        model, settings = quantize_openvino(b.fp32, b.calib, strategy=strategy, target=b.spec.target,
                                            validation=validation, max_drop=b.spec.max_dice_drop)
        cand = b.work / f"cand{i}.xml"
        save_openvino(model, cand, dict(b.card, quantization=settings), fp16_weights=False)
        return cand, _openvino_saver(model, False), settings

    return _guarded_int8(b, OPENVINO_STRATEGIES, build)


def _guarded_int8(b: _Build, allowed: tuple[str, ...], build: Rung) -> Saver:
    """Climb the strategy ladder (``climb``: the first candidate whose validation Dice drop from the FP32 ONNX is
    within budget) and record calibration, guard and quantisation settings in the card."""
    card, calib, guard = b.card, b.calib, b.guard
    b.say(f"calibration: {len(calib)} images of {calib.info['source']} [{calib.info['split']}], "
          f"strata {calib.info['strata']}")
    card["calibration"] = calib.info
    names = list(b.spec.strategies or allowed)
    bad = [s for s in names if s not in allowed]
    if bad:
        raise EdgesegError(f"unknown {b.spec.fmt} strategy {bad[0]!r}", f"use one of {', '.join(allowed)}")
    savers: dict[str, tuple[Saver, dict]] = {}

    def rung(strategy: str, i: int) -> Path:
        cand, saver, settings = build(strategy, i)
        savers[strategy] = (saver, settings)
        return cand

    ladder = [(s, functools.partial(rung, s, i)) for i, s in enumerate(names)]
    _, greport = climb(ladder, guard, b.reference.dice, b.spec.max_dice_drop,
                       what=f"INT8 {card['source']['name']}", progress=b.say)
    card["guard"] = greport.to_dict(guard, "FP32 ONNX (onnxruntime)")
    saver, card["quantization"] = savers[greport.strategy]
    if guard is not None:
        card["metrics"]["val"] = {"dice_256": card["guard"]["dice"],
                                  **{k: guard.info.get(k) for k in ("split", "split_file", "split_hash")}}
    return saver


def _finish(b: _Build, saver: Saver) -> dict:
    """Write the chosen candidate, record what the runtime executes it as (and its test Dice), write the card."""
    from edgeseg.backends import open_backend

    card, final, spec = b.card, b.final, b.spec
    saver(card, final)
    be = open_backend(final, fallback=False)  # executed precision: open the candidate the way the runtime does
    card["executed_precision"] = be.executed_precision
    card["executed_on"] = _executed_on()
    be.close()
    if "guard" in card and spec.fmt == "openvino" and spec.precision != "int8":
        card["metrics"]["val"] = {"dice_256": card["guard"]["dice"]}
    if spec.test_data:
        card["metrics"]["test"] = evaluate_file(final, spec.test_data)
        b.say(f"test split: Dice {card['metrics']['test']['dice_256']:.4f}")
    saver(card, final)  # the final card inside the file
    write_card(final, card)
    return {
        "name": card["name"],
        "format": spec.fmt,
        "precision": spec.precision,
        "executed_precision": card["executed_precision"],
        "parity": card["export"]["parity_onnx_fp32"],
        "guard": card.get("guard"),
        "calibration": card.get("calibration"),
        "metrics": card["metrics"],
    }


def _onnx_saver(src: Path, set_card) -> Callable:
    import onnx

    def save(card: dict, dest: Path) -> None:
        model = onnx.load(str(src))
        set_card(model, card)
        tmp = dest.with_name(dest.stem + ".tmp.onnx")
        onnx.save(model, str(tmp))
        os.replace(tmp, dest)

    return save


def _openvino_saver(ov_model, fp16_weights: bool) -> Callable:
    from .openvino import save_openvino

    def save(card: dict, dest: Path) -> None:
        save_openvino(ov_model, dest, card, fp16_weights=fp16_weights)

    return save


def _openvino_parity(xml: Path, fp32_onnx: Path, x: np.ndarray) -> dict:
    """OpenVINO (forced to f32 inference) against ONNX Runtime on the same inputs: max |probability diff|."""
    from edgeseg.backends import open_backend

    ov_be = open_backend(xml, "openvino", inference_precision="fp32", fallback=False)  # OpenVINO itself
    ort_be = open_backend(fp32_onnx, "onnxruntime")
    try:
        d = float(np.max(np.abs(ov_be(x) - ort_be(x))))
    finally:
        ov_be.close()
        ort_be.close()
    return {"images": int(len(x)), "max_abs_prob_diff_vs_onnx": d, "inference_precision": "f32"}


def _validation_items(guard, card) -> list:
    from edgeseg.preprocess import resize_labels

    size = int(card["input_size"][0])
    norm = card["normalisation"]
    return [
        (preprocess(s.image, size, mean=norm["mean"], std=norm["std"]), resize_labels(s.labels, size) > 0)
        for s in guard.samples
    ]


def evaluate_file(path: str | Path, data: str | Path, split: str | None = None) -> dict:
    """Score an exported file on a folder (its test split when canonical) the way `edgeseg eval` does."""
    from edgeseg.evaluate import evaluate_folder
    from edgeseg.segmenter import Segmenter

    with Segmenter.load(path, verify=False) as seg:
        result = evaluate_folder(seg, data, split)
    info = {k: v for k, v in result["info"].items() if k != "data"}  # the split, as before: no folder path in cards
    return {**info, **result["summary"], "per_type": result["per_type"]}


def refresh_embedded_card(model_file: str | Path) -> Path:
    """Put the card beside an exported file back inside it, after the side card changed (the post-processing
    re-tuned: ``benchmarks/tune_postprocess.py --write``), so that the file copied alone still carries what its
    card says; the side card's sha256 then follows the file. Returns the card's path."""
    import json

    from edgeseg.card import read_card

    model_file = Path(model_file)
    read_card(model_file, verify=True)  # the file is the one the card describes; then the card as it is written
    card = json.loads(card_path(model_file).read_text())
    if model_file.suffix.lower() == ".xml":
        from .openvino import write_openvino_card

        write_openvino_card(model_file, card)
    elif model_file.suffix.lower() == ".onnx":
        from .onnx import write_onnx_card

        write_onnx_card(model_file, card)
    else:
        raise ModelError(f"{model_file.name} carries no card inside", "only .onnx and .xml files embed their card")
    return write_card(model_file, card)
