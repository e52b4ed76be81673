"""ResNets with a CIFAR stem: the He et al. CIFAR ResNets (20/32/56/110) and ResNet-18/50."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rsst.models.base import Normalize, cnn_args, conv_bn, init_cnn
from rsst.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; projection (1x1 conv + BN) when the shape changes."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, planes, 3, stride)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(*conv_bn(cin, planes, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = out + shortcut
        return self.relu2(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, as torchvision v1.5) -> 1x1 x4, with a projection shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1 = conv_bn(cin, planes, 1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3, self.bn3 = conv_bn(planes, cout, 1)
        self.relu3 = nn.ReLU(inplace=True)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = out + shortcut
        return self.relu3(out)


class ResNet(nn.Module):
    """ResNet with a CIFAR stem: one 3x3 stride-1 conv, no max-pool, global average pool + fc.

    ``widths`` gives the planes of each stage; the first stage keeps the resolution and each
    later one halves it.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1, self.bn1 = conv_bn(3, widths[0], 3)
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        stages = []
        for i, (n, planes) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, planes, stride))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in self.layers:
            x = stage(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _cifar_resnet(depth: int, name: str, **kw: Any) -> ResNet:
    """He et al. 2016 CIFAR ResNet (6n+2 layers, stages 16/32/64, BasicBlock).

    Shortcut choice: option B (1x1 conv + BN projection) where the shape changes, identity
    elsewhere, so every tensor that enters an addition comes out of a conv-BN pair and channel
    pruning stays expressible. (Option A's zero-padded strided identity has no parameters and
    gives ~0.270M instead of ~0.272M parameters for ResNet-20.)
    """
    num_classes, _, mean, std = cnn_args(name, kw)
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n, n, n], [16, 32, 64], num_classes, mean, std)


@register_model
def resnet20(**kw: Any) -> nn.Module:
    """CIFAR ResNet-20 (~0.27M parameters); see `_cifar_resnet` for the shortcut choice."""
    return _cifar_resnet(20, "resnet20", **kw)


@register_model
def resnet32(**kw: Any) -> nn.Module:
    """CIFAR ResNet-32 (~0.47M parameters)."""
    return _cifar_resnet(32, "resnet32", **kw)


@register_model
def resnet56(**kw: Any) -> nn.Module:
    """CIFAR ResNet-56 (~0.86M parameters)."""
    return _cifar_resnet(56, "resnet56", **kw)


@register_model
def resnet110(**kw: Any) -> nn.Module:
    """CIFAR ResNet-110 (~1.7M parameters)."""
    return _cifar_resnet(110, "resnet110", **kw)


def _imagenet_resnet(
    name: str, block: type[BasicBlock] | type[Bottleneck], layers: list[int], **kw: Any
) -> ResNet:
    num_classes, _, mean, std = cnn_args(name, kw)
    return ResNet(block, layers, [64, 128, 256, 512], num_classes, mean, std)


@register_model
def resnet18(**kw: Any) -> nn.Module:
    """ResNet-18 with the CIFAR stem (~11.2M parameters at 10 classes)."""
    return _imagenet_resnet("resnet18", BasicBlock, [2, 2, 2, 2], **kw)


@register_model
def resnet50(**kw: Any) -> nn.Module:
    """ResNet-50 (Bottleneck) with the CIFAR stem (~23.5M parameters at 10 classes)."""
    return _imagenet_resnet("resnet50", Bottleneck, [3, 4, 6, 3], **kw)
