from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "edge" / "samples" / "dsb2018_sample"
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test session uses its own preprocessed-cache folder."""
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture
def kaggle_copy(tmp_path) -> Path:
    """A writable copy of the bundled Kaggle-layout sample."""
    dst = tmp_path / "kaggle"
    shutil.copytree(SAMPLE, dst)
    return dst


def write_disc_pair(folder: Path, name: str, size=(64, 80), centres=((20, 20), (40, 50)), r=8, binary=False):
    """Write a paired-layout image + mask with bright discs on black; returns the label image."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    labels = np.zeros(size, np.uint16)
    for i, (y, x) in enumerate(centres, start=1):
        cv2.circle(labels, (x, y), r, i, -1)
    img = np.where(labels > 0, 200, 10).astype(np.uint8)
    cv2.imwrite(str(folder / "images" / f"{name}.png"), img)
    mask = (labels > 0).astype(np.uint8) * 255 if binary else labels
    cv2.imwrite(str(folder / "masks" / f"{name}.png"), mask)
    return labels
