"""ViT compaction: attention heads and MLP neurons of timm ``Attention`` and ``Mlp`` blocks.

- a head is removable when its q, k and v rows of ``qkv`` (weights and biases) are all zero:
  its values are zero, so whatever it attends to it outputs zeros and its ``proj`` columns
  multiply zeros;
- an MLP neuron is removable when its ``fc1`` row and bias are zero and the activation maps
  0 to 0 (GELU, ReLU, SiLU, tanh).
timm's attention reshapes its output with the width it was built with, so compacted blocks use
`CompactAttention` (explicit head count and head width, timm's fused and unfused paths); each
block keeps its own head count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rsst.compact.base import Plan, summarize_stayed
from rsst.structure import attention_blocks, mlp_blocks


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
    summarize_stayed(plan)


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
