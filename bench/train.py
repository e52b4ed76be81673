"""``rsst bench --suite train``: epoch throughput of the real training engine.

Unlike the step suite, which times a hand-written step on one fixed batch, this suite runs what
``rsst run`` runs: `rsst.engine.Engine.train_epoch` on a model whose parameters live in an
`Arena` (realistic code buffer: 60 % alive, 10 % pending), the backend from
``make_backend("auto")`` (Triton on CUDA, the compiled pass on the CPU), device-resident
`rsst.data.Batches` over the synthetic dataset with the GPU-side crop/flip augmentation, bf16
autocast on CUDA. Each model runs in several *variants*, so every speed-up of the engine is
measured side by side: ``eager`` (the default ``rsst run``: channels_last for CNNs), ``nchw``
(CNNs in the row-major layout, the layout change alone), ``compile`` (``torch.compile``) and, on
CUDA, ``graph`` (the whole step captured as one CUDA graph, ``--cuda-graph``). The variants of a
model are set up together, warmed up (the first step plus ``warmup`` steps) and timed in
interleaved rounds of chunks whose order rotates, as the step suite does with its paths, so
machine drift does not pick a winner; min, median and spread per step are reported with threads
and load average. Images/s are measured over a number of steps and extrapolated to one
45,000-image CIFAR training epoch (50k minus the 5k validation split).

Compilation happens on the first steps; they are timed apart (``compile_s``) and excluded from
the throughput (graph capture happens in the warm-up). If ``torch.compile`` or the capture fails
here (no C compiler, an unsupported op), the record carries the error and the suite goes on.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console

from rsst.arena import Arena
from rsst.data import Batches, ImageSet, load_dataset
from rsst.engine import Engine
from rsst.models import use_channels_last
from rsst.update import UpdateConfig, make_backend
from rsst_bench.common import load_avg, release_memory, render_table
from rsst_bench.step import DEFAULT_MODELS, _install_codes, _make_model

EPOCH_IMAGES = 45_000
LR = 0.01
#: Models also timed compiled by default on CPU (the others on request with --models).
CPU_COMPILE_MODELS = ("resnet20", "vit_tiny")


@dataclass(frozen=True)
class TrainSettings:
    """Batch size and how many steps are timed (CPU defaults keep ``--suite all`` < 10 min)."""

    batch: int
    warmup: int  # steps after the first (compiling) one, before timing
    chunks: int  # timed chunks; the figure is the median chunk
    steps: int  # steps per chunk
    compile_models: tuple[str, ...] | None = None  # None: compile every model (default)

    @staticmethod
    def for_device(device: torch.device, quick: bool, models_given: bool = False
                   ) -> TrainSettings:
        if device.type == "cuda":
            return TrainSettings(batch=128, warmup=5 if quick else 20, chunks=3,
                                 steps=10 if quick else 50)
        # A 2-core CPU: batch 32 and a few steps per chunk keep `--suite all` under ten minutes
        # even with a cold inductor cache. A cold compile costs 45-60 s per model there, so by
        # default only the two small models also run compiled (all of them with --models).
        return TrainSettings(batch=8 if quick else 32, warmup=2, chunks=2 if quick else 3,
                             steps=2 if quick else 3,
                             compile_models=None if models_given else CPU_COMPILE_MODELS)


def _forever(batches: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches across epoch boundaries (the synthetic train split is smaller than a benchmark)."""
    while True:
        yield from batches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Variant:
    """One way of running the engine: the flags of ``rsst run`` it stands for."""

    name: str
    compile: bool = False
    cuda_graph: bool = False
    memory_format: str = "auto"


VARIANTS: dict[str, Variant] = {
    "eager": Variant("eager"),
    "nchw": Variant("nchw", memory_format="contiguous"),
    "compile": Variant("compile", compile=True),
    "graph": Variant("graph", cuda_graph=True),
}


def variants_for(model_name: str, device: torch.device) -> list[Variant]:
    """``nchw`` only where the default layout differs (CNNs), ``graph`` only on CUDA."""
    names = ["eager"]
    if use_channels_last("auto", _make_model(model_name, torch.device("meta"))):
        names.append("nchw")
    names.append("compile")
    if device.type == "cuda":
        names.append("graph")
    return [VARIANTS[n] for n in names]


class VariantRun:
    """One variant of one model, set up and warmed up, ready to time chunks of steps.

    Building it runs the first step (compiling when ``compile``) and the warm-up (capturing the
    graph when ``cuda_graph``), so a broken compiler or capture fails here.
    """

    def __init__(self, name: str, device: torch.device, data: ImageSet,
                 settings: TrainSettings, variant: Variant, config: UpdateConfig) -> None:
        self.device, self.settings, self.variant = device, settings, variant
        self.model = _make_model(name, device)
        arena = Arena(self.model, channels_last=use_channels_last(variant.memory_format,
                                                                  self.model))
        _install_codes(arena)
        self.backend = make_backend("auto", device, config)
        self.engine = Engine(self.model, arena, self.backend, device, amp=True,
                             compile=variant.compile, cuda_graph=variant.cuda_graph)
        self.stream = _forever(Batches(data, settings.batch, shuffle=True, augment=True,
                                       device=device, drop_last=True))
        self.first_s = self.chunk(1)  # compiles forward and backward when compile=True
        if settings.warmup:
            self.chunk(settings.warmup)  # a graph is captured here (after GRAPH_WARMUP steps)
        if variant.cuda_graph and self.engine.capture is None:
            raise RuntimeError(self.engine.graph_note or "the engine trained without a graph")
        self.chunk_s: list[float] = []

    def chunk(self, steps: int) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        self.engine.train_epoch(itertools.islice(self.stream, steps), lambda i: LR, lambda i: i)
        _sync(self.device)  # train_epoch ends with a host read of the loss; this makes it explicit
        return time.perf_counter() - t0

    def record(self) -> dict[str, Any]:
        settings = self.settings
        step_s = statistics.median(self.chunk_s) / settings.steps
        images_per_s = settings.batch / step_s
        min_s = min(self.chunk_s) / settings.steps
        nhwc = self.engine.arena.channels_last
        return {
            "path": self.backend.name,
            "memory_format": "channels_last" if nhwc else "contiguous",
            "layout": "nhwc" if nhwc else "nchw",  # short form for the table
            "median_ms": step_s * 1e3,
            "min_ms": min_s * 1e3,
            "spread_pct": 100.0 * (max(self.chunk_s) - min(self.chunk_s))
            / statistics.median(self.chunk_s),
            "images_per_s": images_per_s,
            "threads": torch.get_num_threads(),
            "epoch_s": EPOCH_IMAGES / images_per_s,
            "first_step_s": self.first_s,
            "compile_s": max(self.first_s - step_s, 0.0) if self.variant.compile else None,
            "params": sum(p.numel() for p in self.model.parameters()),
            "steps_measured": settings.chunks * settings.steps,
        }


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"


def measure_model(name: str, device: torch.device, data: ImageSet, settings: TrainSettings,
                  variants: list[Variant], config: UpdateConfig
                  ) -> dict[str, dict[str, Any]]:
    """Every variant of model ``name`` set up first, then timed in interleaved rounds (each
    variant one chunk per round), so drift of a shared machine hits them alike. A compiled or
    graphed variant that fails gets ``error`` instead of figures; the plain ones must work."""
    runs: dict[str, VariantRun] = {}
    errors: dict[str, str] = {}
    for variant in variants:
        try:
            runs[variant.name] = VariantRun(name, device, data, settings, variant, config)
        except Exception as exc:  # a failing compiler or capture must not end the bench
            if variant.name in ("eager", "nchw"):
                raise
            errors[variant.name] = _failure(exc)
    for r in range(settings.chunks):
        order = list(runs.items())
        order = order[r % len(order):] + order[: r % len(order)] if order else order
        for variant_name, run in order:
            try:
                run.chunk_s.append(run.chunk(settings.steps))
            except Exception as exc:
                if variant_name in ("eager", "nchw"):
                    raise
                errors[variant_name] = _failure(exc)
                del runs[variant_name]
    out = {v: run.record() for v, run in runs.items()}
    out.update({v: {"path": "auto", "median_ms": None, "images_per_s": None, "epoch_s": None,
                    "error": message} for v, message in errors.items()})
    del runs
    release_memory(device)
    return out


def run(device: torch.device, *, models: list[str] | None = None, console: Console,
        quick: bool = False, settings: TrainSettings | None = None,
        data: ImageSet | None = None) -> list[dict[str, Any]]:
    settings = settings or TrainSettings.for_device(device, quick, models is not None)
    models = list(models or DEFAULT_MODELS)
    if data is None:
        data = load_dataset("synthetic").train
    config = UpdateConfig(momentum=0.9, weight_decay=5e-4, schedule="exp_custom_exponents",
                          ramp_steps=1000)
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    for name in models:
        variants = []
        for variant in variants_for(name, device):
            if variant.compile and settings.compile_models is not None and (
                    name not in settings.compile_models):
                notes.append(f"{name} compiled: not timed by default on CPU (a cold "
                             "compile takes about a minute); ask with --models")
            else:
                variants.append(variant)
        load = load_avg()  # a busy shared machine explains noisy figures
        results = measure_model(name, device, data, settings, variants, config)
        load_after = load_avg()
        for variant in variants:
            result = results[variant.name]
            if "error" in result:
                notes.append(f"{name} {variant.name}: failed here ({result['error']})")
            records.append({
                "suite": "train", "model": name, "device": device.type, "variant": variant.name,
                "batch": settings.batch, "epoch_images": EPOCH_IMAGES,
                "compile": variant.compile, "cuda_graph": variant.cuda_graph,
                "amp": "bf16" if device.type == "cuda" else None, "dataset": "synthetic",
                "load_avg": load, "load_avg_after": load_after, **result,
            })
    render_table(
        console,
        f"train suite · {device.type} · {torch.get_num_threads()} threads · "
        f"Engine.train_epoch, batch {settings.batch}, "
        f"epoch = {EPOCH_IMAGES:,} images (extrapolated)",
        records,
        [("model", "model"), ("path", "path"), ("variant", "variant"),
         ("layout", "layout"), ("min_ms", "min ms/step"), ("median_ms", "median ms/step"),
         ("spread_pct", "spread %"),
         ("images_per_s", "img/s"), ("epoch_s", "s/epoch"), ("compile_s", "compile s")],
    )
    for note in notes:
        console.print(f"[dim]{note}[/]")
    records += _scaling(models[0], device, console)
    return records


def _scaling(model: str, device: torch.device, console: Console) -> list[dict[str, Any]]:
    """Data-parallel images/s per rank count (`rsst_bench.scaling`), or why it is unmeasured."""
    from rsst_bench.scaling import RANK_BATCH, records

    rows = records(model, device)
    if rows[0]["status"] == "unmeasured":
        console.print(f"[dim]scaling over ranks ({model}): unmeasured — {rows[0]['note']}[/]")
        return rows
    render_table(console, f"train suite · scaling · {model}, {RANK_BATCH} images per rank "
                 "(torchrun, NCCL)", rows,
                 [("ranks", "ranks"), ("batch", "global batch"), ("median_ms", "ms/step"),
                  ("images_per_s", "img/s"), ("images_per_s_per_rank", "img/s per rank"),
                  ("efficiency", "efficiency")])
    return rows
