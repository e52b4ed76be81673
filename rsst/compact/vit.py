"""ViT compaction: attention heads and MLP neurons of timm ``Attention`` and ``Mlp`` blocks.

- a head is removable when its q, k and v rows of ``qkv`` (weights and biases) are all zero:
  its values are zero, so whatever it attends to it outputs zeros and its ``proj`` columns
  multiply zeros;
- an MLP neuron is removable when its ``fc1`` row and bias are zero and the activation maps
  0 to 0 (GELU, ReLU, SiLU, tanh).
A compacted attention block is timm's own ``Attention`` built with ``attn_head_dim`` (its width
is ``num_heads * attn_head_dim``, not the embedding width), so each block keeps its own head
count and the compacted model is made of stock timm modules only (`stock_attention`).
"""

from __future__ import annotations

import torch
from torch import nn

from rsst.compact.base import Plan, summarize_stayed
from rsst.models.stream_norm import StreamLayerNorm, stream_norms
from rsst.structure import attention_blocks, mlp_blocks, vision_transformer


def _timm_attention_ok(m: nn.Module) -> str | None:
    """None when ``m`` is timm's plain ``Attention`` (what `stock_attention` rebuilds smaller),
    else the reason it cannot lose heads."""
    try:
        from timm.layers import Attention
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


def plan_transformer(model: nn.Module, plan: Plan, masks: dict[str, torch.Tensor]) -> None:
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
    _plan_embed(model, plan, masks)
    summarize_stayed(plan)


def _embed_why(vit: nn.Module) -> str | None:
    """None when the ViT's stream dimensions can be removed exactly, else why not."""
    norms = stream_norms(vit)
    if not norms or not all(isinstance(n, StreamLayerNorm) for n in norms):
        return "stock LayerNorm statistics span the full width"
    if any(name.endswith(("ls1.gamma", "ls2.gamma")) for name, _ in vit.named_parameters()):
        return "layer scale is not compacted"
    if getattr(vit, "attn_pool", None) is not None or not isinstance(vit.head, nn.Linear):
        return "the pooling / head reads the full width"
    return None


def _plan_embed(model: nn.Module, plan: Plan, masks: dict[str, torch.Tensor]) -> None:
    """Residual-stream dimensions: removable when everything writing the stream is zero there
    (patch embedding row and bias, tokens, every proj / fc2 row and bias) and every stream norm
    has γ = β = 0 there (a `StreamLayerNorm` leaves it out of its statistics and outputs 0, so
    what reads it — qkv / fc1 / classifier columns — multiplies zeros)."""
    found = vision_transformer(model)
    if found is None:
        return
    root, vit = found
    prefix = f"{root}." if root else ""
    width = int(vit.embed_dim)
    zero = torch.ones(width, dtype=torch.bool)
    writers = [vit.patch_embed.proj.weight.reshape(width, -1), vit.patch_embed.proj.bias]
    writers += [getattr(vit, t).reshape(-1, width).t() for t in ("cls_token", "reg_token",
                                                                "pos_embed")
                if getattr(vit, t, None) is not None]
    for name, m in vit.named_modules():
        if isinstance(m, nn.Linear) and name.endswith(("attn.proj", "mlp.fc2")):
            writers += [m.weight, m.bias]
    writers += [t for n in stream_norms(vit) for t in (n.weight, n.bias)]
    for t in writers:
        if t is not None:
            zero &= (t.detach().reshape(width, -1) == 0).all(1).cpu()
    if not bool(zero.any()):
        return
    mask = masks.get(f"{prefix}norm.weight")
    pruned = zero.clone() if mask is None else mask.cpu() == 0
    kept = _kept_units(plan, f"{prefix}embed".lstrip("."), "embed", zero, pruned,
                       _embed_why(vit))
    if len(kept) == width:
        return
    plan.modules[root] = {"type": "embed", "width": width, "out": kept}
    plan.modules[f"{prefix}patch_embed.proj"] = {"type": "conv", "in": None, "out": kept}
    for n in stream_norms(vit):
        name = next(k for k, v in vit.named_modules() if v is n)
        plan.modules[f"{prefix}{name}"] = {"type": "norm", "out": kept}
    for name, m in vit.named_modules():
        full = f"{prefix}{name}"
        if name.endswith("attn") and any(full == n for n, _ in attention_blocks(model)):
            entry = plan.modules.setdefault(full, {
                "type": "attention", "heads": list(range(int(m.num_heads))),
                "num_heads": int(m.num_heads), "head_dim": int(m.head_dim)})
            entry["in"], entry["out"] = kept, kept
        elif isinstance(m, nn.Linear) and name.endswith("mlp.fc1"):
            plan.modules.setdefault(full, {"type": "linear", "out": None})["in"] = kept
        elif isinstance(m, nn.Linear) and name.endswith("mlp.fc2"):
            plan.modules.setdefault(full, {"type": "linear", "in": None})["out"] = kept
    plan.modules[f"{prefix}head"] = {"type": "linear", "in": kept, "out": None}


def stock_attention(old: nn.Module, num_heads: int, head_dim: int, dim: int | None = None,
                    dim_out: int | None = None) -> nn.Module:
    """timm's own ``Attention`` with ``num_heads`` heads of ``head_dim`` (shapes only).

    timm (1.0.23+) builds its attention width from ``attn_head_dim`` and reshapes with it, so a
    block with fewer heads is a stock module: a compacted ViT is made of timm classes only and
    loads in stock timm. Dropouts, q/k norms (per head, unchanged) and the fused-attention
    choice come from ``old``; ``dim`` / ``dim_out``: a narrower embedding width.
    """
    from timm.layers import Attention

    new = Attention(dim or old.qkv.in_features, num_heads=num_heads, attn_head_dim=head_dim,
                    dim_out=dim_out or old.proj.out_features, qkv_bias=old.qkv.bias is not None,
                    proj_bias=old.proj.bias is not None, attn_drop=old.attn_drop.p,
                    proj_drop=old.proj_drop.p, device=old.qkv.weight.device)
    new.q_norm, new.k_norm = old.q_norm, old.k_norm
    new.fused_attn = bool(getattr(old, "fused_attn", new.fused_attn))
    return new
