"""Conv time against kept width on this machine: which `--round-to` turns pruned channels into time.

A pruned CNN is only as fast as its convs run at the widths pruning leaves. For each stage of a
CIFAR ResNet (3×3 convs at 32×32 with 16 channels, 16×16 with 32, 8×8 with 64; batch 32, fp32,
channels_last as runs use), a conv keeping ``w`` of the stage's input and output channels is
timed against the full-width conv in interleaved samples, as `rsst.latency` times a ticket
against its dense network. Printed per width: the MACs ratio (w/W)², the time ratio and
their quotient MACs ratio ÷ time ratio = speed-up ÷ MACs reduction (1 when time tracks MACs
exactly); widths where the time steps down are the
multiples worth rounding to (`rsst env` names the CPU's vector ISA: 16 float lanes for AVX512,
8 for AVX2).

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/conv_widths.py [--out widths.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import rsst  # noqa: F401 - aliases bench/ as rsst_bench
from rsst_bench.common import load_avg

#: (spatial size, full width) of the three stages of a CIFAR ResNet
STAGES = ((32, 16), (16, 32), (8, 64))


def conv_ms(widths: tuple[int, int], size: int, batch: int, device: torch.device,
            min_run_time: float, min_pairs: int = 10) -> tuple[float, float]:
    """Median ms of a 3×3 conv at each of the two widths (in = out channels), interleaved."""
    convs, inputs = [], []
    for w in widths:
        convs.append(nn.Conv2d(w, w, 3, padding=1, bias=False).to(device).eval()
                     .to(memory_format=torch.channels_last))
        inputs.append(torch.randn(batch, w, size, size, device=device)
                      .contiguous(memory_format=torch.channels_last))
    samples: list[list[float]] = [[], []]

    def sample(i: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        convs[i](inputs[i])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    with torch.inference_mode():
        for i in (0, 1):
            for _ in range(3):
                sample(i)
        start, pair = time.perf_counter(), 0
        while pair < min_pairs or time.perf_counter() - start < min_run_time:
            for i in ((0, 1) if pair % 2 == 0 else (1, 0)):
                samples[i].append(sample(i))
            pair += 1
    return statistics.median(samples[0]) * 1e3, statistics.median(samples[1]) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--step", type=int, default=2, help="width step of the sweep")
    p.add_argument("--min-run-time", type=float, default=0.5,
                   help="seconds of interleaved samples per width")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    print(f"# {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s), "
          f"batch {args.batch}, load {load_avg()}")
    print("| size | full width | kept width | MACs ratio | time ratio | speed-up ÷ MACs cut |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, full in STAGES:
        for w in range(args.step, full + 1, args.step):
            full_ms, kept_ms = conv_ms((full, w), size, args.batch, device, args.min_run_time)
            macs, ratio = (w / full) ** 2, kept_ms / full_ms
            tracking = macs / ratio
            rows.append({"size": size, "full": full, "width": w, "macs_ratio": macs,
                         "time_ratio": ratio, "full_ms": full_ms, "kept_ms": kept_ms,
                         "speedup_over_macs_cut": tracking})
            print(f"| {size} | {full} | {w} | {macs:.3f} | {ratio:.3f} | {tracking:.2f} |",
                  flush=True)
    if args.out:
        args.out.write_text(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                        "threads": torch.get_num_threads(), "batch": args.batch,
                                        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
