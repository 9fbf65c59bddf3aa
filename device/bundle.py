"""Bundles: the model files a device runs, with their cards and a manifest, in one verifiable archive.

A bundle is a ``.tar.gz`` holding exactly ``manifest.json`` and ``models/<file>`` entries: each chosen model
file (an OpenVINO ``.xml`` brings its ``.bin``) and its card ``<stem>.card.json``. The manifest names the
edgeseg version that made it, the models (input size, threshold, post-processing), the default ``edgeseg run``
configuration, the target (``x86``, ``arm`` or ``any``) and the sha256 and size of every file.

Nothing in a bundle is used before it is verified:

* :func:`install_bundle` checks the whole gzip stream (truncation, CRC), every tar member (regular files with
  plain names only: no absolute paths, no ``..``, no links, no devices or fifos, a member-count and a
  total-size limit), the manifest, the file set (nothing missing, nothing extra) and every sha256 read from the
  archive - all before a byte is written. It then extracts into a temporary folder inside the target (with
  ``tarfile``'s ``"data"`` filter where the Python has it, on top of these checks), verifies the files on disk
  again and swaps them in, the manifest last, so the target is always a complete bundle or none.
* :func:`open_bundle` (used by ``edgeseg run --bundle``) re-verifies every file of an installed folder; given an
  archive it installs it once into the cache and opens that.

Checksums catch corruption and truncation, not a deliberate forger who rewrites the manifest too: copy bundles
over a channel you trust (``edgeseg deploy`` uses ssh) and compare the archive's sha256 that ``edgeseg bundle``
prints when in doubt.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from edgeseg.card import ModelCard, card_path, read_card
from edgeseg.errors import ModelError
from edgeseg.fsutil import atomic_path, sha256_file

from .options import RunOptions, run_defaults

BUNDLE_FORMAT = "edgeseg-bundle"
BUNDLE_SCHEMA = 1
MANIFEST = "manifest.json"
MODELS_DIR = "models"
TARGETS = ("any", "x86", "arm")
MAX_MEMBERS = 256
MAX_TOTAL_BYTES = 2 << 30  # 2 GiB of files: the largest zoo model is tens of MB
MAX_MANIFEST_BYTES = 1 << 20
RUN_DEFAULTS = run_defaults()  # the default `edgeseg run` options a bundle carries (None: the runtime's own)
_SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
_INCOMING, _OUTGOING = ".incoming-", ".outgoing-"
DEVICE_FORMATS = {"onnx": ".onnx", "openvino": ".xml + .bin"}  # what the device's torch-free runtime runs


class BundleError(ModelError):
    """A bundle that cannot be made, verified or installed."""


# ----------------------------------------------------------------------------------------------- opened bundles


@dataclass(frozen=True)
class BundleModel:
    name: str
    path: Path  # the model file (.onnx, .xml, .pt)
    card_path: Path
    format: str
    precision: str | None
    entry: dict = field(repr=False)  # the manifest's entry

    @property
    def card(self) -> ModelCard:
        return ModelCard.from_dict(json.loads(self.card_path.read_text()), where=self.card_path.name)


@dataclass(frozen=True)
class Bundle:
    """An installed, verified bundle folder."""

    dir: Path
    manifest: dict

    @property
    def models(self) -> list[BundleModel]:
        out = []
        for m in self.manifest["models"]:
            out.append(
                BundleModel(
                    name=m["name"],
                    path=self.dir / m["file"],
                    card_path=self.dir / m["card"],
                    format=m.get("format", "?"),
                    precision=m.get("precision"),
                    entry=m,
                )
            )
        return out

    def model(self, name: str | None = None) -> BundleModel:
        """The model called ``name``, or the bundle's default model."""
        name = name or self.run_config["model"]
        for m in self.models:
            if m.name == name:
                return m
        names = ", ".join(m.name for m in self.models)
        raise BundleError(f"bundle {self.dir} has no model {name!r}", f"choose one of {names}")

    @property
    def model_path(self) -> Path:
        """The file of the default model (the ``run`` configuration's model, else the first)."""
        return self.model().path

    @property
    def run_config(self) -> dict:
        """The default ``edgeseg run`` options (keys of :data:`RUN_DEFAULTS`); ``model`` is always a name."""
        cfg = dict(RUN_DEFAULTS)
        cfg.update({k: v for k, v in self.manifest.get("run", {}).items() if k in RUN_DEFAULTS})
        if not cfg["model"]:
            cfg["model"] = self.manifest["models"][0]["name"]
        return cfg

    @property
    def version(self) -> str:
        return self.manifest["edgeseg_version"]

    @property
    def target(self) -> str:
        return self.manifest.get("target", "any")

    def version_note(self) -> str | None:
        """A warning when the bundle was made by another edgeseg version than the one running."""
        from edgeseg import __version__

        if self.version != __version__:
            return (
                f"bundle made with edgeseg {self.version}, running edgeseg {__version__}: "
                f"install edgeseg=={self.version} on this device if anything misbehaves"
            )
        return None

    def summary(self) -> dict:
        return {
            "dir": str(self.dir),
            "edgeseg_version": self.version,
            "target": self.target,
            "models": [
                {"name": m.name, "file": str(m.path), "format": m.format, "precision": m.precision} for m in self.models
            ],
            "run": self.run_config,
        }


def open_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Open a bundle folder (or a ``.tar.gz``, installed once into the cache), verifying every file first."""
    p = Path(path)
    if p.is_dir():
        manifest = _read_manifest_file(p)
        if verify:
            _verify_dir(p, manifest)
        return Bundle(p.resolve(), manifest)
    if p.is_file():
        digest = sha256_file(p)
        from edgeseg.cache import cache_root

        dest = cache_root() / "bundles" / digest[:16]
        if (dest / MANIFEST).exists():
            try:
                return open_bundle(dest, verify=verify)
            except BundleError:
                pass  # a damaged cached copy: reinstall it from the archive
        return install_bundle(p, dest)
    raise BundleError(f"bundle {p} does not exist", "give a bundle .tar.gz or a folder made by edgeseg install-bundle")


def check_bundle(path: str | os.PathLike) -> Bundle | dict:
    """Verify an archive without installing it (returns its manifest) or an installed folder (returns it)."""
    p = Path(path)
    if p.is_dir():
        return open_bundle(p)
    manifest, _ = _scan_archive(p)
    return manifest


# -------------------------------------------------------------------------------------------------- making


def pick_for_target(spec: str, target: str):
    """Resolve ``spec`` and, for ``target`` arm/x86, swap in the zoo's variant quantised for that CPU (same network,
    architecture, format and precision; the card's ``export.target`` says which CPU a file was made for).
    Returns ``(ModelRef, note or None)``."""
    from edgeseg.zoo import Zoo, resolve_model

    ref = resolve_model(spec, verify=True)
    if target == "any" or ref.target_family == target:
        return ref, None
    swap = Zoo().for_target(ref, target)
    if swap is not None:
        return resolve_model(swap.name, verify=True), f"{spec}: using {swap.name}, quantised for {target}"
    if ref.precision == "int8":
        note = (
            f"{spec}: the zoo has no {target}-quantised variant; bundling {ref.name} as it is "
            f"(it runs on {target}, but measure it there: edgeseg bench)"
        )
    else:
        note = f"{spec}: the zoo has no {target}-specific variant of this {ref.precision} model; bundling it as is"
    return ref, note


def with_sizers(models: list[str], notes: list[str]) -> list[str]:
    """``models`` and, after them, the zoo file of every network that measures the nuclei of one of them (its card's
    ``training_scale.measured_by``) and is not in the list yet, of the same precision: the device then measures as
    the zoo does without the zoo. A note for each one added, or missing from the zoo."""
    from edgeseg.zoo import Zoo, resolve_model

    zoo, out = Zoo(), list(models)
    refs = [resolve_model(spec, verify=False) for spec in models]
    networks = {ref.network for ref in refs}
    for ref in refs:
        other = ref.card.measured_by
        if other is None or other in networks:
            continue
        found = zoo.variants(other, precision=ref.precision) or zoo.variants(other)
        if not found:
            notes.append(f"{ref.name}: its nuclei are measured by {other}, which is not in the zoo; it will measure "
                         "them itself")
            continue
        out.append(found[0].name)
        networks.add(other)
        notes.append(f"{ref.name}: its nuclei are measured by {other}: bundling {found[0].name} too")
    return out


def make_bundle(
    models: list[str] | str,
    out: str | os.PathLike,
    *,
    target: str = "any",
    run: dict | None = None,
) -> tuple[dict, list[str]]:
    """Write a bundle of ``models`` (zoo names or model files; the first is the default) to ``out``.

    Returns ``(manifest, notes)``; notes say which target variant was picked or why none was. The archive is
    written under a temporary name and renamed, so ``out`` is never half-written.
    """
    from edgeseg import __version__

    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if not models:
        raise BundleError("no models to bundle", "pass --models NAME[,NAME...]")
    if target not in TARGETS:
        raise BundleError(f"unknown target {target!r}", f"choose one of {', '.join(TARGETS)}")
    run = dict(run or {})
    unknown = set(run) - set(RUN_DEFAULTS)
    if unknown:
        raise BundleError(f"unknown run options {sorted(unknown)}", f"use {', '.join(RUN_DEFAULTS)}")
    check_run_config(run, "the run options")

    notes: list[str] = []
    models = with_sizers(models, notes)
    entries: list[dict] = []
    sources: dict[str, Path] = {}  # archive name -> local file
    for spec in models:
        ref, note = pick_for_target(spec, target)
        if note:
            notes.append(note)
        check_runnable(ref)
        if any(e["name"] == ref.name for e in entries):
            raise BundleError(f"model {ref.name} is named twice", "name each model once in --models")
        files = [ref.path]
        if ref.path.suffix.lower() == ".xml":
            files.append(ref.path.with_suffix(".bin"))
        cp = card_path(ref.path)
        entry_files = []
        for f in [*files, cp]:
            if not f.is_file():
                raise BundleError(f"{ref.name}: {f} is missing", "re-export the model")
            if not _SAFE_FILE.match(f.name):
                raise BundleError(f"{ref.name}: file name {f.name!r} is not plain", "rename the model file")
            arc = f"{MODELS_DIR}/{f.name}"
            if arc in sources:
                raise BundleError(
                    f"two models share the file name {f.name}", "rename one of them (e.g. copy it to NAME.onnx)"
                )
            sources[arc] = f
            entry_files.append(arc)
        card = ref.card
        entries.append(
            {
                "name": ref.name,
                "arch": card.arch,
                "format": ref.format,
                "precision": card.precision,
                "executed_precision": card.executed_precision,
                "target": ref.target_family or "any",
                "file": f"{MODELS_DIR}/{ref.path.name}",
                "card": f"{MODELS_DIR}/{cp.name}",
                "files": entry_files,
                "input_size": list(card.input_size),
                "out_channels": card.out_channels,
                "threshold": card.threshold,
                "postprocess": card.postprocess,
            }
        )
    names = [e["name"] for e in entries]
    if run.get("model") is not None and run["model"] not in names:
        # the default model may be given by its spec; map it through the resolved names
        if run["model"] in models:
            run["model"] = names[models.index(run["model"])]
        else:
            raise BundleError(f"default model {run['model']!r} is not in the bundle", f"choose one of {names}")
    run_cfg = {**RUN_DEFAULTS, **run}
    run_cfg["model"] = run_cfg["model"] or names[0]

    file_info = {}
    for arc, f in sources.items():
        file_info[arc] = {"sha256": sha256_file(f), "size": f.stat().st_size}
    for e in entries:  # the card's own sha256 must agree with the file we ship
        card = read_card(sources[e["file"]], verify=False)
        if card.sha256 and card.sha256 != file_info[e["file"]]["sha256"]:
            raise BundleError(f"{e['name']}: the model file does not match its card's sha256", "re-export the model")
    manifest = {
        "format": BUNDLE_FORMAT,
        "schema": BUNDLE_SCHEMA,
        "edgeseg_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "target": target,
        "models": entries,
        "run": run_cfg,
        "files": file_info,
    }
    out = Path(out)
    try:
        with atomic_path(out, suffix=".tmp") as tmp:
            with tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tf:
                data = (json.dumps(manifest, indent=2) + "\n").encode()
                tf.addfile(_tarinfo(MANIFEST, len(data)), io.BytesIO(data))
                for arc, f in sources.items():
                    with open(f, "rb") as fh:
                        tf.addfile(_tarinfo(arc, file_info[arc]["size"]), fh)
    except OSError as exc:
        raise BundleError(f"cannot write {out} ({exc.strerror or exc})", "choose a writable --out path") from exc
    return manifest, notes


def check_runnable(ref) -> None:
    """Refuse a model file the device's runtime cannot run (a PyTorch checkpoint: the device has no torch),
    naming the formats it runs and the zoo's exported variants of that network."""
    if ref.format in DEVICE_FORMATS:
        return
    from edgeseg.zoo import Zoo

    runnable = ", ".join(f"{fmt} ({ext})" for fmt, ext in DEVICE_FORMATS.items())
    variants = [r.name for r in Zoo().variants(ref.card.network)][:3]
    hint = f"bundle {' or '.join(variants)}" if variants else "export it first (edgeseg export)"
    raise BundleError(f"{ref.name} is a {ref.format} file ({ref.path.name}), which the device's runtime cannot run "
                      f"(it runs {runnable})", hint)


def check_run_config(run, where: str) -> dict:
    """A bundle's default run configuration, each value of the type ``edgeseg run`` takes for it (None: the
    runtime's default); a one-line BundleError names the first that is not."""
    if not isinstance(run, dict):
        raise BundleError(f"{where} are not a JSON object", "rebuild the bundle with edgeseg bundle")
    declared = {f.name: f for f in fields(RunOptions)}
    for key, value in run.items():
        if key not in RUN_DEFAULTS or value is None:
            continue
        meta = declared[key].metadata
        if meta["choices"]:
            ok, want = value in meta["choices"], f"one of {', '.join(meta['choices'])}"
        elif meta["type"] is int:
            ok, want = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif meta["type"] is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            want = "a number"
        else:
            ok, want = isinstance(value, str) and bool(value), "a text"
        if not ok:
            raise BundleError(f"{where} set {key} to {json.dumps(value)}, which is not {want}",
                              "rebuild the bundle with edgeseg bundle (or fix the run section of its manifest.json)")
    return run


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.type = size, 0o644, tarfile.REGTYPE
    ti.mtime = int(datetime.now(timezone.utc).timestamp())
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


# ------------------------------------------------------------------------------------------ verifying archives


def _corrupt(p: Path, why: str) -> BundleError:
    return BundleError(f"bundle {p} is truncated or corrupt ({why})", "copy it again or rebuild it with edgeseg bundle")


def _check_gzip_stream(p: Path, limit: int) -> None:
    """Read the whole gzip stream: catches truncation, CRC errors and decompression bombs before tar parsing."""
    total = 0
    try:
        with gzip.open(p, "rb") as g:
            while block := g.read(1 << 20):
                total += len(block)
                if total > limit:
                    raise BundleError(
                        f"bundle {p} unpacks to more than {limit >> 20} MiB", "a bundle holds a few model files only"
                    )
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise _corrupt(p, str(exc) or type(exc).__name__) from exc


def _refuse(p: Path, what: str) -> BundleError:
    return BundleError(f"bundle {p} holds {what}; refusing it", "rebuild it with edgeseg bundle")


def _check_member(m: tarfile.TarInfo, p: Path) -> str:
    """The member's name if it is a plain regular file or the models/ folder; BundleError otherwise."""
    name = m.name
    if m.issym() or m.islnk():
        raise _refuse(p, f"a link ({name} -> {m.linkname})")
    if not (m.isreg() or m.isdir()):
        raise _refuse(p, f"a special file ({name})")
    if "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _refuse(p, f"an absolute or odd path {name!r}")
    parts = name.rstrip("/").split("/") if m.isdir() else name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise _refuse(p, f"a path that leaves its folder ({name!r})")
    clean = "/".join(parts)
    ok = (
        (m.isreg() and clean == MANIFEST)
        or (m.isdir() and clean == MODELS_DIR)
        or (m.isreg() and len(parts) == 2 and parts[0] == MODELS_DIR and _SAFE_FILE.match(parts[1]))
    )
    if not ok:
        raise _refuse(p, f"an unexpected member {name!r}")
    return clean


def _validate_manifest(man, where) -> dict:
    def bad(why):
        return BundleError(f"the manifest of {where} is invalid ({why})", "rebuild the bundle with edgeseg bundle")

    if not isinstance(man, dict) or man.get("format") != BUNDLE_FORMAT:
        raise bad("not an edgeseg bundle manifest")
    if not isinstance(man.get("schema"), int) or man["schema"] > BUNDLE_SCHEMA:
        raise BundleError(
            f"{where} has bundle schema {man.get('schema')!r}, newer than this edgeseg reads",
            "upgrade edgeseg on this device (pip install -U edgeseg)",
        )
    files, models = man.get("files"), man.get("models")
    if not isinstance(files, dict) or not files:
        raise bad("no files")
    for name, info in files.items():
        parts = name.split("/")
        if len(parts) != 2 or parts[0] != MODELS_DIR or not _SAFE_FILE.match(parts[1]):
            raise bad(f"file name {name!r}")
        if not isinstance(info, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(info.get("sha256", ""))):
            raise bad(f"no sha256 for {name}")
        if not isinstance(info.get("size"), int) or info["size"] < 0:
            raise bad(f"no size for {name}")
    if not isinstance(models, list) or not models:
        raise bad("no models")
    for m in models:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str):
            raise bad("a model without a name")
        for key in ("file", "card"):
            if m.get(key) not in files:
                raise bad(f"model {m['name']}: {key} {m.get(key)!r} is not among the files")
    if not isinstance(man.get("run", {}), dict) or not isinstance(man.get("edgeseg_version"), str):
        raise bad("no run configuration or version")
    check_run_config(man.get("run", {}), f"the run settings of {where}")
    return man


def _scan_archive(p: Path, max_bytes: int = MAX_TOTAL_BYTES, max_members: int = MAX_MEMBERS):
    """Check an archive completely without writing anything; returns (manifest, {name: TarInfo})."""
    if not p.is_file():
        raise BundleError(f"bundle {p} does not exist", "give the path of a bundle .tar.gz")
    _check_gzip_stream(p, max_bytes + (max_members + 8) * 2048)
    try:
        tf = tarfile.open(p, "r:gz")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise _corrupt(p, str(exc) or type(exc).__name__) from exc
    with tf:
        try:
            members = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise _corrupt(p, str(exc) or type(exc).__name__) from exc
        if len(members) > max_members:
            raise BundleError(f"bundle {p} has {len(members)} members (limit {max_members})", "bundle fewer files")
        regular: dict[str, tarfile.TarInfo] = {}
        seen: set[str] = set()
        total = 0
        for m in members:
            clean = _check_member(m, p)
            if hasattr(tarfile, "data_filter"):  # Python's own check as a second opinion
                try:
                    tarfile.data_filter(m, "/nonexistent-edgeseg-root")
                except tarfile.FilterError as exc:
                    raise _refuse(p, f"an unsafe member ({exc})") from exc
            if clean in seen:
                raise _refuse(p, f"{clean} twice")
            seen.add(clean)
            if m.isreg():
                regular[clean] = m
                total += m.size
                if total > max_bytes:
                    raise BundleError(f"bundle {p} holds more than {max_bytes >> 20} MiB", "bundle fewer models")
        if MANIFEST not in regular:
            raise BundleError(f"{p} has no {MANIFEST}: it is not an edgeseg bundle", "make one with edgeseg bundle")
        if regular[MANIFEST].size > MAX_MANIFEST_BYTES:
            raise BundleError(f"the manifest of {p} is too large", "rebuild the bundle with edgeseg bundle")
        try:
            man = json.loads(tf.extractfile(regular[MANIFEST]).read())
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError(f"the manifest of {p} is not valid JSON", "rebuild the bundle") from exc
        _validate_manifest(man, p)
        listed, present = set(man["files"]), set(regular) - {MANIFEST}
        if listed - present:
            raise BundleError(
                f"bundle {p} lacks {', '.join(sorted(listed - present))} listed in its manifest",
                "copy it again or rebuild it with edgeseg bundle",
            )
        if present - listed:
            raise BundleError(
                f"bundle {p} holds {', '.join(sorted(present - listed))}, not listed in its manifest; refusing it",
                "rebuild it with edgeseg bundle",
            )
        for name in sorted(listed):  # every checksum, read from the archive, before anything is written
            info, m = man["files"][name], regular[name]
            if m.size != info["size"]:
                raise BundleError(
                    f"bundle {p}: {name} is {m.size} bytes, the manifest says {info['size']}",
                    "copy it again or rebuild it with edgeseg bundle",
                )
            h = hashlib.sha256()
            fh = tf.extractfile(m)
            while block := fh.read(1 << 20):
                h.update(block)
            if h.hexdigest() != info["sha256"]:
                raise BundleError(
                    f"bundle {p}: {name} does not match its sha256 in the manifest (tampered or damaged)",
                    "copy it again or rebuild it with edgeseg bundle",
                )
    return man, regular


# ------------------------------------------------------------------------------------------------ installing


def _read_manifest_file(d: Path) -> dict:
    mp = d / MANIFEST
    if not mp.is_file() or mp.is_symlink():
        raise BundleError(
            f"{d} is not an installed edgeseg bundle (no {MANIFEST})",
            f"install one: edgeseg install-bundle BUNDLE.tar.gz --dir {d}",
        )
    try:
        man = json.loads(mp.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        fix = f"reinstall: edgeseg install-bundle BUNDLE.tar.gz --dir {d}"
        raise BundleError(f"{mp} is not valid JSON", fix) from exc
    return _validate_manifest(man, d)


def _verify_dir(d: Path, man: dict) -> None:
    """Every file the manifest lists is a regular file inside ``d`` with the right size and sha256."""
    root = d.resolve()
    for name, info in man["files"].items():
        f = d / name
        fix = f"reinstall it: edgeseg install-bundle BUNDLE.tar.gz --dir {d}"
        if f.is_symlink() or (f.parent.is_symlink()):
            raise BundleError(f"bundle {d}: {name} is a link; refusing it", fix)
        if not f.is_file():
            raise BundleError(f"bundle {d} lacks {name}", fix)
        if not f.resolve().is_relative_to(root):
            raise BundleError(f"bundle {d}: {name} lies outside the bundle", fix)
        if f.stat().st_size != info["size"] or sha256_file(f) != info["sha256"]:
            raise BundleError(
                f"bundle {d}: {name} does not match its sha256 in the manifest (tampered or damaged)", fix
            )


def install_bundle(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Bundle:
    """Verify ``archive`` completely, then install it into the folder ``dest``; returns the opened bundle.

    ``dest`` ends up holding ``manifest.json`` and ``models/`` (an earlier bundle there is replaced). Nothing is
    written outside ``dest``; a refused archive leaves ``dest`` as it was (and does not create it).
    """
    archive, dest = Path(archive), Path(dest)
    man, regular = _scan_archive(archive, max_bytes, max_members)  # writes nothing
    created = not dest.exists()
    if dest.exists():
        if not dest.is_dir() or dest.is_symlink():
            raise BundleError(f"{dest} exists and is not a folder", "choose another --dir")
        stray = [
            c.name
            for c in dest.iterdir()
            if c.name not in (MANIFEST, MODELS_DIR) and not c.name.startswith((_INCOMING, _OUTGOING))
        ]
        if stray:
            raise BundleError(
                f"{dest} is not empty and is not an installed bundle (it holds {', '.join(sorted(stray)[:3])})",
                "choose a new or empty --dir",
            )
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(f"cannot create {dest} ({exc.strerror or exc})", "choose a writable --dir") from exc
    for c in dest.iterdir():  # leftovers of an interrupted install
        if c.name.startswith((_INCOMING, _OUTGOING)) and c.is_dir() and not c.is_symlink():
            shutil.rmtree(c, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=_INCOMING, dir=dest))
    try:
        with tarfile.open(archive, "r:gz") as tf:
            wanted = [m for m in tf.getmembers() if m.isreg() and _check_member(m, archive) in regular]
            if len(wanted) != len(regular):
                raise _corrupt(archive, "it changed while being installed")
            if hasattr(tarfile, "data_filter"):
                tf.extractall(tmp, members=wanted, filter="data")
            else:  # Python < 3.11.4 / 3.10.12: the member checks above already refuse every unsafe entry
                tf.extractall(tmp, members=wanted)
        _verify_dir(tmp, _read_manifest_file(tmp))
        if _read_manifest_file(tmp) != man:
            raise _corrupt(archive, "it changed while being installed")
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                dest.rmdir()
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return open_bundle(dest)


def _swap_in(tmp: Path, dest: Path) -> None:
    """Move the verified files in: the old manifest out first, the new manifest in last (the commit point)."""
    old = Path(tempfile.mkdtemp(prefix=_OUTGOING, dir=dest))
    for name in (MANIFEST, MODELS_DIR):  # the manifest first: a half-swapped folder is never taken for a bundle
        if (dest / name).exists() or (dest / name).is_symlink():
            os.replace(dest / name, old / name)
    os.replace(tmp / MODELS_DIR, dest / MODELS_DIR)
    os.replace(tmp / MANIFEST, dest / MANIFEST)
    shutil.rmtree(old, ignore_errors=True)


def check_summary(path: str | os.PathLike) -> dict:
    """``edgeseg install-bundle --check``: verify an archive or an installed folder and say what it holds."""
    res = check_bundle(path)
    if isinstance(res, Bundle):
        return res.summary()
    return {"edgeseg_version": res["edgeseg_version"], "models": [m["name"] for m in res["models"]]}


def default_install_dir(bundle: str | os.PathLike) -> Path:
    """Where ``edgeseg install-bundle B`` installs by default: the archive's name without ``.tar.gz``."""
    name = Path(bundle).name
    return Path(name[: -len(".tar.gz")] if name.endswith(".tar.gz") else Path(name).stem)
