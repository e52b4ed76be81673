"""The scaling rows of ``rsst bench --suite train``: data-parallel images/s over 1..N ranks.

Each rank count is one ``torchrun --nproc-per-node K`` of this file (``python -m
torch.distributed.run``), so the engine takes exactly the path of ``torchrun -m rsst run``
(`rsst.distributed`: NCCL on CUDA, one device per rank; gloo on the CPU). Weak scaling: every
rank keeps the per-device batch of the train suite, so the global batch grows with the ranks,
as it does when a user adds GPUs. With fewer than two CUDA devices nothing is measured and the
record says so (``status: unmeasured``) — a scaling figure is never estimated.
"""

from __future__ import annotations

import argparse
import itertools
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

#: Images per rank per step (the train suite's CUDA batch) and timed steps per chunk.
RANK_BATCH, STEPS, CHUNKS, WARMUP = 128, 20, 3, 5


def rank_counts(devices: int) -> list[int]:
    """1, 2, 4, ... up to ``devices``, and ``devices`` itself."""
    counts = [1 << i for i in range(devices.bit_length()) if 1 << i <= devices]
    return counts if counts[-1] == devices else [*counts, devices]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(model_name: str, device_type: str, timing: tuple[int, int, int, int], out: str
          ) -> None:
    """One rank (under torchrun): the train suite's eager engine on synthetic data, timed in
    chunks; rank 0 writes the median seconds per step to ``out``."""
    from rsst import distributed
    from rsst.arena import Arena
    from rsst.data import Batches, load_dataset
    from rsst.engine import Engine
    from rsst.models import use_channels_last
    from rsst.update import UpdateConfig, make_backend
    from rsst_bench.step import _install_codes, _make_model

    batch, steps, chunks, warmup = timing
    world, device = distributed.start(device_type, timeout_s=300)
    device = device or torch.device(device_type)
    try:
        model = _make_model(model_name, device)
        arena = Arena(model, channels_last=use_channels_last("auto", model))
        _install_codes(arena)
        config = UpdateConfig(momentum=0.9, weight_decay=5e-4, schedule="exp_custom_exponents",
                              ramp_steps=1000)
        engine = Engine(model, arena, make_backend("auto", device, config), device, world=world)
        data = load_dataset("synthetic").train
        batches = Batches(data, batch * world.size, shuffle=True, augment=True, device=device,
                          drop_last=True, rank=world.rank, world_size=world.size)
        stream = itertools.chain.from_iterable(iter(batches) for _ in itertools.count())

        def chunk(n: int) -> float:
            world.sum_(torch.zeros(1, device=device))  # start together
            t0 = time.perf_counter()
            engine.train_epoch(itertools.islice(stream, n), lambda i: 0.01, lambda i: i)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - t0

        chunk(warmup)
        seconds = [chunk(steps) for _ in range(chunks)]
        if world.is_main:
            Path(out).write_text(str(statistics.median(seconds) / steps))
    finally:
        distributed.stop(world)


def measure(model: str, device_type: str, ranks: int, *, batch: int = RANK_BATCH,
            steps: int = STEPS, chunks: int = CHUNKS, warmup: int = WARMUP) -> float:
    """Seconds per data-parallel step of ``ranks`` processes (``batch`` images each)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "step_s"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}",
               f"--master-port={_free_port()}", __file__, model, device_type, str(out),
               *(str(v) for v in (batch, steps, chunks, warmup))]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"{ranks} ranks failed: {done.stderr.strip()[-500:]}")
        return float(out.read_text())


def records(model: str, device: torch.device, *, devices: int | None = None,
            **timing: int) -> list[dict[str, Any]]:
    """One record per rank count on CUDA with several devices; else one ``unmeasured`` record.

    ``devices`` overrides the visible CUDA device count (tests run it with gloo on the CPU).
    """
    count = devices if devices is not None else (
        torch.cuda.device_count() if device.type == "cuda" else 1)
    base = {"suite": "train", "model": model, "device": device.type, "path": "scaling",
            "variant": "ranks"}
    if count < 2:
        return [{**base, "ranks": count, "status": "unmeasured", "median_ms": None,
                 "images_per_s": None,
                 "note": f"data-parallel scaling needs several devices; {count} visible here"}]
    batch = timing.get("batch", RANK_BATCH)
    out: list[dict[str, Any]] = []
    for ranks in rank_counts(count):
        step_s = measure(model, device.type, ranks, **timing)
        images_per_s = batch * ranks / step_s
        one = out[0]["images_per_s"] if out else images_per_s
        out.append({**base, "ranks": ranks, "status": "measured", "batch": batch * ranks,
                    "median_ms": step_s * 1e3, "images_per_s": images_per_s,
                    "images_per_s_per_rank": images_per_s / ranks,
                    "efficiency": images_per_s / (ranks * one)})
    return out


if __name__ == "__main__":  # one rank, started by `measure` through torchrun
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # not bench/: a source checkout
    import rsst  # noqa: F401 - makes rsst_bench importable from a source checkout

    parser = argparse.ArgumentParser()
    for name in ("model", "device", "out"):
        parser.add_argument(name)
    for name in ("batch", "steps", "chunks", "warmup"):
        parser.add_argument(name, type=int)
    a = parser.parse_args()
    _rank(a.model, a.device, (a.batch, a.steps, a.chunks, a.warmup), a.out)
