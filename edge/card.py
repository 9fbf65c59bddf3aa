"""Model cards: the one source of truth for every threshold and parameter of a shipped model.

A card is a JSON object stored beside its model file as ``<stem>.card.json`` (and, for exported files,
inside ONNX ``metadata_props`` / OpenVINO ``rt_info``). Readers take thresholds, normalisation,
input size and post-processing from the card; nothing is hard-coded twice.
"""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path

from .errors import ModelError
from .fsutil import atomic_write_json, sha256_file

CARD_SCHEMA = 1
CARD_SUFFIX = ".card.json"
CARD_METADATA_KEY = "edgeseg_card"  # ONNX metadata_props key and OpenVINO rt_info key holding the card JSON
_LIBS = (
    "edgeseg",
    "numpy",
    "opencv-python-headless",
    "onnxruntime",
    "openvino",
    "torch",
    "onnx",
    "nncf",
    "albumentations",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that affect results (without importing them)."""
    out = {"python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


def card_path(model_file: str | Path) -> Path:
    p = Path(model_file)
    return p.with_name(p.stem + CARD_SUFFIX) if p.suffix else p.with_name(p.name + CARD_SUFFIX)


def new_card(arch: str, **fields) -> dict:
    """A card with the defaults every model shares; ``fields`` override them."""
    from .preprocess import DEFAULT_NORMALISATION  # OpenCV: kept out of `edgeseg --help`'s imports

    card = {
        "schema": CARD_SCHEMA,
        "name": arch,
        "arch": arch,
        "format": "torch",
        "precision": "fp32",
        "input_size": [256, 256],
        "normalisation": dict(DEFAULT_NORMALISATION),
        "out_channels": 1,
        "outputs": ["foreground"],
        "threshold": 0.5,
        "postprocess": {"method": "cc", "threshold": 0.5, "min_size": 0},
        "versions": library_versions(),
        "created_with": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    card.update(fields)
    return card


def write_card(model_file: str | Path, card: dict) -> Path:
    """Write ``card`` beside ``model_file``, with the file's sha256 filled in."""
    card = dict(card)
    card["file"] = Path(model_file).name
    card["sha256"] = sha256_file(model_file)
    weights = _weights_file(model_file)
    if weights is not None:
        card["weights_file"] = weights.name
        card["weights_sha256"] = sha256_file(weights)
    return atomic_write_json(card_path(model_file), card)


def _weights_file(model_file: str | Path) -> Path | None:
    """An OpenVINO ``.xml`` keeps its weights in the ``.bin`` beside it: the card covers both."""
    p = Path(model_file)
    return p.with_suffix(".bin") if p.suffix.lower() == ".xml" and p.with_suffix(".bin").exists() else None


def read_card(model_file: str | Path, verify: bool = True) -> dict:
    """Read the card beside ``model_file``; with ``verify`` check the file's sha256 against it."""
    cp = card_path(model_file)
    if not cp.exists():
        raise ModelError(f"{model_file} has no model card ({cp.name})", "export or train it with edgeseg")
    try:
        card = json.loads(cp.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"model card {cp} is not valid JSON", "re-export the model") from exc
    if verify and card.get("sha256") and card["sha256"] != sha256_file(model_file):
        raise ModelError(
            f"{Path(model_file).name} does not match the sha256 in its card", "reinstall the model"
        )
    weights = _weights_file(model_file)
    if verify and card.get("weights_sha256"):
        if weights is None:
            raise ModelError(f"{Path(model_file).name} has lost its weights file {card.get('weights_file')}",
                             "reinstall the model")
        if card["weights_sha256"] != sha256_file(weights):
            raise ModelError(f"{weights.name} does not match the sha256 in its card", "reinstall the model")
    return card
