"""Shared pieces of the bench suites: environment record, timing, the results table and JSON."""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

SUITES: tuple[str, ...] = ("update", "step", "train", "inference")


def git_commit() -> str:
    """The checkout's commit (with ``+dirty`` when the tree has changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
            timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cpus)"


def environment(device: torch.device) -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "load_avg": list(os.getloadavg()),
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def time_ms(
    fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int
) -> float:
    """Median milliseconds of ``fn`` after ``warmup`` calls (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


#: Warm-up calls of every variant before its first timed sample (caches, allocator, JIT).
WARMUP_CALLS = 3


def load_avg() -> float:
    """The 1-minute load average: a busy shared machine explains noisy figures."""
    return round(os.getloadavg()[0], 2)


def sample_ms(fn: Callable[[], object], device: torch.device, number: int) -> float:
    """Milliseconds per call of ``fn`` over ``number`` back-to-back calls.

    `torch.utils.benchmark.Timer` does the timing: it synchronizes CUDA around the block and
    runs under the thread count this process uses (stated in every record).
    """
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.timeit(number).mean * 1e3


def interleaved_ms(fns: dict[str, Callable[[], object]], device: torch.device, *,
                   warmup: int = WARMUP_CALLS, rounds: int, number: int = 1,
                   min_sample_ms: float = 0.0, calls: dict[str, int] | None = None
                   ) -> dict[str, list[float]]:
    """Samples (ms per call) of every variant, taken in interleaved rounds.

    Each variant first gets ``warmup`` calls; then every round times one sample of each variant,
    in an order that rotates from round to round, so that neither drift of a shared machine nor
    going first favours a variant. A sample is ``number`` back-to-back calls, more for a variant
    so fast that a sample would last less than ``min_sample_ms`` (the timer's resolution and the
    noise of a single call would dominate). ``calls``, if given, receives the calls per sample.
    """
    names = list(fns)
    per_sample = {}
    for name in names:
        for _ in range(max(warmup - 1, 0)):
            fns[name]()
        estimate = sample_ms(fns[name], device, 1) if warmup else 0.0
        per_sample[name] = max(number, min(1000, math.ceil(min_sample_ms / max(estimate, 1e-6)))
                               if min_sample_ms else number)
    if calls is not None:
        calls.update(per_sample)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(sample_ms(fns[name], device, per_sample[name]))
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    """min, median and spread ((max − min) / median, in %) of timing samples."""
    median = statistics.median(samples)
    return {"min_ms": min(samples), "median_ms": median,
            "spread_pct": 100.0 * (max(samples) - min(samples)) / median if median else 0.0,
            "samples": len(samples)}


def release_memory(device: torch.device) -> None:
    """Free what the last model left behind before the next one is built (GPU cache included)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def render_table(console: Console, title: str, records: list[dict[str, Any]],
                 columns: list[tuple[str, str]]) -> None:
    table = Table(title=title)
    for _, header in columns:
        table.add_column(header, justify="right" if header != "model" else "left")
    for record in records:
        cells = []
        for key, _ in columns:
            value = record.get(key)
            if value is None:
                cells.append("–")
            elif isinstance(value, float):
                cells.append(f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    # piped or captured output would squeeze the columns to 80 characters
    width = console.width
    if not console.is_terminal:
        console.width = max(width, 150)
    try:
        console.print(table)
    finally:
        console.width = width


def _finite_or_null(value: Any) -> Any:
    """NaN/Infinity are not JSON: a non-finite number becomes null (no measurement)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value


def json_document(env: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """``{"env": ..., "results": [...]}`` as strict JSON text (what --json and --json-out give)."""
    doc = _finite_or_null({"env": env, "results": records})
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def write_json(path: Path, env: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Write ``{"env": ..., "results": [...]}`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from rsst.atomic import atomic_write_text

    atomic_write_text(path, json_document(env, records))


def run_suites(
    suites: list[str],
    device: torch.device,
    *,
    models: list[str] | None = None,
    json_path: Path | None = None,
    console: Console | None = None,
    quick: bool = False,
    plot_path: Path | None = None,
) -> dict[str, Any]:
    """Run the named suites on ``device``, print their tables, optionally write JSON / a plot."""
    from rsst_bench import inference as inference_suite
    from rsst_bench import step as step_suite
    from rsst_bench import train as train_suite
    from rsst_bench import update as update_suite

    if plot_path is not None:  # fail before a long run, not after it
        from rsst_bench.plot import require_matplotlib

        require_matplotlib()
    console = console or Console()
    env = environment(device)
    console.print(f"[bold]rsst bench[/] on {env['device']} · torch {env['torch']} · "
                  f"triton {env['triton']} · commit {env['commit']}")
    records: list[dict[str, Any]] = []
    runners = {"update": update_suite.run, "step": step_suite.run, "train": train_suite.run,
               "inference": inference_suite.run}
    for suite in suites:
        records += runners[suite](device, models=models, console=console, quick=quick)
    if json_path is not None:
        write_json(json_path, env, records)
        console.print(f"results written to {json_path}")
    if plot_path is not None:
        from rsst_bench.plot import plot_results

        plot_results(records, env, plot_path)
        console.print(f"plot written to {plot_path}")
    return {"env": env, "results": records}
