"""The preprocessed cache: every image decoded and resized once, then memory-mapped for every epoch.

A cache folder holds ``images.npy`` (uint8 NxSxSx3 RGB at the model size, exactly what
:func:`edgeseg.preprocess.resize_to` gives), ``labels.npy`` (uint16 NxSxS instance labels, nearest-neighbour
resized) and ``index.json`` (entry names, the image each entry came from, image types, original sizes).
Its key hashes the dataset's file list and sizes, the mask fixes, the size and the scale, so a changed
dataset builds a new cache.

Two ways to bring an image to the model size:

* ``scale=None`` (the paper's): the whole image is resized to SxS, one entry per image;
* ``scale=f``: the image is resized by ``f`` (e.g. 0.6 brings 40x H&E nuclei to the training scale) and
  cut into overlapping SxS crops, one entry per crop (``NAME#k``), so large tiles are not squeezed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import ItemRef, load_sample
from .fsutil import atomic_write_json
from .postprocess import cut_tiles, tile_grid
from .preprocess import resize_labels, resize_to

CACHE_VERSION = 2


def cache_root() -> Path:
    return Path(os.environ.get("EDGESEG_CACHE", Path.home() / ".cache" / "edgeseg"))


def cache_key(items: list[ItemRef], size: int, tag: str = "", scale: float | None = None) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{tag}|{scale}".encode())
    for it in items:
        h.update(f"{it.name}|{it.image_path.stat().st_size}|".encode())
        for m in it.mask_paths:
            h.update(f"{m.parent.parent.name}/{m.name}|{m.stat().st_size}|".encode())
    return h.hexdigest()[:20]


@dataclass
class CachedSet:
    """Memory-mapped arrays of a cached dataset."""

    folder: Path
    names: list[str]  # entry names (image name, or NAME#k for crops)
    sources: list[str]  # the image each entry came from
    image_types: list[str]
    orig_shapes: list[tuple[int, int]]
    images: np.ndarray  # uint8 N x S x S x 3
    labels: np.ndarray  # uint16 N x S x S

    def __len__(self) -> int:
        return len(self.names)

    def indices(self, image_names) -> list[int]:
        """Entries that come from the given images (all crops of each)."""
        wanted = set(image_names)
        return [i for i, src in enumerate(self.sources) if src in wanted]


def _load(folder: Path) -> CachedSet:
    index = json.loads((folder / "index.json").read_text())
    return CachedSet(
        folder,
        index["names"],
        index["sources"],
        index["image_types"],
        [tuple(s) for s in index["orig_shapes"]],
        np.load(folder / "images.npy", mmap_mode="r"),
        np.load(folder / "labels.npy", mmap_mode="r"),
    )


def scaled_crops(image: np.ndarray, labels: np.ndarray, size: int, scale: float):
    """Resize an image and its labels by ``scale`` and cut them into overlapping size x size crops."""
    h, w = image.shape[:2]
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    img, lab = resize_to(image, (sh, sw)), resize_labels(labels, (sh, sw))
    grid = tile_grid(sh, sw, size, overlap=size // 8)
    return cut_tiles(img, grid, size), cut_tiles(lab, grid, size)


def build_cache(
    items: list[ItemRef],
    size: int = 256,
    tag: str = "",
    root: Path | None = None,
    progress: bool = True,
    scale: float | None = None,
) -> CachedSet:
    """Return the cache of ``items`` at ``size``, building it first if needed (2 threads, progress bar)."""
    folder = (root or cache_root()) / cache_key(items, size, tag, scale)
    if (folder / "index.json").exists():
        return _load(folder)
    from tqdm.auto import tqdm

    def work(it: ItemRef):
        s = load_sample(it)
        labels = np.minimum(s.labels, 65535).astype(np.uint16)
        if scale is None:
            imgs, labs = [resize_to(s.image, size)], [resize_labels(labels, size)]
        else:
            imgs, labs = scaled_crops(s.image, labels, size, scale)
        return s, imgs, labs

    entries: list[tuple] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for s, imgs, labs in tqdm(
            pool.map(work, items), total=len(items), desc="caching", unit="img", disable=not progress
        ):
            tagged = len(imgs) > 1 or scale is not None
            for k, (im, lb) in enumerate(zip(imgs, labs, strict=True)):
                entries.append(
                    (
                        f"{s.name}#{k}" if tagged else s.name,
                        s.name,
                        s.image_type,
                        list(s.image.shape[:2]),
                        im,
                        lb,
                    )
                )
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "images.npy", np.stack([e[4] for e in entries]))
    np.save(tmp / "labels.npy", np.stack([e[5] for e in entries]))
    atomic_write_json(
        tmp / "index.json",
        {
            "names": [e[0] for e in entries],
            "sources": [e[1] for e in entries],
            "image_types": [e[2] for e in entries],
            "orig_shapes": [e[3] for e in entries],
            "size": size,
            "scale": scale,
            "tag": tag,
        },
    )
    try:
        os.replace(tmp, folder)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(folder)
