"""`create_model`: argument checks, the registry lookup or ``timm:<name>``, and the metadata every
created model carries (``rsst_spec``, a `rsst.statefile.ModelSpec`, and from it ``rsst_arch``,
``rsst_num_classes``, ``rsst_input_size``, ``rsst_patch_size``) so other modules (export, eval) can
rebuild it from metadata alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from rsst.errors import UserError
from rsst.models.base import CIFAR10_MEAN, CIFAR10_STD, TIMM_PREFIX
from rsst.models.registry import model_builder, unknown_model_message
from rsst.models.vit import create_timm
from rsst.statefile import ModelSpec


def create_model(
    name: str,
    num_classes: int = 10,
    *,
    img_size: int = 32,
    patch_size: int | None = None,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    **kwargs: Any,
) -> nn.Module:
    """Build a randomly initialized model by registry name, or ``timm:<timm model name>``.

    Never loads pretrained weights. Raises `UserError` for unknown names and bad arguments.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(img_size, int) or img_size < 8:
        raise UserError(f"img_size must be an integer >= 8, got {img_size!r}; pass the image side")
    if patch_size is not None and (not isinstance(patch_size, int) or patch_size < 1):
        raise UserError(f"patch_size must be a positive integer, got {patch_size!r}")
    mean_t = _channel_triple(mean, "mean")
    std_t = _channel_triple(std, "std")
    if min(std_t) <= 0:
        raise UserError(f"std must be positive per channel, got {std_t}")
    if kwargs.get("pretrained"):
        raise UserError("rsst never loads pretrained weights: drop pretrained=True")
    kwargs.pop("pretrained", None)

    if name.startswith(TIMM_PREFIX):
        model = create_timm(
            name[len(TIMM_PREFIX) :], num_classes, img_size, patch_size, mean_t, std_t, kwargs
        )
    else:
        fn = model_builder(name)
        if fn is None:
            raise UserError(unknown_model_message(name))
        model = fn(
            num_classes=num_classes,
            img_size=img_size,
            patch_size=patch_size,
            mean=mean_t,
            std=std_t,
            **kwargs,
        )
    ModelSpec(name, num_classes, (3, img_size, img_size), patch_size, mean_t, std_t).attach(model)
    return model


def _channel_triple(values: Sequence[float], what: str) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3:
        raise UserError(f"{what} must be three per-channel floats (R, G, B), got {values!r}")
    return triple  # type: ignore[return-value]
