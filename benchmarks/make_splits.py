"""Regenerate the committed canonical splits in edge/splits/ (run once; the files are committed).

    python benchmarks/make_splits.py --dsb ../shared/data/dsb2018/stage1_train --monuseg ../shared/data/monuseg_train

DSB2018 stage1_train: 80/10/10, seed 0, stratified by image type (fluorescence / brightfield / stained)
x image size, so each part holds every modality. MoNuSeg: by organ, one tile (= one patient) of each
organ with six tiles to val and one to test; the organs with two tiles stay in train (22/4/4).
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from common import DSB, MONUSEG

from edgeseg.data import find_items, image_type, read_image
from edgeseg.fsutil import atomic_write_json
from edgeseg.preprocess import to_rgb8
from edgeseg.split import SPLITS_DIR, make_split, split_hash


def dsb_split(root: Path) -> dict:
    items = find_items(root)
    strata = []
    for it in items:
        rgb = to_rgb8(read_image(it.image_path))
        strata.append(f"{image_type(rgb)}:{rgb.shape[0]}x{rgb.shape[1]}")
    parts = make_split([it.name for it in items], strata, (0.8, 0.1, 0.1), seed=0)
    types = {it.name: s.split(":")[0] for it, s in zip(items, strata, strict=True)}
    return {
        "dataset": "dsb2018_stage1_train",
        "method": "make_split(fractions=(0.8, 0.1, 0.1), seed=0), strata = image type x size",
        **parts,
        "image_types": types,
        "hash": split_hash(parts),
    }


def monuseg_split(root: Path, seed: int = 0) -> dict:
    rows = list(csv.DictReader(open(root / "meta.csv")))
    by_organ: dict[str, list[str]] = {}
    for r in rows:
        by_organ.setdefault(r["organ"], []).append(r["name"])
    rng = random.Random(seed)
    parts = {"train": [], "val": [], "test": []}
    for organ in sorted(by_organ):
        names = sorted(by_organ[organ])
        rng.shuffle(names)
        if len(names) >= 6:
            parts["val"].append(names[0])
            parts["test"].append(names[1])
            parts["train"] += names[2:]
        else:
            parts["train"] += names
    parts = {k: sorted(v) for k, v in parts.items()}
    organs = {r["name"]: r["organ"] for r in rows}
    return {
        "dataset": "monuseg_train",
        "method": f"per organ with >= 6 tiles: 1 val, 1 test (seed {seed}); all other tiles train",
        **parts,
        "organs": organs,
        "hash": split_hash(parts),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsb", type=Path, default=DSB)
    ap.add_argument("--monuseg", type=Path, default=MONUSEG)
    a = ap.parse_args()
    for name, fn, root in (
        ("dsb2018_stage1_train", dsb_split, a.dsb),
        ("monuseg_train", monuseg_split, a.monuseg),
    ):
        data = fn(root)
        atomic_write_json(SPLITS_DIR / f"{name}.json", data)
        print(name, {p: len(data[p]) for p in ("train", "val", "test")}, data["hash"])


if __name__ == "__main__":
    main()
