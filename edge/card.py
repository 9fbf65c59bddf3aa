"""Model cards: the one source of truth for every threshold and parameter of a shipped model.

A card is a JSON object stored beside its model file as ``<stem>.card.json`` (and, for exported files,
inside ONNX ``metadata_props`` / OpenVINO ``rt_info``). It is read once, at load, into a :class:`ModelCard`
(a frozen dataclass): readers take the input size, normalisation, threshold, post-processing and training scale
from its typed fields, never from the JSON by hand. Writers build a card as a dict (:func:`new_card`, then the
trainer's and the export's fields) and :func:`write_card` checks it through :meth:`ModelCard.from_dict` before
it is written, so no malformed card is ever stored.

    card = read_card("fast_scnn-int8.onnx")     # a ModelCard, its sha256 checked
    card.size, card.threshold, card.network, card.target, card.test_dice
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import ModelError
from .fsutil import atomic_write_json, sha256_file

CARD_SCHEMA = 1
CARD_SUFFIX = ".card.json"
CARD_METADATA_KEY = "edgeseg_card"  # ONNX metadata_props key and OpenVINO rt_info key holding the card JSON
DEFAULT_INPUT_SIZE = 256
DEFAULT_TRAINING_DIAMETER = 12.0  # px at the input size: DSB2018 at 256x256 (for a card that records no scale)
TARGETS = ("x86", "x86-no-vnni", "arm")  # the CPU kernels an INT8 file can be quantised for
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


def _default_normalisation() -> dict:
    from .preprocess import DEFAULT_NORMALISATION  # OpenCV: kept out of `edgeseg --help`'s imports

    return dict(DEFAULT_NORMALISATION)


@dataclass(frozen=True)
class ModelCard:
    """A model card, read once: typed fields for what the code reads, ``extra`` for the provenance it only keeps
    (versions, data, recipe, training, licence, guard, calibration...). ``to_dict(from_dict(d)) == d``."""

    name: str
    arch: str
    format: str = "torch"
    precision: str = "fp32"
    input_size: tuple[int, int] = (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
    normalisation: Mapping = field(default_factory=_default_normalisation)
    out_channels: int = 1
    outputs: tuple[str, ...] = ("foreground",)
    threshold: float = 0.5
    postprocess: Mapping | None = None
    training_scale: Mapping | None = None
    executed_precision: str | None = None
    params: int | None = None
    gflops: float | None = None
    metrics: Mapping | None = None
    source: Mapping | None = None  # the checkpoint an exported file was made from
    export: Mapping | None = None
    file: str | None = None
    sha256: str | None = None
    weights_file: str | None = None
    weights_sha256: str | None = None
    schema: int = CARD_SCHEMA
    extra: Mapping = field(default_factory=dict)

    # ------------------------------------------------------------------ reading and writing

    @classmethod
    def from_dict(cls, data, where: str = "model card") -> ModelCard:
        """Check a card's JSON object and type its fields; a one-line ModelError names what is wrong."""
        if not isinstance(data, Mapping):
            raise ModelError(f"{where} is a JSON {type(data).__name__}, not an object", "re-export the model")
        schema = data.get("schema", CARD_SCHEMA)
        if not isinstance(schema, int) or schema > CARD_SCHEMA:
            raise ModelError(f"{where} has schema {schema!r}; this edgeseg reads schema {CARD_SCHEMA} at most",
                             "upgrade edgeseg, or re-export the model with this version")
        known = {f.name for f in fields(cls)} - {"extra"}
        kw: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        kw["extra"] = {k: v for k, v in data.items() if k not in known}
        kw.setdefault("arch", data.get("name", "model"))
        kw.setdefault("name", kw["arch"])
        try:
            size = kw.get("input_size", DEFAULT_INPUT_SIZE)
            size = [size, size] if isinstance(size, int) else list(size)
            if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
                raise ValueError("input_size")
            kw["input_size"] = tuple(size)
            if "outputs" in kw:
                kw["outputs"] = tuple(str(o) for o in kw["outputs"])
            for key, kind in (("out_channels", int), ("threshold", float), ("schema", int)):
                if key in kw:
                    value = kw[key]
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise ValueError(key)
                    kw[key] = kind(value)
            for key in ("normalisation", "postprocess", "training_scale", "metrics", "source", "export"):
                if key in kw and kw[key] is not None and not isinstance(kw[key], Mapping):
                    raise ValueError(key)
            norm = kw.get("normalisation")
            if norm is not None and not (len(norm.get("mean", ())) == 3 and len(norm.get("std", ())) == 3):
                raise ValueError("normalisation")
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{where} has a malformed {exc.args[0] if exc.args else 'field'} field",
                             "re-export the model") from None
        if kw.get("normalisation") is None:
            kw.pop("normalisation", None)
        return cls(**kw)

    def to_dict(self) -> dict:
        """The card as JSON-ready data (the fields it was read from, no more)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out.update(self.extra)
        return out

    def replace(self, **changes) -> ModelCard:
        """A copy with ``changes`` (any card key, typed fields or extra ones), checked like a card read from disk."""
        return ModelCard.from_dict({**self.to_dict(), **changes}, where=f"card of {self.name}")

    # ------------------------------------------------------------------ what readers ask

    @property
    def size(self) -> int:
        """The square input size in pixels (256 for every shipped network)."""
        return int(self.input_size[0])

    @property
    def mean(self) -> list[float]:
        return list(self.normalisation["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.normalisation["std"])

    @property
    def executed(self) -> str:
        """The precision the file was seen to run at when exported (its own precision if not recorded)."""
        return self.executed_precision or self.precision

    @property
    def network(self) -> str:
        """The network a file belongs to: the checkpoint it was exported from, or itself."""
        return (self.source or {}).get("name") or self.name

    @property
    def target(self) -> str | None:
        """The CPU kernels an INT8 file was quantised for (``x86``, ``x86-no-vnni``, ``arm``), None if neutral."""
        target = self.extra.get("target") or (self.export or {}).get("target")
        return target if target in TARGETS else None

    def metric(self, split: str, key: str = "dice_256"):
        """A recorded metric (``metric("test")`` is the test Dice at the input size), or None."""
        return ((self.metrics or {}).get(split) or {}).get(key)

    @property
    def test_dice(self) -> float | None:
        return self.metric("test")

    @property
    def training_diameter(self) -> float:
        """The median nucleus diameter (input pixels) the network was trained on."""
        scale = self.training_scale or {}
        return float(scale.get("median_nucleus_diameter_px") or DEFAULT_TRAINING_DIAMETER)

    @property
    def training_diameters(self) -> dict[str, float]:
        """The training scale per image type (fluorescence / brightfield / stained), where the card has it."""
        per_type = (self.training_scale or {}).get("per_type") or {}
        return {t: float(d) for t, d in per_type.items() if d}

    @property
    def measured_by(self) -> str | None:
        """The network that measures this one's nuclei for the scale policy (``training_scale.measured_by``, chosen
        on validation by ``benchmarks/choose_sizer.py``), None where the network measures them itself."""
        other = (self.training_scale or {}).get("measured_by")
        return str(other) if other and other != self.network else None

    def post_config(self, threshold: float | None = None):
        """The card's post-processing (:class:`edgeseg.postprocess.PostprocessConfig`), with ``threshold`` over it."""
        from .postprocess import PostprocessConfig

        try:
            post = (PostprocessConfig.from_dict(dict(self.postprocess)) if self.postprocess
                    else PostprocessConfig(threshold=self.threshold))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"the card of {self.name} has a bad postprocess ({exc})", "re-export the model") from None
        if threshold is not None:
            post = PostprocessConfig.from_dict({**post.to_dict(), "threshold": float(threshold)})
        return post


def as_card(card) -> ModelCard:
    """A ModelCard as is; a dict (a card being built, or a minimal one for an ad-hoc predictor) checked into one."""
    if isinstance(card, ModelCard):
        return card
    return ModelCard.from_dict(card or {"arch": "model"})


def card_path(model_file: str | Path) -> Path:
    p = Path(model_file)
    return p.with_name(p.stem + CARD_SUFFIX) if p.suffix else p.with_name(p.name + CARD_SUFFIX)


def new_card(arch: str, **fields) -> dict:
    """A card being built (a dict), with the defaults every model shares; ``fields`` override them."""
    card = {
        "schema": CARD_SCHEMA,
        "name": arch,
        "arch": arch,
        "format": "torch",
        "precision": "fp32",
        "input_size": [DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE],
        "normalisation": _default_normalisation(),
        "out_channels": 1,
        "outputs": ["foreground"],
        "threshold": 0.5,
        "postprocess": {"method": "cc", "threshold": 0.5, "min_size": 0},
        "versions": library_versions(),
        "created_with": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    card.update(fields)
    return card


def write_card(model_file: str | Path, card: ModelCard | dict) -> Path:
    """Write ``card`` beside ``model_file``, with the file's sha256 filled in (checked as a ModelCard first)."""
    card = dict(card.to_dict() if isinstance(card, ModelCard) else card)
    card["file"] = Path(model_file).name
    card["sha256"] = sha256_file(model_file)
    weights = _weights_file(model_file)
    if weights is not None:
        card["weights_file"] = weights.name
        card["weights_sha256"] = sha256_file(weights)
    ModelCard.from_dict(card, where=f"the card of {Path(model_file).name}")
    return atomic_write_json(card_path(model_file), card)


def _weights_file(model_file: str | Path) -> Path | None:
    """An OpenVINO ``.xml`` keeps its weights in the ``.bin`` beside it: the card covers both."""
    p = Path(model_file)
    return p.with_suffix(".bin") if p.suffix.lower() == ".xml" and p.with_suffix(".bin").exists() else None


def read_card(model_file: str | Path, verify: bool = True) -> ModelCard:
    """Read the card beside ``model_file``; with ``verify`` check the file's sha256 (and an .xml's .bin) against it."""
    cp = card_path(model_file)
    if not cp.exists():
        raise ModelError(f"{model_file} has no model card ({cp.name})", "export or train it with edgeseg")
    try:
        card = ModelCard.from_dict(json.loads(cp.read_text()), where=f"model card {cp.name}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"model card {cp} is not valid JSON", "re-export the model") from exc
    if verify:
        verify_files(model_file, card)
    return card


def verify_files(model_file: str | Path, card: ModelCard) -> None:
    """Check a model file (and an OpenVINO ``.bin``) against the sha256 its card records."""
    if card.sha256 and card.sha256 != sha256_file(model_file):
        raise ModelError(f"{Path(model_file).name} does not match the sha256 in its card", "reinstall the model")
    weights = _weights_file(model_file)
    if card.weights_sha256:
        if weights is None:
            raise ModelError(f"{Path(model_file).name} has lost its weights file {card.weights_file}",
                             "reinstall the model")
        if card.weights_sha256 != sha256_file(weights):
            raise ModelError(f"{weights.name} does not match the sha256 in its card", "reinstall the model")
