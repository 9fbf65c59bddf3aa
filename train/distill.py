"""Knowledge distillation: a small student learns from a teacher network (issue 8).

The student is trained by the ONE training loop (:class:`edgeseg.train.trainer.Trainer`) with a different
loss: the trainer's own BCE + Dice on the ground truth (on the boundary channel too with ``--instance``),
plus ``alpha`` times a pixel-wise distillation term, the Bernoulli KL divergence between the teacher's and
the student's temperature-softened probabilities, ``T**2 * KL(sigmoid(z_t / T) || sigmoid(z_s / T))``, on
every channel both networks have (foreground and boundary when the teacher has the instance head).

Teacher predictions are computed on the fly, once per augmented batch, with the teacher in eval mode,
without gradients and under the trainer's autocast. They cannot be cached per image: augmentation draws new
flips, scales and colours every epoch, so a prediction cached for the plain image would not match what the
student sees, and caching one per augmented batch is the same as computing it. The cost: on the H100,
shared by four runs at ~95 % utilisation, an epoch took ~5 s instead of ~3.5 s (+40 %, one forward pass of
MobileNetV2-UNet, 6.7 GFLOPs an image, per student step); on the 2-core CPU the teacher costs about 0.5 s per
batch of 8 (busy machine), which makes a fast_scnn step about 2.5x and a half_unet step about 1.3x slower.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeseg.errors import EdgesegError, ModelError
from edgeseg.preprocess import DEFAULT_NORMALISATION
from edgeseg.zoo import resolve_model

from .losses import segmentation_loss
from .predict import load_checkpoint
from .trainer import Interrupted, TrainConfig, Trainer, _autocast

DEFAULT_ALPHA = 1.0
DEFAULT_TEMPERATURE = 2.0


def distillation_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T**2 * mean KL(Bernoulli(sigmoid(t/T)) || Bernoulli(sigmoid(s/T)))`` over pixels and shared channels.

    Both are N x C x H x W logits; only the first ``min(C_student, C_teacher)`` channels are compared. The
    KL is 0 when the student matches the teacher; ``T**2`` keeps its gradient on the scale of the hard loss.
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    c = min(student_logits.shape[1], teacher_logits.shape[1])
    s = student_logits[:, :c].float() / temperature
    t = teacher_logits[:, :c].float() / temperature
    pt = torch.sigmoid(t)
    # KL = cross-entropy(pt, ps) - entropy(pt); both in the numerically stable with-logits form
    kl = F.binary_cross_entropy_with_logits(s, pt, reduction="none") - F.binary_cross_entropy_with_logits(
        t, pt, reduction="none"
    )
    return temperature**2 * kl.mean()


class DistillationLoss:
    """The trainer's pluggable ``loss_fn(logits, targets, x)``: hard loss + ``alpha`` * distillation term.

    With ``alpha == 0`` (or no teacher) it is exactly the trainer's default loss and the teacher never runs,
    so a baseline trained through ``distill --alpha 0`` follows the same code path at no extra cost.
    """

    def __init__(
        self,
        teacher: torch.nn.Module | None,
        alpha: float = DEFAULT_ALPHA,
        temperature: float = DEFAULT_TEMPERATURE,
        precision: str = "fp32",
        boundary_weight: float = 1.0,
    ):
        if alpha < 0:
            raise ValueError("alpha must be >= 0")
        self.alpha, self.temperature, self.precision = float(alpha), float(temperature), precision
        self.boundary_weight = float(boundary_weight)
        self.teacher = teacher if alpha > 0 else None
        if self.teacher is not None:
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self._sums = {"hard": 0.0, "kd": 0.0, "n": 0}

    def to(self, device: torch.device) -> DistillationLoss:
        if self.teacher is not None:
            self.teacher.to(device)
            if self.precision == "bf16":
                self.teacher.to(memory_format=torch.channels_last)
        return self

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()  # stays in eval mode (BatchNorm running statistics) whatever happens around it
        with _autocast(x.device, self.precision):
            return self.teacher(x).float()

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hard = segmentation_loss(logits, target, self.boundary_weight)
        n = len(logits)
        self._sums["hard"] += float(hard.detach()) * n
        self._sums["n"] += n
        if self.teacher is None:
            return hard
        kd = distillation_term(logits, self.teacher_logits(x), self.temperature)
        self._sums["kd"] += float(kd.detach()) * n
        return hard + self.alpha * kd

    def log_row(self) -> dict:
        """The epoch's mean hard and distillation losses (for log.jsonl); resets the running sums."""
        n = max(self._sums["n"], 1)
        row = {"train_hard_loss": round(self._sums["hard"] / n, 5)}
        if self.teacher is not None:
            row["train_kd_loss"] = round(self._sums["kd"] / n, 5)
        self._sums = {"hard": 0.0, "kd": 0.0, "n": 0}
        return row


def load_teacher(spec: str, cfg: TrainConfig) -> tuple[torch.nn.Module, dict]:
    """A zoo name, run folder or .pt file -> (float32 teacher in eval mode, what the student's card records)."""
    ref = resolve_model(spec)
    if ref.format != "torch":
        raise ModelError(f"teacher {spec} is a {ref.format} file", "give a .pt checkpoint, a run folder or a zoo name")
    card = ref.card
    if card.size != cfg.size:
        raise EdgesegError(
            f"teacher {ref.name} takes {card.size}x{card.size} inputs, the student {cfg.size}x{cfg.size}",
            "distil at the teacher's input size",
        )
    ref_norm = DEFAULT_NORMALISATION
    if [card.mean, card.std] != [list(ref_norm["mean"]), list(ref_norm["std"])]:
        raise EdgesegError(
            f"teacher {ref.name} was trained with another input normalisation than the student",
            "use a teacher trained by edgeseg (ImageNet normalisation)",
        )
    teacher = load_checkpoint(ref.path, card).float().eval()  # zoo weights may be stored as float16
    info = {
        "teacher": ref.name,
        "teacher_arch": card.arch,
        "teacher_file": str(ref.path.name),
        "teacher_sha256": card.sha256,
        "teacher_out_channels": card.out_channels,
        "teacher_recipe": (card.extra.get("recipe") or {}).get("name"),
        "teacher_test_dice_256": card.test_dice,
    }
    return teacher, info


def distill(
    cfg: TrainConfig,
    teacher: str | None,
    alpha: float = DEFAULT_ALPHA,
    temperature: float = DEFAULT_TEMPERATURE,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train ``cfg.model`` as a student of ``teacher`` with the trainer; returns the trainer's summary.

    A run stopped by SIGTERM (e.g. a time limit) still leaves its best checkpoint with a card (written from
    the epochs it finished, ``training.epochs_run`` says how many) before exiting, and can be resumed.
    """
    if alpha > 0 and not teacher:
        raise EdgesegError("distillation with alpha > 0 needs a teacher", "pass --teacher NAME_OR_CHECKPOINT")
    net, info = (None, {"teacher": None})
    if alpha > 0:
        net, info = load_teacher(teacher, cfg)
    loss = DistillationLoss(net, alpha, temperature, cfg.precision, cfg.boundary_weight)
    extra = dict(cfg.extra)
    extra["loss"] = "bce+dice+kd" if alpha > 0 else "bce+dice"
    extra["distillation"] = {
        **info,
        "alpha": alpha,
        "temperature": temperature,
        "term": "T^2 * pixel-wise Bernoulli KL(teacher || student) on shared channels" if alpha > 0 else None,
        "teacher_predictions": "on the fly, once per augmented batch" if alpha > 0 else None,
    }
    trainer = Trainer(replace(cfg, extra=extra), loss_fn=loss, progress=progress)
    loss.to(trainer.device)
    # the trainer turns SIGTERM into a stop after the current epoch while it trains, then restores the handler
    # it found: this one, so that a SIGTERM arriving while the card is written does not lose the card
    old = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        return trainer.fit(resume=resume)
    except Interrupted:
        if (Path(cfg.out) / "best.pt").exists():
            trainer.finish()
        raise
    finally:
        signal.signal(signal.SIGTERM, old)
