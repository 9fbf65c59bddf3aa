"""A torch Dataset over the preprocessed cache: augment (uint8) -> normalise -> targets."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from edgeseg.cache import CachedSet
from edgeseg.preprocess import normalise

from .targets import make_targets


class NucleiDataset(Dataset):
    """Entries of one or more cached sets; returns (x float32 3xSxS, y float32 CxSxS).

    ``entries`` is a list of (cached set, entry index) pairs, or, with ``indices``, one cached set.
    With ``hard_negatives`` (a :class:`~.hard_negatives.HardNegatives`) and ``hard_negative_share`` p, each item
    is, with probability p, replaced by a hard negative made from its own image's background, with an empty
    target (items whose image has too little background stay as they are). The draw uses numpy's global
    generator, which the trainer seeds every epoch.
    """

    def __init__(
        self, cached: CachedSet | list, indices=None, augment=None, out_channels: int = 1, normalisation=None,
        hard_negatives=None, hard_negative_share: float = 0.0, contact_weight: float = 0.0,
    ):
        self.entries = [(cached, i) for i in indices] if indices is not None else list(cached)
        self.augment = augment
        self.hard_negatives = hard_negatives
        self.hard_negative_share = hard_negative_share
        self.contact_weight = contact_weight
        self.out_channels = out_channels
        norm = normalisation or {}
        self.mean = norm.get("mean", (0.485, 0.456, 0.406))
        self.std = norm.get("std", (0.229, 0.224, 0.225))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, k: int):
        cached, i = self.entries[k]
        image = np.asarray(cached.images[i])
        labels = np.asarray(cached.labels[i])
        if self.hard_negatives is not None and np.random.random() < self.hard_negative_share:
            negative = self.hard_negatives.sample(cached, i, np.random.default_rng(np.random.randint(2**31)))
            if negative is not None:
                image, labels = negative
        if self.augment is not None:
            out = self.augment(image=image, mask=labels)
            image, labels = out["image"], out["mask"]
        x = normalise(image, self.mean, self.std)
        y = make_targets(labels, self.out_channels, contact_weight=self.contact_weight)
        return torch.from_numpy(x), torch.from_numpy(y)
