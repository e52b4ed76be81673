"""VGG-16 with BN, the CIFAR variant (one Linear classifier after a global average pool)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rsst.errors import UserError
from rsst.models.base import Normalize, cnn_args, conv_bn, init_cnn
from rsst.models.registry import register_model

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """CIFAR VGG with BN: conv-BN-ReLU stacks and max-pools, global average pool, one Linear.

    The single Linear classifier is the Structure-LTH / OpenLTH CIFAR variant; the average pool
    makes it work for inputs of 32 px and larger (32 px ends at 1x1 after five pools anyway).
    """

    def __init__(
        self,
        cfg: Sequence[int | str],
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers.extend(conv_bn(cin, v, 3))
                layers.append(nn.ReLU(inplace=True))
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


@register_model
def vgg16_bn(**kw: Any) -> nn.Module:
    """VGG-16 with BN, CIFAR variant (~14.7M parameters); needs img_size >= 32 (five pools)."""
    num_classes, img_size, mean, std = cnn_args("vgg16_bn", kw)
    if img_size < 32:
        raise UserError(f"vgg16_bn needs img_size >= 32 (five 2x pools), got {img_size}")
    return VGG(_VGG16, num_classes, mean, std)
