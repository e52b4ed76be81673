"""The plan end to end: `plan_compaction` (what to remove), `compact_state_dict` (the smaller
tensors) and `apply_plan` (the smaller module shapes, from the JSON plan alone)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rsst.compact.base import Plan
from rsst.compact.cnn import plan_cnn
from rsst.compact.vit import plan_transformer, stock_attention
from rsst.structure import attention_blocks, mlp_blocks


def plan_compaction(model: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> Plan:
    """Decide what can be removed from ``model`` (masked weights already zero) exactly.

    ``masks`` (``<param> -> uint8``) only feeds the report (pruned vs removed per layer).
    """
    masks = masks or {}
    plan = Plan()
    model = model.eval()
    with torch.no_grad():
        if attention_blocks(model) or mlp_blocks(model):
            plan_transformer(model, plan, masks)
        else:
            plan_cnn(model, plan, masks)
    return plan


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
            inp, out = spec.get("in"), spec.get("out")  # embedding width (embed pruning)
            if inp is not None:
                key = f"{name}.qkv.weight"
                state[key] = state[key][:, _idx(inp, state[key].device)].contiguous()
            if out is not None:
                for key in (f"{name}.proj.weight", f"{name}.proj.bias"):
                    if key in state:
                        state[key] = state[key][_idx(out, state[key].device)].contiguous()
            continue
        if kind == "embed":  # the ViT's own tokens / position embedding: last dim
            for token in ("cls_token", "reg_token", "pos_embed"):
                key = f"{name}.{token}" if name else token
                if key in state:
                    t = state[key]
                    state[key] = t.index_select(-1, _idx(spec["out"], t.device)).contiguous()
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
        if new is old:  # resized in place (the ViT's own tokens)
            continue
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
        return stock_attention(old, _count(spec["heads"], heads), d,
                               dim=_count(spec.get("in"), old.qkv.in_features),
                               dim_out=_count(spec.get("out"), old.proj.out_features))
    if kind == "norm" and isinstance(old, nn.LayerNorm):
        width = _count(out, old.normalized_shape[0])  # all kept dims alive: the stock norm
        return nn.LayerNorm(width, eps=old.eps, device=old.weight.device)
    if kind == "embed":
        width = _count(out, int(spec["width"]))
        for token in ("cls_token", "reg_token", "pos_embed"):
            t = getattr(old, token, None)
            if isinstance(t, nn.Parameter):
                setattr(old, token, nn.Parameter(t.new_empty(*t.shape[:-1], width)))
        old.embed_dim = old.num_features = width
        if hasattr(old, "head_hidden_size"):
            old.head_hidden_size = width
        return old
    raise ValueError(f"plan entry of type {kind!r} does not fit module {type(old).__name__}")
