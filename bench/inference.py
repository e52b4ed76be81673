"""``rsst bench --suite inference``: dense (masked) vs physically compacted model, side by side.

Each model entry is an export (``.safetensors``), a run directory (its last state), or a
registry name (random 50 % structured pruning of a fresh model, the Refill mask layout, so the
suite runs anywhere). Both networks are timed at a few batch sizes on the chosen device, and the
measured speedup is printed beside the MAC (FLOPs) and parameter ratios: the gap between the
two is what the hardware makes of the smaller shapes.

Timing cannot flatter either side: both networks get several warm-up calls, then samples are
taken in interleaved rounds (the order rotating), each sample long enough to time (several
batch-1 calls), and the speedup is the ratio of medians, shown with the ratio of minima and the
spread of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from rsst.compact import (
    apply_plan,
    compact_state_dict,
    count_macs,
    count_params,
    plan_compaction,
    random_prune,
)
from rsst.errors import UserError
from rsst.latency import deployed
from rsst_bench.common import interleaved_ms, load_avg, render_table, summary

DEFAULT_MODELS = ("resnet20", "vgg16_bn", "mobilenet", "vit_tiny")
RANDOM_FRACTION = 0.5


def _compact_of(dense: nn.Module) -> nn.Module:
    """The compacted twin of a masked model (built here, no file round trip)."""
    from rsst.export import ModelSpec

    plan = plan_compaction(dense)
    state = compact_state_dict(dense, plan)
    spec = ModelSpec(dense.rsst_arch, dense.rsst_num_classes, tuple(dense.rsst_input_size),
                     dense.rsst_patch_size, (), ())
    model = apply_plan(spec.create("cpu"), plan.modules)
    model.load_state_dict(state)
    return model.eval()


def load_pair(entry: str) -> tuple[str, nn.Module, nn.Module]:
    """(label, dense, compact) for a file, a run directory or a registry model name."""
    from rsst.export import load_model, model_spec, read_file, resolve_state
    from rsst.models import create_model, list_models

    path = Path(entry)
    if path.is_dir():
        _, path = resolve_state(path, "last")
    if path.is_file():
        _, meta = read_file(path)
        if meta.get("rsst.form") == "compact":
            compact = load_model(path)
            dense = model_spec(meta, path).create("cpu").eval()  # same shapes; values irrelevant
        else:
            dense = load_model(path)
            compact = _compact_of(dense)
        label = f"{meta['rsst.arch']} ({path.name})"
        return label, dense, compact
    if entry in list_models() or entry.startswith("timm:"):
        dense = create_model(entry, num_classes=10)
        random_prune(dense, RANDOM_FRACTION, seed=0)
        dense = dense.eval()
        return f"{entry} (random {RANDOM_FRACTION:.0%})", dense, _compact_of(dense)
    raise UserError(f"--model {entry!r} is neither an export file, a run directory nor a model "
                    "name: pass a .safetensors file from `rsst export` or a run directory")


def run(device: torch.device, *, models: list[str] | None = None, console: Console,
        quick: bool = False) -> list[dict[str, Any]]:
    cuda = device.type == "cuda"
    batches = (1, 32, 128, 512) if cuda else ((1, 32) if quick else (1, 32, 128))
    records: list[dict[str, Any]] = []
    for entry in list(models or DEFAULT_MODELS):
        label, dense, compact = load_pair(entry)
        size = tuple(dense.rsst_input_size)
        info = {}
        for path, model in (("dense", dense), ("compact", compact)):
            info[path] = {"params": count_params(model),
                          "flops": sum(count_macs(model, size).values())}
        # timed as deployed (BatchNorm folded), as every run's latency_ratio is
        dense, compact = deployed(dense).to(device), deployed(compact).to(device)
        if cuda:
            warmup, rounds, min_sample_ms = 10, 20, 5.0
        else:
            warmup, rounds, min_sample_ms = 3, (3 if quick else 7), 20.0
        for batch in batches:
            x = torch.rand(batch, *size, device=device)

            def forward(model: nn.Module, x: torch.Tensor = x):
                def call() -> None:
                    with torch.inference_mode():
                        model(x)
                return call

            load_before = load_avg()
            calls: dict[str, int] = {}
            samples = interleaved_ms({"dense": forward(dense), "compact": forward(compact)},
                                     device, warmup=warmup, rounds=rounds,
                                     min_sample_ms=min_sample_ms, calls=calls)
            stats = {path: summary(values) for path, values in samples.items()}
            for path, stat in stats.items():
                ms = stat["median_ms"]
                records.append({
                    "suite": "inference", "model": label, "path": path,
                    "device": device.type, "batch": batch, **stat,
                    "calls_per_sample": calls[path], "warmup_calls": warmup,
                    "images_per_s": batch / (ms * 1e-3),
                    "params": info[path]["params"], "flops": info[path]["flops"],
                    "flops_ratio": info["dense"]["flops"] / info[path]["flops"],
                    "params_ratio": info["dense"]["params"] / info[path]["params"],
                    "speedup": stats["dense"]["median_ms"] / ms,
                    "speedup_min": stats["dense"]["min_ms"] / stat["min_ms"],
                    "threads": torch.get_num_threads(),
                    "load_avg": load_before, "load_avg_after": load_avg(),
                })
        del dense, compact
    render_table(
        console,
        f"inference suite · {device.type} · {torch.get_num_threads()} threads · dense (masked) "
        "vs compact, BatchNorm folded, interleaved; flops = MACs per image",
        records,
        [("model", "model"), ("path", "path"), ("batch", "batch"), ("min_ms", "min ms"),
         ("median_ms", "median ms"), ("spread_pct", "spread %"), ("images_per_s", "img/s"),
         ("params", "params"), ("flops", "MACs"), ("flops_ratio", "× fewer MACs"),
         ("speedup", "× speedup (median)"), ("speedup_min", "× speedup (min)")],
    )
    return records

