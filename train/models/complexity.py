"""Model complexity: parameter count and GFLOPs.

GFLOPs convention: one multiply-accumulate (MAC) counts as **2 FLOPs**, so
``gflops = 2 * MACs / 1e9``. MACs are counted for ``Conv2d``, ``ConvTranspose2d`` and
``Linear`` layers only (bias additions, batch norm, activations, pooling and resizing are
ignored; they are a small fraction for these networks), for a single ``1x3xSxS`` input.
"""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def _macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.ConvTranspose2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return inputs[0].numel() * (module.out_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


@torch.no_grad()
def gflops(model: nn.Module, size: int = 256) -> float:
    """GFLOPs (2 x multiply-accumulates / 1e9) of one forward pass on a ``1x3xSxS`` input.

    Counts Conv2d, ConvTranspose2d and Linear MACs with forward hooks; the model is run in
    eval mode on its own device and dtype, and its training flag is restored afterwards.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += _macs(module, inputs, output)

    layers = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, layers)]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return 2.0 * total / 1e9
