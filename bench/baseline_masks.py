"""How much a baseline's kept set moves with a setting: the figures quoted in docs/methods.md.

``bn DATA_DIR``: SNIP's and GraSP's kept weights at initialization with BatchNorm in eval vs
training mode (resnet20, default scope, one batch of 128 CIFAR-10 training images, 10 %
remaining, seeds 0–2). ``runs RUN_A RUN_B``: the kept prunable weights of two finished runs
(e.g. ``--admm-projection layer`` vs ``global``) at their last state, and each run's per-layer
density range. Prints one line per figure; run from the repository root:

    PYTHONPATH=. python bench/baseline_masks.py bn /path/to/cifar10
    PYTHONPATH=. python bench/baseline_masks.py runs runs/admm-layer runs/admm-global
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from rsst.arena import Arena
from rsst.data import load_dataset
from rsst.models import create_model
from rsst.scores import grasp_scores, keep_highest, snip_scores
from rsst.structure import build_structure


def _flat(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([m.reshape(-1) for m in masks.values()])


def bn_modes(data_dir: str, remain: float = 0.10, seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    data = load_dataset("cifar10", data_dir, val_split=0)
    pick = torch.randperm(len(data.train.labels), generator=torch.Generator().manual_seed(0))
    batch = [(data.train.images[pick[:128]].float() / 255.0, data.train.labels[pick[:128]])]
    for seed in seeds:
        torch.manual_seed(seed)
        model = create_model("resnet20", num_classes=10, img_size=32, mean=data.mean,
                             std=data.std)
        names = build_structure(model, Arena(model), "none").prunable_names
        masks = {n: torch.ones_like(model.get_parameter(n), dtype=torch.bool) for n in names}
        keep = round(remain * sum(m.numel() for m in masks.values()))
        kept = {}
        for mode in ("eval", "train"):
            train = mode == "train"
            snip = snip_scores(model, names, batch, train=train)
            kept["snip", mode] = _flat(keep_highest(snip, masks, keep))
            s = grasp_scores(model, names, batch, train=train)  # GraSP removes the highest S
            kept["grasp", mode] = _flat(keep_highest({n: -v for n, v in s.items()}, masks, keep))
        for method in ("snip", "grasp"):
            moved = int((kept[method, "eval"] & ~kept[method, "train"]).sum()) / keep
            print(f"seed {seed} {method}: {100 * moved:.1f} % of the {keep} weights kept with "
                  "BatchNorm in eval mode are not kept in training mode")


def _last_masks(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every weight's mask in the run's last state file."""
    states = json.loads((run_dir / "summary.json").read_text())["states"]
    tensors = load_file(str(run_dir / f"state_{len(states) - 1:02d}" / "weights.safetensors"))
    return {k[: -len(".mask")]: v.bool() for k, v in tensors.items() if k.endswith(".mask")}


def compare_runs(run_a: Path, run_b: Path) -> None:
    a, b = _last_masks(run_a), _last_masks(run_b)
    # the pruned layers: those missing a weight in either run (the others are out of scope)
    prunable = [n for n in a if not bool(a[n].all() and b[n].all())]
    kept_a, kept_b = (_flat({n: m[n] for n in prunable}) for m in (a, b))
    moved = int((kept_a & ~kept_b).sum()) / max(int(kept_a.sum()), 1)
    print(f"{100 * moved:.1f} % of the {int(kept_a.sum())} weights {run_a.name} keeps are not "
          f"kept by {run_b.name} ({int(kept_b.sum())} kept)")
    for run, masks in ((run_a, a), (run_b, b)):
        density = [float(masks[n].float().mean()) for n in prunable]
        print(f"{run.name}: per-layer density {100 * min(density):.1f}–"
              f"{100 * max(density):.1f} % over {len(prunable)} pruned layers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("bn").add_argument("data_dir")
    runs = sub.add_parser("runs")
    runs.add_argument("run_a", type=Path)
    runs.add_argument("run_b", type=Path)
    args = parser.parse_args()
    if args.what == "bn":
        bn_modes(args.data_dir)
    else:
        compare_runs(args.run_a, args.run_b)


if __name__ == "__main__":
    main()
