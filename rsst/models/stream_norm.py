"""LayerNorm over the live part of a ViT's residual stream, for embedding-width pruning.

A stock LayerNorm's mean and variance run over every dimension, so a dimension pruned to zero
still shifts them, and removing it would change the function. With ``--structure embed`` rsst
therefore normalizes the stream over its live dimensions only: a dimension is dead when the
norm's γ and β are both exactly zero there (pruning zeroes both with the group; training never
lands on exact zeros otherwise). Dead dimensions output zero. With none dead this is the stock
LayerNorm (to float rounding), and the compacted network — stock timm LayerNorms over the
remaining width — computes exactly what the masked one computes.
"""

from __future__ import annotations

import torch
from torch import nn


class StreamLayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose statistics skip the dimensions with γ = β = 0 (see module doc).

    Same parameters and state_dict keys as the LayerNorm it replaces; no host syncs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in float32, like layer_norm under autocast; the result in the dtype the
        # stock norm would return (float32 under autocast, half for a half model)
        out_dtype = torch.promote_types(x.dtype, self.weight.dtype)
        x = x.float()
        weight, bias = self.weight.float(), self.bias.float()
        alive = ((weight != 0) | (bias != 0)).float()
        count = alive.sum().clamp_min(1)
        mean = (x * alive).sum(-1, keepdim=True) / count
        centered = (x - mean) * alive
        var = (centered * centered).sum(-1, keepdim=True) / count
        return (centered * torch.rsqrt(var + self.eps) * weight + bias).to(out_dtype)


def stream_norms(model: nn.Module) -> list[nn.LayerNorm]:
    """The LayerNorms over the residual stream of the timm ViT inside ``model``."""
    for m in model.modules():
        if all(hasattr(m, a) for a in ("patch_embed", "blocks", "head", "embed_dim")):
            width = int(m.embed_dim)
            return [n for n in m.modules() if isinstance(n, nn.LayerNorm)
                    and tuple(n.normalized_shape) == (width,) and n.weight is not None
                    and n.bias is not None]
    return []


def use_stream_norms(model: nn.Module) -> int:
    """Switch the ViT's stream LayerNorms to `StreamLayerNorm` in place (parameters, hooks and
    arena views untouched); returns how many. Idempotent."""
    norms = stream_norms(model)
    for norm in norms:
        norm.__class__ = StreamLayerNorm
    return len(norms)


def has_dead_stream_dims(model: nn.Module) -> bool:
    """True when some stream LayerNorm has a dimension with γ = β = 0 (an embed-pruned ViT)."""
    with torch.no_grad():
        return any(bool(((n.weight == 0) & (n.bias == 0)).any()) for n in stream_norms(model))
