"""The canonical, committed train/val/test splits, so that every result in the project is on the same images.

A split file (``edge/splits/NAME.json``) lists the image names of each part. It was generated once by
:func:`make_split` (seeded, stratified) and committed; :func:`canonical_split` recognises a dataset folder
as belonging to a split file when the folder's images are (nearly) all listed in it, so the corrected
copy of stage1_train (664 images) uses the same split as the original (670).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import DataError

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
PARTS = ("train", "val", "test")


def make_split(
    names: Sequence[str], strata: Sequence[str], fractions=(0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[str]]:
    """Split names into train/val/test per stratum (image type x size), seeded and deterministic.

    Each stratum with at least three images puts at least one image in val and one in test.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for n, s in sorted(zip(names, strata, strict=True)):
        groups[s].append(n)
    out: dict[str, list[str]] = {p: [] for p in PARTS}
    rng = random.Random(seed)
    for s in sorted(groups):
        members = groups[s]
        rng.shuffle(members)
        n = len(members)
        n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
        n_test = max(1, round(n * fractions[2])) if n >= 3 else 0
        out["val"] += members[:n_val]
        out["test"] += members[n_val : n_val + n_test]
        out["train"] += members[n_val + n_test :]
    return {p: sorted(v) for p, v in out.items()}


def split_hash(split: dict[str, list[str]]) -> str:
    """A short content hash of a split, recorded in model cards."""
    text = json.dumps({p: sorted(split[p]) for p in PARTS}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_split_file(name: str) -> dict:
    path = SPLITS_DIR / f"{name}.json"
    if not path.exists():
        raise DataError(f"no split named {name!r}", f"choose one of {', '.join(available_splits())}")
    return json.loads(path.read_text())


def available_splits() -> list[str]:
    return sorted(p.stem for p in SPLITS_DIR.glob("*.json"))


def canonical_split(names: Iterable[str]) -> tuple[str, dict[str, list[str]]] | None:
    """The committed split that covers these image names (>= 95 % listed), or None."""
    names = set(names)
    for split_name in available_splits():
        data = load_split_file(split_name)
        listed = set().union(*(data[p] for p in PARTS))
        if names and len(names & listed) >= 0.95 * len(names):
            return split_name, {p: sorted(set(data[p]) & names) for p in PARTS}
    return None


def select(names: Sequence[str], split: str | None, where: str = "the data folder") -> tuple[list[str], dict]:
    """Names in ``split`` ('train', 'val', 'test', 'all' or None = 'test' on a canonical folder, else 'all').

    Returns (names, info) where info has the split file name and hash (or None for an ad-hoc folder).
    """
    found = canonical_split(names)
    if split is None:
        split = "test" if found else "all"
    if split == "all":
        info = {"split": "all", "split_file": found[0] if found else None}
        info["split_hash"] = split_hash(found[1]) if found else None
        return list(names), info
    if split not in PARTS:
        raise DataError(f"unknown split {split!r}", "use train, val, test or all")
    if found is None:
        raise DataError(f"{where} has no canonical split", "use --split all to evaluate every image")
    split_name, parts = found
    chosen = set(parts[split])
    return [n for n in names if n in chosen], {
        "split": split,
        "split_file": split_name,
        "split_hash": split_hash(parts),
    }


def select_items(items: Sequence, split: str | None, where: str = "the data folder") -> tuple[list, dict]:
    """Like :func:`select`, for items with a ``name`` (e.g. ItemRef): the items of ``split``, in order, and info."""
    names, info = select([it.name for it in items], split, where)
    chosen = set(names)
    return [it for it in items if it.name in chosen], info
