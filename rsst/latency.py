"""Measured latency of one forward pass: the compacted network against the dense one.

MACs are a proxy; what a user wants is time. Each state records ``latency_ms`` (its compacted
network), ``dense_latency_ms`` (the dense network's shape) and their ratio ``latency_ratio``,
at a fixed batch on the run's device, both in the form a deployment runs them (`deployed`:
eval mode, no autograd, every BatchNorm folded into the conv before it, the run's activation
layout). The two are timed in interleaved samples (dense, compacted, compacted, dense, ...),
each sample a few back-to-back calls, for about `MIN_RUN_TIME` seconds and at least `MIN_PAIRS`
pairs; each keeps its median. Interleaving at the grain of one call is what steadies the ratio
on a shared CPU whose speed wanders by ±20 % from call to call: ten measurements of one
coupled resnet20 ticket read 0.52–0.64 (standard deviation 0.03), where three alternating
0.07 s blocks of `torch.utils.benchmark` (the earlier method) read 0.47–0.71 (0.09). They are
timings: a resumed run measures again and gets other numbers (the masks and accuracies stay
exact).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from rsst.compact import apply_plan, compact_state_dict, plan_compaction

#: the record fields that are timings (they differ between two identical runs)
TIMINGS = ("latency_ms", "dense_latency_ms", "latency_ratio")
#: images per timed forward pass
LATENCY_BATCH = 32
#: seconds the interleaved samples of one state take, in all (read at each call)
MIN_RUN_TIME = 1.0
#: at least this many (dense, compacted) sample pairs, however long they take
MIN_PAIRS = 10
#: a sample lasts at least this long (back-to-back calls of a fast network, e.g. on a GPU)
MIN_SAMPLE_S = 2e-3
#: untimed calls of each network first (lazy initialization, allocator, kernel selection)
WARMUP_CALLS = 3


def compacted_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` with its dead channels, heads and neurons removed (`rsst.compact`),
    with its own weights (no uninitialized memory, whose denormals would slow it down); the live
    model (whose parameters may be arena views) is not touched."""
    dense = copy.deepcopy(model).cpu().eval()
    plan = plan_compaction(dense)
    small = apply_plan(copy.deepcopy(dense), plan.modules)
    small.load_state_dict(compact_state_dict(dense, plan))
    return small.eval()


def deployed(model: nn.Module) -> nn.Module:
    """An eval copy of ``model`` as inference runs it: every BatchNorm that follows a conv is
    folded into that conv (`torch.fx.experimental.optimization.fuse`, what an exported or
    compiled network does), so the timing is not a training-mode artifact. A network without
    BatchNorm, or one torch.fx cannot trace, is timed as it is."""
    model = copy.deepcopy(model).eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model, inplace=True)
    except Exception:  # noqa: BLE001 - untraceable (data-dependent control flow): time it unfused
        return model


def _sample_s(call: Callable[[], object], device: torch.device, calls: int) -> float:
    """Seconds per call of ``calls`` back-to-back calls (the device synchronized around them).

    Not `torch.utils.benchmark.Timer.timeit`: it runs two warm-up calls before every sample,
    which would triple the cost of the one-call samples interleaving needs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / calls


def time_pair(dense: nn.Module, compact: nn.Module, input_size: tuple[int, ...],
              device: torch.device, *, batch: int = LATENCY_BATCH, channels_last: bool = False,
              min_run_time: float | None = None) -> tuple[float, float]:
    """Median milliseconds of one inference forward pass of ``dense`` and of ``compact`` (each
    moved to ``device`` in its `deployed` form) on one batch of ``batch`` random images of
    ``input_size``, timed in interleaved samples whose order alternates from pair to pair (so
    that going first favours neither)."""
    budget = MIN_RUN_TIME if min_run_time is None else min_run_time
    x = torch.randn(batch, *input_size, device=device)
    nets = [deployed(dense).to(device), deployed(compact).to(device)]
    if channels_last and x.dim() == 4:
        nets = [net.to(memory_format=torch.channels_last) for net in nets]
        x = x.contiguous(memory_format=torch.channels_last)
    samples: list[list[float]] = [[], []]
    with torch.inference_mode():
        fns = [lambda net=net: net(x) for net in nets]
        calls = []
        for fn in fns:
            for _ in range(WARMUP_CALLS - 1):
                fn()
            one = _sample_s(fn, device, 1)  # the last warm-up call sizes the samples
            calls.append(max(1, min(1000, int(MIN_SAMPLE_S / max(one, 1e-9)) + 1)))
        start = time.perf_counter()
        pair = 0
        while pair < MIN_PAIRS or time.perf_counter() - start < budget:
            for i in ((0, 1) if pair % 2 == 0 else (1, 0)):
                samples[i].append(_sample_s(fns[i], device, calls[i]))
            pair += 1
    return statistics.median(samples[0]) * 1e3, statistics.median(samples[1]) * 1e3


def compacted_latency(model: nn.Module, input_size: tuple[int, ...], device: torch.device, *,
                      channels_last: bool = False, batch: int = LATENCY_BATCH,
                      min_run_time: float | None = None) -> dict[str, float]:
    """``latency_ms`` of ``model``'s compacted copy, ``dense_latency_ms`` of a copy at full width
    (its weights do not matter to the time) and ``latency_ratio`` = compacted / dense, timed
    side by side (`time_pair`)."""
    dense_ms, compact_ms = time_pair(model, compacted_copy(model), input_size, device,
                                     batch=batch, channels_last=channels_last,
                                     min_run_time=min_run_time)
    return {"latency_ms": compact_ms, "dense_latency_ms": dense_ms,
            "latency_ratio": compact_ms / dense_ms}
