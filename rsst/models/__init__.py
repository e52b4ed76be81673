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
Every created model carries its contract, ``rsst_spec`` (a `rsst.statefile.ModelSpec`: arch,
classes, input size, patch size, normalization; also as ``rsst_arch``, ``rsst_num_classes``,
``rsst_input_size``, ``rsst_patch_size``), so export and eval can rebuild it from metadata alone.

One module per family, as timm keeps them: `rsst.models.resnet`, `rsst.models.vgg`,
`rsst.models.mobilenet`, `rsst.models.vit` (timm ViTs and ``timm:<name>``); the registry in
`rsst.models.registry`, `create_model` in `rsst.models.factory`, shared pieces (`Normalize`,
conv-BN helpers, `use_channels_last`) in `rsst.models.base`. Importing this package registers
every family.
"""

from __future__ import annotations

from rsst.models.base import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    TIMM_PREFIX,
    Normalize,
    use_channels_last,
)
from rsst.models.factory import create_model
from rsst.models.mobilenet import DepthwiseSeparable, MobileNet, mobilenet
from rsst.models.pretrained import load_pretrained
from rsst.models.registry import (
    CNN_MODELS,
    VIT_MODELS,
    ModelFn,
    list_models,
    register_model,
)
from rsst.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet20,
    resnet32,
    resnet50,
    resnet56,
    resnet110,
)
from rsst.models.vgg import VGG, vgg16_bn
from rsst.models.vit import TimmWrapper, vit_base, vit_small, vit_tiny, vit_tiny_research

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CNN_MODELS",
    "TIMM_PREFIX",
    "VGG",
    "VIT_MODELS",
    "BasicBlock",
    "Bottleneck",
    "DepthwiseSeparable",
    "MobileNet",
    "ModelFn",
    "Normalize",
    "ResNet",
    "TimmWrapper",
    "create_model",
    "list_models",
    "load_pretrained",
    "mobilenet",
    "register_model",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet50",
    "resnet56",
    "resnet110",
    "use_channels_last",
    "vgg16_bn",
    "vit_base",
    "vit_small",
    "vit_tiny",
    "vit_tiny_research",
]
