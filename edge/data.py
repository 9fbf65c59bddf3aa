"""Image readers for the two layouts edgeseg understands, and the image-type classifier.

* Kaggle DSB2018 layout: ``ROOT/<id>/images/<id>.png`` + ``ROOT/<id>/masks/*.png`` (one binary PNG per
  nucleus). The masks are merged into one instance label image (and, by max projection, one binary
  foreground mask, as the paper does).
* Paired layout: ``ROOT/images/NAME.{png,tif,...}`` + ``ROOT/masks/NAME.{png,tif,...}`` where a mask is an
  instance label image (0 = background, 1..N = nuclei) or a binary mask (split into instances by
  connected components).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError, MissingDependency

IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
IMAGE_TYPES = ("fluorescence", "brightfield", "stained")


@dataclass(frozen=True)
class ItemRef:
    """Where one image and its masks live on disk."""

    name: str
    image_path: Path
    mask_paths: tuple[Path, ...]
    layout: str  # 'kaggle' or 'paired'


@dataclass
class Sample:
    """One image with its instance labels, at the original resolution."""

    name: str
    image: np.ndarray  # uint8 HxWx3 RGB
    labels: np.ndarray  # int32 HxW, 0 = background, 1..N = nuclei
    image_type: str = "fluorescence"
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0


def needs_imagecodecs(exc: BaseException) -> bool:
    """Whether tifffile failed for want of the ``imagecodecs`` package (a compressed TIFF: LZW, Deflate, zstd...)."""
    return "imagecodecs" in str(exc)


def missing_imagecodecs(path: str | os.PathLike, exc: BaseException) -> MissingDependency:
    """The one-line error (exit code 3, a missing dependency) for a compressed TIFF without ``imagecodecs``."""
    cause = str(exc).strip().splitlines()[0][:120]
    return MissingDependency(f"{Path(path).name} is compressed and reading it needs imagecodecs ({cause})",
                             "pip install imagecodecs (an edgeseg dependency: reinstall edgeseg)")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as stored: uint8/uint16, gray or RGB(A) in RGB order. Raises DataError if unreadable."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            img = tifffile.imread(path)
        except Exception as exc:  # tifffile raises many kinds
            if needs_imagecodecs(exc):
                raise missing_imagecodecs(path, exc) from exc
            cause = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            raise DataError(
                f"cannot read {path} ({type(exc).__name__}{': ' + cause if cause else ''})",
                "replace or remove the file",
            ) from exc
        if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[2] not in (3, 4):
            img = np.moveaxis(img, 0, -1)
        return img
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        if not path.exists():
            raise DataError(f"{path} does not exist", "check the path")
        raise DataError(f"cannot decode {path} (corrupt or not an image)", "replace or remove the file")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return img


def _images_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS and p.is_file()}


def detect_layout(root: str | os.PathLike) -> str:
    """'paired' if ROOT/images and ROOT/masks exist, 'kaggle' if ROOT/<id>/images exist; else DataError."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist", "pass --data with an existing folder")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder", "pass --data with a dataset folder")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "paired"
    if any((d / "images").is_dir() for d in root.iterdir() if d.is_dir()):
        return "kaggle"
    raise DataError(
        f"{root} holds no dataset",
        "use the Kaggle layout (<id>/images/<id>.png + <id>/masks/*.png) or images/ + masks/ folders",
    )


def read_removed(fixes: Path) -> set[str]:
    removed = fixes / "REMOVED.txt"
    if not removed.exists():
        return set()
    return {line.strip() for line in removed.read_text().splitlines() if line.strip()}


def find_items(root: str | os.PathLike, mask_fixes: str | os.PathLike | None = None) -> list[ItemRef]:
    """List the images of a dataset folder (either layout), sorted by name.

    ``mask_fixes`` is a folder of corrected masks plus a ``REMOVED.txt``, as in ``stage1_train_fixes``:
    ``<id>/masks/`` folders for the Kaggle layout, ``masks/NAME.png`` for the paired layout. Corrected
    masks replace the originals and removed images are left out.
    """
    root = Path(root)
    layout = detect_layout(root)
    items: list[ItemRef] = []
    if layout == "paired":
        images, masks = _images_in(root / "images"), _images_in(root / "masks")
        if mask_fixes:  # a folder with masks/NAME.png replacing ours, and REMOVED.txt
            fixes = Path(mask_fixes)
            if (fixes / "masks").is_dir():
                masks.update(_images_in(fixes / "masks"))
            for name in read_removed(fixes):
                images.pop(name, None)
        for name, ipath in images.items():
            if name not in masks:
                raise DataError(
                    f"image {ipath.name} has no mask in {root / 'masks'}", "add masks/" + name + ".png"
                )
            items.append(ItemRef(name, ipath, (masks[name],), "paired"))
    else:
        fixes = Path(mask_fixes) if mask_fixes else None
        removed = read_removed(fixes) if fixes else set()
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            if d.name in removed:
                continue
            imgs = list(_images_in(d / "images").values()) if (d / "images").is_dir() else []
            if not imgs:
                continue
            mask_dir = d / "masks"
            if fixes and (fixes / d.name / "masks").is_dir():
                mask_dir = fixes / d.name / "masks"
            mpaths = tuple(_images_in(mask_dir).values()) if mask_dir.is_dir() else ()
            if not mpaths:
                raise DataError(
                    f"image {d.name} has no masks in {mask_dir}", "add its masks or remove the folder"
                )
            items.append(ItemRef(d.name, imgs[0], mpaths, "kaggle"))
    if not items:
        raise DataError(
            f"data folder {root} holds no images", "point --data at a folder with images and masks"
        )
    return items


def _labels_from_mask_image(m: np.ndarray) -> np.ndarray:
    """A mask file -> int32 instance labels (label images are kept, binary masks split by connectivity)."""
    if m.ndim == 3:
        m = m[:, :, 0] if m.shape[2] in (3, 4) else m.max(axis=2)
    values = np.unique(m)
    binary = values.size <= 2 and (values.max(initial=0) in (0, 1, 255) or m.dtype == bool)
    if binary:
        from .postprocess import connected_components

        return connected_components(m > 0, min_size=0)
    return m.astype(np.int32)


def read_labels(ref: ItemRef, shape: tuple[int, int]) -> np.ndarray:
    """Read the masks of an item as one int32 instance label image of ``shape`` (max projection)."""
    labels = np.zeros(shape, np.int32)
    if ref.layout == "paired":
        m = read_image(ref.mask_paths[0])
        if m.shape[:2] != shape:
            raise DataError(
                f"mask {ref.mask_paths[0].name} is {m.shape[1]}x{m.shape[0]} but its image is {shape[1]}x{shape[0]}",
                "give each mask the size of its image",
            )
        return _labels_from_mask_image(m)
    for i, p in enumerate(ref.mask_paths, start=1):
        m = read_image(p)
        if m.shape[:2] != shape:
            raise DataError(
                f"mask {p.name} of {ref.name} is {m.shape[1]}x{m.shape[0]} but its image is {shape[1]}x{shape[0]}",
                "give each mask the size of its image",
            )
        if m.ndim == 3:
            m = m.max(axis=2)
        labels[m > 0] = i  # max projection; where masks overlap the later nucleus wins
    return labels


def image_type(rgb8: np.ndarray) -> str:
    """Classify an image as 'fluorescence' (dark background), 'brightfield' (gray, bright) or 'stained' (colour)."""
    x = rgb8.astype(np.int16)
    colourfulness = np.abs(x[..., 0] - x[..., 1]).mean() + np.abs(x[..., 1] - x[..., 2]).mean()
    if colourfulness > 5:
        return "stained"
    return "fluorescence" if x.mean() < 100 else "brightfield"


def load_sample(ref: ItemRef, source: str = "") -> Sample:
    """Read one item: the image as uint8 RGB and its instance labels at the original resolution."""
    from .preprocess import to_rgb8

    raw = read_image(ref.image_path)
    rgb = to_rgb8(raw)
    labels = read_labels(ref, rgb.shape[:2])
    return Sample(ref.name, rgb, labels, image_type(rgb), source, {"bit_depth": raw.dtype.itemsize * 8})
