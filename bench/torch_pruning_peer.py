"""The bench's peer: Torch-Pruning's growing regularization (``torch_pruning.GrowingRegPruner``).

Growing regularization (Wang et al., 2021) is the same idea as RSST's penalty — an L2 term on the
weights about to be pruned, its coefficient growing during training — as Torch-Pruning ships it:
after every backward, ``pruner.regularize(model)`` adds γ·w to the gradient of every prunable
channel group (its own per-group loop over the dependency graph), then the optimizer steps.
Set up as Torch-Pruning's own CIFAR benchmark does: group L2-magnitude importance
(``GroupMagnitudeImportance(p=2)``), reg 5e-4, delta_reg 1e-4, the classifier ignored.

The package is optional (``pip install 'rsst-prune[torch-pruning]'``); without it the peer's
rows say
"not installed". Models with attention need Torch-Pruning's head settings, which this peer does
not set up: it runs on convolutional models only and says so otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

PATH = "torch-pruning"
NOT_INSTALLED = "not installed (pip install 'rsst-prune[torch-pruning]')"
ATTENTION = "not run: attention models need Torch-Pruning's num_heads setup"
REG, DELTA_REG = 5e-4, 1e-4


def _torch_pruning() -> Any | None:
    try:
        import torch_pruning
    except ImportError:
        return None
    return torch_pruning


def unavailable_reason(model: nn.Module) -> str | None:
    """Why the peer cannot run on ``model`` here (None when it can)."""
    if _torch_pruning() is None:
        return NOT_INSTALLED
    if any("attention" in type(m).__name__.lower() for m in model.modules()):
        return ATTENTION
    return None


def growing_reg_pruner(model: nn.Module, example_inputs: torch.Tensor) -> Any:
    """Torch-Pruning's ``GrowingRegPruner`` over ``model`` (the last linear layer ignored)."""
    tp = _torch_pruning()
    if tp is None:
        raise RuntimeError(NOT_INSTALLED)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    return tp.pruner.GrowingRegPruner(
        model, example_inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
        reg=REG, delta_reg=DELTA_REG, ignored_layers=classifier)


def sgd(model: nn.Module, device: torch.device, *, lr: float, momentum: float,
        weight_decay: float) -> torch.optim.SGD:
    """torch's own SGD as the dense path runs it: fused on CUDA, foreach on the CPU."""
    cuda = device.type == "cuda"
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                           weight_decay=weight_decay, fused=True if cuda else None,
                           foreach=None if cuda else True)


def added_work(model: nn.Module, example_inputs: torch.Tensor, optimizer: torch.optim.Optimizer
               ) -> Callable[[], None]:
    """What the peer adds after each backward: ``regularize(model)``, then the SGD step."""
    pruner = growing_reg_pruner(model, example_inputs)

    def update() -> None:
        pruner.regularize(model)
        optimizer.step()

    return update


__all__ = ["ATTENTION", "NOT_INSTALLED", "PATH", "added_work", "growing_reg_pruner", "sgd",
           "unavailable_reason"]
