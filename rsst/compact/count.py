"""Counting parameters and multiply-accumulates: per module, per report row, and the compacted
cost of a live model."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from rsst.compact.base import Plan, pair
from rsst.compact.plan import apply_plan, plan_compaction


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, int]:
    """Multiply-accumulates per module for ONE input of ``input_size`` (conv, linear, and the two
    attention matmuls q·kᵀ and attn·v), measured with forward hooks on a real forward pass."""
    macs: dict[str, int] = {}
    hooks = []

    def conv_hook(name: str):  # noqa: ANN202
        def hook(m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            k = math.prod(pair(m.kernel_size))
            macs[name] = macs.get(name, 0) + out.numel() * (m.in_channels // m.groups) * k
        return hook

    def linear_hook(name: str):  # noqa: ANN202
        def hook(m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            macs[name] = macs.get(name, 0) + out.numel() * m.in_features
        return hook

    def attn_hook(name: str):  # noqa: ANN202
        def hook(m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            b, n = args[0].shape[0], args[0].shape[1]
            macs[name] = macs.get(name, 0) + 2 * b * int(m.num_heads) * n * n * int(m.head_dim)
        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook(name)))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook(name)))
        elif hasattr(m, "qkv") and hasattr(m, "num_heads") and hasattr(m, "head_dim"):
            hooks.append(m.register_forward_hook(attn_hook(name)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_rows(dense: nn.Module, compact: nn.Module, plan: Plan,
               input_size: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per-unit rows (kept/total, params and MACs before → after) plus an ``other`` row, so the
    columns add up to the model totals."""
    macs_d, macs_c = count_macs(dense, input_size), count_macs(compact, input_size)
    dense_mods, compact_mods = dict(dense.named_modules()), dict(compact.named_modules())

    def params(mods: dict[str, nn.Module], names: list[str]) -> int:
        return sum(p.numel() for n in names if n in mods for p in mods[n].parameters())

    rows = []
    claimed: set[str] = set()
    for unit in plan.units:
        name = unit["layer"]
        names = [name]
        if unit["kind"] == "channel" and name in plan.pairs:
            names.append(plan.pairs[name])
        claimed.update(names)
        prefix = name + "."
        mac_names_d = [k for k in macs_d if k == name or k.startswith(prefix)]
        mac_names_c = [k for k in macs_c if k == name or k.startswith(prefix)]
        rows.append({
            "layer": name, "kind": unit["kind"], "kept": len(unit["kept"]),
            "total": unit["total"], "pruned": unit["pruned"],
            "params_dense": params(dense_mods, names), "params_compact": params(compact_mods,
                                                                                 names),
            "macs_dense": sum(macs_d[k] for k in mac_names_d),
            "macs_compact": sum(macs_c[k] for k in mac_names_c),
        })
        claimed.update(mac_names_d)
    total = {"params_dense": count_params(dense), "params_compact": count_params(compact),
             "macs_dense": sum(macs_d.values()), "macs_compact": sum(macs_c.values())}
    other = {k: total[k] - sum(r[k] for r in rows) for k in total}
    rows.append({"layer": "(other layers)", "kind": "", "kept": None, "total": None,
                 "pruned": None, **other})
    return rows


def compact_cost(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, float]:
    """Parameters and MACs of ``model``'s compacted form relative to dense (SPEC §6).

    Works on a CPU copy (the shapes are all that matter), so the live model — whose parameters
    may be arena views — is not touched.
    """
    dense = copy.deepcopy(model).cpu().eval()
    plan = plan_compaction(dense)
    compact = apply_plan(copy.deepcopy(dense), plan.modules)
    params = (count_params(dense), count_params(compact))
    macs = (sum(count_macs(dense, input_size).values()),
            sum(count_macs(compact, input_size).values()))
    return {"params_dense": params[0], "params_compact": params[1],
            "params_ratio": params[1] / max(params[0], 1),
            "macs_dense": macs[0], "macs_compact": macs[1],
            "macs_ratio": macs[1] / max(macs[0], 1)}
