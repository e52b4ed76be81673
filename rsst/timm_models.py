"""rsst's models inside timm's registry, so ``timm.create_model`` builds them.

Importing this module registers one timm architecture, ``rsst_model``: any rsst model (CNNs as
well as ViTs) with its input normalization inside, optionally compacted by an rsst compaction
plan. Its arguments are JSON-able, so timm's Hugging Face folder format (``config.json`` +
``model.safetensors``, written by ``rsst export --form hf``) holds everything needed, and

    import rsst.timm_models  # registers rsst_model with timm
    model = timm.create_model("local-dir:FOLDER", pretrained=True)

rebuilds the exported model with timm's own loader (weights from safetensors, never pickle).
"""

from __future__ import annotations

from typing import Any

from torch import nn

ARCH = "rsst_model"


def _build(*, arch: str, num_classes: int, img_size: int | list[int], mean: list[float],
           std: list[float],
           patch_size: int | None = None, compact: dict[str, Any] | None = None,
           in_chans: int = 3, **_: Any) -> nn.Module:
    """The rsst model ``arch`` (plan ``compact`` applied); timm's builder calls this."""
    from rsst.compact import apply_plan
    from rsst.models import create_model

    if in_chans != 3:
        raise ValueError(f"rsst models take 3 input channels, not {in_chans}")
    if not isinstance(img_size, int):  # timm passes its (H, W) input size back
        img_size = int(img_size[-1])
    model = create_model(arch, num_classes=num_classes, img_size=img_size,
                         patch_size=patch_size, mean=mean, std=std)
    if compact:
        apply_plan(model, compact)
    model.num_classes = num_classes
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    model.num_features = classifier.in_features
    return model


def rsst_model(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """timm entrypoint: an rsst model from JSON-able arguments (see module doc)."""
    from timm.models import build_model_with_cfg

    return build_model_with_cfg(_build, ARCH, pretrained, **kwargs)


def register() -> None:
    """Register ``rsst_model`` with timm once (idempotent)."""
    import timm
    from timm.models import register_model

    if not timm.is_model(ARCH):
        register_model(rsst_model)


register()
