"""Vision Transformers from timm (``vit_tiny`` / ``vit_small`` / ``vit_base`` at CIFAR sizes) and
any timm model as ``timm:<name>``, with the input normalization in front."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rsst.errors import UserError
from rsst.models.base import TIMM_PREFIX, Normalize
from rsst.models.registry import register_model


class TimmWrapper(nn.Module):
    """A timm model with the input normalization in front (state_dict keys ``net.*``)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def create_timm(
    timm_name: str,
    num_classes: int,
    img_size: int,
    patch_size: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    kwargs: dict[str, Any],
) -> TimmWrapper:
    """Create ``timm_name`` with random weights, passing img_size when the model accepts it."""
    import timm

    if not timm_name or not timm.is_model(timm_name):
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(TIMM_PREFIX + c for c in close)}?)" if close else ""
        raise UserError(
            f"unknown timm model {timm_name!r}{hint}: pass {TIMM_PREFIX}<name> with a name "
            "from timm.list_models()"
        )
    args: dict[str, Any] = dict(kwargs, pretrained=False, num_classes=num_classes)
    if patch_size is not None:
        args["patch_size"] = patch_size
    try:
        net = timm.create_model(timm_name, img_size=img_size, **args)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise UserError(f"timm model {timm_name!r} rejected its arguments: {exc}") from exc
        # Convolutional timm models take any input size and have no img_size argument.
        try:
            net = timm.create_model(timm_name, **args)
        except TypeError as exc2:
            raise UserError(
                f"timm model {timm_name!r} rejected its arguments: {exc2}; drop patch_size "
                "and extra options it does not support"
            ) from exc2
    return TimmWrapper(net, mean, std)


def _vit(timm_name: str, kw: dict[str, Any]) -> nn.Module:
    patch = kw.pop("patch_size") or 4
    if kw["img_size"] % patch:
        raise UserError(
            f"img_size {kw['img_size']} is not a multiple of patch_size {patch}: pick a patch "
            "size that divides the image side"
        )
    extra = {k: v for k, v in kw.items() if k not in ("num_classes", "img_size", "mean", "std")}
    return create_timm(
        timm_name, kw["num_classes"], kw["img_size"], patch, kw["mean"], kw["std"], extra
    )


@register_model
def vit_tiny(**kw: Any) -> nn.Module:
    """timm ``vit_tiny_patch16_224`` config (192 wide, 3 heads), patch 4 at 32 px by default."""
    return _vit("vit_tiny_patch16_224", kw)


@register_model
def vit_small(**kw: Any) -> nn.Module:
    """timm ``vit_small_patch16_224`` config (384 wide, 6 heads), patch 4 by default."""
    return _vit("vit_small_patch16_224", kw)


@register_model
def vit_base(**kw: Any) -> nn.Module:
    """timm ``vit_base_patch16_224`` config (768 wide, 12 heads), patch 4 by default."""
    return _vit("vit_base_patch16_224", kw)


@register_model
def vit_tiny_research(**kw: Any) -> nn.Module:
    """The research code's CIFAR ViT: timm ``VisionTransformer`` with embed 192, depth 9,
    3 heads, MLP ratio 2, patch 4 (on 32 px), so ViT numbers compare with its results."""
    from timm.models.vision_transformer import VisionTransformer

    patch = kw.pop("patch_size") or 4
    img_size = kw.pop("img_size")
    if img_size % patch:
        raise UserError(f"img_size {img_size} is not a multiple of patch_size {patch}: pick a "
                        "patch size that divides the image side")
    num_classes, mean, std = kw.pop("num_classes"), kw.pop("mean"), kw.pop("std")
    args: dict[str, Any] = dict(img_size=img_size, patch_size=patch, num_classes=num_classes,
                                embed_dim=192, depth=9, num_heads=3, mlp_ratio=2.0)
    args.update(kw)
    try:
        net = VisionTransformer(**args)
    except TypeError as exc:
        raise UserError(f"vit_tiny_research rejected its arguments: {exc}") from exc
    return TimmWrapper(net, mean, std)
