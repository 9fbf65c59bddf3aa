"""The ``torch`` backend: a PyTorch checkpoint (``.pt`` + its card) behind the same interface as the exported files.

``edgeseg.train`` contributes it to the core's backend registry through the ``edgeseg.backends`` entry point, so
``Segmenter.load("runs/fast_scnn")`` or ``Segmenter.load("fast_scnn")`` (the zoo's checkpoint) work wherever torch
is installed, and eval, bench and the INT8 guard score checkpoints and exported files through one door. torch is
imported when a checkpoint is opened, not when the registry reads this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.backends import Backend
from edgeseg.errors import ModelError


class TorchBackend(Backend):
    """A checkpoint run eagerly in fp32 on the CPU; ``tta`` averages over horizontal and vertical flips. The torch
    thread count is set to ``threads`` while the backend is open and restored by :meth:`close`."""

    name = "torch"
    formats = ("torch",)
    options = ("tta",)

    def __init__(self, path: Path, threads: int | None = None, card=None, tta: bool = False):
        import torch

        from .predict import load_checkpoint, torch_predictor

        if card is None:
            raise ModelError(f"{Path(path).name} needs its model card to be run", "keep NAME.card.json beside it")
        super().__init__(path, threads, card)
        self._threads_before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        self.predict = torch_predictor(load_checkpoint(path, card), tta=tta)
        size = card.size
        self.input_shape = (-1, 3, size, size)
        self.output_names = list(card.outputs)[: card.out_channels] or ["foreground"]
        self.executed_precision = "fp32"
        self.details = {"torch": torch.__version__, "tta": tta}

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.predict(x)

    def close(self) -> None:
        import torch

        torch.set_num_threads(self._threads_before)
