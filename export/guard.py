"""The accuracy guard: validation Dice of an exported file through the runtime's own path, against FP32.

Every file is scored by :class:`edgeseg.segmenter.Segmenter` on its torch-free backend (ONNX Runtime or
OpenVINO), with the paper's protocol (the whole image resized to the input size, foreground thresholded at the
card's threshold, per-image mean Dice at the input size: ``dice_256``), so the guard measures exactly what
``edgeseg eval`` and the device run. :func:`climb` tries the strategies of a ladder in order and keeps the first
whose drop from the FP32 reference is within budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.evaluate import mean_dice_at
from edgeseg.preprocess import resize_labels
from edgeseg.progress import Progress, reporter

from .calibration import GuardSet

DEFAULT_MAX_DICE_DROP = 0.005


class GuardFailed(EdgesegError):
    """No quantisation strategy kept the validation Dice within budget."""


@dataclass
class FileScore:
    dice: float
    executed_precision: str
    backend: str


def file_dice(path: str | Path, guard: GuardSet, **backend_options) -> FileScore:
    """Validation Dice (dice_256) of an exported file, run by the runtime's Segmenter and backend."""
    from edgeseg.segmenter import Segmenter

    with Segmenter.load(path, verify=False, **backend_options) as seg:
        probs = [seg.resized_probs(s.image) for s in guard.samples]
        gts = [resize_labels(s.labels, seg.input_size) > 0 for s in guard.samples]
        return FileScore(mean_dice_at(probs, gts, seg.post.threshold), seg.info["executed_precision"],
                         seg.info["backend"])


@dataclass
class GuardReport:
    reference_dice: float
    max_drop: float
    strategy: str | None = None
    dice: float | None = None
    attempts: list[dict] = field(default_factory=list)

    @property
    def drop(self) -> float | None:
        return None if self.dice is None else self.reference_dice - self.dice

    def to_dict(self, guard: GuardSet, reference: str) -> dict:
        return {
            "metric": "dice_256 (per-image mean Dice at the input size, card threshold), via Segmenter",
            "data": guard.info,
            "reference": reference,
            "reference_dice": round(self.reference_dice, 6),
            "dice": None if self.dice is None else round(self.dice, 6),
            "drop": None if self.drop is None else round(self.drop, 6),
            "max_drop": self.max_drop,
            "strategy": self.strategy,
            "attempts": self.attempts,
        }


def climb(
    ladder: Iterable[tuple[str, Callable[[], Path]]],
    guard: GuardSet,
    reference_dice: float,
    max_drop: float,
    *,
    what: str = "the INT8 file",
    progress: Progress | None = None,
) -> tuple[Path, GuardReport]:
    """Build and score each (strategy, build) of ``ladder`` in order; return the first within ``max_drop``. Each
    attempt is reported to ``progress`` as it is scored.

    Raises :class:`GuardFailed` (one line) when none is; the caller removes the candidates.
    """
    report = GuardReport(reference_dice, max_drop)
    for strategy, build in ladder:
        path = build()
        score = file_dice(path, guard)
        drop = reference_dice - score.dice
        attempt = {
            "strategy": strategy,
            "dice": round(score.dice, 6),
            "drop": round(drop, 6),
            "executed_precision": score.executed_precision,
            "passed": drop <= max_drop,
        }
        report.attempts.append(attempt)
        reporter(progress)(f"  {strategy}: validation Dice {attempt['dice']:.4f} (drop {attempt['drop']:+.4f}) "
                           f"{'ok' if attempt['passed'] else 'over budget'}")
        if drop <= max_drop:
            report.strategy, report.dice = strategy, score.dice
            return path, report
    best = min(report.attempts, key=lambda a: a["drop"])
    tried = ", ".join(f"{a['strategy']} {a['drop']:+.4f}" for a in report.attempts)
    raise GuardFailed(
        f"{what} loses more than {max_drop} validation Dice with every strategy (drops: {tried}; "
        f"best {best['strategy']})",
        "raise --max-dice-drop, give more --calib-data, or ship the fp32/fp16 file",
    )
