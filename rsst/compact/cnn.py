"""CNN compaction: channel spaces over the torch.fx graph (any traceable model; the registry CNNs
are).

The traced graph is split into *channel spaces* by `rsst.graph` (the same analysis that defines
``--groups coupled``): a conv's (or linear's) output together with everything that reaches it
through channel-wise ops (BatchNorm, ReLU, pooling, flatten after a global pool, depthwise
convs, residual additions). A channel of a space is removed from every
producer (conv rows), BatchNorm, depthwise conv and consumer (conv / linear input columns) of
the space at once, so the decision is exact when the channel's value at every consumer input is
a known constant:
- 0 (a pruned conv row whose BatchNorm has γ = β = 0, as Refill/RSST leave it; ReLU keeps 0,
  a residual sum is 0 only when every added tensor is 0 in that channel), or
- a non-zero constant (a BatchNorm shift β − γ·μ/σ behind a zero input, e.g. the depthwise
  conv of MobileNet fed by a pruned pointwise channel while its own channel is alive) when the
  consumer is a 1x1 unpadded conv or a linear layer: its contribution W[:, c]·v is folded into
  the consumer's bias, or into the running mean of the BatchNorm right after it. A k×k padded
  conv sees the constant differently at the borders, so there the channel stays.
Everything else stays, and `Plan.notes` says why (residual sums pruned differently, BN not
zeroed as IMP leaves it, an op the analysis does not understand).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rsst.compact.base import Plan, pair, summarize_stayed
from rsst.graph import ChannelGraph, analyze, main_input


def plan_cnn(model: nn.Module, plan: Plan, masks: dict[str, torch.Tensor]) -> None:
    """Fill ``plan`` for a CNN: trace, group nodes into channel spaces, decide per space, then
    report per conv."""
    graph, why = analyze(model)
    if graph is None:
        plan.notes.append(f"{why}: no channels removed")
        return
    nodes, kinds, modules = graph.nodes, graph.kinds, graph.modules
    vals = _constant_channels(nodes, kinds, modules)
    single_bn = {str(n.target): str(next(iter(n.users)).target) for n in nodes
                 if kinds[n] == "conv" and len(n.users) == 1
                 and kinds[next(iter(n.users))] == "bn"}
    plan.pairs = dict(single_bn)
    removed_of, reasons_of = _decide_spaces(plan, graph, vals, single_bn)
    _report_units(plan, graph, masks, removed_of, reasons_of)
    summarize_stayed(plan)


def _decide_spaces(
    plan: Plan, graph: ChannelGraph, vals: dict[torch.fx.Node, torch.Tensor],
    single_bn: dict[str, str],
) -> tuple[dict[Any, torch.Tensor], dict[Any, dict[int, str]]]:
    """Per space: the removed channels (recorded in ``plan``) and why the others stay."""
    members = graph.members()
    removed_of: dict[Any, torch.Tensor] = {}
    reasons_of: dict[Any, dict[int, str]] = {}
    for root, group in members.items():
        producers = [n for n in group if graph.kinds[n] in ("conv", "linear")]
        cons = graph.consumers.get(root, [])
        if root in graph.opaque or not producers or not cons:
            continue
        width = _channels(producers[0], graph.modules)
        removable, why = _removable_channels(graph, root, width, cons, vals, single_bn)
        reasons_of[root] = why
        if not bool(removable.any()):
            continue
        removed_of[root] = removable
        _record_removal(plan, graph, group, cons, removable, vals, single_bn)
    return removed_of, reasons_of


def _removable_channels(
    graph: ChannelGraph, root: Any, width: int,
    cons: list[tuple[torch.fx.Node, torch.fx.Node]],
    vals: dict[torch.fx.Node, torch.Tensor], single_bn: dict[str, str],
) -> tuple[torch.Tensor, dict[int, str]]:
    """Channels of one space that are a known constant at every consumer (zero, or foldable
    there), and a reason per channel that is not; the last channel always stays."""
    removable = torch.ones(width, dtype=torch.bool)
    why: dict[int, str] = {}
    for user, n in cons:
        v = vals.get(n)
        if v is None or v.numel() != width:
            removable[:] = False
            break
        finite = torch.isfinite(v)
        absorb = _absorber(user, graph.modules, single_bn)
        ok = finite & ((v == 0) | (absorb is not None))
        for c in torch.nonzero(~ok & removable).flatten().tolist():
            if not bool(finite[c]):
                why[c] = ("residual sum: the tensors added together are not pruned the same "
                          "way" if root in graph.has_add else "not exactly zero")
            else:
                k = graph.modules[str(user.target)]
                kernel = "x".join(str(s) for s in pair(getattr(k, "kernel_size", 1)))
                why[c] = (f"constant {float(v[c]):.3g} (BatchNorm β not zeroed) feeds "
                          f"the {kernel} conv {user.target}")
        removable &= ok
    if bool(removable.all()):
        removable[0] = False
        why[0] = "the last channel of a layer stays"
    return removable, why


def _record_removal(
    plan: Plan, graph: ChannelGraph, group: list[torch.fx.Node],
    cons: list[tuple[torch.fx.Node, torch.fx.Node]], removable: torch.Tensor,
    vals: dict[torch.fx.Node, torch.Tensor], single_bn: dict[str, str],
) -> None:
    """Kept indices for every producer, BN, depthwise conv and consumer of one space, and the
    folds of its removed non-zero constant channels."""
    kinds = graph.kinds
    kept = torch.nonzero(~removable).flatten().tolist()
    for n in group:
        name = str(n.target)
        if kinds[n] == "conv":
            entry = plan.modules.setdefault(name, {"type": "conv", "in": None, "out": None})
            entry["out"] = kept
        elif kinds[n] == "dw":
            plan.modules[name] = {"type": "dwconv", "in": kept, "out": kept}
        elif kinds[n] == "bn":
            plan.modules[name] = {"type": "bn", "in": None, "out": kept}
    for user, n in cons:
        name = str(user.target)
        entry = plan.modules.setdefault(
            name, {"type": kinds[user], "in": None, "out": None})
        entry["in"] = kept
        v = vals[n]
        gone = removable & (v != 0)
        if bool(gone.any()):
            _add_fold(plan, user, graph.modules, single_bn, gone, v)


def _report_units(
    plan: Plan, graph: ChannelGraph, masks: dict[str, torch.Tensor],
    removed_of: dict[Any, torch.Tensor], reasons_of: dict[Any, dict[int, str]],
) -> None:
    """One report unit per conv: pruned channels, kept ones, and why pruned ones stayed."""
    for n in graph.nodes:
        if graph.kinds[n] not in ("conv", "dw"):
            continue
        name = str(n.target)
        conv = graph.modules[name]
        root = graph.spaces.find(n)
        total = conv.out_channels
        mask = masks.get(f"{name}.weight")
        pruned = (torch.zeros(total, dtype=torch.bool) if mask is None
                  else mask.reshape(total, -1).sum(1) == 0)
        removed = removed_of.get(root, torch.zeros(total, dtype=torch.bool))
        stayed = pruned & ~removed
        reasons: dict[str, int] = {}
        why = reasons_of.get(root, {})
        for c in torch.nonzero(stayed).flatten().tolist():
            r = why.get(c, "its output space is used by an operation rsst cannot shrink"
                        if root in graph.opaque else "not exactly zero at its consumers")
            reasons[r] = reasons.get(r, 0) + 1
        plan.units.append({
            "layer": name, "kind": "channel", "total": total,
            "pruned": int(pruned.sum()), "kept": torch.nonzero(~removed).flatten().tolist(),
            "stayed": reasons,
        })


def _channels(node: torch.fx.Node, modules: dict[str, nn.Module]) -> int:
    m = modules[str(node.target)]
    return int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)


def _absorber(user: torch.fx.Node, modules: dict[str, nn.Module],
              single_bn: dict[str, str]) -> str | None:
    """Where a constant input channel of ``user`` can be folded: its bias or its BN's mean."""
    m = modules[str(user.target)]
    if isinstance(m, nn.Linear):
        return f"{user.target}.bias" if m.bias is not None else None
    if isinstance(m, nn.Conv2d) and m.groups == 1 and pair(m.kernel_size) == (1, 1) and pair(
            m.padding) == (0, 0):
        if m.bias is not None:
            return f"{user.target}.bias"
        bn = single_bn.get(str(user.target))
        if bn is not None and modules[bn].track_running_stats:
            return f"{bn}.running_mean"
    return None


def _add_fold(plan: Plan, user: torch.fx.Node, modules: dict[str, nn.Module],
              single_bn: dict[str, str], gone: torch.Tensor, v: torch.Tensor) -> None:
    """Σ_c W[:, c]·v_c over the removed constant channels, added to bias (or subtracted from the
    following BN's running mean, which is the same shift)."""
    m = modules[str(user.target)]
    target = _absorber(user, modules, single_bn)
    assert target is not None
    w = m.weight.detach().double().reshape(m.weight.shape[0], m.weight.shape[1])
    idx = torch.nonzero(gone).flatten().to(w.device)
    delta = (w[:, idx] * v[gone].double().to(w.device)[None, :]).sum(1)
    if target.endswith("running_mean"):
        delta = -delta
    plan.folds[str(user.target)] = (target, delta.cpu())


def _constant_channels(nodes: list[torch.fx.Node], kinds: dict[torch.fx.Node, str],
                       modules: dict[str, nn.Module]) -> dict[torch.fx.Node, torch.Tensor]:
    """Per node, per channel: the value when the channel is a known spatial constant, else NaN."""
    vals: dict[torch.fx.Node, torch.Tensor] = {}
    nan = float("nan")
    for n in nodes:
        k = kinds[n]
        src = main_input(n)
        v_in = vals.get(src) if src is not None else None
        if k == "conv":
            m = modules[str(n.target)]
            bias = (m.bias.detach().double().cpu() if m.bias is not None
                    else torch.zeros(m.out_channels, dtype=torch.float64))
            zero_row = m.weight.detach().reshape(m.out_channels, -1).abs().sum(1).cpu() == 0
            vals[n] = torch.where(zero_row, bias, torch.full_like(bias, nan))
        elif k == "dw":
            m = modules[str(n.target)]
            bias = (m.bias.detach().double().cpu() if m.bias is not None
                    else torch.zeros(m.out_channels, dtype=torch.float64))
            zero = m.weight.detach().reshape(m.out_channels, -1).abs().sum(1).cpu() == 0
            if v_in is not None:
                zero = zero | (v_in == 0)
            vals[n] = torch.where(zero, bias, torch.full_like(bias, nan))
        elif k == "bn":
            m = modules[str(n.target)]
            c = m.num_features
            gamma = (m.weight.detach().double().cpu() if m.weight is not None
                     else torch.ones(c, dtype=torch.float64))
            beta = (m.bias.detach().double().cpu() if m.bias is not None
                    else torch.zeros(c, dtype=torch.float64))
            x = v_in if v_in is not None else torch.full((c,), nan, dtype=torch.float64)
            if m.track_running_stats and m.running_mean is not None:
                mean = m.running_mean.detach().double().cpu()
                var = m.running_var.detach().double().cpu()
                out = (x - mean) / torch.sqrt(var + m.eps) * gamma + beta
            else:
                out = torch.where(torch.isfinite(x), beta, x)  # batch stats: constant → β
            vals[n] = torch.where(gamma == 0, beta, out)
        elif k == "relu":
            if v_in is not None:
                vals[n] = torch.where(torch.isnan(v_in), v_in, v_in.clamp_min(0))
        elif k in ("pass", "flatten"):
            if v_in is not None:
                vals[n] = v_in
        elif k == "avgpool_pad":
            if v_in is not None:
                vals[n] = torch.where(v_in == 0, v_in, torch.full_like(v_in, nan))
        elif k == "add":
            a, b = vals.get(n.args[0]), vals.get(n.args[1])  # type: ignore[arg-type]
            if a is not None and b is not None and a.shape == b.shape:
                vals[n] = a + b
    return vals
