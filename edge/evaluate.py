"""Evaluation shared by `edgeseg eval`, training's validation, the INT8 guard and the benchmark.

A *predictor* is any callable ``predict(x) -> probs`` taking float32 N x 3 x S x S (the output of
:func:`edgeseg.preprocess.preprocess`) and returning float32 N x C x S x S probabilities (channel 0 the
foreground). PyTorch checkpoints, ONNX Runtime and OpenVINO files all plug in the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from .data import Sample
from .metrics import dice, image_metrics, summarise
from .postprocess import PostprocessConfig, postprocess
from .preprocess import DEFAULT_NORMALISATION, preprocess, resize_labels

Predictor = Callable[[np.ndarray], np.ndarray]


def predict_probs(predict: Predictor, image: np.ndarray, size: int = 256, normalisation=None) -> np.ndarray:
    """One image (any frame) -> C x S x S probabilities at model resolution."""
    norm = normalisation or DEFAULT_NORMALISATION
    x = preprocess(image, size, mean=norm["mean"], std=norm["std"])
    return np.asarray(predict(x), np.float32)[0]


def mean_dice_at(probs: Sequence[np.ndarray], gts: Sequence[np.ndarray], threshold: float) -> float:
    """Per-image mean Dice of thresholded foreground probabilities against boolean masks."""
    return float(np.mean([dice(p[0] > threshold, g) for p, g in zip(probs, gts, strict=True)]))


def choose_threshold(
    probs: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    candidates: Iterable[float] = np.arange(0.2, 0.81, 0.05),
) -> tuple[float, float]:
    """The foreground threshold with the best mean Dice (ties go to the one nearest 0.5). Returns (t, dice)."""
    scored = [
        (mean_dice_at(probs, gts, float(t)), -abs(float(t) - 0.5), round(float(t), 3)) for t in candidates
    ]
    best = max(scored)
    return best[2], best[0]


def evaluate(
    predict: Predictor,
    samples: Iterable[Sample],
    *,
    size: int = 256,
    normalisation=None,
    post: PostprocessConfig | None = None,
    progress: bool = False,
    total: int | None = None,
) -> dict:
    """Score a predictor on samples at their original resolution and at the model size.

    Returns {"summary": ..., "per_type": {type: summary}, "images": [rows]}. ``dice_256`` is the
    paper's figure (per-image mean Dice at 256x256); ``dice`` and every instance metric are at
    the original resolution, with the model's post-processing.
    """
    post = post or PostprocessConfig()
    rows = []
    from tqdm.auto import tqdm

    for s in tqdm(samples, total=total, desc="evaluating", unit="img", disable=not progress):
        probs = predict_probs(predict, s.image, size, normalisation)
        gt256 = resize_labels(s.labels, size) > 0
        mask, labels = postprocess(probs, s.labels.shape, post)
        row = image_metrics(mask, labels, s.labels)
        row["dice_256"] = dice(probs[0] > post.threshold, gt256)
        row.update(name=s.name, image_type=s.image_type)
        rows.append(row)
    by_type = defaultdict(list)
    for r in rows:
        by_type[r["image_type"]].append(r)
    return {
        "summary": summarise_rows(rows),
        "per_type": {t: summarise_rows(rs) for t, rs in sorted(by_type.items())},
        "images": rows,
    }


def summarise_rows(rows: list[dict]) -> dict:
    out = summarise(rows)
    if rows:
        out["dice_256"] = float(np.mean([r["dice_256"] for r in rows]))
    return out


def postprocess_candidates(out_channels: int, threshold: float) -> list[PostprocessConfig]:
    """The grid searched on validation: connected components, and watershed variants for a boundary head."""
    grid = [PostprocessConfig("cc", threshold, min_size=m) for m in (0, 4, 8)]
    if out_channels > 1:
        grid += [
            PostprocessConfig("watershed", threshold, min_size=m, seed_threshold=s, min_seed_size=k)
            for m in (0, 4)
            for s in (0.3, 0.5, 0.7)
            for k in (0, 3, 6)
        ]
    else:
        grid += [PostprocessConfig("watershed", threshold, min_size=4, seed_fraction=f) for f in (0.4, 0.6, 0.8)]
    return grid


def choose_postprocess(
    predict: Predictor, samples: Sequence[Sample], candidates: Sequence[PostprocessConfig], *, size: int = 256,
    normalisation=None, key: str = "map",
) -> tuple[PostprocessConfig, list[dict]]:
    """The candidate with the best mean ``key`` (DSB mAP by default) on ``samples``; predictions are made once."""
    probs = [predict_probs(predict, s.image, size, normalisation) for s in samples]
    scores = []
    for cfg in candidates:
        pairs = zip(probs, samples, strict=True)
        rows = [image_metrics(*postprocess(p, s.labels.shape, cfg), s.labels) for p, s in pairs]
        scores.append({"postprocess": cfg.to_dict(), **summarise(rows)})
    best = max(range(len(candidates)), key=lambda i: scores[i][key])
    return candidates[best], scores
