"""`edgeseg export`: a checkpoint -> a checked ONNX / OpenVINO file (FP32, FP16 or guarded INT8) with its card.

    torch_to_onnx        -> parity check against PyTorch on real test images (always: every format starts here)
    onnx_to_openvino     -> parity check (OpenVINO forced to f32) and, with validation data, the Dice check
    quantize_onnx        -> accuracy guard (climbs the strategy ladder)
    quantize_openvino    -> accuracy guard (climbs the strategy ladder)

Everything is built in a hidden temporary folder inside the output folder and moved into place (model file,
weights, card) only when every check has passed, so a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeseg.card import card_path, library_versions, write_card
from edgeseg.data import find_items, load_sample
from edgeseg.errors import DataError, EdgesegError, ModelError
from edgeseg.fsutil import sha256_file
from edgeseg.preprocess import preprocess

from .calibration import DEFAULT_CALIB_SIZE, DEFAULT_SEED, calibration_set, guard_set
from .guard import DEFAULT_MAX_DICE_DROP, climb, file_dice
from .quantize import ONNX_STRATEGIES, OPENVINO_STRATEGIES, TARGETS

FORMATS = ("onnx", "openvino")
PRECISIONS = ("fp32", "fp16", "int8")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}


def _parity_dir() -> Path:
    import edgeseg

    return Path(edgeseg.__file__).resolve().parent / "samples" / "dsb2018_sample"


def variant_name(base: str, fmt: str, precision: str, target: str = "x86") -> str:
    """``fast_scnn`` + onnx/int8 -> ``fast_scnn-int8``; OpenVINO files end in ``-ov``; non-x86 INT8 names its target."""
    name = f"{base}-{precision}"
    if precision == "int8" and target != "x86":
        name += f"-{target}"
    return name + ("-ov" if fmt == "openvino" else "")


def check_options(fmt: str, precision: str, target: str, calib_data) -> None:
    """One-line errors for combinations that cannot be exported, before any work is done."""
    if fmt not in FORMATS:
        raise EdgesegError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise EdgesegError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    if target not in TARGETS:
        raise EdgesegError(f"unknown target {target!r}", f"use one of {', '.join(TARGETS)}")
    if fmt == "onnx" and precision == "fp16":
        raise EdgesegError(
            "ONNX fp16 is not offered (ONNX Runtime's CPU provider runs fp16 graphs slower than fp32)",
            "use --precision int8, or --format openvino --precision fp16",
        )
    if precision == "int8" and not calib_data:
        raise DataError("INT8 export needs calibration images", "pass --calib-data DIR (e.g. the training data)")


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
    src = ref.card
    card = {k: v for k, v in src.items() if k not in ("file", "sha256", "metrics", "weights_file", "weights_sha256")}
    test = (src.get("metrics") or {}).get("test") or {}
    card.update(
        name=name,
        format=fmt,
        precision=precision,
        source={
            "name": src.get("name", ref.name),
            "file": ref.path.name,
            "sha256": src.get("sha256") or sha256_file(ref.path),
            "format": "torch",
            "test_dice_256": test.get("dice_256"),
        },
        metrics={},
        versions=library_versions(),  # the export's libraries (onnx, onnxruntime, openvino, nncf, torch)
        created_with=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )
    return card


def export_model(
    model: str | Path,
    fmt: str = "onnx",
    precision: str = "fp32",
    *,
    out_dir: str | Path = ".",
    calib_data: str | Path | None = None,
    calib_size: int = DEFAULT_CALIB_SIZE,
    seed: int = DEFAULT_SEED,
    max_dice_drop: float = DEFAULT_MAX_DICE_DROP,
    target: str = "x86",
    guard_data: str | Path | None = None,
    test_data: str | Path | None = None,
    name: str | None = None,
    strategies: list[str] | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Export ``model`` (zoo name, run folder or .pt) and return a report (path, card, checks).

    ``guard_data`` defaults to ``calib_data`` (its validation split when canonical). ``test_data``, when given,
    scores the final file on that folder's test split (through the runtime) and records it in the card.
    """
    say = log or (lambda msg: None)
    check_options(fmt, precision, target, calib_data)
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    check_writable(out_dir)
    try:
        return _export(model, fmt, precision, out_dir, calib_data, calib_size, seed, max_dice_drop, target,
                       guard_data, test_data, name, strategies, command, say)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # leave no empty folder behind either
        raise


def _export(model, fmt, precision, out_dir, calib_data, calib_size, seed, max_dice_drop, target, guard_data,
            test_data, name, strategies, command, say) -> dict:
    from edgeseg.train.predict import load_checkpoint
    from edgeseg.zoo import resolve_model

    ref = resolve_model(model)
    if ref.format != "torch":
        raise ModelError(
            f"{ref.path.name} is already a {ref.format} file",
            "export from the PyTorch checkpoint (a zoo name, a run folder or a .pt file)",
        )
    net = load_checkpoint(ref.path, ref.card)
    base = ref.card.get("name", ref.name)
    name = name or variant_name(base, fmt, precision, target)
    final_name = name + SUFFIX[fmt]
    card = _base_card(ref, name, fmt, precision)
    card["export"] = {"command": command, "opset": None, "target": target if precision == "int8" else None}
    guard_from = guard_data or calib_data
    work = Path(tempfile.mkdtemp(prefix=".edgeseg-export-", dir=out_dir))
    try:
        report = _export_in(work, net, ref, card, fmt, precision, calib_data, calib_size, seed, max_dice_drop,
                            target, guard_from, test_data, strategies, final_name, say)
        moved = []
        files = [work / final_name]
        if fmt == "openvino":
            files.insert(0, (work / final_name).with_suffix(".bin"))
        files.append(card_path(work / final_name))
        for f in files:  # weights, model, card: the card (what resolves a model) arrives last
            os.replace(f, out_dir / f.name)
            moved.append(out_dir / f.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.update(path=str(out_dir / final_name), card=str(card_path(out_dir / final_name)))
    report["size_bytes"] = sum(p.stat().st_size for p in moved if not p.name.endswith(".card.json"))
    return report


def _export_in(work, net, ref, card, fmt, precision, calib_data, calib_size, seed, max_drop, target, guard_from,
               test_data, strategies, final_name, say) -> dict:
    from .onnx import OPSET, PARITY_TOLERANCE, fp16_exact, logit_parity, set_onnx_card, torch_to_onnx

    # the data first: a bad folder fails in a second, before any conversion
    calib = guard = None
    if precision == "int8":
        calib = calibration_set(calib_data, calib_size, seed=seed, size=int(card["input_size"][0]),
                                normalisation=card["normalisation"])
    if guard_from and (precision != "fp32" or fmt == "openvino"):
        guard = guard_set(guard_from)
    fp32_card = dict(card, format="onnx", precision="fp32", name=card["name"])
    fp32 = work / "fp32.onnx"
    say(f"exporting {ref.name} to ONNX (opset {OPSET})")
    torch_to_onnx(net, fp32_card, fp32)
    card["export"]["opset"] = OPSET
    x = parity_inputs(card)

    def checked_parity(path: Path, what: str) -> dict:
        parity = logit_parity(net, path, x)
        say(f"{what} parity vs PyTorch on {parity['images']} test images: "
            f"max |dlogit| {parity['max_abs_logit_diff']:.2e}, max |dprob| {parity['max_abs_prob_diff']:.2e}")
        if parity["max_abs_prob_diff"] > PARITY_TOLERANCE:
            raise ModelError(
                f"the {what} graph differs from PyTorch by {parity['max_abs_prob_diff']:.2e} in probability "
                f"(> {PARITY_TOLERANCE})",
                "report this with the model card; try another torch/onnx version",
            )
        parity["gate"] = f"max_abs_prob_diff <= {PARITY_TOLERANCE} (probabilities = the graph's outputs)"
        return parity

    card["export"]["parity_onnx_fp32"] = checked_parity(fp32, "ONNX")
    reference = None
    if guard is not None:
        reference = file_dice(fp32, guard)
        say(f"FP32 ONNX reference: validation Dice {reference.dice:.4f} on {len(guard)} images")

    final = work / final_name
    if fmt == "onnx" and precision == "fp32":
        shipped = fp32
        if fp16_exact(net):  # a float16 checkpoint: ship the same FP32 graph from float16 storage (lossless)
            shipped = work / "fp32-fp16-storage.onnx"
            torch_to_onnx(net, fp32_card, shipped, fp16_storage=True)
            card["export"]["parity_onnx_fp32_fp16_storage"] = checked_parity(shipped, "ONNX (fp16 storage)")
            card["export"]["weight_storage"] = (
                "float16, exact: the checkpoint's weights are float16 values; BatchNorm kept as nodes so that they "
                "stay exact, folded by the runtime at load; FP32 arithmetic")
            say(f"weights stored as exact float16: {fp32.stat().st_size / 1e6:.1f} MB -> "
                f"{shipped.stat().st_size / 1e6:.1f} MB")
        saver = _onnx_saver(shipped, set_onnx_card)
    elif fmt == "openvino" and precision in ("fp32", "fp16"):
        from .openvino import save_openvino
        from .quantize import to_openvino_model

        ov_model = to_openvino_model(fp32)
        cand = work / f"cand-{precision}.xml"
        save_openvino(ov_model, cand, card, fp16_weights=precision == "fp16")
        card["export"]["parity_openvino_f32"] = _openvino_parity(cand, fp32, x)
        if guard is not None:
            score = file_dice(cand, guard)
            drop = reference.dice - score.dice
            card["guard"] = {
                "metric": "dice_256 via Segmenter", "data": guard.info, "reference": "FP32 ONNX (onnxruntime)",
                "reference_dice": round(reference.dice, 6), "dice": round(score.dice, 6), "drop": round(drop, 6),
                "max_drop": max_drop, "strategy": f"{precision} weights", "attempts": [],
            }
            say(f"{precision} IR: validation Dice {score.dice:.4f} (drop {drop:+.4f})")
            if precision == "fp16" and drop > max_drop:
                raise EdgesegError(
                    f"the fp16 IR loses {drop:.4f} validation Dice (> {max_drop})", "ship the fp32 IR instead"
                )
        saver = _openvino_saver(ov_model, precision == "fp16")
    else:  # int8
        say(f"calibration: {len(calib)} images of {calib.info['source']} [{calib.info['split']}], "
            f"strata {calib.info['strata']}")
        card["calibration"] = calib.info
        ladder, savers = _ladder(fmt, work, fp32, calib, card, target, guard, max_drop, strategies)

        def report_attempt(a):
            say(f"  {a['strategy']}: validation Dice {a['dice']:.4f} (drop {a['drop']:+.4f}) "
                f"{'ok' if a['passed'] else 'over budget'}")

        chosen, greport = climb(ladder, guard, reference.dice, max_drop, what=f"INT8 {card['source']['name']}",
                                on_attempt=report_attempt)
        card["guard"] = greport.to_dict(guard, "FP32 ONNX (onnxruntime)")
        card["quantization"] = savers[greport.strategy][1]
        saver = savers[greport.strategy][0]
        if guard is not None:
            card["metrics"]["val"] = {"dice_256": card["guard"]["dice"], **{k: guard.info.get(k) for k in
                                                                            ("split", "split_file", "split_hash")}}
    # executed precision: open the candidate the way the runtime does
    saver(card, final)
    score_path = final
    from edgeseg.backends import open_backend

    be = open_backend(score_path)
    card["executed_precision"] = be.executed_precision
    card["executed_on"] = _executed_on()
    be.close()
    if "guard" in card and fmt == "openvino" and precision != "int8":
        card["metrics"]["val"] = {"dice_256": card["guard"]["dice"]}
    if test_data:
        card["metrics"]["test"] = evaluate_file(final, test_data)
        say(f"test split: Dice {card['metrics']['test']['dice_256']:.4f}")
    saver(card, final)  # the final card inside the file
    write_card(final, card)
    return {
        "name": card["name"],
        "format": fmt,
        "precision": precision,
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

    ov_be = open_backend(xml, "openvino", inference_precision="fp32")
    ort_be = open_backend(fp32_onnx, "onnxruntime")
    try:
        d = float(np.max(np.abs(ov_be(x) - ort_be(x))))
    finally:
        ov_be.close()
        ort_be.close()
    return {"images": int(len(x)), "max_abs_prob_diff_vs_onnx": d, "inference_precision": "f32"}


def _ladder(fmt, work, fp32, calib, card, target, guard, max_drop, strategies):
    """(strategy, build) pairs for the guard and, per strategy, (saver, settings) of the built candidate."""
    from .onnx import set_onnx_card
    from .quantize import openvino_dice_metric, quantize_onnx, quantize_openvino

    names = list(strategies or (ONNX_STRATEGIES if fmt == "onnx" else OPENVINO_STRATEGIES))
    allowed = ONNX_STRATEGIES if fmt == "onnx" else OPENVINO_STRATEGIES
    bad = [s for s in names if s not in allowed]
    if bad:
        raise EdgesegError(f"unknown {fmt} strategy {bad[0]!r}", f"use one of {', '.join(allowed)}")
    savers: dict[str, tuple] = {}
    ladder = []
    for i, strategy in enumerate(names):
        if fmt == "onnx":
            def build(strategy=strategy, i=i):
                cand = work / f"cand{i}.onnx"
                settings = quantize_onnx(fp32, cand, calib, strategy=strategy, target=target, work_dir=work)
                _onnx_saver(cand, set_onnx_card)(dict(card, quantization=settings), cand)
                savers[strategy] = (_onnx_saver(cand, set_onnx_card), settings)
                return cand
        else:
            def build(strategy=strategy, i=i):
                from .openvino import save_openvino

                validation = None
                if strategy == "accuracy-control":
                    validation = (_validation_items(guard, card), openvino_dice_metric(float(card["threshold"])))
                model, settings = quantize_openvino(fp32, calib, strategy=strategy, target=target,
                                                    validation=validation, max_drop=max_drop)
                cand = work / f"cand{i}.xml"
                save_openvino(model, cand, dict(card, quantization=settings), fp16_weights=False)
                savers[strategy] = (_openvino_saver(model, False), settings)
                return cand
        ladder.append((strategy, build))
    return ladder, savers


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
    from edgeseg.evaluate import evaluate
    from edgeseg.segmenter import Segmenter
    from edgeseg.split import select_items

    seg = Segmenter.load(path, verify=False)
    try:
        items, info = select_items(find_items(data), split, where=str(data))
        result = evaluate(seg, (load_sample(it) for it in items), total=len(items))
    finally:
        seg.backend.close()
    return {**info, **result["summary"], "per_type": result["per_type"]}
