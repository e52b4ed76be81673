"""``rsst bench --suite update``: the per-step update alone, on arenas shaped like real models.

For each model the parameter shapes come from the real module built on the meta device; the
arena is then filled with random weights, gradients and a realistic code buffer (60 % alive,
10 % pending). Timed side by side, in interleaved rounds after warm-up calls:

- SGD (25 B/element: w, g, momentum read and written, the code byte read): every available
  backend (``triton`` on CUDA, ``compiled``, ``torch``, ``eager``) and the seed-style baseline;
- AdamW (33 B/element: w, g, m, v read and written, the code byte read): the same backends;
- ``copy``: a plain copy moving the same number of bytes (half read, half written) — the
  bandwidth reference for a memory-bound pass, on every device;
- ``torch-pruning``: the peer's added work per step on the real model (random gradients):
  Torch-Pruning's growing-regularization ``regularize(model)`` then torch's SGD step
  (`rsst_bench.torch_pruning_peer`); its row says why when it cannot run (not installed, or an
  attention model). Every SGD row gives its ratio to it (``× torch-pruning``).

Each figure comes with its min, median and spread over the rounds, the thread count and the load
average before and after; GB/s are bytes per element × elements / median time. The compiled
pass's first call (compile, or load from Inductor's on-disk cache) is reported once, apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from torch import nn

from rsst.arena import Arena
from rsst.update import BACKENDS, UpdateConfig, make_backend
from rsst_bench import torch_pruning_peer as peer
from rsst_bench.common import interleaved_ms, load_avg, release_memory, render_table, summary
from rsst_bench.seed_style import SeedStyleUpdate
from rsst_kernels import BYTES_PER_ELEMENT, triton_available
from rsst_kernels.compiled_update import ADAMW_PASS, SGD_PASS
from rsst_kernels.fused_adamw import ADAMW_BYTES_PER_ELEMENT
from rsst_kernels.masks import ALIVE, PENDING

DEFAULT_MODELS = ("resnet20", "resnet56", "resnet18", "vit_tiny", "vit_small", "vit_base")
#: vit_base's 85 M-element arena takes minutes per backend on a small CPU: asked for by name there
CPU_DEFAULT_MODELS = DEFAULT_MODELS[:-1]
OPTIMIZER_BYTES = {"sgd": BYTES_PER_ELEMENT, "adamw": ADAMW_BYTES_PER_ELEMENT}

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
    return summary(interleaved_ms({"fn": fn}, device, warmup=warmup, rounds=repeats,
                                  number=block)["fn"])["median_ms"]


def copy_of_bytes(device: torch.device, nbytes: int) -> Callable[[], object]:
    """A plain device copy that reads ``nbytes / 2`` and writes ``nbytes / 2`` bytes."""
    src = torch.randint(0, 255, (max(nbytes // 2, 1),), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def _variants(name: str, device: torch.device, backends: list[str]
              ) -> tuple[dict[str, Callable[[], object]], dict[str, dict[str, Any]], Arena]:
    """Every timed call for model ``name``, and what each one is (optimizer, bytes)."""
    fns: dict[str, Callable[[], object]] = {}
    info: dict[str, dict[str, Any]] = {}
    _, arena = build_arena(name, device)
    numel = arena.numel
    for optimizer in ("sgd", "adamw"):
        config = UpdateConfig(momentum=0.9, weight_decay=1e-4 if optimizer == "sgd" else 0.05,
                              schedule="exp_custom_exponents", ramp_steps=1000,
                              optimizer=optimizer)
        suffix = "" if optimizer == "sgd" else "-adamw"
        for backend_name in backends:
            backend = make_backend(backend_name, device, config)
            counter = iter(range(10**9))
            fns[backend_name + suffix] = (
                lambda backend=backend, counter=counter: arena.step(backend, 0.01, next(counter)))
            info[backend_name + suffix] = {"optimizer": optimizer, "backend": backend_name}
        fns["copy" + suffix] = copy_of_bytes(device, OPTIMIZER_BYTES[optimizer] * numel)
        info["copy" + suffix] = {"optimizer": optimizer, "backend": "copy"}
    arena.ensure_second_moment().copy_(torch.rand(numel, device=device) * arena.hard_mask)
    _, seed_arena = build_arena(name, device)  # its own: the seed loop replaces .grad tensors
    seed = SeedStyleUpdate(seed_arena)
    fns["seed"] = lambda: seed.step(0.01)
    info["seed"] = {"optimizer": "sgd", "backend": "seed"}
    peer_fn = _peer(name, device)
    if callable(peer_fn):
        fns[peer.PATH] = peer_fn
    info[peer.PATH] = {"optimizer": "sgd", "backend": peer.PATH,
                       "status": None if callable(peer_fn) else peer_fn}
    return fns, info, arena


def _peer(name: str, device: torch.device) -> Callable[[], None] | str:
    """The peer's added work on the real model ``name`` with random gradients, or why not."""
    from rsst.models import create_model

    with torch.device("meta"):  # the check first: no real weights for a model it cannot run
        reason = peer.unavailable_reason(create_model(name, num_classes=10))
    if reason is not None:
        return reason
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer = peer.sgd(model, device, lr=0.01, momentum=0.9, weight_decay=1e-4)
    return peer.added_work(model, torch.randn(1, 3, 32, 32, device=device), optimizer)


def _peer_record(name: str, device: torch.device, stat: dict[str, float], calls: int,
                 warmup: int, eager_ms: float, load_before: float, load_after: float
                 ) -> dict[str, Any]:
    """The peer's row: times only (its work is no single pass over known bytes)."""
    return {"suite": "update", "model": name, "path": peer.PATH, "backend": peer.PATH,
            "optimizer": "sgd", "device": device.type, **stat, "calls_per_sample": calls,
            "warmup_calls": warmup, "vs_eager": eager_ms / stat["median_ms"], "vs_peer": 1.0,
            "status": None, "threads": torch.get_num_threads(), "load_avg_before": load_before,
            "load_avg_after": load_after}


def run(device: torch.device, *, models: list[str] | None = None, console: Console,
        quick: bool = False) -> list[dict[str, Any]]:
    models = list(models or (DEFAULT_MODELS if device.type == "cuda" else CPU_DEFAULT_MODELS))
    cuda = device.type == "cuda"
    warmup, rounds = (10, 30) if cuda else (3, 3 if quick else 7)
    number = CUDA_BLOCK if cuda else 1
    min_sample_ms = 5.0 if cuda else 20.0
    backends = [b for b in BACKENDS if b != "triton" or (cuda and triton_available(device))]
    records: list[dict[str, Any]] = []
    compile_note: list[str] = []
    for name in models:
        fns, info, arena = _variants(name, device, backends)
        load_before = load_avg()
        calls: dict[str, int] = {}
        samples = interleaved_ms(fns, device, warmup=warmup, rounds=rounds, number=number,
                                 min_sample_ms=min_sample_ms, calls=calls)
        load_after = load_avg()
        if not compile_note and "compiled" in fns:
            compile_note = [f"{label} {p.compile_seconds:.1f} s" for label, p in
                            (("sgd", SGD_PASS), ("adamw", ADAMW_PASS))
                            if p.compile_seconds is not None]
        numel = arena.numel
        stats = {path: summary(values) for path, values in samples.items()}
        peer_ms = stats[peer.PATH]["median_ms"] if peer.PATH in stats else None
        for path, stat in stats.items():
            if path == peer.PATH:
                records.append(_peer_record(name, device, stat, calls[path], warmup,
                                            stats["eager"]["median_ms"], load_before, load_after))
                continue
            optimizer = info[path]["optimizer"]
            suffix = "" if optimizer == "sgd" else "-adamw"
            nbytes = OPTIMIZER_BYTES[optimizer]
            ms = stat["median_ms"]
            gbps = nbytes * numel / (ms * 1e-3) / 1e9
            copy_ms = stats["copy" + suffix]["median_ms"]
            copy_gbps = nbytes * numel / (copy_ms * 1e-3) / 1e9
            records.append({
                "suite": "update",
                "model": name,
                "path": path,
                "backend": info[path]["backend"],
                "optimizer": optimizer,
                "device": device.type,
                "numel": numel,
                "params": sum(s.numel for s in arena.slots.values()),
                "alive": float(((arena.code & ALIVE) != 0).float().mean()),
                "pending": float(((arena.code & PENDING) != 0).float().mean()),
                **stat,
                "calls_per_sample": calls[path],
                "warmup_calls": warmup,
                "bytes_per_elem": nbytes,
                "gbps": gbps,
                "copy_gbps": copy_gbps,
                "pct_of_copy": 100 * gbps / copy_gbps,
                "vs_eager": stats["eager" + suffix]["median_ms"] / ms,
                "vs_seed": stats["seed"]["median_ms"] / ms if optimizer == "sgd" else None,
                "vs_peer": peer_ms / ms if optimizer == "sgd" and peer_ms else None,
                "threads": torch.get_num_threads(),
                "load_avg_before": load_before,
                "load_avg_after": load_after,
            })
        if peer.PATH not in stats:
            records.append({"suite": "update", "model": name, "path": peer.PATH,
                            "backend": peer.PATH, "optimizer": "sgd", "device": device.type,
                            "median_ms": None, "status": info[peer.PATH]["status"]})
        del fns, arena
        release_memory(device)
    render_table(
        console,
        f"update suite · {device.type} · {torch.get_num_threads()} threads · per-step update "
        f"(SGD {BYTES_PER_ELEMENT} B/elem, AdamW {ADAMW_BYTES_PER_ELEMENT} B/elem) · "
        f"{rounds} interleaved rounds after {warmup} warm-up calls",
        records,
        [("model", "model"), ("path", "path"), ("numel", "elements"), ("min_ms", "min ms"),
         ("median_ms", "median ms"), ("spread_pct", "spread %"), ("gbps", "GB/s"),
         ("pct_of_copy", "% of copy"), ("vs_eager", "× eager"), ("vs_seed", "× seed"),
         ("vs_peer", "× torch-pruning"), ("status", "note")],
    )
    loads = {r["model"]: (r["load_avg_before"], r["load_avg_after"]) for r in records
             if r["median_ms"] is not None}
    console.print(f"[dim]load average (1 min) before/after each model: {loads}[/]")
    if compile_note:
        console.print(f"[dim]compiled pass, first call (compile or on-disk cache load): "
                      f"{', '.join(compile_note)}[/]")
    return records
