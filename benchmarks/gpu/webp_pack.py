"""Shrink the packed GPU data (``.gpu/``, from pack_data.py) for the trip to the GPU box, losslessly.

    python benchmarks/gpu/webp_pack.py pack .gpu build/gpuw     # here: 8-bit images -> lossless WebP (-20 %)
    python benchmarks/gpu/webp_pack.py unpack build/gpuw .gpu   # on the box: back to the identical PNG pixels

The box's transfer limit is 64 MiB for the whole working tree; the PNG pack (~46 MB of training data) plus
the tree and the albumentations wheels exceed it. Masks (16-bit labels) and other files are copied as they
are. Unpacking restores every image pixel for pixel (checked when packing), grayscale as one channel, as
pack_data.py writes it; only the names of the folders pack/unpack handles are ``*/images/*``.
"""

from __future__ import annotations

import argparse
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

SUBDIRS = ("dsb256", "dsb256_fixes", "monuseg06")


def _decode(buf: np.ndarray) -> np.ndarray:
    im = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if im.ndim == 3 and im.shape[2] == 3 and (im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all():
        im = im[..., 0]
    return im


def _pack_one(args: tuple[Path, Path]) -> None:
    src, dst = args
    im = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if im.dtype != np.uint8 or (im.ndim == 3 and im.shape[2] != 3):
        shutil.copy2(src, dst.with_suffix(src.suffix))
        return
    ok, buf = cv2.imencode(".webp", im, [cv2.IMWRITE_WEBP_QUALITY, 101])  # quality > 100: lossless
    if not ok or not np.array_equal(_decode(buf), im):
        shutil.copy2(src, dst.with_suffix(src.suffix))
        return
    dst.with_suffix(".webp").write_bytes(buf.tobytes())


def _unpack_one(args: tuple[Path, Path]) -> None:
    src, dst = args
    im = _decode(np.frombuffer(src.read_bytes(), np.uint8))
    cv2.imwrite(str(dst.with_suffix(".png")), im, [cv2.IMWRITE_PNG_COMPRESSION, 1])


def convert(src_root: Path, dst_root: Path, pack: bool) -> int:
    jobs = []
    for sub in SUBDIRS:
        for f in sorted((src_root / sub).rglob("*")):
            if not f.is_file():
                continue
            out = dst_root / f.relative_to(src_root)
            out.parent.mkdir(parents=True, exist_ok=True)
            is_image = f.parent.name == "images"
            if pack and is_image and f.suffix == ".png":
                jobs.append((f, out))
            elif not pack and is_image and f.suffix == ".webp":
                jobs.append((f, out))
            else:
                shutil.copy2(f, out)
    with ProcessPoolExecutor() as pool:
        list(pool.map(_pack_one if pack else _unpack_one, jobs, chunksize=16))
    return len(jobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["pack", "unpack"])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    a = ap.parse_args()
    n = convert(a.src, a.dst, a.mode == "pack")
    print(f"{a.mode}ed {n} images from {a.src} into {a.dst}")


if __name__ == "__main__":
    main()
