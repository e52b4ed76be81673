"""One training epoch and evaluation: forward/backward (autocast on CUDA), then ONE update call.

On CUDA with a capturable backend (``triton``) the whole step — forward, backward and the fused
update — can be captured once as a CUDA graph and replayed for every batch of the same shape
(``cuda_graph=True``): the host then only copies the batch into the graph's static input and
writes the step's scalars (lr, t) into the arena's scalar tensor, and the GPU runs the step
without one kernel launch from Python. The first `GRAPH_WARMUP` steps run eagerly on the capture
stream (they are real training steps: cuDNN/cuBLAS pick their algorithms, Triton compiles), and a
batch of another shape (the last, smaller one) runs eagerly. If capture fails the engine says so
once and trains eagerly.

Data-parallel (``world``, see `rsst.distributed`): each rank's loss is weighted 1/N, the flat
grad buffer is summed over the ranks by one all-reduce between backward and the update, and the
epoch's loss/accuracy and evaluation sums are reduced over the ranks; no CUDA graph then.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rsst.arena import Arena, UpdateBackend
from rsst.distributed import SINGLE, World

#: Eager steps on the capture stream before the graph is captured (PyTorch's docs use 3).
GRAPH_WARMUP = 3


@dataclass
class EpochResult:
    loss: float
    acc: float
    lam: float
    steps: int


def cuda_graph_capture(fn: Callable[[], Any], stream: Any) -> Callable[[], None]:
    """Capture ``fn`` (all its work on ``stream``) as a CUDA graph; returns its replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    return graph.replay


class _GraphedStep:
    """Forward + backward + update for one batch shape, captured once and replayed.

    ``capture`` is `cuda_graph_capture` on CUDA; tests pass a function that returns ``fn``
    itself, which exercises everything here except the CUDA graph.
    """

    def __init__(self, engine: Engine, x: torch.Tensor, y: torch.Tensor,
                 capture: Callable[[Callable[[], Any], Any], Callable[[], None]]) -> None:
        self.engine = engine
        self.static_x = x.clone()
        self.static_y = y.clone()
        self.key = GraphKey.of(engine, x, y)
        self.stream = torch.cuda.Stream(engine.device) if engine.device.type == "cuda" else None
        self.warmup_left = GRAPH_WARMUP
        self.capture = capture
        self.replayed: _Replayed | None = None  # set once the step is captured
        self.failure: str | None = None
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def _stream(self) -> Any:
        return torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()

    def _sync_in(self) -> None:
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.engine.device))

    def _sync_out(self) -> None:
        if self.stream is not None:
            torch.cuda.current_stream(self.engine.device).wait_stream(self.stream)

    def _captured_body(self) -> None:
        logits, loss = self.engine._forward_backward(self.static_x, self.static_y,
                                                     autocast_cache=False)
        self.engine.backend.launch(self.engine.arena)
        self.outputs = (logits, loss)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float, t: int
                 ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One training step on (x, y); returns (logits, loss, λ)."""
        engine, arena = self.engine, self.engine.arena
        if self.replayed is None:
            # warm-up: a real step, eager, on the capture stream (handles and kernels get made)
            self._sync_in()
            with self._stream():
                logits, loss = engine._forward_backward(x, y, autocast_cache=False)
                lam = arena.step(engine.backend, lr, t)
            self._sync_out()
            if self.stream is not None:  # tensors used on both streams: free them safely
                x.record_stream(self.stream)
                y.record_stream(self.stream)
                current = torch.cuda.current_stream(engine.device)
                logits.record_stream(current)
                loss.record_stream(current)
            self.warmup_left -= 1
            if self.warmup_left <= 0:
                self._sync_in()
                try:
                    replay = self.capture(self._captured_body, self.stream)
                    self.replayed = _Replayed(engine.backend, replay)
                except RuntimeError as exc:  # this batch's step is done: go on without a graph
                    self.failure = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
                    arena.zero_grad()
                self._sync_out()
            return logits, loss, lam
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        lam = arena.step(self.replayed, lr, t)
        assert self.outputs is not None
        logits, loss = self.outputs
        return logits, loss, lam


@dataclass(frozen=True)
class _Replayed(UpdateBackend):
    """The backend's update with its kernel launch replaced by the graph's replay (which runs
    forward, backward and the launch): `Arena.step` drives it like any backend."""

    backend: UpdateBackend
    replay: Callable[[], None]
    capturable = False  # it is the capture

    @property
    def name(self) -> str:
        return f"{self.backend.name}+graph"

    @property
    def switches(self) -> tuple[Hashable, ...]:
        return self.backend.switches

    def prepare(self, arena: Arena, lr: float, t: int) -> float:
        return self.backend.prepare(arena, lr, t)

    def launch(self, arena: Arena) -> None:
        self.replay()


@dataclass(frozen=True)
class GraphKey:
    """What a captured step bakes in besides addresses: batch shape and the kernel's switches."""

    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    switches: tuple[Hashable, ...]

    @staticmethod
    def of(engine: Engine, x: torch.Tensor, y: torch.Tensor) -> GraphKey:
        return GraphKey(tuple(x.shape), tuple(y.shape), engine.backend.switches)


class Engine:
    """Trains a model whose parameters live in ``arena`` with one ``arena.step`` per batch."""

    def __init__(self, model: nn.Module, arena: Arena, backend: UpdateBackend,
                 device: torch.device, *,
                 amp: bool = True, label_smoothing: float = 0.0, compile: bool = False,
                 cuda_graph: bool = False,
                 capture: Callable[[Callable[[], Any], Any], Callable[[], None]] | None = None,
                 world: World = SINGLE) -> None:
        self.model = model
        self.world = world
        self.forward: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(model) if compile else model
        )
        self.arena = arena
        self.backend = backend
        self.device = device
        self.autocast = amp and device.type == "cuda"
        self.channels_last = arena.channels_last  # NHWC weights: feed NHWC inputs
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # progress is read back only every few steps on GPU: each read is a host sync
        self.sync_every = 25 if device.type == "cuda" else 1
        if capture is None and cuda_graph and device.type == "cuda":
            capture = cuda_graph_capture
        # a graph needs a backend whose update reads its scalars from device memory; compiled
        # models get graphs from torch.compile(mode="reduce-overhead") instead
        self.capture = (capture if capture is not None and not compile
                        and backend.capturable and not world.distributed else None)
        self.graph_note: str | None = None
        self._graphed: _GraphedStep | None = None

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, *, autocast_cache: bool = True
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast,
                            cache_enabled=autocast_cache):
            logits = self.forward(x)
            loss = self.loss_fn(logits.float(), y)
        if self.world.distributed:  # equal shares: the ranks' sum is the global batch's mean
            (loss / self.world.size).backward()
        else:
            loss.backward()
        return logits.detach(), loss.detach()

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float, t: int
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        x = self._input(x)
        if self.capture is not None:
            key = GraphKey.of(self, x, y)
            graphed = self._graphed
            if graphed is None or graphed.key.switches != key.switches:
                graphed = self._graphed = _GraphedStep(self, x, y, self.capture)
            if graphed.key == key:  # another shape (the last, short batch) runs eagerly
                result = graphed(x, y, lr, t)
                if graphed.failure is not None:
                    self.capture, self._graphed = None, None
                    self.graph_note = f"CUDA graph capture failed, training eagerly: " \
                                      f"{graphed.failure}"
                return result
        logits, loss = self._forward_backward(x, y)
        self.world.average_grad(self.arena.grad)
        lam = self.arena.step(self.backend, lr, t)
        return logits, loss, lam

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
            logits, loss, lam = self._train_step(x, y, lr_at(i), ramp_step(i))
            loss_sum += loss.double() * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            seen += y.shape[0]
            if on_progress is not None and (i + 1) % self.sync_every == 0:
                on_progress(i + 1, float(loss_sum) / seen, float(correct) / seen, lam)
        steps = i + 1
        if self.world.distributed:
            loss_sum, correct, seen = self._global_sums(loss_sum, correct, seen)
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
                logits = self.model(self._input(x)).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            seen += y.shape[0]
        if self.world.distributed:  # each rank evaluated its part of the set
            loss_sum, correct, seen = self._global_sums(loss_sum, correct, seen)
        if seen == 0:
            return math.nan, math.nan
        return float(correct) / seen, float(loss_sum) / seen

    def _global_sums(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int
                     ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss sum, correct, count) summed over the ranks: one all-reduce."""
        sums = torch.stack([loss_sum, correct.double(),
                            torch.tensor(float(seen), dtype=torch.float64, device=self.device)])
        self.world.sum_(sums)
        return sums[0], sums[1], int(sums[2])


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
