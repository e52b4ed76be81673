"""MobileNet v1, the CIFAR variant (stride-1 stem)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rsst.models.base import Normalize, cnn_args, conv_bn, init_cnn
from rsst.models.registry import register_model

# (out_channels, stride) of the 13 depthwise-separable blocks; CIFAR variant = stride-1 stem.
_MOBILENET_CFG = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cin, 3, stride, groups=cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv_bn(cin, cout, 1)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))


class MobileNet(nn.Module):
    """MobileNet v1 for CIFAR (~3.2M parameters): 3x3 stride-1 stem, 13 separable blocks."""

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1, self.bn1 = conv_bn(3, 32, 3)
        self.relu = nn.ReLU(inplace=True)
        blocks = []
        cin = 32
        for cout, stride in _MOBILENET_CFG:
            blocks.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model
def mobilenet(**kw: Any) -> nn.Module:
    """MobileNet v1, CIFAR variant (depthwise convs are pruned with their input channels)."""
    num_classes, _, mean, std = cnn_args("mobilenet", kw)
    return MobileNet(num_classes, mean, std)
