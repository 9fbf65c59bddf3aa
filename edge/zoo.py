"""The model zoo: what ships inside the package, and how a MODEL argument is resolved.

A MODEL argument is a zoo name (``fast_scnn``; exported variants such as ``fast_scnn-int8``), a run
folder (holding ``best.pt``), or a model file (``.pt``, ``.onnx``, ``.xml``) with its card beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .card import CARD_SUFFIX, card_path, read_card
from .errors import ModelError

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"  # data shipped in the package
SAMPLE_DIR = SAMPLES_DIR / "dsb2018_sample"  # 8 DSB2018 test-split images with masks (Kaggle layout)
SAMPLE_CLIP = SAMPLES_DIR / "clip" / "cancer_cell_migration_crop.tif"  # the demo time-lapse
FORMATS = {".pt": "torch", ".onnx": "onnx", ".xml": "openvino"}


@dataclass(frozen=True)
class ModelRef:
    name: str
    path: Path
    format: str  # torch | onnx | openvino
    card: dict


def zoo_entries(folder: str | Path | None = None) -> list[ModelRef]:
    """Every model file shipped in the zoo (or lying in ``folder``) with its card beside it, sorted by card name."""
    root = ZOO_DIR if folder is None else Path(folder)
    out = []
    for cp in sorted(root.glob(f"*{CARD_SUFFIX}")):
        try:
            card = json.loads(cp.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        path = root / card.get("file", "")
        if card.get("file") and path.is_file():
            out.append(
                ModelRef(card.get("name", path.stem), path.resolve(), FORMATS.get(path.suffix, "?"), card)
            )
    return out


def resolve_model(spec: str | Path, verify: bool = True) -> ModelRef:
    """Resolve a MODEL argument to a file and its card; a one-line ModelError if it cannot be."""
    p = Path(spec)
    if p.is_dir():
        best = p / "best.pt"
        if not best.exists():
            raise ModelError(f"run folder {p} has no best.pt", "finish or --resume the training run first")
        if not card_path(best).exists():
            raise ModelError(f"run folder {p} has no model card yet", "let the training run finish")
        return ModelRef(p.name, best, "torch", read_card(best, verify))
    if p.is_file():
        fmt = FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise ModelError(
                f"{p} is not a model file", "give a .pt, .onnx or .xml file, a run folder or a zoo name"
            )
        return ModelRef(p.stem, p, fmt, read_card(p, verify))
    for ref in zoo_entries():
        if ref.name == str(spec):
            if verify:
                read_card(ref.path, verify=True)
            return ref
    names = ", ".join(r.name for r in zoo_entries()) or "none shipped yet"
    raise ModelError(
        f"unknown model {str(spec)!r}", f"give a zoo name ({names}), a run folder or a model file"
    )
