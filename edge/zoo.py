"""The model zoo: what ships inside the package, and how a MODEL argument is resolved.

A MODEL argument is a zoo name (``fast_scnn``; exported variants such as ``fast_scnn-int8``), a run
folder (holding ``best.pt``), or a model file (``.pt``, ``.onnx``, ``.xml``) with its card beside it.

Variant names are made here and only here (:func:`variant_name`): ``<network>-<precision>``, ``-<target>`` for an
INT8 file quantised for other kernels than x86 VNNI (``-x86-no-vnni``, ``-arm``), ``-ov`` for an OpenVINO IR.
Readers never parse them back: a file's network, precision and target are in its card, and
:meth:`Zoo.variants` answers "which files of this network, for this precision and CPU".
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

from .card import CARD_SUFFIX, TARGETS, ModelCard, card_path, read_card, verify_files
from .errors import EdgesegError, ModelError

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"  # data shipped in the package
SAMPLE_DIR = SAMPLES_DIR / "dsb2018_sample"  # 8 DSB2018 test-split images with masks (Kaggle layout)
SAMPLE_CLIP = SAMPLES_DIR / "clip" / "cancer_cell_migration_crop.tif"  # the demo time-lapse
FORMATS = {".pt": "torch", ".onnx": "onnx", ".xml": "openvino"}
DEFAULT_RUN_NETWORK = "shuffle_unet_px"  # the network `edgeseg run` uses when none is given (DSB2018-only
# weights, CC0 data: the default stays free of MoNuSeg's non-commercial licence) ...


def variant_name(base: str, fmt: str, precision: str, target: str = "x86") -> str:
    """``fast_scnn`` + onnx/int8 -> ``fast_scnn-int8``; OpenVINO files end in ``-ov``; non-x86 INT8 names its target."""
    name = f"{base}-{precision}"
    if precision == "int8" and target != "x86":
        name += f"-{target}"
    return name + ("-ov" if fmt == "openvino" else "")


DEFAULT_RUN_MODEL = variant_name(DEFAULT_RUN_NETWORK, "onnx", "int8")  # ... as its x86 INT8 ONNX file


def cpu_family() -> str:
    """``arm`` on an ARM CPU (a Raspberry Pi), else ``x86``."""
    return "arm" if platform.machine().lower().startswith(("arm", "aarch64")) else "x86"


@dataclass(frozen=True)
class ModelRef:
    name: str
    path: Path
    format: str  # torch | onnx | openvino
    card: ModelCard

    @property
    def network(self) -> str:
        return self.card.network

    @property
    def precision(self) -> str:
        return self.card.precision

    def row(self) -> dict:
        """What ``edgeseg models`` shows of a shipped file."""
        c = self.card
        return {"name": self.name, "kind": "zoo", "arch": c.arch, "format": self.format, "precision": c.precision,
                "executed_precision": c.executed, "path": str(self.path), "params": c.params, "gflops": c.gflops,
                "dice": c.test_dice}

    @property
    def target_family(self) -> str | None:
        """``x86`` / ``arm`` for an INT8 file quantised for that CPU family, None for a target-neutral file."""
        return self.card.target[:3] if self.card.target else None


def _target_rank(ref: ModelRef, flavour: str) -> int:
    """Files for this CPU's kernels first: on x86 the VNNI file, then a neutral one, then the no-VNNI flavour (on an
    AVX2 CPU without VNNI, ``x86-no-vnni``: the other way round)."""
    orders = {"arm": ["arm", None], "x86-no-vnni": ["x86-no-vnni", None, "x86"]}
    order = orders.get(flavour, ["x86", None, "x86-no-vnni"])
    return order.index(ref.card.target) if ref.card.target in order else len(order)


def checkpoint_folder() -> Path | None:
    """Where the zoo's PyTorch checkpoints are installed when they are not in :data:`ZOO_DIR`: the folder of the
    data-only ``edgeseg-checkpoints`` wheel (``make wheel``) that the ``[train]`` and ``[export]`` extras install.
    The runtime wheel leaves them out (a torch-free device cannot load them); a source checkout has them in ZOO_DIR."""
    import importlib.util

    spec = importlib.util.find_spec("edgeseg_checkpoints")
    return Path(spec.origin).resolve().parent if spec is not None and spec.origin else None


class Zoo:
    """The model files in a folder (the shipped zoo by default), each with its card beside it."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = ZOO_DIR if folder is None else Path(folder)
        # the shipped zoo also holds the PyTorch checkpoints of the edgeseg-checkpoints wheel, where it is installed
        self.folders = [self.folder] if folder is not None else [self.folder, *filter(None, [checkpoint_folder()])]
        self._entries: list[ModelRef] | None = None

    @property
    def entries(self) -> list[ModelRef]:
        """Every model file with a readable card, sorted by card name (read once; files not re-hashed)."""
        if self._entries is None:
            out: dict[str, ModelRef] = {}
            for folder in self.folders:
                for cp in sorted(folder.glob(f"*{CARD_SUFFIX}")):
                    try:
                        card = ModelCard.from_dict(json.loads(cp.read_text()), where=cp.name)
                    except (OSError, ValueError, EdgesegError):
                        continue
                    path = folder / (card.file or "")
                    if card.file and path.is_file() and card.name not in out:
                        out[card.name] = ModelRef(card.name, path.resolve(), FORMATS.get(path.suffix, "?"), card)
            self._entries = sorted(out.values(), key=lambda r: r.name)
        return self._entries

    def get(self, name: str) -> ModelRef | None:
        return next((r for r in self.entries if r.name == name), None)

    def names(self) -> list[str]:
        return [r.name for r in self.entries]

    def networks(self) -> list[str]:
        """The networks that have files here."""
        return sorted({r.network for r in self.entries})

    def network_name(self, spec: str | Path) -> str | None:
        """``spec`` when it names a network with exported files here (``fast_scnn``: its checkpoint shares the name),
        None when it names one exported file (``fast_scnn-int8``), a path or nothing known."""
        spec = str(spec)
        ref = self.get(spec)
        if ref is not None and ref.format != "torch":
            return None
        return spec if any(r.network == spec and r.format != "torch" for r in self.entries) else None

    def fp32_twin(self, ref: ModelRef) -> ModelRef | None:
        """The FP32 exported file of ``ref``'s network, the one ``ref`` (an INT8 or FP16 file) is compared with: of
        ``ref``'s format where there is one, else ONNX."""
        found = self.variants(ref.network, precision="fp32", formats=(ref.format, "onnx", "openvino"))
        return next((r for r in found if r.path != ref.path), None)

    def checkpoint(self, network: str) -> ModelRef | None:
        """The PyTorch checkpoint of ``network``, if shipped."""
        return next((r for r in self.entries if r.network == network and r.format == "torch"), None)

    def variants(self, network: str, *, precision: str | None = None, target: str | None = None,
                 formats: tuple[str, ...] | None = None) -> list[ModelRef]:
        """The files of ``network`` (exported ones, or those in ``formats``; of ``precision`` if given), best first for
        ``target`` (``x86``, ``x86-no-vnni``, ``arm``; None: this CPU's family, x86 or arm): by format in the order
        given, then files quantised for that CPU's kernels, then target-neutral ones, then the other flavours."""
        family = target if target in TARGETS else cpu_family()
        found = [r for r in self.entries if r.network == network and (precision is None or r.precision == precision)
                 and (r.format in formats if formats else r.format != "torch")]
        order = list(formats) if formats else ["onnx", "openvino"]
        return sorted(found, key=lambda r: (order.index(r.format) if r.format in order else len(order),
                                            _target_rank(r, family), r.name))

    def for_target(self, ref: ModelRef, target: str) -> ModelRef | None:
        """The file of ``ref``'s network, format and precision quantised for ``target`` (x86/arm), if any."""
        if ref.target_family == target:
            return ref
        cands = [r for r in self.variants(ref.network, precision=ref.precision, target=target, formats=(ref.format,))
                 if r.card.arch == ref.card.arch and r.target_family == target]
        return cands[0] if cands else None


def zoo_entries(folder: str | Path | None = None) -> list[ModelRef]:
    """Every model file shipped in the zoo (or lying in ``folder``) with its card beside it, sorted by card name."""
    return Zoo(folder).entries


def resolve_model(spec: str | Path, verify: bool = True) -> ModelRef:
    """Resolve a MODEL argument to a file and its card; a one-line ModelError if it cannot be.

    A zoo name wins over a same-named folder or file in the working directory (e.g. one left by ``--out``)."""
    zoo = Zoo()
    ref = zoo.get(str(spec))
    if ref is not None:
        if verify:
            verify_files(ref.path, ref.card)
        return ref
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
    names = ", ".join(zoo.names()) or "none shipped yet"
    raise ModelError(
        f"unknown model {str(spec)!r}", f"give a zoo name ({names}), a run folder or a model file"
    )
