"""``rsst bench --suite update``: the per-step update alone, on arenas shaped like real models.

For each model the parameter shapes come from the real module built on the meta device; the
arena is then filled with random weights, gradients and a realistic code buffer (60 % alive,
10 % pending). Every available backend is timed side by side, plus the seed-style baseline and,
on CUDA, the device's copy bandwidth (the ceiling for a bandwidth-bound kernel). On CUDA each
sample times `CUDA_BLOCK` calls back to back, for the update and the copy alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from torch import nn

from rsst.arena import Arena
from rsst.update import BACKENDS, UpdateConfig, make_backend
from rsst_bench.common import render_table, time_ms
from rsst_bench.seed_style import SeedStyleUpdate
from rsst_kernels import BYTES_PER_ELEMENT, triton_available
from rsst_kernels.masks import ALIVE, PENDING

DEFAULT_MODELS = ("resnet20", "resnet18", "vit_tiny", "vit_small", "vit_base")
#: vit_base's 85 M-element arena takes minutes per backend on a small CPU: asked for by name there
CPU_DEFAULT_MODELS = DEFAULT_MODELS[:-1]


class ShapeModel(nn.Module):
    """A module holding only parameters with the shapes of a real model's trainable tensors."""

    def __init__(self, shapes: list[tuple[str, tuple[int, ...]]], device: torch.device) -> None:
        super().__init__()
        self.tensors = nn.ParameterList(
            nn.Parameter(torch.empty(shape, device=device)) for _, shape in shapes
        )


def model_shapes(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """Trainable parameter shapes of registry model ``name``, built on the meta device."""
    from rsst.models import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=10)
    return [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]


def build_arena(name: str, device: torch.device, seed: int = 0) -> tuple[ShapeModel, Arena]:
    shapes = model_shapes(name)
    model = ShapeModel(shapes, device)
    arena = Arena(model)
    gen = torch.Generator(device=device).manual_seed(seed)
    arena.weight.copy_(torch.randn(arena.numel, generator=gen, device=device))
    draw = torch.rand(arena.numel, generator=gen, device=device)
    arena.set_masks(draw < 0.6, draw < 0.1)
    return model, arena


#: Calls per timed sample on CUDA: back-to-back launches keep the GPU busy, so a sample measures
#: the kernels and not the launch latency between the start event and the first kernel.
CUDA_BLOCK = 10


def time_block_ms(fn: Callable[[], object], device: torch.device, *, warmup: int,
                  repeats: int) -> float:
    """Median ms per call of ``fn``, each sample a block of calls on CUDA (one on CPU)."""
    block = CUDA_BLOCK if device.type == "cuda" else 1

    def calls() -> None:
        for _ in range(block):
            fn()

    return time_ms(calls, device, warmup=warmup, repeats=repeats) / block


def copy_bandwidth_gbps(device: torch.device, numel: int, *, warmup: int, repeats: int) -> float:
    """Device-to-device copy bandwidth (read + write bytes) on ``numel`` float32 elements."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    ms = time_block_ms(lambda: dst.copy_(src), device, warmup=warmup, repeats=repeats)
    return 2 * 4 * numel / (ms * 1e-3) / 1e9


def run(device: torch.device, *, models: list[str] | None = None, console: Console,
        quick: bool = False) -> list[dict[str, Any]]:
    models = list(models or (DEFAULT_MODELS if device.type == "cuda" else CPU_DEFAULT_MODELS))
    cuda = device.type == "cuda"
    warmup, repeats = (10, 100) if cuda else (2, 5 if quick else 10)
    config = UpdateConfig(momentum=0.9, weight_decay=1e-4, schedule="exp_custom_exponents",
                          ramp_steps=1000)
    backends = [b for b in BACKENDS if b != "triton" or (cuda and triton_available(device))]
    records: list[dict[str, Any]] = []
    for name in models:
        _, arena = build_arena(name, device)
        numel = arena.numel
        copy_gbps = (
            copy_bandwidth_gbps(device, numel, warmup=warmup, repeats=repeats) if cuda else None
        )
        timings: dict[str, float] = {}
        for backend_name in backends:
            backend = make_backend(backend_name, device, config)
            counter = iter(range(10**9))
            timings[backend_name] = time_block_ms(
                lambda backend=backend, counter=counter, arena=arena: arena.step(
                    backend, 0.01, next(counter)),
                device, warmup=warmup, repeats=repeats,
            )
        seed = SeedStyleUpdate(arena)
        seed_repeats = max(3, repeats // 5)
        timings["seed"] = time_block_ms(lambda seed=seed: seed.step(0.01), device,
                                        warmup=min(warmup, 3), repeats=seed_repeats)
        for path, ms in timings.items():
            gbps = BYTES_PER_ELEMENT * numel / (ms * 1e-3) / 1e9
            records.append({
                "suite": "update",
                "model": name,
                "path": path,
                "device": device.type,
                "numel": numel,
                "params": sum(s.numel for s in arena.slots.values()),
                "alive": float(((arena.code & ALIVE) != 0).float().mean()),
                "pending": float(((arena.code & PENDING) != 0).float().mean()),
                "median_ms": ms,
                "bytes_per_elem": BYTES_PER_ELEMENT,
                "gbps": gbps,
                "copy_gbps": copy_gbps,
                "pct_of_copy": 100 * gbps / copy_gbps if copy_gbps else None,
                "vs_eager": timings["eager"] / ms,
                "vs_seed": timings["seed"] / ms,
            })
    render_table(
        console,
        f"update suite · {device.type} · per-step update, {BYTES_PER_ELEMENT} B/element",
        records,
        [("model", "model"), ("path", "path"), ("numel", "elements"), ("median_ms", "ms/step"),
         ("gbps", "GB/s"), ("pct_of_copy", "% of copy"), ("vs_eager", "× eager"),
         ("vs_seed", "× seed")],
    )
    return records
