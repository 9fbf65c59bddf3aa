"""The training loop: one loop, a pluggable loss, checkpoints every epoch, best-validation model, resume.

Run folder layout::

    RUN/config.json   the resolved configuration
    RUN/log.jsonl     one line per epoch: epoch, train_loss, val_loss, val_dice, lr, seconds
    RUN/last.pt       model + optimizer (+ scheduler) state and the epoch, written after every epoch
    RUN/best.pt       the model state dict with the best validation Dice
    RUN/best.card.json  its model card (threshold chosen on validation, val metrics, recipe, command)

Checkpoints are plain state dicts: ``torch.load(path, weights_only=True)`` loads them.
Epoch ``e`` seeds every random generator with ``seed + e``, so a resumed run is the same run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgeseg.cache import build_cache
from edgeseg.card import new_card, read_card, write_card
from edgeseg.data import find_items
from edgeseg.errors import DataError, EdgesegError
from edgeseg.evaluate import choose_threshold, mean_dice_at
from edgeseg.fsutil import atomic_path, atomic_write_json
from edgeseg.preprocess import DEFAULT_NORMALISATION
from edgeseg.split import make_split, select, split_hash

from .augment import build_augmentation
from .dataset import NucleiDataset
from .hard_negatives import HardNegatives
from .losses import segmentation_loss
from .models import build_model, count_params, gflops


@dataclass
class TrainConfig:
    model: str
    data: str  # one dataset folder, or several joined by ',' ; PATH@F cuts crops at scale F (see cache.py)
    out: str = "runs/train"
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    size: int = 256
    limit: int | None = None
    seed: int = 0
    threads: int | None = None
    precision: str = "fp32"  # fp32 | bf16 (autocast + channels-last)
    device: str = "auto"  # auto | cpu | cuda
    encoder_weights: str | None = None
    augment: str = "paper"  # paper | ours | none
    schedule: str = "constant"  # constant | cosine
    warmup_epochs: int = 0
    out_channels: int = 1
    mask_fixes: str | None = None
    num_workers: int = 0
    recipe: str = "paper"
    boundary_weight: float = 1.0  # weight of the boundary channel's BCE + Dice against the foreground's
    contact_weight: float = 0.0  # extra cross-entropy weight where nuclei touch (targets.contact_map); 0: none
    hard_negatives: float = 0.0  # share of training items replaced by a hard negative (see hard_negatives.py)
    init: str | None = None  # start from these weights (a run folder's best.pt, or a .pt): fine-tuning
    keep: str = "best"  # best: best.pt is the best-validation-Dice epoch | last: the last epoch
    ema: float = 0.0  # decay per step of an exponential moving average of the weights (0: none); the average is
    # what is validated and saved
    command: str = ""
    extra: dict = field(default_factory=dict)


def weight_average(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics, updated after each step
    (``avg = decay * avg + (1 - decay) * w``; the first update copies ``w``), as timm's ModelEma."""
    if not 0.0 < decay < 1.0:
        raise EdgesegError(f"--ema {decay} is not a decay", "use a value between 0 and 1, such as 0.999")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class Interrupted(EdgesegError):
    exit_code = 130


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgesegError("--device cuda asked for but no CUDA GPU is available", "use --device cpu")
    return torch.device(name)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _split_names(items, root: str, seed: int) -> tuple[list[str], list[str], dict]:
    names = [it.name for it in items]
    try:
        train, info = select(names, "train")
        val, _ = select(names, "val")
        if train and val:
            return train, val, info
    except DataError:
        pass
    # an ad-hoc folder: a seeded 90/10 split of its own, recorded in the run
    parts = make_split(names, ["all"] * len(names), (0.9, 0.1, 0.0), seed=seed)
    train = parts["train"] + parts["test"]
    if not parts["val"]:
        raise DataError(
            f"{root} has too few images ({len(names)}) to hold out validation", "give at least 3 images"
        )
    return train, parts["val"], {"split": "ad-hoc 90/10", "split_file": None, "split_hash": split_hash(parts)}


@dataclass
class Source:
    """One dataset folder of a (possibly mixed) training run."""

    name: str
    root: str
    scale: float | None
    cached: object
    train: list[int]
    val: list[int]
    info: dict


def parse_sources(spec: str) -> list[tuple[str, float | None]]:
    """'A,B@0.6' -> [('A', None), ('B', 0.6)]."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        root, _, scale = part.partition("@")
        try:
            out.append((root, float(scale) if scale else None))
        except ValueError as exc:
            raise DataError(
                f"bad scale in --data {part!r}", "write PATH or PATH@SCALE, e.g. monuseg@0.6"
            ) from exc
    if not out:
        raise DataError("no --data given", "pass --data with a dataset folder")
    return out


def load_sources(cfg: TrainConfig, progress: bool) -> list[Source]:
    sources = []
    for k, (root, scale) in enumerate(parse_sources(cfg.data)):
        items = find_items(root, cfg.mask_fixes if k == 0 else None)
        train, val, info = _split_names(items, root, cfg.seed)
        if cfg.limit:
            train = train[: cfg.limit]
        cached = build_cache(
            items, cfg.size, tag=f"fixes={cfg.mask_fixes if k == 0 else None}", scale=scale, progress=progress
        )
        sources.append(
            Source(
                Path(root).name,
                root,
                scale,
                cached,
                cached.indices(train),
                cached.indices(val),
                {**info, "n_train_images": len(train), "n_val_images": len(val)},
            )
        )
    return sources


def nucleus_diameters(entries: list, max_entries: int = 400) -> dict:
    """The training scale of a model, for its card: the median equivalent diameter (input pixels) of the nuclei
    in (a regular sample of) its training entries, overall and per image type (fluorescence / brightfield /
    stained, as :func:`edgeseg.data.image_type` classifies frames), since a mixed run may learn each modality
    at its own scale (DSB brightfield squeezed to ~5 px, MoNuSeg crops at ~12 px)."""
    from edgeseg.data import image_type

    pooled, per_type = [], {}
    for cached, i in entries[:: max(1, len(entries) // max_entries)]:
        counts = np.bincount(np.asarray(cached.labels[i]).ravel())[1:]
        diam = list(2 * np.sqrt(counts[counts > 0] / np.pi))
        pooled += diam
        per_type.setdefault(image_type(np.asarray(cached.images[i])), []).extend(diam)
    if not pooled:
        return {"median_nucleus_diameter_px": None, "per_type": {}}
    return {
        "median_nucleus_diameter_px": round(float(np.median(pooled)), 2),
        "per_type": {t: round(float(np.median(d)), 2) for t, d in sorted(per_type.items()) if len(d) >= 20},
    }


class Trainer:
    """Fit a network on a dataset folder. ``loss_fn(logits, targets, batch)`` is pluggable (distillation)."""

    def __init__(self, cfg: TrainConfig, loss_fn=None, progress: bool = True):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.progress = progress
        self.loss_fn = loss_fn or (lambda logits, y, x: segmentation_loss(logits, y, cfg.boundary_weight))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = _device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.sources = load_sources(cfg, progress)
        self.model = (
            build_model(cfg.model, out_channels=cfg.out_channels, encoder_weights=cfg.encoder_weights)
            if cfg.model == "mobilenetv2_unet"
            else build_model(cfg.model, out_channels=cfg.out_channels)
        )
        self.model.to(self.device)
        if cfg.precision == "bf16":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = weight_average(self.model, cfg.ema) if cfg.ema else None
        self.hard_negatives = HardNegatives() if cfg.hard_negatives > 0 else None
        self.start_epoch, self.best_dice, self.best_epoch = 1, -1.0, 0

    # -- epochs ---------------------------------------------------------------------------------
    def lr_at(self, epoch: int) -> float:
        c = self.cfg
        if c.warmup_epochs and epoch <= c.warmup_epochs:
            return c.lr * epoch / c.warmup_epochs
        if c.schedule == "cosine":
            t = (epoch - 1 - c.warmup_epochs) / max(1, c.epochs - c.warmup_epochs)
            return 0.5 * c.lr * (1 + math.cos(math.pi * t)) + 1e-6
        return c.lr

    def _entries(self, part: str, sources=None) -> list:
        return [(s.cached, i) for s in (sources or self.sources) for i in getattr(s, part)]

    def _loader(self, entries, augment: bool, shuffle: bool, epoch: int) -> DataLoader:
        aug = build_augmentation(self.cfg.augment, self.cfg.size) if augment else None
        ds = NucleiDataset(entries, None, aug, self.cfg.out_channels, DEFAULT_NORMALISATION,
                           hard_negatives=self.hard_negatives if augment else None,
                           hard_negative_share=self.cfg.hard_negatives,
                           contact_weight=self.cfg.contact_weight if augment else 0.0)
        g = torch.Generator().manual_seed(self.cfg.seed + epoch)
        return DataLoader(
            ds,
            batch_size=self.cfg.batch_size,
            shuffle=shuffle,
            generator=g,
            # training drops a ragged last batch: a batch of one breaks BatchNorm behind global pooling
            drop_last=shuffle and len(ds) > self.cfg.batch_size,
            num_workers=self.cfg.num_workers,
            persistent_workers=False,
            worker_init_fn=(lambda w: _seed_everything(self.cfg.seed * 1000 + epoch * 100 + w)),
        )

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if self.cfg.precision == "bf16" else t

    def train_epoch(self, epoch: int) -> float:
        from tqdm.auto import tqdm

        self.model.train()
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(epoch)
        total, n = 0.0, 0
        loader = self._loader(self._entries("train"), augment=True, shuffle=True, epoch=epoch)
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{self.cfg.epochs}",
            unit="batch",
            leave=False,
            disable=not self.progress,
        )
        for x, y in bar:
            x, y = self._to(x), y.to(self.device)
            with _autocast(self.device, self.cfg.precision):
                logits = self.model(x)
            loss = self.loss_fn(logits.float(), y, x)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            total += float(loss.detach()) * len(x)
            n += len(x)
            bar.set_postfix(loss=f"{total / n:.4f}")
        return total / max(n, 1)

    @torch.no_grad()
    def validate(self, sources=None) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
        """Validation loss, plus foreground probabilities and masks at model size for the Dice (of ``result``)."""
        net = self.result
        net.eval()
        probs, gts, total, n = [], [], 0.0, 0
        for x, y in self._loader(self._entries("val", sources), augment=False, shuffle=False, epoch=0):
            xd = self._to(x)
            with _autocast(self.device, self.cfg.precision):
                logits = net(xd).float()
            total += float(segmentation_loss(logits, y.to(self.device))) * len(x)
            n += len(x)
            probs += list(torch.sigmoid(logits).cpu().numpy())
            gts += list(y[:, 0].numpy() > 0.5)
        return total / max(n, 1), probs, gts

    def validate_sources(self) -> tuple[float, dict[str, float]]:
        """Validation loss over all sources and the Dice of each source (the best model maximises their mean)."""
        losses, dices = [], {}
        for src in self.sources:
            loss, probs, gts = self.validate([src])
            losses.append((loss, len(probs)))
            dices[src.name] = mean_dice_at(probs, gts, 0.5)
        n = sum(k for _, k in losses)
        return sum(v * k for v, k in losses) / max(n, 1), dices

    @property
    def result(self) -> torch.nn.Module:
        """The network the run produces: the weight average with ``ema``, else the trained weights."""
        return self.model if self.ema is None else self.ema.module

    # -- checkpoints ----------------------------------------------------------------------------
    def _save(self, path: Path, obj) -> None:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)

    def save_last(self, epoch: int) -> None:
        self._save(
            self.out / "last.pt",
            {
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "epoch": epoch,
                "best_dice": self.best_dice,
                "best_epoch": self.best_epoch,
                **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            },
        )

    def resume(self) -> None:
        last = self.out / "last.pt"
        if not last.exists():
            raise EdgesegError(
                f"nothing to resume in {self.out} (no last.pt)", "drop --resume to start a new run"
            )
        ck = torch.load(last, map_location=self.device, weights_only=True)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.ema is not None:
            if "ema" not in ck:
                raise EdgesegError(f"{last} was saved without --ema", "resume with the run's own options")
            self.ema.load_state_dict(ck["ema"])
        self.start_epoch = int(ck["epoch"]) + 1
        self.best_dice, self.best_epoch = float(ck["best_dice"]), int(ck["best_epoch"])
        log = self.out / "log.jsonl"
        if log.exists():  # drop lines of epochs after the checkpoint (killed between log and checkpoint)
            keep = [
                ln
                for ln in log.read_text().splitlines()
                if ln.strip() and json.loads(ln)["epoch"] <= ck["epoch"]
            ]
            log.write_text("".join(k + "\n" for k in keep))

    def load_init(self) -> None:
        """Start from ``cfg.init``'s weights: a run folder (its best.pt) or a .pt (a state dict, or a checkpoint
        with a "model" entry). Only the weights: the optimiser and the schedule start afresh."""
        path = Path(self.cfg.init)
        if path.is_dir():
            path = path / "best.pt"
        if not path.is_file():
            raise EdgesegError(f"no weights to start from at {path}", "pass --init a run folder or a .pt file")
        state = torch.load(path, map_location=self.device, weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            try:  # say what the weights are, when their card says it
                card = read_card(path, verify=False)
                held = f"holds {card.arch} with {card.out_channels} output(s)"
            except EdgesegError:
                held = f"does not load ({str(e).splitlines()[0].rstrip(':')})"
            raise EdgesegError(
                f"{path} {held}, not {self.cfg.model} with {self.cfg.out_channels}",
                "pass --init weights of the same network and head (--instance for 2 outputs)",
            ) from None

    # -- the run --------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        cfg = self.cfg
        if resume:
            self.resume()
        elif (self.out / "last.pt").exists():
            raise EdgesegError(
                f"{self.out} already holds a run", "pass --resume to continue it or choose another --out"
            )
        elif cfg.init:
            self.load_init()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.out / "config.json",
            {
                **asdict(cfg),
                "device_used": str(self.device),
                "sources": self._source_info(),
                "n_train": len(self._entries("train")),
                "n_val": len(self._entries("val")),
                "params": count_params(self.model),
                "torch": torch.__version__,
            },
        )
        stop = {"flag": False}

        def on_term(signum, frame):
            stop["flag"] = True

        old = signal.signal(signal.SIGTERM, on_term)
        try:
            with open(self.out / "log.jsonl", "a", buffering=1) as log:
                for epoch in range(self.start_epoch, cfg.epochs + 1):
                    _seed_everything(cfg.seed + epoch)
                    t0 = time.perf_counter()
                    train_loss = self.train_epoch(epoch)
                    train_s = time.perf_counter() - t0
                    val_loss, per_source = self.validate_sources()
                    val_dice = float(np.mean(list(per_source.values())))
                    if val_dice > self.best_dice or cfg.keep == "last":
                        self.best_dice, self.best_epoch = val_dice, epoch
                        self._save(self.out / "best.pt", self.result.state_dict())
                    row = {
                        "epoch": epoch,
                        "train_loss": round(train_loss, 5),
                        "val_loss": round(val_loss, 5),
                        "val_dice": round(val_dice, 5),
                        "lr": self.lr_at(epoch),
                        **(
                            {f"val_dice_{k}": round(v, 5) for k, v in per_source.items()}
                            if len(per_source) > 1
                            else {}
                        ),
                        **(self.loss_fn.log_row() if hasattr(self.loss_fn, "log_row") else {}),
                        "train_seconds": round(train_s, 2),
                        "seconds": round(time.perf_counter() - t0, 2),
                    }
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    os.fsync(log.fileno())
                    self.save_last(epoch)
                    if self.progress:
                        print(
                            f"epoch {epoch}/{cfg.epochs}  loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                            f"val_dice {val_dice:.4f}  {row['seconds']:.1f}s",
                            file=sys.stderr,
                            flush=True,
                        )
                    if stop["flag"]:
                        raise Interrupted(f"stopped by SIGTERM after epoch {epoch}", "continue with --resume")
        finally:
            signal.signal(signal.SIGTERM, old)
        return self.finish()

    def median_nucleus_diameter(self, max_entries: int = 200) -> float:
        """Median equivalent diameter (input pixels) of the training nuclei: the scale the model learnt."""
        return nucleus_diameters(self._entries("train"), max_entries)["median_nucleus_diameter_px"]

    def _source_info(self) -> list[dict]:
        return [
            {
                "root": s.root,
                "scale": s.scale,
                **s.info,
                "n_train_entries": len(s.train),
                "n_val_entries": len(s.val),
            }
            for s in self.sources
        ]

    def finish(self) -> dict:
        """Load the best model, choose the threshold on validation, write its card and a summary."""
        state = torch.load(self.out / "best.pt", map_location=self.device, weights_only=True)
        self.result.load_state_dict(state)
        _, probs, gts = self.validate()
        threshold, val_dice = choose_threshold(probs, gts)
        rows = [json.loads(ln) for ln in (self.out / "log.jsonl").read_text().splitlines() if ln.strip()]
        secs = [r["train_seconds"] for r in rows]
        summary = {
            "training_scale_px": self.median_nucleus_diameter(),
            "best_epoch": self.best_epoch,
            "best_val_dice_at_0.5": round(self.best_dice, 5),
            "threshold": threshold,
            "val_dice": round(val_dice, 5),
            "epochs_run": len(rows),
            "seconds_per_epoch": round(float(np.mean(secs)), 2) if secs else None,
            "time_per_5_epochs_s": round(float(sum(secs[:5])), 2) if len(secs) >= 5 else None,
        }
        cfg = self.cfg
        card = new_card(
            cfg.model,
            out_channels=cfg.out_channels,
            outputs=["foreground", "boundary"][: cfg.out_channels],
            input_size=[cfg.size, cfg.size],
            threshold=threshold,
            postprocess={
                "method": "cc" if cfg.out_channels == 1 else "watershed",
                "threshold": threshold,
                "min_size": 0,
            },
            params=count_params(self.model),
            gflops=round(gflops(self.model.cpu(), cfg.size), 4),
            data={"spec": str(cfg.data), "mask_fixes": cfg.mask_fixes, "sources": self._source_info()},
            recipe={
                "name": cfg.recipe,
                "epochs": cfg.epochs,
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "augment": cfg.augment,
                "schedule": cfg.schedule,
                "precision": cfg.precision,
                "encoder_weights": cfg.encoder_weights,
                "boundary_weight": cfg.boundary_weight,
                "contact_weight": cfg.contact_weight,
                "hard_negatives": cfg.hard_negatives,
                "init": cfg.init,
                "keep": cfg.keep,
                "ema": cfg.ema,
                "loss": "bce+dice",
                **cfg.extra,
            },
            training_scale=nucleus_diameters(self._entries("train")),
            command=cfg.command,
            training=summary,
            metrics={"val": {"dice_256": round(val_dice, 5)}},
        )
        self.model.to(self.device)
        write_card(self.out / "best.pt", card)
        atomic_write_json(self.out / "summary.json", summary)
        return summary
