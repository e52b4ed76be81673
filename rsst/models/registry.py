"""The model registry, in the spirit of timm's ``register_model``: a builder registers under its
function name, and unknown names get close-match suggestions."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from rsst.choices import CNN_MODELS as CNN_MODELS  # re-exported: the names live there
from rsst.choices import VIT_MODELS as VIT_MODELS
from rsst.models.base import TIMM_PREFIX

ModelFn = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFn] = {}



def register_model(fn: ModelFn) -> ModelFn:
    """Register a builder under its function name (timm style).

    A builder is called as ``fn(num_classes=..., img_size=..., patch_size=..., mean=..., std=...,
    **kwargs)`` and returns the model with its `Normalize` inside.
    """
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by `create_model` (``timm:<name>`` is accepted on top of these)."""
    return sorted(_REGISTRY)


def model_builder(name: str) -> ModelFn | None:
    """The builder registered under ``name``, or None."""
    return _REGISTRY.get(name)


def unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name, list_models(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (
        f"unknown model {name!r}{hint}: pass --arch with one of {', '.join(list_models())}, "
        f"or {TIMM_PREFIX}<name> for any timm model"
    )
