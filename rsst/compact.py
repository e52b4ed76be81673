"""Physical compaction: remove pruned channels, heads and neurons, exactly.

Masks alone save nothing at inference. This module turns a masked network into a smaller one
that computes the same function (to float32 rounding), and records what it removed as kept-index
lists, so `apply_plan` can rebuild the smaller module shapes from metadata alone.

CNNs (any torch.fx-traceable model; the registry CNNs are):
  The traced graph is split into *channel spaces*: a conv's (or linear's) output together with
  everything that reaches it through channel-wise ops (BatchNorm, ReLU, pooling, flatten after a
  global pool, depthwise convs, residual additions). A channel of a space is removed from every
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

ViTs (timm ``Attention`` and ``Mlp``):
  - a head is removable when its q, k and v rows of ``qkv`` (weights and biases) are all zero:
    its values are zero, so whatever it attends to it outputs zeros and its ``proj`` columns
    multiply zeros;
  - an MLP neuron is removable when its ``fc1`` row and bias are zero and the activation maps
    0 to 0 (GELU, ReLU, SiLU, tanh).
  timm's attention reshapes its output with the width it was built with, so compacted blocks use
  `CompactAttention` (explicit head count and head width, timm's fused and unfused paths); each
  block keeps its own head count.

A unit never loses all of its channels/heads/neurons: the last one stays (its output is zero or
constant anyway), so every layer keeps a valid shape.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rsst.structure import attention_blocks, mlp_blocks

PLAN_VERSION = 1

_PASS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Dropout,
                 nn.Identity)
_ADD_FUNCS = (operator.add, torch.add)
_RELU_FUNCS = (F.relu, torch.relu)


# ---------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What to shrink (JSON-able ``modules``) plus what the export needs in memory.

    ``modules`` maps a module name to ``{"type": conv|dwconv|bn|linear|attention, "in": kept
    input indices or None, "out": kept output indices or None}`` (attention: ``"heads"``,
    ``"num_heads"``, ``"head_dim"``). ``folds`` maps a consumer module to the constant
    contribution (per output unit) of the channels removed from its input.
    """

    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    units: list[dict[str, Any]] = field(default_factory=list)  # one per structural unit
    notes: list[str] = field(default_factory=list)
    folds: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)  # name → (target, Δ)
    pairs: dict[str, str] = field(default_factory=dict)  # conv → its BatchNorm (for the table)

    def to_json(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, "modules": self.modules}


def plan_compaction(model: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> Plan:
    """Decide what can be removed from ``model`` (masked weights already zero) exactly.

    ``masks`` (``<param> -> uint8``) only feeds the report (pruned vs removed per layer).
    """
    masks = masks or {}
    plan = Plan()
    model = model.eval()
    with torch.no_grad():
        if attention_blocks(model) or mlp_blocks(model):
            _plan_transformer(model, plan, masks)
        else:
            _plan_cnn(model, plan, masks)
    return plan


# ---------------------------------------------------------------------------------------------
# CNNs: channel spaces over the fx graph
# ---------------------------------------------------------------------------------------------


class _Spaces:
    """Union-find over graph nodes: nodes in one set share their channel dimension."""

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        while self.parent[x] is not x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[ra] = rb


def _node_kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    """conv | dw | bn | linear | pass | relu | avgpool_pad | add | flatten | other."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if isinstance(m, nn.Conv2d):
            if m.groups == 1:
                return "conv"
            if m.groups == m.in_channels == m.out_channels:
                return "dw"
            return "other"
        if isinstance(m, nn.BatchNorm2d):
            return "bn"
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.AvgPool2d) and _pair(m.padding) != (0, 0):
            return "avgpool_pad"  # zero padding averaged in: only a zero channel stays constant
        if isinstance(m, _PASS_MODULES):
            return "pass"
        return "other"
    if node.op == "call_function":
        if node.target in _ADD_FUNCS and len(node.args) == 2 and not node.kwargs and all(
                isinstance(a, torch.fx.Node) for a in node.args):
            shapes = [_shape(a) for a in node.args]
            if shapes[0] is not None and shapes[0] == shapes[1] == _shape(node):
                return "add"
            return "other"
        if node.target in _RELU_FUNCS:
            return "relu"
        if node.target is torch.flatten and _flattens_pooled(node):
            return "flatten"
        return "other"
    if node.op == "call_method":
        if node.target == "relu":
            return "relu"
        if node.target == "flatten" and _flattens_pooled(node):
            return "flatten"
        return "other"
    return "other"


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _flattens_pooled(node: torch.fx.Node) -> bool:
    """flatten(x, 1) of an [B, C, 1, 1] tensor keeps channel c at feature c."""
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    shape = _shape(node.args[0])
    return start == 1 and shape is not None and len(shape) == 4 and shape[2:] == (1, 1)


def _main_input(node: torch.fx.Node) -> torch.fx.Node | None:
    arg = node.args[0] if node.args else None
    return arg if isinstance(arg, torch.fx.Node) else None


def _plan_cnn(model: nn.Module, plan: Plan, masks: dict[str, torch.Tensor]) -> None:
    from torch.fx.passes.shape_prop import ShapeProp

    modules = dict(model.named_modules())
    try:
        gm = torch.fx.symbolic_trace(model)
        size = tuple(getattr(model, "rsst_input_size", (3, 32, 32)))
        device = next(model.parameters()).device
        ShapeProp(gm).propagate(torch.zeros(1, *size, device=device))
    except Exception as exc:  # noqa: BLE001 - any trace failure means: compact nothing, say why
        plan.notes.append(f"the model does not trace with torch.fx ({type(exc).__name__}): "
                          "no channels removed")
        return
    nodes = list(gm.graph.nodes)
    kinds = {n: _node_kind(n, modules) for n in nodes}
    calls: dict[str, int] = {}
    for n in nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    reused = sorted(k for k, v in calls.items() if v > 1 and isinstance(
        modules.get(k), nn.Conv2d | nn.BatchNorm2d | nn.Linear))
    if reused:
        plan.notes.append(f"modules called more than once ({', '.join(reused[:3])}): no channels "
                          "removed")
        return

    spaces = _Spaces()
    channelwise = ("dw", "bn", "pass", "relu", "avgpool_pad", "flatten")
    for n in nodes:
        spaces.find(n)
        if kinds[n] in channelwise and _main_input(n) is not None:
            spaces.union(n, _main_input(n))
        elif kinds[n] == "add":
            spaces.union(n, n.args[0])
            spaces.union(n, n.args[1])

    opaque: set[Any] = set()
    has_add: set[Any] = set()
    consumers: dict[Any, list[tuple[torch.fx.Node, torch.fx.Node]]] = {}
    for n in nodes:
        root = spaces.find(n)
        if kinds[n] == "add":
            has_add.add(root)
        if kinds[n] in ("other", "linear"):
            opaque.add(root)  # produced by something whose channel layout is not modelled
        for user in n.users:
            k = kinds[user]
            if k in channelwise and _main_input(user) is n and len(user.args) <= 2 and not any(
                    isinstance(a, torch.fx.Node) for a in list(user.args[1:])
                    + list(user.kwargs.values())):
                continue
            if k == "add":
                continue
            if k in ("conv", "linear") and _main_input(user) is n and len(user.args) == 1:
                shape = _shape(n)
                if k == "linear" and (shape is None or len(shape) != 2):
                    opaque.add(root)
                    continue
                consumers.setdefault(root, []).append((user, n))
                continue
            opaque.add(root)

    vals = _constant_channels(nodes, kinds, modules)
    single_bn = {str(n.target): str(next(iter(n.users)).target) for n in nodes
                 if kinds[n] == "conv" and len(n.users) == 1
                 and kinds[next(iter(n.users))] == "bn"}
    plan.pairs = dict(single_bn)

    # decide per space
    members: dict[Any, list[torch.fx.Node]] = {}
    for n in nodes:
        members.setdefault(spaces.find(n), []).append(n)
    removed_of: dict[Any, torch.Tensor] = {}
    reasons_of: dict[Any, dict[int, str]] = {}
    for root, group in members.items():
        producers = [n for n in group if kinds[n] in ("conv", "linear")]
        cons = consumers.get(root, [])
        if root in opaque or not producers or not cons:
            continue
        width = _channels(producers[0], modules)
        removable = torch.ones(width, dtype=torch.bool)
        why: dict[int, str] = {}
        for user, n in cons:
            v = vals.get(n)
            if v is None or v.numel() != width:
                removable[:] = False
                break
            finite = torch.isfinite(v)
            absorb = _absorber(user, modules, single_bn)
            ok = finite & ((v == 0) | (absorb is not None))
            for c in torch.nonzero(~ok & removable).flatten().tolist():
                if not bool(finite[c]):
                    why[c] = ("residual sum: the tensors added together are not pruned the same "
                              "way" if root in has_add else "not exactly zero")
                else:
                    k = modules[str(user.target)]
                    kernel = "x".join(str(s) for s in _pair(getattr(k, "kernel_size", 1)))
                    why[c] = (f"constant {float(v[c]):.3g} (BatchNorm β not zeroed) feeds "
                              f"the {kernel} conv {user.target}")
            removable &= ok
        if bool(removable.all()):
            removable[0] = False
            why[0] = "the last channel of a layer stays"
        if not bool(removable.any()):
            reasons_of[root] = why
            continue
        removed_of[root] = removable
        reasons_of[root] = why
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
                _add_fold(plan, user, modules, single_bn, gone, v)

    # the report: one unit per conv
    for n in nodes:
        if kinds[n] not in ("conv", "dw"):
            continue
        name = str(n.target)
        conv = modules[name]
        root = spaces.find(n)
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
                        if root in opaque else "not exactly zero at its consumers")
            reasons[r] = reasons.get(r, 0) + 1
        plan.units.append({
            "layer": name, "kind": "channel", "total": total,
            "pruned": int(pruned.sum()), "kept": torch.nonzero(~removed).flatten().tolist(),
            "stayed": reasons,
        })
    _summarize_stayed(plan)


def _channels(node: torch.fx.Node, modules: dict[str, nn.Module]) -> int:
    m = modules[str(node.target)]
    return int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)


def _absorber(user: torch.fx.Node, modules: dict[str, nn.Module],
              single_bn: dict[str, str]) -> str | None:
    """Where a constant input channel of ``user`` can be folded: its bias or its BN's mean."""
    m = modules[str(user.target)]
    if isinstance(m, nn.Linear):
        return f"{user.target}.bias" if m.bias is not None else None
    if isinstance(m, nn.Conv2d) and m.groups == 1 and _pair(m.kernel_size) == (1, 1) and _pair(
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
        src = _main_input(n)
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


def _summarize_stayed(plan: Plan) -> None:
    totals: dict[str, int] = {}
    for unit in plan.units:
        for reason, count in unit["stayed"].items():
            key = reason.split(" feeds ")[0] if reason.startswith("constant") else reason
            key = "a BatchNorm shift (β not zeroed) feeds a k×k conv" if key.startswith(
                "constant") else key
            totals[key] = totals.get(key, 0) + count
    for reason, count in sorted(totals.items(), key=lambda kv: -kv[1]):
        plan.notes.append(f"{count} pruned channel(s) stayed: {reason}")


# ---------------------------------------------------------------------------------------------
# ViTs: heads and MLP neurons
# ---------------------------------------------------------------------------------------------


def _timm_attention_ok(m: nn.Module) -> str | None:
    """None when ``m`` computes what `CompactAttention` computes, else the reason it does not."""
    if isinstance(m, CompactAttention):
        return None
    try:
        from timm.models.vision_transformer import Attention
    except ImportError:  # pragma: no cover - timm is a dependency
        return "timm is not installed"
    if type(m) is not Attention:
        return f"attention class {type(m).__name__} is not timm's Attention"
    if not isinstance(getattr(m, "norm", nn.Identity()), nn.Identity):
        return "attention output norm (scale_norm) spans all heads"
    if getattr(m, "gate", None) is not None:
        return "gated attention"
    return None


def _mlp_ok(m: nn.Module) -> str | None:
    if not isinstance(getattr(m, "norm", nn.Identity()), nn.Identity):
        return "MLP hidden norm spans all neurons"
    if type(m).__name__ != "Mlp":
        return f"MLP class {type(m).__name__} is not timm's Mlp"
    act = getattr(m, "act", None)
    if act is None:
        return "MLP has no activation module"
    with torch.no_grad():
        zero = act(torch.zeros(4, device=m.fc1.weight.device))
    if not bool((zero == 0).all()):
        return f"activation {type(act).__name__} does not map 0 to 0"
    return None


def _kept_units(plan: Plan, name: str, kind: str, zero: torch.Tensor, pruned: torch.Tensor,
                why: str | None) -> list[int]:
    """Indices of the heads / neurons that stay, and the unit's report row.

    ``zero``: units that emit exactly 0 (removable); ``pruned``: units the masks pruned;
    ``why``: a reason the module cannot be compacted at all. One unit always stays.
    """
    stayed: dict[str, int] = {}
    if why is not None:
        zero = torch.zeros_like(zero)
        if int(pruned.sum()):
            stayed[why] = int(pruned.sum())
    if bool(zero.all()):
        zero = zero.clone()
        zero[0] = False
        stayed[f"the last {kind} of the layer stays"] = 1
    kept = torch.nonzero(~zero).flatten().tolist()
    plan.units.append({"layer": name, "kind": kind, "total": int(zero.numel()),
                       "pruned": int(pruned.sum()), "kept": kept, "stayed": stayed})
    return kept


def _plan_transformer(model: nn.Module, plan: Plan, masks: dict[str, torch.Tensor]) -> None:
    for name, attn in attention_blocks(model):
        heads, d = int(attn.num_heads), int(attn.head_dim)
        why = _timm_attention_ok(attn)
        w = attn.qkv.weight.detach().reshape(3, heads, d, -1)
        zero = w.abs().sum(dim=(0, 2, 3)) == 0
        if attn.qkv.bias is not None:
            zero &= attn.qkv.bias.detach().reshape(3, heads, d).abs().sum(dim=(0, 2)) == 0
        zero = zero.cpu()
        mask = masks.get(f"{name}.qkv.weight")
        pruned = (zero.clone() if mask is None
                  else mask.reshape(3, heads, d, -1).sum(dim=(0, 2, 3)).cpu() == 0)
        kept = _kept_units(plan, name, "head", zero, pruned, why)
        if len(kept) < heads:
            plan.modules[name] = {"type": "attention", "heads": kept, "num_heads": heads,
                                  "head_dim": d, "in": None, "out": None}
    for name, mlp in mlp_blocks(model):
        hidden = mlp.fc1.out_features
        why = _mlp_ok(mlp)
        zero = mlp.fc1.weight.detach().abs().sum(1) == 0
        if mlp.fc1.bias is not None:
            zero &= mlp.fc1.bias.detach() == 0
        zero = zero.cpu()
        mask = masks.get(f"{name}.fc1.weight")
        pruned = zero.clone() if mask is None else mask.reshape(hidden, -1).sum(1).cpu() == 0
        kept = _kept_units(plan, name, "neuron", zero, pruned, why)
        if len(kept) < hidden:
            plan.modules[f"{name}.fc1"] = {"type": "linear", "in": None, "out": kept}
            plan.modules[f"{name}.fc2"] = {"type": "linear", "in": kept, "out": None}
    _summarize_stayed(plan)


class CompactAttention(nn.Module):
    """timm ``Attention`` with an explicit head count and head width.

    timm reshapes the attention output to the width the module was built with; after heads are
    removed that width is ``num_heads * head_dim`` of *this* block, so this module owns the
    reshape. Same parameter names as timm (``qkv``, ``q_norm``, ``k_norm``, ``proj``), both the
    fused (``scaled_dot_product_attention``) and the explicit path, chosen by ``fused_attn`` like
    timm's own module (default: ``timm.layers.use_fused_attn()``).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, *, dim_out: int | None = None,
                 qkv_bias: bool = True, proj_bias: bool = True,
                 q_norm: nn.Module | None = None, k_norm: nn.Module | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if num_heads < 1 or head_dim < 1:
            raise ValueError(f"num_heads and head_dim must be >= 1, got {num_heads}, {head_dim}")
        try:
            from timm.layers import use_fused_attn

            fused = bool(use_fused_attn())
        except ImportError:  # pragma: no cover - timm is a dependency
            fused = hasattr(F, "scaled_dot_product_attention")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attn_dim = num_heads * head_dim
        self.scale = head_dim**-0.5
        self.fused_attn = fused
        self.qkv = nn.Linear(dim, 3 * self.attn_dim, bias=qkv_bias, device=device)
        self.q_norm = q_norm if q_norm is not None else nn.Identity()
        self.k_norm = k_norm if k_norm is not None else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(self.attn_dim, dim_out or dim, bias=proj_bias, device=device)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if is_causal:
                causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
                attn = attn.masked_fill(~causal, float("-inf"))
            if attn_mask is not None:
                attn = (attn.masked_fill(~attn_mask, float("-inf"))
                        if attn_mask.dtype == torch.bool else attn + attn_mask)
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
        return self.proj_drop(self.proj(x))


# ---------------------------------------------------------------------------------------------
# applying a plan: new tensors, new module shapes
# ---------------------------------------------------------------------------------------------


def _idx(keep: list[int] | None, device: torch.device) -> torch.Tensor | None:
    return None if keep is None else torch.tensor(keep, dtype=torch.long, device=device)


def compact_state_dict(model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
    """The state_dict of the compacted model: constants folded first, then rows/columns cut."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for _, (target, delta) in plan.folds.items():
        t = state[target]
        state[target] = (t.double() + delta.to(t.device)).to(t.dtype)
    for name, spec in plan.modules.items():
        kind = spec["type"]
        if kind == "attention":
            heads, d = spec["num_heads"], spec["head_dim"]
            keep = torch.tensor(spec["heads"], dtype=torch.long)
            cols = (keep[:, None] * d + torch.arange(d)[None, :]).reshape(-1)
            rows = (torch.arange(3)[:, None] * heads * d + cols[None, :]).reshape(-1)
            for suffix in ("weight", "bias"):
                key = f"{name}.qkv.{suffix}"
                if key in state:
                    state[key] = state[key][rows.to(state[key].device)]
            key = f"{name}.proj.weight"
            state[key] = state[key][:, cols.to(state[key].device)]
            continue
        out, inp = spec.get("out"), spec.get("in")
        for key in [k for k in state if k.rsplit(".", 1)[0] == name]:
            t = state[key]
            if t.dim() == 0:
                continue  # num_batches_tracked
            o = _idx(out, t.device)
            if o is not None:
                t = t[o]
            i = _idx(inp, t.device)
            if i is not None and key.endswith(".weight") and t.dim() >= 2 and kind != "dwconv":
                t = t[:, i]
            state[key] = t.contiguous()
    return state


def apply_plan(model: nn.Module, modules: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace the planned modules of ``model`` by smaller ones (uninitialized shapes only).

    Driven by the JSON plan alone, so `rsst.load` can redo it from a file's metadata; the
    weights come from the file afterwards.
    """
    named = dict(model.named_modules())
    for name, spec in modules.items():
        old = named.get(name)
        if old is None:
            raise KeyError(f"the model has no module {name!r}")
        new = _smaller(old, spec)
        parent_name, _, child = name.rpartition(".")
        setattr(named[parent_name] if parent_name else model, child, new)
    return model


def _count(keep: list[int] | None, full: int) -> int:
    if keep is None:
        return full
    if not keep or len(set(keep)) != len(keep) or min(keep) < 0 or max(keep) >= full:
        raise ValueError(f"kept indices must be distinct and within 0..{full - 1}")
    return len(keep)


def _smaller(old: nn.Module, spec: dict[str, Any]) -> nn.Module:
    kind = spec["type"]
    inp, out = spec.get("in"), spec.get("out")
    if kind in ("conv", "dwconv") and isinstance(old, nn.Conv2d):
        dev = old.weight.device
        if kind == "dwconv":
            c = _count(out, old.out_channels)
            cin, cout, groups = c, c, c
        else:
            if old.groups != 1:
                raise ValueError("only groups=1 convs have their input channels cut")
            cin, cout, groups = _count(inp, old.in_channels), _count(out, old.out_channels), 1
        return nn.Conv2d(cin, cout, old.kernel_size, stride=old.stride, padding=old.padding,
                         dilation=old.dilation, groups=groups, bias=old.bias is not None,
                         padding_mode=old.padding_mode, device=dev)
    if kind == "bn" and isinstance(old, nn.BatchNorm2d):
        dev = (old.weight if old.weight is not None else old.running_mean).device
        return nn.BatchNorm2d(_count(out, old.num_features), eps=old.eps, momentum=old.momentum,
                              affine=old.affine, track_running_stats=old.track_running_stats,
                              device=dev)
    if kind in ("linear", "conv") and isinstance(old, nn.Linear):
        return nn.Linear(_count(inp, old.in_features), _count(out, old.out_features),
                         bias=old.bias is not None, device=old.weight.device)
    if kind == "attention" and hasattr(old, "qkv") and hasattr(old, "proj"):
        heads, d = int(spec["num_heads"]), int(spec["head_dim"])
        if int(old.num_heads) != heads or int(old.head_dim) != d:
            raise ValueError(f"attention has {old.num_heads} heads of {old.head_dim}, the plan "
                             f"says {heads} of {d}")
        new = CompactAttention(
            old.qkv.in_features, _count(spec["heads"], heads), d,
            dim_out=old.proj.out_features, qkv_bias=old.qkv.bias is not None,
            proj_bias=old.proj.bias is not None, q_norm=old.q_norm, k_norm=old.k_norm,
            attn_drop=old.attn_drop.p, proj_drop=old.proj_drop.p, device=old.qkv.weight.device)
        new.fused_attn = bool(getattr(old, "fused_attn", new.fused_attn))
        return new
    raise ValueError(f"plan entry of type {kind!r} does not fit module {type(old).__name__}")


# ---------------------------------------------------------------------------------------------
# counting: parameters and multiply-accumulates
# ---------------------------------------------------------------------------------------------


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, int]:
    """Multiply-accumulates per module for ONE input of ``input_size`` (conv, linear, and the two
    attention matmuls q·kᵀ and attn·v), measured with forward hooks on a real forward pass."""
    macs: dict[str, int] = {}
    hooks = []

    def conv_hook(name: str):  # noqa: ANN202
        def hook(m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            k = math.prod(_pair(m.kernel_size))
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


# ---------------------------------------------------------------------------------------------
# random structured pruning (benchmarks, tests)
# ---------------------------------------------------------------------------------------------


def random_prune(model: nn.Module, fraction: float, *, seed: int = 0,
                 structure: str = "auto") -> dict[str, torch.Tensor]:
    """Kill ``fraction`` of the groups of every unit at random, the way Refill's hard mask does
    (weights, biases and BN γ/β of a dead group zeroed), and return the masks
    (``<param> -> uint8``, every prunable weight, the layout of a run's state file).

    Uses the run's own `Arena`/`build_structure`, so the zeroed elements are exactly the groups
    a real run would zero. The model's parameters become views into the arena's buffer.
    """
    from rsst.arena import Arena
    from rsst.structure import build_structure

    arena = Arena(model)
    struct = build_structure(model, arena, structure)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(arena.numel, dtype=torch.bool, device=arena.device)
    for unit in struct.units:
        dead = torch.randperm(unit.num_groups, generator=gen)[: int(fraction * unit.num_groups)]
        kill = torch.zeros(unit.num_groups, dtype=torch.bool)
        kill[dead] = True
        kill = kill.to(arena.device)
        mask[unit.member_index[kill[unit.member_group]]] = False
    arena.set_masks(mask)  # padding is dropped by set_masks
    return {name: (arena.view(name, "code") & 1).clone() for name in struct.prunable_names}


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
