"""Pack a compact, lossless-for-training copy of the training data for a GPU box (which cannot see ../shared).

    python benchmarks/gpu/pack_data.py --out .gpu

Writes, in the paired layout (``images/NAME.png`` + ``masks/NAME.png`` 16-bit instance labels):

* ``dsb256/``: every stage1_train image exactly as the training cache holds it (``resize_to(image, 256)``,
  nearest-resized labels from the original masks), so training on it equals training on the original
  folder (the cache of a 256x256 image is the image itself);
* ``dsb256_fixes/``: ``masks/`` from the community-corrected masks, and ``REMOVED.txt``;
* ``monuseg06/``: the MoNuSeg train and val tiles resized by 0.6 (what ``monuseg_train@0.6`` caches).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from edgeseg.data import find_items, load_sample, read_removed
from edgeseg.preprocess import resize_labels, resize_to
from edgeseg.split import SPLITS_DIR


def write_pair(folder: Path, name: str, image: np.ndarray | None, labels: np.ndarray) -> None:
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    if image is not None:
        (folder / "images").mkdir(parents=True, exist_ok=True)
        gray = bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
        out = image[..., 0] if gray else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / "images" / f"{name}.png"), out, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    cv2.imwrite(
        str(folder / "masks" / f"{name}.png"), labels.astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 9]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsb", type=Path, default=Path("../shared/data/dsb2018/stage1_train"))
    ap.add_argument("--fixes", type=Path, default=Path("../shared/data/dsb2018/stage1_train_fixes"))
    ap.add_argument("--monuseg", type=Path, default=Path("../shared/data/monuseg_train"))
    ap.add_argument("--out", type=Path, default=Path(".gpu"))
    a = ap.parse_args()
    for it in find_items(a.dsb):
        s = load_sample(it)
        write_pair(a.out / "dsb256", it.name, resize_to(s.image, 256), resize_labels(s.labels, 256))
    fixed = [d.name for d in a.fixes.iterdir() if (d / "masks").is_dir()]
    fixed_items = {it.name: it for it in find_items(a.dsb, a.fixes)}
    for name in fixed:
        if name in fixed_items:
            s = load_sample(fixed_items[name])
            write_pair(a.out / "dsb256_fixes", name, None, resize_labels(s.labels, 256))
    (a.out / "dsb256_fixes" / "REMOVED.txt").write_text(
        "".join(n + "\n" for n in sorted(read_removed(a.fixes)))
    )
    split = json.loads((SPLITS_DIR / "monuseg_train.json").read_text())
    keep = set(split["train"]) | set(split["val"])
    for it in find_items(a.monuseg):
        if it.name in keep:
            s = load_sample(it)
            h, w = s.image.shape[:2]
            size = (round(h * 0.6), round(w * 0.6))
            write_pair(a.out / "monuseg06", it.name, resize_to(s.image, size), resize_labels(s.labels, size))
    print("packed into", a.out)


if __name__ == "__main__":
    main()
