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
    console.print(table)


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
