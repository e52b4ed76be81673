"""``rsst bench --suite step``: one whole training step (forward, backward, update) per path.

The update suite times the pruning work alone; this suite answers the question a user has: how
much slower is a training step with RSST than plain dense training? Paths, each on a fresh model
of the registry at CIFAR shapes with random (synthetic) batches:

- ``dense``: plain training with PyTorch's own SGD (``fused=True`` on CUDA, ``foreach=True`` on
  CPU), no masks: the floor every RSST path is measured against;
- ``seed``: the research loop — ``torch.nn.utils.prune`` forward hooks on every conv / linear
  weight plus the per-layer seed-style update with its host round trip (`SeedStyleUpdate`);
- ``eager`` / ``torch`` / ``triton``: rsst's `Arena` with the backend from `make_backend` and a
  realistic code buffer (60 % alive, 10 % pending, as in the update suite); ``triton`` only on
  CUDA.

Every path of a model runs in the same memory format — channels_last for the CNNs, as ``rsst run``
picks by default (`rsst.models.use_channels_last`) — so the overhead figures measure the pruning
work alone, not a layout difference.

Paths are timed in interleaved rounds (every path once per round) so that drift of a shared
machine hits all of them alike; a sample is a block of steps (several on CUDA, where one step is
too short to time alone without exposing launch latency), the figure the median per step.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from torch import nn

from rsst.arena import Arena
from rsst.models import create_model, use_channels_last
from rsst.update import UpdateConfig, make_backend
from rsst_bench.common import release_memory, render_table, time_ms
from rsst_bench.seed_style import SeedStyleUpdate
from rsst_kernels import triton_available
from rsst_kernels.masks import ALIVE

DEFAULT_MODELS: tuple[str, ...] = ("resnet20", "resnet18", "vit_tiny", "vit_small")
PATHS: tuple[str, ...] = ("dense", "seed", "eager", "torch", "triton")
ALIVE_FRACTION = 0.6
PENDING_FRACTION = 0.1
LR = 0.01


@dataclass(frozen=True)
class StepSettings:
    """Batch size and sampling of one suite run (CPU defaults keep ``--suite all`` < 10 min)."""

    batch: int
    warmup: int
    rounds: int
    block: int

    @staticmethod
    def for_device(device: torch.device, quick: bool) -> StepSettings:
        if device.type == "cuda":
            return StepSettings(batch=128, warmup=5 if quick else 10, rounds=5 if quick else 15,
                                block=5 if quick else 10)
        # A 2-core CPU needs ~2 s for one vit_small step at batch 32 (~9 s at 128): batch 32
        # keeps the whole `--suite all` run under ten minutes; --quick is a smoke test.
        return StepSettings(batch=8 if quick else 32, warmup=1, rounds=2 if quick else 5, block=1)


def _make_model(name: str, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=10).to(device)


def _install_codes(arena: Arena, seed: int = 0) -> None:
    """The update suite's realistic code buffer: 60 % alive, 10 % pending (P within H)."""
    gen = torch.Generator(device=arena.device).manual_seed(seed)
    draw = torch.rand(arena.numel, generator=gen, device=arena.device)
    arena.set_masks(draw < ALIVE_FRACTION, draw < PENDING_FRACTION)


class StepRunner:
    """One path's training step on a random batch; ``__call__`` runs one step."""

    def __init__(self, path: str, model_name: str, device: torch.device, batch: int,
                 config: UpdateConfig) -> None:
        self.path = path
        self.device = device
        self.model = _make_model(model_name, device)
        self.model.train()
        self.channels_last = use_channels_last("auto", self.model)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        gen = torch.Generator(device=device).manual_seed(1)
        self.x = torch.rand(batch, 3, 32, 32, generator=gen, device=device).contiguous(
            memory_format=fmt)
        self.y = torch.randint(0, 10, (batch,), generator=gen, device=device)
        self.autocast = device.type == "cuda"  # bf16 autocast on CUDA, as the engine does
        self.loss_fn = nn.CrossEntropyLoss()
        self.t = 0
        self.arena: Arena | None = None
        self.update: Callable[[], None]
        if path == "dense":
            self.model.to(memory_format=fmt)
            cuda = device.type == "cuda"
            optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=config.momentum,
                                        weight_decay=config.weight_decay,
                                        fused=True if cuda else None,
                                        foreach=None if cuda else True)

            def dense_update() -> None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            self.update = dense_update
        elif path == "seed":
            # an arena only to draw the masks the way the other paths do
            arena = Arena(self.model, channels_last=self.channels_last)
            _install_codes(arena)
            self.alive = float(arena.hard_mask.float().mean())
            self.pending = float(arena.pending.float().mean())
            seed = SeedStyleUpdate(arena, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
            _add_prune_hooks(self.model, arena)

            def seed_update() -> None:
                seed.step(LR)
                seed.optimizer.zero_grad(set_to_none=True)

            self.update = seed_update
        else:
            arena = Arena(self.model, channels_last=self.channels_last)
            _install_codes(arena)
            self.arena = arena
            self.alive = float(arena.hard_mask.float().mean())
            self.pending = float(arena.pending.float().mean())
            backend = make_backend(path, device, config)

            def arena_update() -> None:
                arena.step(backend, LR, self.t)

            self.update = arena_update

    def __call__(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(self.x)
            loss = self.loss_fn(logits.float(), self.y)
        loss.backward()
        self.update()
        self.t += 1


def _add_prune_hooks(model: nn.Module, arena: Arena) -> None:
    """``torch.nn.utils.prune`` masks on every conv / linear weight, as the research code had.

    The parameter object stays the same (it is re-registered as ``weight_orig``), so the seed
    update still sees it; every forward recomputes ``weight = weight_orig * weight_mask``.
    """
    from torch.nn.utils import prune

    names = {id(p): n for n, p in model.named_parameters()}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (nn.Conv2d, nn.Linear)) and isinstance(weight, nn.Parameter):
            mask = (arena.view(names[id(weight)], "code") & ALIVE) != 0
            prune.custom_from_mask(module, "weight", mask.to(weight.dtype))


def _paths(device: torch.device) -> tuple[list[str], list[str]]:
    """(paths to time, notes on paths skipped here)."""
    if device.type == "cuda" and triton_available(device):
        return list(PATHS), []
    return [p for p in PATHS if p != "triton"], ["triton skipped: the fused kernel needs CUDA"]


def measure_model(name: str, device: torch.device, settings: StepSettings,
                  paths: list[str], config: UpdateConfig) -> dict[str, dict[str, Any]]:
    """Per-path step time of model ``name``: runners built up front, timed in rounds."""
    runners = {path: StepRunner(path, name, device, settings.batch, config) for path in paths}
    for runner in runners.values():
        for _ in range(settings.warmup):
            runner()
    samples: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(settings.rounds):
        for path, runner in runners.items():
            def block(runner: StepRunner = runner) -> None:
                for _ in range(settings.block):
                    runner()

            samples[path].append(time_ms(block, device, warmup=0, repeats=1) / settings.block)
    out: dict[str, dict[str, Any]] = {}
    for path, runner in runners.items():
        out[path] = {
            "median_ms": statistics.median(samples[path]),
            "min_ms": min(samples[path]),
            "params": sum(p.numel() for p in runner.model.parameters()),
            "memory_format": "channels_last" if runner.channels_last else "contiguous",
            "alive": getattr(runner, "alive", 1.0),
            "pending": getattr(runner, "pending", 0.0),
        }
    del runners
    release_memory(device)
    return out


def run(device: torch.device, *, models: list[str] | None = None, console: Console,
        quick: bool = False, settings: StepSettings | None = None) -> list[dict[str, Any]]:
    models = list(models or DEFAULT_MODELS)
    settings = settings or StepSettings.for_device(device, quick)
    config = UpdateConfig(momentum=0.9, weight_decay=5e-4, schedule="exp_custom_exponents",
                          ramp_steps=1000)
    paths, notes = _paths(device)
    records: list[dict[str, Any]] = []
    for name in models:
        load = os.getloadavg()[0]  # a busy shared machine explains noisy figures
        timings = measure_model(name, device, settings, paths, config)
        dense = timings["dense"]["median_ms"]
        for path in paths:
            ms = timings[path]["median_ms"]
            records.append({
                "suite": "step",
                "model": name,
                "path": path,
                "device": device.type,
                "median_ms": ms,
                "min_ms": timings[path]["min_ms"],
                "batch": settings.batch,
                "images_per_s": settings.batch / (ms * 1e-3),
                "overhead_pct": 100.0 * (ms / dense - 1.0),
                "overhead_ms": ms - dense,
                "vs_dense": ms / dense,
                "vs_eager": timings["eager"]["median_ms"] / ms,
                "vs_seed": timings["seed"]["median_ms"] / ms,
                "params": timings[path]["params"],
                "memory_format": timings[path]["memory_format"],
                "alive": timings[path]["alive"],
                "pending": timings[path]["pending"],
                "amp": "bf16" if device.type == "cuda" else None,
                "samples": settings.rounds,
                "steps_per_sample": settings.block,
                "load_avg": load,
            })
    render_table(
        console,
        f"step suite · {device.type} · forward + backward + update, batch {settings.batch}",
        records,
        [("model", "model"), ("path", "path"), ("median_ms", "ms/step"),
         ("images_per_s", "img/s"), ("overhead_pct", "% over dense"),
         ("vs_eager", "× eager"), ("vs_seed", "× seed")],
    )
    for note in notes:
        console.print(f"[dim]{note}[/]")
    return records
