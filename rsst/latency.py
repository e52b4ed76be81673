"""Measured latency of one forward pass: the compacted network against the dense one.

MACs are a proxy; what a user wants is time. Each state records ``latency_ms`` (its compacted
network), ``dense_latency_ms`` (the dense network's shape) and their ratio ``latency_ratio``,
timed with `torch.utils.benchmark` (median of blocks, warmed up, CUDA synchronized) at a fixed
batch on the run's device. The two are timed side by side, in `ROUNDS` alternating rounds, and
each keeps its median: a load that drifts while one state is timed moves both alike, so the
ratio of an unpruned network stays near 1 (timed once per run instead, state 0 of an identical
network read 0.72–1.14 on a shared CPU). They are timings: a resumed run measures again and
gets other numbers (the masks and accuracies stay exact).
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import torch
from torch import nn

from rsst.compact import apply_plan, plan_compaction

#: the record fields that are timings (they differ between two identical runs)
TIMINGS = ("latency_ms", "dense_latency_ms", "latency_ratio")
#: images per timed forward pass
LATENCY_BATCH = 32
#: seconds `torch.utils.benchmark.Timer.blocked_autorange` spends on each network, in all
MIN_RUN_TIME = 0.2
#: alternating dense / compacted timing rounds per state
ROUNDS = 3


def compacted_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` with its dead channels, heads and neurons removed (`rsst.compact`);
    the live model (whose parameters may be arena views) is not touched."""
    dense = copy.deepcopy(model).cpu().eval()
    return apply_plan(dense, plan_compaction(dense).modules)


def forward_ms(model: nn.Module, input_size: tuple[int, ...], device: torch.device, *,
               batch: int = LATENCY_BATCH, channels_last: bool = False,
               min_run_time: float | None = None) -> float:
    """Median milliseconds of one inference forward pass of ``model`` (moved to ``device``, in
    eval mode, no autograd) on a batch of ``batch`` random images of ``input_size``, timed for
    about ``min_run_time`` seconds (default `MIN_RUN_TIME`, read at the call)."""
    model = model.to(device).eval()
    x = torch.randn(batch, *input_size, device=device)
    if channels_last and x.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    # imported here: it loads torch.utils.cpp_extension, whose CUDA_HOME notice on a CPU-only
    # machine must not reach a command that never times (rsst.loop.run quiets it first)
    from torch.utils import benchmark

    forward()  # warm-up: lazy initialization, allocator, kernel selection
    timer = benchmark.Timer(stmt="forward()", globals={"forward": forward},
                            num_threads=torch.get_num_threads())
    measured = timer.blocked_autorange(
        min_run_time=MIN_RUN_TIME if min_run_time is None else min_run_time)
    return measured.median * 1e3


def compacted_latency(model: nn.Module, input_size: tuple[int, ...], device: torch.device, *,
                      dense_ms: float | None = None, channels_last: bool = False,
                      batch: int = LATENCY_BATCH, min_run_time: float | None = None
                      ) -> dict[str, float]:
    """``latency_ms`` of ``model``'s compacted copy, ``dense_latency_ms`` of a copy at full width
    (its weights do not matter to the time) and ``latency_ratio`` = compacted / dense: medians
    of `ROUNDS` alternating rounds (dense, compacted, dense, ...). ``dense_ms``, when given, is
    used instead of timing the dense network (then the compacted one is timed alone)."""
    total = MIN_RUN_TIME if min_run_time is None else min_run_time
    kw: dict[str, Any] = dict(batch=batch, channels_last=channels_last)
    compact = compacted_copy(model)
    if dense_ms is not None:
        compact_ms = forward_ms(compact, input_size, device, min_run_time=total, **kw)
        return {"latency_ms": compact_ms, "dense_latency_ms": dense_ms,
                "latency_ratio": compact_ms / dense_ms}
    dense = copy.deepcopy(model)
    per_round = total / ROUNDS
    dense_times, compact_times = [], []
    for _ in range(ROUNDS):
        dense_times.append(forward_ms(dense, input_size, device, min_run_time=per_round, **kw))
        compact_times.append(forward_ms(compact, input_size, device, min_run_time=per_round,
                                        **kw))
    dense_ms, compact_ms = statistics.median(dense_times), statistics.median(compact_times)
    return {"latency_ms": compact_ms, "dense_latency_ms": dense_ms,
            "latency_ratio": compact_ms / dense_ms}
