"""Per-layer vs coupled channel groups at equal remaining weights: MACs, latency, accuracy.

For one architecture: a Refill run with ``--groups per-layer`` (one prune at ``--rate``), then a
Refill run with ``--groups coupled`` whose rate is solved so that its prune leaves the same
remaining weights. Both runs use the ``magnitude`` criterion, so the prune depends on the
trained weights alone: state 0 trains identically in both runs (same seed, same data), and the
rate is solved on the per-layer run's state-0 weights by bisection. Each delivered state is
then compacted and timed against its dense-shaped (masked) network, interleaved, at a fixed
batch the way a run times it (`rsst.latency`: BatchNorm folded into the convs, channels_last,
interleaved samples), several times to show the spread.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/coupled.py --arch resnet20 --out /tmp/coupled-r20
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import rsst  # noqa: F401 - aliases bench/ as rsst_bench
from rsst.arena import Arena
from rsst.compact import count_macs
from rsst.config import RunConfig, validate
from rsst.criteria import group_scores
from rsst.export import load_model
from rsst.latency import compacted_copy, compacted_latency
from rsst.models import create_model
from rsst.pruning import magnitude_prune, refill
from rsst.structure import build_structure
from rsst_bench.common import load_avg


def remain_after_prune(arch: str, weights: Path, groups: str, rate: float,
                       round_to: int = 1) -> float:
    """Remaining prunable weights after Refill's first prune (magnitude criterion) from the
    trained dense weights in ``weights`` (a state file)."""
    from safetensors.torch import load_file

    model = create_model(arch, num_classes=10)
    state = {k: v for k, v in load_file(str(weights)).items() if not k.endswith(".mask")}
    model.load_state_dict(state)
    arena = Arena(model)
    struct = build_structure(model, arena, groups=groups)
    hard = torch.ones(arena.numel, dtype=torch.bool)
    unstructured = magnitude_prune(arena.weight, hard, struct.prunable, rate)
    scores = group_scores("magnitude", model, struct, arena, unstructured)
    return struct.remain_weight(refill(struct, unstructured, hard, scores, round_to=round_to))


def solve_rate(arch: str, weights: Path, groups: str, target: float, round_to: int = 1) -> float:
    """The rate whose prune leaves ``target`` remaining weights (bisection; remain falls with
    the rate)."""
    lo, hi = 0.01, 0.99
    for _ in range(14):
        mid = (lo + hi) / 2
        if remain_after_prune(arch, weights, groups, mid, round_to) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def latency(masked_file: Path, batch: int, repeats: int, min_run_time: float) -> dict[str, Any]:
    """Forward ms of the dense-shaped (masked) network and of its compacted copy, timed as a
    run times them (`rsst.latency.compacted_latency`: BatchNorm folded, channels_last,
    interleaved samples) ``repeats`` times; the median repeat is reported with the spread of
    the ratio over the repeats."""
    dense = load_model(masked_file).eval()
    size = tuple(dense.rsst_input_size)
    small = compacted_copy(dense)
    times = [compacted_latency(dense, size, torch.device("cpu"), batch=batch, channels_last=True,
                               min_run_time=min_run_time) for _ in range(repeats)]
    ratios = sorted(t["latency_ratio"] for t in times)
    mid = sorted(times, key=lambda t: t["latency_ratio"])[len(times) // 2]
    macs = (sum(count_macs(dense, size).values()), sum(count_macs(small, size).values()))
    widths = sorted({m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)})
    return {"dense_ms": mid["dense_latency_ms"], "compact_ms": mid["latency_ms"],
            "latency_ratio": mid["latency_ratio"], "ratio_range": [ratios[0], ratios[-1]],
            "macs_ratio": macs[1] / macs[0], "conv_widths": widths}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--rate", type=float, default=0.6)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=1024)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="latency measurements per network")
    p.add_argument("--min-run-time", type=float, default=2.0,
                   help="seconds of interleaved samples per latency measurement")
    p.add_argument("--round-to", type=int, default=1, help="--round-to of both runs")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    from rsst import loop
    from rsst.export import export_model

    console = Console(quiet=True)
    base = dict(method="refill", arch=args.arch, states=2, epochs=args.epochs,
                train_subset=args.train_subset, val_split=512, batch_size=64,
                criteria="magnitude", backend="torch", device="cpu", seed=0)
    records = []
    rate = args.rate
    for groups in ("per-layer", "coupled"):
        if groups == "coupled":
            state0 = args.out / "per-layer" / "state_00" / "weights.safetensors"
            target = records[0]["remain_weight"]
            rate = solve_rate(args.arch, state0, groups, target, args.round_to)
        cfg = validate(RunConfig(**base, rate=rate, groups=groups, round_to=args.round_to))
        run = loop.run(cfg, out=args.out / groups, overwrite=True, console=console)
        last = json.loads((run / "summary.json").read_text())["states"][-1]
        masked = args.out / f"{groups}-masked.safetensors"
        export_model(run, masked, form="masked")
        rec = {"arch": args.arch, "groups": groups, "round_to": args.round_to,
               "rate": round(rate, 4),
               "remain_weight": last["remain_weight"], "val_acc": last["val_acc"],
               "params_ratio": last["params_ratio"], "run_latency_ratio": last.get("latency_ratio"),
               **latency(masked, args.batch, args.repeats, args.min_run_time),
               "batch": args.batch, "threads": torch.get_num_threads(), "load": load_avg()}
        records.append(rec)
        print(json.dumps(rec), flush=True)
    (args.out / "coupled.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
