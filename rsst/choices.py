"""The names a flag accepts whose owner module imports torch: the owner (named beside each list)
imports its list from here and checks against it, and the CLI reads it from here to show and
complete it — ``rsst --help`` and shell completion load no torch.

Lists whose owner is light stay with the owner: method names in `rsst.methods.catalog`, λ
schedules in `rsst.schedules` (from `rsst_kernels.schedules`).
"""

from __future__ import annotations

#: group scores (`rsst.criteria`)
CRITERIA: tuple[str, ...] = ("remain", "magnitude", "l1", "l2", "saliency")
#: group kinds (`rsst.structure`); ``--structure`` also takes auto, head+neuron and none
STRUCTURE_KINDS: tuple[str, ...] = ("channel", "head", "neuron", "embed")
STRUCTURES: tuple[str, ...] = ("auto", "channel", "head", "neuron", "head+neuron", "embed",
                               "head+embed", "neuron+embed", "head+neuron+embed", "none")
#: --groups: per-layer conv channels or coupled channel sets (`rsst.structure`)
GROUP_MODES: tuple[str, ...] = ("per-layer", "coupled")
#: prunable weights (`rsst.structure`)
PRUNE_SCOPES: tuple[str, ...] = ("default", "+stem", "+classifier", "all")
#: Refill's group ranking (`rsst.pruning`)
REFILL_SCOPES: tuple[str, ...] = ("unit", "global")
#: λ ramp window (`rsst.loop`)
REG_RAMPS: tuple[str, ...] = ("state", "epoch")
#: learning-rate schedules (`rsst.engine`)
LR_SCHEDULES: tuple[str, ...] = ("multistep", "cosine", "constant")
#: optimizers of the fused update (`rsst.update`)
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
#: update backends (`rsst.update`); ``--backend`` also takes auto
UPDATE_BACKENDS: tuple[str, ...] = ("triton", "compiled", "torch", "eager")
BACKENDS: tuple[str, ...] = ("auto", *UPDATE_BACKENDS)
#: activation layouts (`rsst.models.base.use_channels_last`)
MEMORY_FORMATS: tuple[str, ...] = ("auto", "channels_last", "contiguous")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: dataset readers (`rsst.data`)
DATASETS: tuple[str, ...] = ("synthetic", "cifar10", "cifar100", "imagefolder", "tiny-imagenet")
#: the models written for pruning (`rsst.models.registry`); ``timm:<name>`` is accepted too
CNN_MODELS: tuple[str, ...] = (
    "resnet20", "resnet32", "resnet56", "resnet110",
    "resnet18", "resnet50", "vgg16_bn", "mobilenet",
)  # fmt: skip
VIT_MODELS: tuple[str, ...] = ("vit_tiny", "vit_small", "vit_base", "vit_tiny_research")
TIMM_PREFIX = "timm:"
#: extra metric loggers (`rsst.loggers`)
LOGGERS: tuple[str, ...] = ("tensorboard", "wandb", "csv")
#: export forms (`rsst.export.FORMS`; a test holds the two equal)
EXPORT_FORMS: tuple[str, ...] = ("masked", "compact", "timm", "hf", "onnx", "pt2")
#: held-out splits `rsst eval` reads (`rsst.export.evaluate_file`)
EVAL_SPLITS: tuple[str, ...] = ("val", "test")

#: --score-bn: BatchNorm mode while SNIP/GraSP score
SCORE_BN_MODES = ("eval", "train")
#: --admm-projection: per-layer cardinality (the paper) or one global top-k
ADMM_PROJECTIONS = ("layer", "global")
