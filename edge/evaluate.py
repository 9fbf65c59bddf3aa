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
from .preprocess import DEFAULT_NORMALISATION, resize_labels

Predictor = Callable[[np.ndarray], np.ndarray]


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


def as_segmenter(predict, *, size: int = 256, normalisation=None, post: PostprocessConfig | None = None):
    """A Segmenter as is, or a bare predictor wrapped in one that resizes every frame (the paper's protocol)."""
    from .segmenter import Segmenter

    if isinstance(predict, Segmenter):
        return predict
    card = {"input_size": [size, size], "normalisation": normalisation or DEFAULT_NORMALISATION}
    return Segmenter(predict, card, post=post or PostprocessConfig(), tile="never")


def evaluate(
    predict,
    samples: Iterable[Sample],
    *,
    size: int = 256,
    normalisation=None,
    post: PostprocessConfig | None = None,
    progress: bool = False,
    total: int | None = None,
    compare_cc: bool = False,
) -> dict:
    """Score a Segmenter (or a bare predictor) on samples at their original resolution and at the model size.

    Returns {"summary": ..., "per_type": {type: summary}, "images": [rows]}. ``dice_256`` is the
    paper's figure (per-image mean Dice with the whole image resized to the input size); ``dice`` and
    every instance metric are at the original resolution, with the model's post-processing and the
    Segmenter's scale policy (large frames tiled at the training scale). ``compare_cc`` adds, under
    ``"cc"``, the instance metrics of plain connected components on the same probabilities.
    """
    seg = as_segmenter(predict, size=size, normalisation=normalisation, post=post)
    post = seg.post
    cc_post = PostprocessConfig("cc", post.threshold, min_size=post.min_size)
    rows = []
    from tqdm.auto import tqdm

    for s in tqdm(samples, total=total, desc="evaluating", unit="img", disable=not progress):
        probs, plan = seg.probabilities(s.image)
        mask, labels = postprocess(probs, s.labels.shape, post, plan["rgb"])
        row = image_metrics(mask, labels, s.labels)
        probs256 = probs if not plan["tiled"] and probs.shape[1] == seg.input_size else seg.resized_probs(s.image)
        row["dice_256"] = dice(probs256[0] > post.threshold, resize_labels(s.labels, seg.input_size) > 0)
        row.update(name=s.name, image_type=s.image_type, tiled=plan["tiled"], scale=round(plan["scale"], 4))
        if compare_cc:
            cc = image_metrics(*postprocess(probs, s.labels.shape, cc_post), s.labels)
            row["cc"] = {k: cc[k] for k in ("map", "f1_50", "count_err")}
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
        out["n_tiled"] = int(sum(bool(r.get("tiled")) for r in rows))
        if all("cc" in r for r in rows):
            out["cc"] = {k: v for k, v in summarise([{**r, **r["cc"]} for r in rows]).items()
                         if k in ("map", "f1_50", "count_mae", "count_bias")}
    return out


def postprocess_candidates(out_channels: int, threshold: float) -> list[PostprocessConfig]:
    """The grid searched on validation: connected components, and watershed variants for a boundary head."""
    grid = [PostprocessConfig("cc", threshold, min_size=m) for m in (0, 4, 8)]
    if out_channels > 1:
        grid += [
            PostprocessConfig("watershed", threshold, min_size=m, seed_threshold=s, min_seed_size=k, seed_split=q)
            for m in (0, 4)
            for s in (0.3, 0.5, 0.7)
            for k in (0, 3, 6)
            for q in (0.0, 0.4)
        ]
    else:
        grid += [PostprocessConfig("watershed", threshold, min_size=4, seed_fraction=f) for f in (0.4, 0.6, 0.8)]
    return grid


def choose_postprocess(
    predict, samples: Sequence[Sample], candidates: Sequence[PostprocessConfig], *, size: int = 256,
    normalisation=None, key: str = "map",
) -> tuple[PostprocessConfig, list[dict]]:
    """The candidate with the best mean ``key`` (DSB mAP by default) on ``samples``; predictions are made once
    (through the Segmenter's scale policy when ``predict`` is a Segmenter)."""
    seg = as_segmenter(predict, size=size, normalisation=normalisation)
    probs = [seg.probabilities(s.image)[0] for s in samples]
    scores = []
    for cfg in candidates:
        pairs = zip(probs, samples, strict=True)
        rows = [image_metrics(*postprocess(p, s.labels.shape, cfg), s.labels) for p, s in pairs]
        scores.append({"postprocess": cfg.to_dict(), **summarise(rows)})
    best = max(range(len(candidates)), key=lambda i: scores[i][key])
    return candidates[best], scores


def evaluate_folder(
    seg,
    data,
    split: str | None = None,
    *,
    mask_fixes=None,
    progress: bool = False,
    compare_cc: bool = False,
) -> dict:
    """Score a Segmenter on a dataset folder the way ``edgeseg eval`` does: find its images, take ``split`` (the
    test split of a canonical folder by default, every image of any other), evaluate.

    Returns :func:`evaluate`'s result plus ``"info"`` (split name, split file and hash, the folder).
    """
    from .data import find_items, load_sample
    from .split import select_items

    items, info = select_items(find_items(data, mask_fixes), split, where=str(data))
    result = evaluate(seg, (load_sample(it) for it in items), progress=progress, total=len(items),
                      compare_cc=compare_cc)
    return {**result, "info": {"data": str(data), **info}}
