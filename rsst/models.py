"""Model registry: CIFAR CNNs written for pruning, and timm Vision Transformers.

Every model takes float images in [0, 1] and normalizes them itself (`Normalize`, with the
mean/std stored as buffers), so an exported state_dict is a self-contained classifier.

The CNNs follow rules that the pruning code relies on (and that tests check):
- every ``Conv2d`` has ``bias=False`` and its output goes straight into its own ``BatchNorm2d``
  (conv -> bn, nothing in between), so an output channel is removable as a unit;
- residual additions are written ``out = out + shortcut``;
- no data-dependent Python control flow, so ``torch.fx.symbolic_trace`` sees the whole graph
  (conv -> BN pairs and residual adds are discovered from the traced graph).

Use ``create_model(name, num_classes, img_size=...)``; ``list_models()`` gives the names.
Every created model carries ``rsst_arch``, ``rsst_num_classes``, ``rsst_input_size`` and
``rsst_patch_size`` so other modules (export, eval) can rebuild it from metadata alone.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rsst.errors import UserError

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

TIMM_PREFIX = "timm:"

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


def use_channels_last(memory_format: str, model: nn.Module) -> bool:
    """Resolve ``--memory-format``: ``auto`` is NHWC for CNNs (cuDNN's fast layout for bf16
    convolutions; on CPU resnet20 steps measured 12 % faster, resnet18 even) and row-major for
    ViTs, whose one conv is the patch embedding."""
    if memory_format != "auto":
        return memory_format == "channels_last"
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


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
        model = _create_timm(
            name[len(TIMM_PREFIX) :], num_classes, img_size, patch_size, mean_t, std_t, kwargs
        )
    else:
        fn = _REGISTRY.get(name)
        if fn is None:
            raise UserError(_unknown_message(name))
        model = fn(
            num_classes=num_classes,
            img_size=img_size,
            patch_size=patch_size,
            mean=mean_t,
            std=std_t,
            **kwargs,
        )
    model.rsst_arch = name
    model.rsst_num_classes = num_classes
    model.rsst_input_size = (3, img_size, img_size)
    model.rsst_patch_size = patch_size
    return model


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, list_models(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (
        f"unknown model {name!r}{hint}: pass --arch with one of {', '.join(list_models())}, "
        f"or {TIMM_PREFIX}<name> for any timm model"
    )


def _channel_triple(values: Sequence[float], what: str) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3:
        raise UserError(f"{what} must be three per-channel floats (R, G, B), got {values!r}")
    return triple  # type: ignore[return-value]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean/std are buffers so they travel with the weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _cnn_args(arch: str, kw: dict[str, Any]) -> tuple[int, int, Sequence[float], Sequence[float]]:
    """(num_classes, img_size, mean, std) of a CNN builder call; CNNs take no other options,
    so say so rather than silently ignoring them."""
    kw = dict(kw)
    if kw.pop("patch_size", None) is not None:
        raise UserError(f"{arch} is a CNN and has no patch size: drop patch_size / --patch-size")
    std_args = tuple(kw.pop(k) for k in ("num_classes", "img_size", "mean", "std"))
    if kw:
        raise UserError(f"{arch} takes no extra options, got {sorted(kw)}: remove them")
    return std_args  # type: ignore[return-value]


def _conv_bn(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(cout)


def _init_cnn(model: nn.Module) -> None:
    """He (fan_out) init for convs, BN = identity, as torchvision and the CIFAR ResNet papers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# ResNets
# ---------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; projection (1x1 conv + BN) when the shape changes."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(*_conv_bn(cin, planes, 1, stride))

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
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3, self.bn3 = _conv_bn(planes, cout, 1)
        self.relu3 = nn.ReLU(inplace=True)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride))

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
        self.conv1, self.bn1 = _conv_bn(3, widths[0], 3)
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
        _init_cnn(self)

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
    num_classes, _, mean, std = _cnn_args(name, kw)
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
    num_classes, _, mean, std = _cnn_args(name, kw)
    return ResNet(block, layers, [64, 128, 256, 512], num_classes, mean, std)


@register_model
def resnet18(**kw: Any) -> nn.Module:
    """ResNet-18 with the CIFAR stem (~11.2M parameters at 10 classes)."""
    return _imagenet_resnet("resnet18", BasicBlock, [2, 2, 2, 2], **kw)


@register_model
def resnet50(**kw: Any) -> nn.Module:
    """ResNet-50 (Bottleneck) with the CIFAR stem (~23.5M parameters at 10 classes)."""
    return _imagenet_resnet("resnet50", Bottleneck, [3, 4, 6, 3], **kw)


# ---------------------------------------------------------------------------------------------
# VGG
# ---------------------------------------------------------------------------------------------

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
                layers.extend(_conv_bn(cin, v, 3))
                layers.append(nn.ReLU(inplace=True))
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


@register_model
def vgg16_bn(**kw: Any) -> nn.Module:
    """VGG-16 with BN, CIFAR variant (~14.7M parameters); needs img_size >= 32 (five pools)."""
    num_classes, img_size, mean, std = _cnn_args("vgg16_bn", kw)
    if img_size < 32:
        raise UserError(f"vgg16_bn needs img_size >= 32 (five 2x pools), got {img_size}")
    return VGG(_VGG16, num_classes, mean, std)


# ---------------------------------------------------------------------------------------------
# MobileNet v1
# ---------------------------------------------------------------------------------------------

# (out_channels, stride) of the 13 depthwise-separable blocks; CIFAR variant = stride-1 stem.
_MOBILENET_CFG = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cin, 3, stride, groups=cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(cin, cout, 1)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))


class MobileNet(nn.Module):
    """MobileNet v1 for CIFAR (~3.2M parameters): 3x3 stride-1 stem, 13 separable blocks."""

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1, self.bn1 = _conv_bn(3, 32, 3)
        self.relu = nn.ReLU(inplace=True)
        blocks = []
        cin = 32
        for cout, stride in _MOBILENET_CFG:
            blocks.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model
def mobilenet(**kw: Any) -> nn.Module:
    """MobileNet v1, CIFAR variant (depthwise convs are pruned with their input channels)."""
    num_classes, _, mean, std = _cnn_args("mobilenet", kw)
    return MobileNet(num_classes, mean, std)


# ---------------------------------------------------------------------------------------------
# timm models
# ---------------------------------------------------------------------------------------------


class TimmWrapper(nn.Module):
    """A timm model with the input normalization in front (state_dict keys ``net.*``)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def _create_timm(
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
    return _create_timm(
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


CNN_MODELS: tuple[str, ...] = (
    "resnet20", "resnet32", "resnet56", "resnet110",
    "resnet18", "resnet50", "vgg16_bn", "mobilenet",
)  # fmt: skip
VIT_MODELS: tuple[str, ...] = ("vit_tiny", "vit_small", "vit_base")
