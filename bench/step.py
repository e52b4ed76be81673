"""``rsst bench --suite step``: one whole training step (forward, backward, update) per path.

The update suite times the pruning work alone; this suite answers the question a user has: how
much slower is a training step with RSST than plain dense training? Paths, each on a fresh model
of the registry at CIFAR shapes with random (synthetic) batches:

- ``dense``: plain training with PyTorch's own SGD (``fused=True`` on CUDA, ``foreach=True`` on
  CPU), no masks: the floor every RSST path is measured against;
- ``seed``: the research loop — ``torch.nn.utils.prune`` forward hooks on every conv / linear
  weight plus the per-layer seed-style update with its host round trip (`SeedStyleUpdate`);
- ``eager`` / ``torch`` / ``compiled`` / ``triton``: rsst's `Arena` with the backend from
  `make_backend` and a realistic code buffer (60 % alive, 10 % pending, as in the update suite);
  ``triton`` only on CUDA;
- ``torch-pruning``: the peer — plain training with the same SGD as ``dense`` plus
  Torch-Pruning's growing regularization, ``regularize(model)`` after every backward
  (`rsst_bench.torch_pruning_peer`); its row says why when it cannot run (not installed, or an
  attention model).

Every path of a model runs in the same memory format — channels_last for the CNNs, as ``rsst run``
picks by default (`rsst.models.use_channels_last`) — so the overhead figures measure the pruning
work alone, not a layout difference.

Paths are timed in interleaved rounds (every path once per round, the order rotating) after
warm-up steps, so that drift of a shared machine hits all of them alike; a sample is a block of
steps (several on CUDA, where one step is too short to time alone without exposing launch
latency); min, median and spread per step are reported with the thread count and load average.

Memory: each path's peak over its warm-up steps, above what the process held before the path was
built — on CUDA ``max_memory_allocated``, on the CPU the peak resident set (VmHWM, reset through
``/proc/self/clear_refs`` after the build; freed heap returned with ``malloc_trim`` first). The
extra of an RSST path over ``dense`` per parameter is what the pruning state costs: the code byte
plus whatever temporaries its update makes.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from torch import nn

from rsst.arena import Arena
from rsst.models import create_model, use_channels_last
from rsst.update import BACKENDS, UpdateConfig, make_backend
from rsst_bench import torch_pruning_peer as peer
from rsst_bench.common import interleaved_ms, load_avg, release_memory, render_table, summary
from rsst_bench.seed_style import SeedStyleUpdate
from rsst_kernels import triton_available
from rsst_kernels.masks import ALIVE

DEFAULT_MODELS: tuple[str, ...] = ("resnet20", "resnet56", "resnet18", "vit_tiny", "vit_small")
PATHS: tuple[str, ...] = ("dense", "seed", *reversed(BACKENDS),  # eager, torch, compiled, triton
                          peer.PATH)
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
        return StepSettings(batch=8 if quick else 32, warmup=3, rounds=3 if quick else 7, block=1)


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
        elif path == peer.PATH:
            self.model.to(memory_format=fmt)
            optimizer = peer.sgd(self.model, device, lr=LR, momentum=config.momentum,
                                 weight_decay=config.weight_decay)
            added = peer.added_work(self.model, self.x[:1], optimizer)

            def peer_update() -> None:
                added()
                optimizer.zero_grad(set_to_none=True)

            self.update = peer_update
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


class PeakMemory:
    """Peak memory above a baseline, around the build and warm-up of one path."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = ("cuda max allocated" if device.type == "cuda"
                     else "cpu peak RSS (VmHWM)" if _can_reset_peak_rss() else None)
        self.baseline = 0

    def start(self) -> None:
        """Before the path is built: what the process holds now."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        elif self.kind is not None:
            _trim()
            self.baseline = _status_bytes("VmRSS")

    def reset_peak(self) -> None:
        """After the build: the peak from here on covers the steps alone."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind is not None:
            _trim()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak_above_baseline(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        if self.kind is None:
            return None
        return _status_bytes("VmHWM") - self.baseline


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _trim() -> None:
    """Free what Python and the C heap hold but do not use, so RSS is memory in use."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_bytes("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def measure_model(name: str, device: torch.device, settings: StepSettings,
                  paths: list[str], config: UpdateConfig) -> dict[str, dict[str, Any]]:
    """Per-path step time and peak memory of model ``name``.

    Timing: every runner is built and warmed up, then all are timed in interleaved rounds.
    Memory, afterwards (first-time costs — thread pools, kernel caches, the compiled pass — are
    paid by then): one fresh runner at a time, built, stepped twice, measured and dropped.
    """
    runners = {path: StepRunner(path, name, device, settings.batch, config) for path in paths}

    def block(runner: StepRunner) -> Callable[[], None]:
        def steps() -> None:
            for _ in range(settings.block):
                runner()
        return steps

    samples = interleaved_ms({path: block(r) for path, r in runners.items()}, device,
                             warmup=settings.warmup, rounds=settings.rounds)
    facts = {path: {"params": sum(p.numel() for p in r.model.parameters()),
                    "memory_format": "channels_last" if r.channels_last else "contiguous",
                    "alive": getattr(r, "alive", 1.0), "pending": getattr(r, "pending", 0.0)}
             for path, r in runners.items()}
    del runners
    release_memory(device)
    memory = PeakMemory(device)
    peaks: dict[str, int | None] = {}
    for path in paths:
        memory.start()
        runner = StepRunner(path, name, device, settings.batch, config)
        memory.reset_peak()
        for _ in range(2):
            runner()
        peaks[path] = memory.peak_above_baseline()
        del runner
        release_memory(device)
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        out[path] = {
            **summary([ms / settings.block for ms in samples[path]]),
            **facts[path],
            "peak_mem_bytes": peaks[path],
            "mem_kind": memory.kind,
        }
    return out


def run(device: torch.device, *, models: list[str] | None = None, console: Console,
        quick: bool = False, settings: StepSettings | None = None) -> list[dict[str, Any]]:
    models = list(models or DEFAULT_MODELS)
    settings = settings or StepSettings.for_device(device, quick)
    config = UpdateConfig(momentum=0.9, weight_decay=5e-4, schedule="exp_custom_exponents",
                          ramp_steps=1000)
    all_paths, notes = _paths(device)
    records: list[dict[str, Any]] = []
    for name in models:
        with torch.device("meta"):  # whether the peer runs on this model, without real weights
            peer_status = peer.unavailable_reason(create_model(name, num_classes=10))
        paths = [p for p in all_paths if p != peer.PATH or peer_status is None]
        load_before = load_avg()
        timings = measure_model(name, device, settings, paths, config)
        load_after = load_avg()
        dense = timings["dense"]["median_ms"]
        dense_mem = timings["dense"]["peak_mem_bytes"]
        for path in paths:
            ms = timings[path]["median_ms"]
            mem = timings[path]["peak_mem_bytes"]
            params = timings[path]["params"]
            extra = None if mem is None or dense_mem is None else mem - dense_mem
            records.append({
                "suite": "step",
                "model": name,
                "path": path,
                "device": device.type,
                "median_ms": ms,
                "min_ms": timings[path]["min_ms"],
                "spread_pct": timings[path]["spread_pct"],
                "batch": settings.batch,
                "images_per_s": settings.batch / (ms * 1e-3),
                "overhead_pct": 100.0 * (ms / dense - 1.0),
                "overhead_min_pct": 100.0 * (timings[path]["min_ms"]
                                             / timings["dense"]["min_ms"] - 1.0),
                "overhead_ms": ms - dense,
                "vs_dense": ms / dense,
                "vs_eager": timings["eager"]["median_ms"] / ms,
                "vs_seed": timings["seed"]["median_ms"] / ms,
                "vs_peer": (timings[peer.PATH]["median_ms"] / ms if peer.PATH in timings
                            else None),
                "params": params,
                "memory_format": timings[path]["memory_format"],
                "alive": timings[path]["alive"],
                "pending": timings[path]["pending"],
                "peak_mem_mb": None if mem is None else mem / 2**20,
                "extra_mem_mb": None if extra is None else extra / 2**20,
                "extra_bytes_per_param": None if extra is None else extra / params,
                "mem_kind": timings[path]["mem_kind"],
                "amp": "bf16" if device.type == "cuda" else None,
                "samples": settings.rounds,
                "warmup_steps": settings.warmup,
                "steps_per_sample": settings.block,
                "threads": torch.get_num_threads(),
                "load_avg": load_before,
                "load_avg_after": load_after,
                "status": None,
            })
        if peer_status is not None:
            records.append({"suite": "step", "model": name, "path": peer.PATH,
                            "device": device.type, "median_ms": None, "status": peer_status})
    render_table(
        console,
        f"step suite · {device.type} · {torch.get_num_threads()} threads · forward + backward + "
        f"update, batch {settings.batch} · {settings.rounds} interleaved rounds after "
        f"{settings.warmup} warm-up steps",
        records,
        [("model", "model"), ("path", "path"), ("min_ms", "min ms"), ("median_ms", "median ms"),
         ("spread_pct", "spread %"), ("overhead_min_pct", "% over dense (min)"),
         ("overhead_pct", "% over dense (median)"), ("vs_eager", "× eager"),
         ("vs_seed", "× seed"), ("vs_peer", "× torch-pruning"), ("peak_mem_mb", "peak MB"),
         ("extra_bytes_per_param", "extra B/param"), ("status", "note")],
    )
    loads = {r["model"]: (r["load_avg"], r["load_avg_after"]) for r in records
             if r["median_ms"] is not None}
    console.print(f"[dim]load average (1 min) before/after each model: {loads}; memory: "
                  f"{records[0]['mem_kind'] if records else None}[/]")
    for note in notes:
        console.print(f"[dim]{note}[/]")
    return records
