"""Calibration and validation data for INT8 export, read through edgeseg's own readers and preprocessing.

* Calibration: a seeded sample, stratified by image type, of the TRAINING part of a canonical dataset folder
  (the committed split in ``edge/splits``), or of every image of any other folder. A folder of plain images
  without masks (frames from the user's own microscope) works too. The sample is preprocessed exactly as the
  runtime does (:func:`edgeseg.preprocess.preprocess` with the card's normalisation) and hashed; the hash goes
  into the card.
* Validation (the accuracy guard): the VALIDATION part of a canonical folder, or every labelled image of
  any other folder.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.data import IMAGE_EXTS, ItemRef, Sample, find_items, image_type, load_sample, read_image
from edgeseg.errors import DataError
from edgeseg.preprocess import DEFAULT_NORMALISATION, preprocess, to_rgb8
from edgeseg.split import canonical_split, load_split_file, select_items

DEFAULT_CALIB_SIZE = 100
DEFAULT_SEED = 0


@dataclass
class CalibrationSet:
    """Preprocessed calibration inputs (float32 N x 3 x S x S) and where they came from."""

    inputs: np.ndarray
    names: list[str]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self):
        """One 1 x 3 x S x S array per image (the exported graphs' input)."""
        return [self.inputs[i : i + 1] for i in range(len(self.inputs))]


@dataclass
class GuardSet:
    """Labelled validation samples for the accuracy guard."""

    samples: list[Sample]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)


def _plain_images(folder: Path) -> list[ItemRef]:
    """Image files directly in ``folder`` or in ``folder/images`` (no masks needed for calibration)."""
    found = []
    for d in (folder, folder / "images"):
        if d.is_dir():
            found += [p for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    return [ItemRef(p.stem, p, (), "plain") for p in found]


def _calibration_items(folder: Path) -> tuple[list[ItemRef], dict]:
    if not folder.exists():
        raise DataError(f"calibration folder {folder} does not exist", "pass --calib-data with an existing folder")
    if not folder.is_dir():
        raise DataError(f"calibration data {folder} is not a folder", "pass --calib-data with a folder of images")
    try:
        items = find_items(folder)
    except DataError:  # no dataset layout (or masks missing): a plain folder of frames still calibrates
        items = _plain_images(folder)
        if not items:
            raise DataError(
                f"calibration folder {folder} holds no usable images",
                "give a dataset folder or a folder of .png/.tif/.jpg frames",
            ) from None
        return items, {"split": "all", "split_file": None, "split_hash": None, "layout": "plain"}
    found = canonical_split([it.name for it in items])
    split = "train" if found else "all"
    chosen, info = select_items(items, split, where=str(folder))
    if not chosen:
        raise DataError(
            f"calibration folder {folder} has no images in its training split",
            "give the full dataset folder, or a folder that is not part of a canonical split",
        )
    return chosen, {**info, "layout": items[0].layout}


def _strata(items: list[ItemRef], info: dict) -> list[str] | None:
    """Image types from the committed split file when it lists them (no image needs reading), else None."""
    if info.get("split_file"):
        types = load_split_file(info["split_file"]).get("image_types") or {}
        if all(it.name in types for it in items):
            return [types[it.name] for it in items]
    return None


def stratified_sample(names: list[str], strata: list[str], n: int, seed: int) -> list[str]:
    """``n`` names, seeded, with each stratum's share proportional to its size (largest remainder, >= 1 each)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name, s in sorted(zip(names, strata, strict=True)):
        groups[s].append(name)
    if n >= len(names):
        return sorted(names)
    total = len(names)
    quota = {s: n * len(g) / total for s, g in groups.items()}
    take = {s: min(len(groups[s]), max(1, int(q))) for s, q in quota.items()}
    for s in sorted(quota, key=lambda s: quota[s] - int(quota[s]), reverse=True):
        if sum(take.values()) >= n:
            break
        if take[s] < len(groups[s]):
            take[s] += 1
    while sum(take.values()) > n:  # the ">= 1 each" rule overshot: trim the largest stratum
        s = max(take, key=lambda k: take[k])
        take[s] -= 1
    rng = random.Random(seed)
    out = []
    for s in sorted(groups):
        members = list(groups[s])
        rng.shuffle(members)
        out += members[: take[s]]
    return sorted(out)


def calibration_set(
    folder: str | Path,
    n: int = DEFAULT_CALIB_SIZE,
    *,
    seed: int = DEFAULT_SEED,
    size: int = 256,
    normalisation: dict | None = None,
) -> CalibrationSet:
    """A seeded, stratified sample of ``n`` images of ``folder`` (its training split when canonical)."""
    if n < 1:
        raise DataError(f"calibration size {n} is too small", "use --calib-size 100 or more")
    folder = Path(folder)
    items, info = _calibration_items(folder)
    by_name = {it.name: it for it in items}
    strata = _strata(items, info)
    raw: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    if strata is None:  # read every candidate once to learn its type
        strata = []
        for it in list(items):
            try:
                raw[it.name] = to_rgb8(read_image(it.image_path))
            except DataError:
                skipped.append(it.name)
                continue
            strata.append(image_type(raw[it.name]))
        items = [it for it in items if it.name in raw]
    names = stratified_sample([it.name for it in items], strata, n, seed)
    norm = normalisation or DEFAULT_NORMALISATION
    inputs, used = [], []
    for name in names:
        try:
            rgb = raw[name] if name in raw else to_rgb8(read_image(by_name[name].image_path))
        except DataError:
            skipped.append(name)
            continue
        inputs.append(preprocess(rgb, size, mean=norm["mean"], std=norm["std"]))
        used.append(name)
    if not inputs:
        raise DataError(
            f"calibration folder {folder} holds no usable images",
            "give a folder whose images can be read (.png/.tif/.jpg)",
        )
    x = np.concatenate(inputs).astype(np.float32)
    type_of = dict(zip([it.name for it in items], strata, strict=True))
    counts: dict[str, int] = defaultdict(int)
    for name in used:
        counts[type_of[name]] += 1
    info = {
        "source": str(folder),
        **info,
        "n_images": len(used),
        "requested": n,
        "available": len(items),
        "seed": seed,
        "strata": dict(sorted(counts.items())),
        "skipped_unreadable": sorted(skipped),
        "names_sha256": hashlib.sha256(json.dumps(used).encode()).hexdigest(),
        "sha256": hashlib.sha256(x.tobytes()).hexdigest(),
        "method": "seeded sample stratified by image type; edgeseg.preprocess.preprocess at the card's size",
    }
    return CalibrationSet(x, used, info)


def guard_set(folder: str | Path, split: str | None = None) -> GuardSet:
    """Labelled samples for the guard: the validation split of a canonical folder, else every image."""
    folder = Path(folder)
    try:
        items = find_items(folder)
    except DataError as exc:
        raise DataError(
            f"the accuracy guard needs labelled validation images, and {folder} has none ({exc.problem})",
            "pass --guard-data with a folder of images and masks",
        ) from None
    if split is None:
        split = "val" if canonical_split([it.name for it in items]) else "all"
    chosen, info = select_items(items, split, where=str(folder))
    if not chosen:
        raise DataError(f"{folder} has no images in its {split} split", "pass --guard-data with labelled images")
    samples = [load_sample(it) for it in chosen]
    return GuardSet(samples, {"source": str(folder), **info, "n_images": len(samples)})
