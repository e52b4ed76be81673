"""One training epoch and evaluation: forward/backward (autocast on CUDA), then ONE update call."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from rsst.arena import Arena
from rsst.update import EagerBackend, TorchBackend, TritonBackend

Backend = TritonBackend | TorchBackend | EagerBackend


@dataclass
class EpochResult:
    loss: float
    acc: float
    lam: float
    steps: int


class Engine:
    """Trains a model whose parameters live in ``arena`` with one ``arena.step`` per batch."""

    def __init__(self, model: nn.Module, arena: Arena, backend: Backend, device: torch.device, *,
                 amp: bool = True, label_smoothing: float = 0.0, compile: bool = False) -> None:
        self.model = model
        self.forward: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(model) if compile else model
        )
        self.arena = arena
        self.backend = backend
        self.device = device
        self.autocast = amp and device.type == "cuda"
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # progress is read back only every few steps on GPU: each read is a host sync
        self.sync_every = 25 if device.type == "cuda" else 1

    def train_epoch(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        lr_at: Callable[[int], float],
        ramp_step: Callable[[int], int],
        on_progress: Callable[[int, float, float, float], None] | None = None,
    ) -> EpochResult:
        """Train one epoch; ``lr_at(i)`` and ``ramp_step(i)`` map the epoch's step i to lr and t."""
        self.model.train()
        self.arena.verify()  # once per epoch: catches .to() / set_to_none before they cost a state
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        lam = 0.0
        i = -1
        for i, (x, y) in enumerate(batches):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = self.forward(x)
                loss = self.loss_fn(logits.float(), y)
            loss.backward()
            lam = self.arena.step(self.backend, lr_at(i), ramp_step(i))
            loss_sum += loss.detach().double() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            if on_progress is not None and (i + 1) % self.sync_every == 0:
                on_progress(i + 1, float(loss_sum) / seen, float(correct) / seen, lam)
        steps = i + 1
        loss_value = float(loss_sum) / max(seen, 1)
        acc = float(correct) / max(seen, 1)
        if on_progress is not None:
            on_progress(steps, loss_value, acc, lam)
        return EpochResult(loss_value, acc, lam, steps)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
        """(accuracy, mean loss) over ``batches``."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        for x, y in batches:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = self.model(x).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            seen += y.shape[0]
        if seen == 0:
            return math.nan, math.nan
        return float(correct) / seen, float(loss_sum) / seen


def lr_schedule(base_lr: float, kind: str, *, steps_per_epoch: int, epochs: int,
                warmup_epochs: float, milestones: list[int], gamma: float
                ) -> Callable[[int], float]:
    """Learning rate at step s of a state: linear warm-up, then multistep / cosine / constant."""
    total = max(steps_per_epoch * epochs, 1)
    warmup = int(round(warmup_epochs * steps_per_epoch))

    def lr_at(step: int) -> float:
        if step < warmup:
            return base_lr * (step + 1) / warmup
        if kind == "multistep":
            epoch = step // max(steps_per_epoch, 1)
            return base_lr * gamma ** sum(1 for m in milestones if epoch >= m)
        if kind == "cosine":
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return base_lr

    return lr_at
