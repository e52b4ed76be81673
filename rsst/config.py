"""One dataclass for a run: defaults, presets, TOML load/save and validation a user understands."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from rsst import atomic
from rsst.choices import (
    BACKENDS,
    CNN_MODELS,
    CRITERIA,
    DATASETS,
    DEVICES,
    GROUP_MODES,
    LR_SCHEDULES,
    MEMORY_FORMATS,
    OPTIMIZERS,
    PRUNE_SCOPES,
    REFILL_SCOPES,
    REG_RAMPS,
    STRUCTURES,
    TIMM_PREFIX,
    VIT_MODELS,
)
from rsst.errors import UserError
from rsst.methods import get_method, method_class, method_names, method_summary
from rsst.methods.catalog import declared_settings
from rsst.settings import PANELS, Declared, Setting

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

METHODS = method_names()  # the built-in pruning methods (rsst.methods.catalog)

__all__ = ["BACKENDS", "CRITERIA", "DATASETS", "DEVICES", "LR_SCHEDULES", "MEMORY_FORMATS",
           "METHODS", "OPTIMIZERS", "PANELS", "PRESETS", "PRUNE_SCOPES", "REFILL_SCOPES",
           "REG_RAMPS", "STRUCTURES", "RunConfig", "Setting", "build_config", "load_config",
           "save_config", "settings", "validate", "config_toml", "not_in_effect"]


def setting(default: Any = None, *, help: str, panel: str, default_factory: Any = None,
            **meta: Any) -> Any:
    """A dataclass field carrying its `Setting` (help, panel, choices, range) as metadata."""
    metadata = {"setting": Setting(help=help, panel=panel, **meta)}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _with_method_settings(cls: type) -> type:
    """Add each method-declared setting (`rsst.methods.catalog`) to ``cls`` as a field, before
    `dataclass` turns it into one: the methods' own settings follow the common ones."""
    for name, (declared, _) in declared_settings().items():
        if name in cls.__annotations__:
            raise ValueError(f"method setting {name!r} is also a common RunConfig field")
        cls.__annotations__[name] = declared.type
        setattr(cls, name, field(default=declared.default,
                                 metadata={"setting": declared.setting}))
    return cls


def _preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


# When a common setting is in effect (`Setting.applies`): a flag given for nothing is warned
# about. A method's own settings are in effect for that method (`rsst.methods.catalog`).
def _reads_files(config: RunConfig) -> bool:
    return config.dataset != "synthetic"


def _iterative(config: RunConfig) -> bool:
    """Pruning by --rate: no --target-remain, and no budget on a method with a one-shot form
    (which prunes straight to it)."""
    if config.target_remain is not None:
        return False
    return config.budget() is None or method_class(config.method).one_shot_states is None


def _refills_groups(config: RunConfig) -> bool:
    return config.structure != "none" and method_class(config.method).refill


def _calibrates(config: RunConfig) -> bool:
    return config.criteria in ("l1", "l2", "saliency") and _refills_groups(config)


def _is_vit(config: RunConfig) -> bool:
    return config.arch in VIT_MODELS or config.arch.startswith(TIMM_PREFIX)


_GROUPS = dict(applies=_refills_groups, applies_text="with a method that refills whole groups "
               "(not imp) and a --structure other than none")
_SGD = dict(applies=lambda c: c.optimizer == "sgd", applies_text="with --optimizer sgd")
_ADAMW = dict(applies=lambda c: c.optimizer == "adamw", applies_text="with --optimizer adamw")
_MULTISTEP = dict(applies=lambda c: c.lr_schedule == "multistep",
                  applies_text="with --lr-schedule multistep")


def _method_help() -> str:
    """``--method``'s help from the methods' summaries (`rsst.methods.catalog`)."""
    return "Pruning method (one-shot forms: --target-remain). " + "; ".join(
        f"{name}: {method_summary(name)}" for name in method_names()) + "."


def target_methods() -> tuple[str, ...]:
    """The registered methods that take ``--target-remain``: the one-shot forms, and methods
    that reach it over their own states (ADMM)."""
    return tuple(n for n in method_names() if method_class(n).one_shot_states is not None
                 or method_class(n).target_over_states)


@dataclass
@_with_method_settings
class RunConfig:
    """Everything that defines a run. Field names are the CLI flags with ``-`` → ``_``;
    each field's `Setting` (``metadata["setting"]``) drives its flag, its help and `validate`.

    The fields written here are common to every method; each method's own settings (ADMM's ρ,
    RSST's penalty schedule, ...) are declared with the method in `rsst.methods.catalog` and added
    after them.
    """

    # what
    method: str = setting("rsst", panel="Method", choices=method_names, help=_method_help())
    arch: str = setting("resnet20", panel="Model", suggestions=(*CNN_MODELS, *VIT_MODELS,
                                                                TIMM_PREFIX),
                        help="resnet20/32/56/110, resnet18/50, vgg16_bn, mobilenet, "
                        "vit_tiny/small/base, vit_tiny_research, timm:<name>.")
    dataset: str = setting("synthetic", panel="Data", suggestions=DATASETS,
                           help="synthetic (generated, no files) | cifar10 | cifar100 | "
                           "imagefolder | tiny-imagenet.")
    data_dir: str | None = setting(None, panel="Data", shown_default="none",
                                   help="Folder of the dataset (pickles or class folders).",
                                   applies=_reads_files, refuse_ignored=True,
                                   applies_text="with a --dataset that reads files, not "
                                   "synthetic (the default)", ignored_fix="add --dataset "
                                   f"({', '.join(DATASETS[1:])}) or drop --data-dir")
    cache_dir: str | None = setting(None, panel="Data", shown_default="$RSST_CACHE or "
                                    "~/.cache/rsst", help="Where decoded images are cached.")
    # pruning
    states: int = setting(3, panel="Method", low=1, help="Number of pruning states "
                          "(research: 20).")
    rate: float = setting(0.3, panel="Method", low=0.0, high=1.0, low_open=True, high_open=True,
                          applies=_iterative, applies_text="without --target-remain (and "
                          "without a budget on a one-shot method)",
                          hint="it is the fraction of the remaining weights pruned per state, "
                          "e.g. 0.2", help="Fraction of the remaining weights pruned per state.")
    criteria: str = setting("l1", panel="Method", choices=CRITERIA, **_GROUPS,
                            help="Group score that picks the channels/heads/neurons to keep.")
    criteria_batches: int = setting(1, panel="Method", low=1, applies=_calibrates,
                                    applies_text="with --criteria l1, l2 or saliency and a "
                                    "method that refills whole groups",
                                    help="Calibration batches for l1/l2/saliency.")
    fillback_rate: float = setting(0.0, panel="Method", low=0.0, high=1.0, **_GROUPS,
                                   help="Extra groups refilled.")
    structure: str = setting("auto", panel="Method", choices=STRUCTURES,
                             help="Which units are pruned (auto: channels for CNNs, heads and "
                             "neurons for ViTs; embed: a ViT's embedding width, combinable as "
                             "head+neuron+embed).")
    rewind: str = setting("init", panel="Method", suggestions=("init", "none", "epoch:"),
                          help="Weights each state restarts from: init | epoch:K | none.")
    refill_scope: str = setting("unit", panel="Method", choices=REFILL_SCOPES, **_GROUPS,
                                help="Refill's group ranking: per unit (each conv / attention / "
                                "MLP keeps its own k) or global (one k per kind, groups ranked "
                                "across all blocks; the research --sorting_mode global).")
    prune_scope: str = setting("default", panel="Method", choices=PRUNE_SCOPES,
                               help="Prunable weights: default (convs but the stem; ViT qkv/proj/"
                               "fc1/fc2), +stem (also the first conv / patch embedding), "
                               "+classifier (also the last linear layer), all (both); the "
                               "added layers are pruned unstructured.")
    groups: str = setting("per-layer", panel="Method", choices=GROUP_MODES, **_GROUPS,
                          help="Channel groups: per-layer (one conv's output channel) or coupled "
                          "(channel c of every conv summed into one residual stream, or tied by "
                          "a depthwise conv, is one group, with the columns reading it; every "
                          "dead group is removed by export --compact).")
    round_to: int = setting(1, panel="Method", low=1, **_GROUPS,
                            help="Refill keeps a multiple of N groups per unit (or coupled set), "
                            "rounded up, never zero: widths the hardware computes in whole "
                            "blocks (16 on an AVX512 CPU, 8 on AVX2 or for fp16 tensor cores; "
                            "rsst env shows the CPU's), so fewer MACs become less time; each "
                            "prune then removes at least down to the schedule's (1 - rate)^n of "
                            "the weights, so widths keep moving; the achieved sparsity is what "
                            "is reported.")
    # one-shot baselines
    target_remain: float | None = setting(None, panel="Method", low=0.0, high=1.0,
                                          low_open=True, shown_default="none (iterative)",
                                          hint="it is the fraction of prunable weights left, "
                                          "e.g. 0.2", help="Fraction of prunable weights left: "
                                          "the one-shot form of omp/random/snip/grasp/synflow; "
                                          "admm reaches it at its last prune.")
    # budgets (compacted cost of the delivered network, relative to dense)
    target_macs: float | None = setting(None, panel="Method", low=0.0, high=1.0, low_open=True,
                                        shown_default="none", hint="it is the fraction of the "
                                        "dense network's MACs left after compaction, e.g. 0.5",
                                        help="MACs budget: fraction of the dense network's "
                                        "MACs after compaction. refill/rsst run states until the "
                                        "delivered network meets it (the last prune sized to "
                                        "land just under; --states is the maximum); the "
                                        "one-shot baselines prune straight to it.")
    target_params: float | None = setting(None, panel="Method", low=0.0, high=1.0,
                                          low_open=True, shown_default="none",
                                          hint="it is the fraction of the dense network's "
                                          "parameters left after compaction, e.g. 0.5",
                                          help="Parameters budget, as --target-macs for the "
                                          "compacted parameter count.")
    latency: bool = setting(True, panel="Speed", help="Time one forward pass of the compacted "
                            "and the dense network per state (latency_ratio; about a second "
                            "per state).")
    # training
    epochs: int = setting(2, panel="Training", low=1, help="Epochs per state.")
    batch_size: int = setting(128, panel="Training", low=1, help="Training batch size.")
    lr: float = setting(0.05, panel="Training", low=0.0, low_open=True,
                        help="Peak learning rate.")
    momentum: float = setting(0.9, panel="Training", low=0.0, help="SGD momentum.", **_SGD)
    weight_decay: float = setting(5e-4, panel="Training", low=0.0, help="Weight decay.")
    nesterov: bool = setting(False, panel="Training", help="Nesterov momentum.", **_SGD)
    optimizer: str = setting("sgd", panel="Training", choices=OPTIMIZERS,
                             help="Optimizer; the fused update implements both (momentum and "
                             "nesterov are SGD's, beta1/beta2/eps AdamW's).")
    beta1: float = setting(0.9, panel="Training", low=0.0, high=1.0, high_open=True,
                           help="AdamW β1.", **_ADAMW)
    beta2: float = setting(0.999, panel="Training", low=0.0, high=1.0, high_open=True,
                           help="AdamW β2.", **_ADAMW)
    eps: float = setting(1e-8, panel="Training", low=0.0, low_open=True, help="AdamW ε.",
                      **_ADAMW)
    lr_schedule: str = setting("cosine", panel="Training", choices=LR_SCHEDULES,
                               help="Learning-rate schedule, restarted each state.")
    warmup_epochs: float = setting(0.0, panel="Training", low=0.0,
                                   help="Linear warm-up epochs per state.")
    milestones: list[int] = setting(panel="Training", default_factory=list, shown_default="none",
                                    **_MULTISTEP,
                                    help="Multistep decay epochs, e.g. 80,120.")
    gamma: float = setting(0.1, panel="Training", low=0.0, low_open=True, **_MULTISTEP,
                           help="Multistep decay factor.")
    label_smoothing: float = setting(0.0, panel="Training", low=0.0, high=1.0, high_open=True,
                                     help="Label smoothing.")
    # data
    train_subset: int | None = setting(None, panel="Data", low=1, shown_default="all",
                                       help="Keep N training images (quick runs).")
    val_split: int | None = setting(None, panel="Data", low=0, shown_default="5000 if ≥ 20k "
                                    "images, 1000 for synthetic, else 10 %",
                                    help="Validation images carved from train.")
    eval_batch_size: int = setting(512, panel="Data", low=1, help="Evaluation batch size.")
    seed: int = setting(0, panel="Training", low=0, high=2**63, high_open=True,
                        help="Seed of everything random.")
    # execution
    backend: str = setting("auto", panel="Speed", choices=BACKENDS, help="Update backend.")
    device: str = setting("auto", panel="Speed", choices=DEVICES, help="Device to train on.")
    compile: bool = setting(False, panel="Speed", help="Wrap the model in torch.compile.")
    amp: bool = setting(True, panel="Speed",
                        help="Mixed-precision autocast on CUDA (ignored on CPU).")
    memory_format: str = setting("auto", panel="Speed", choices=MEMORY_FORMATS,
                                 help="Activation layout (auto: channels_last for CNNs).")
    cuda_graph: bool = setting(False, panel="Speed", help="Capture each training step (forward, "
                               "backward, fused update) as one CUDA graph; triton backend.")
    # several processes (torchrun; rsst.distributed)
    sync_bn: bool = setting(False, panel="Speed", help="Under torchrun: BatchNorm statistics over "
                            "the global batch (SyncBatchNorm; CUDA only).")
    dist_timeout: float = setting(600.0, panel="Speed", low=0.0, low_open=True,
                                  help="Under torchrun: seconds a rank waits for the others "
                                  "before the job stops.")
    # model shape (ViTs; CNNs ignore patch_size)
    img_size: int | None = setting(None, panel="Model", low=8, shown_default="the dataset's",
                                   help="Input size (ViTs).")
    patch_size: int | None = setting(None, panel="Model", low=1, shown_default="4",
                                     applies=_is_vit, applies_text="with a ViT --arch "
                                     "(vit_*, timm:<name>)",
                                     help="ViT patch size.")
    pretrained: str | None = setting(None, panel="Model", shown_default="none (random init)",
                                     help="Initialize from a local .safetensors or torch/timm "
                                     "checkpoint (read with weights_only); nothing is "
                                     "downloaded.")
    # output
    out: str | None = setting(None, panel="Run directory",
                              shown_default="runs/<method>-<arch>-<dataset>-<time>",
                              help="Run directory.")
    preset: str | None = setting(None, panel="Run directory", choices=_preset_names,
                                 shown_default="none", help="A research recipe (dataset, model, "
                                 "training and pruning schedule); flags given beside it "
                                 "override it.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def budget(self) -> tuple[str, float] | None:
        """(``"macs"`` or ``"params"``, F) of ``--target-macs`` / ``--target-params``; None
        without a budget."""
        if self.target_macs is not None:
            return "macs", self.target_macs
        if self.target_params is not None:
            return "params", self.target_params
        return None

    def rewind_epoch(self) -> int | None:
        """K of ``epoch:K``, 0 for ``init``, None for ``none``."""
        if self.rewind == "none":
            return None
        if self.rewind == "init":
            return 0
        return int(self.rewind.split(":", 1)[1])


# Research recipes, built from three base recipes plus each preset's differences. A preset sets
# exactly the keys it lists; every other setting keeps its value from the defaults or --config.

#: Structure-LTH / OpenLTH CIFAR recipe for CNNs
_CIFAR_CNN: dict[str, Any] = dict(
    dataset="cifar10", arch="resnet20", states=20, rate=0.2, criteria="l1", epochs=160,
    batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_schedule="multistep",
    milestones=[80, 120], gamma=0.1, warmup_epochs=0.0, rewind="epoch:8",
)
#: from-scratch CIFAR ViTs: heads and MLP neurons are the groups; warm-up + cosine, label smoothing
_CIFAR_VIT: dict[str, Any] = dict(
    dataset="cifar10", patch_size=4, structure="head+neuron", states=10, rate=0.2,
    criteria="l1", epochs=100, batch_size=128, lr_schedule="cosine", warmup_epochs=5.0,
    label_smoothing=0.1, rewind="init",
)
#: SGD (the optimizer the fused update was first written for) with Nesterov
_VIT_SGD: dict[str, Any] = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
#: DeiT-style AdamW: lr 1e-3 scaled by batch/512, weight decay 0.05
_VIT_ADAMW: dict[str, Any] = dict(optimizer="adamw", lr=1e-3 * 128 / 512, beta1=0.9,
                                  beta2=0.999, eps=1e-8, weight_decay=0.05)

#: Names say dataset, arch and whose recipe.
PRESETS: dict[str, dict[str, Any]] = {
    "cifar10-resnet20": _CIFAR_CNN,
    "cifar100-resnet20": {**_CIFAR_CNN, "dataset": "cifar100"},
    "cifar10-resnet18": {**_CIFAR_CNN, "arch": "resnet18"},
    "cifar10-vit_tiny": {**_CIFAR_VIT, "arch": "vit_tiny", **_VIT_SGD},
    "cifar10-vit_small": {**_CIFAR_VIT, "arch": "vit_small", **_VIT_SGD},
    "cifar10-vit_tiny-adamw": {**_CIFAR_VIT, "arch": "vit_tiny", **_VIT_ADAMW},
    "cifar10-vit_small-adamw": {**_CIFAR_VIT, "arch": "vit_small", **_VIT_ADAMW},
    # the research code's own recipe (main_imp_fillback.py defaults)
    "cifar10-resnet20-research": {
        **_CIFAR_CNN, "epochs": 182, "lr": 0.01, "milestones": [91, 136], "warmup_epochs": 20.0,
        "rewind": "init", "schedule": "exp_custom_exponents", "reg_granularity": 1.0,
        "exponents": 4.0,
    },
}


def settings() -> dict[str, Setting]:
    """Each `RunConfig` field's `Setting`, in field order."""
    return {f.name: f.metadata["setting"] for f in fields(RunConfig)}


def field_types() -> dict[str, Any]:
    """Each `RunConfig` field's type (resolved: the module uses postponed annotations)."""
    return typing.get_type_hints(RunConfig)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _type_word(hint: Any) -> str:
    if typing.get_origin(hint) is list:
        return "a list of integers like [80, 120]"
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return _TYPE_WORDS[args[0] if args else hint]


def coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as field ``name`` of type ``hint`` holds it, or TypeError naming the expected type.

    Ints are accepted for floats (and become floats); bools are not ints here, although
    Python says they are, because ``states = true`` is a mistake, not a 1.
    """
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                           for v in value):
            return list(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, hint):
        return value
    shown = json.dumps(value) if isinstance(value, bool | str) else repr(value)
    raise TypeError(f"{name} must be {_type_word(hint)}, not {shown}")


def _bad(name: str, message: str) -> UserError:
    """A `UserError` about setting ``name`` (`build_config` then names where its value came
    from, when that was not a flag the user typed)."""
    error = UserError(message)
    error.setting = name  # type: ignore[attr-defined]
    return error


def _check_setting(name: str, value: Any, meta: Setting) -> None:
    try:
        _check_value(name, value, meta)
    except UserError as exc:
        raise _bad(name, str(exc)) from None


def _check_value(name: str, value: Any, meta: Setting) -> None:
    flag = _flag(name)
    choices = meta.choice_list()
    if choices is not None and value is not None and value not in choices:
        raise UserError(f"unknown {name.replace('_', '-')} {value!r}: choose one of "
                        f"{', '.join(choices)} ({flag})")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and meta.finite and not math.isfinite(value):
        span = meta.range_text()
        raise UserError(f"{flag} {value} is not a finite number: give one"
                        + (f" in {span}" if span.startswith(("(", "[")) else
                           f" {span}" if span else ""))
    if not meta.in_range(value):
        span = meta.range_text()
        if span.startswith(("(", "[")):
            raise UserError(f"{flag} {value} is outside {span}"
                            + (f": {meta.hint}" if meta.hint else ""))
        raise UserError(f"{flag} must be {span} (got {value})"
                        + (f": {meta.hint}" if meta.hint else ""))


def validate(config: RunConfig) -> RunConfig:
    """Raise `UserError` naming the flag and its valid range for any bad value.

    Types, choices, ranges and finiteness come from each field's `Setting`; the checks that
    involve several fields or a format (``--rewind epoch:K``) are written out below.
    """
    hints = field_types()
    for name, meta in settings().items():
        value = getattr(config, name)
        try:
            coerce(name, value, hints[name])
        except TypeError as exc:
            raise _bad(name, f"{_flag(name)}: {exc}") from None
        _check_setting(name, value, meta)
    if any(m < 0 for m in config.milestones):
        raise _bad("milestones", f"--milestones {config.milestones}: epochs must be ≥ 0, "
                   "e.g. 80,120")
    if not (config.rewind in ("init", "none") or config.rewind.startswith("epoch:")):
        raise _bad("rewind", f"--rewind {config.rewind!r}: use init, none or epoch:K "
                   "(e.g. epoch:8)")
    if config.rewind.startswith("epoch:"):
        k = config.rewind.split(":", 1)[1]
        if not k.isdigit() or not 0 <= int(k) <= config.epochs:
            raise _bad("rewind", f"--rewind {config.rewind!r}: K must be an integer epoch of "
                       f"state 0 between 0 and --epochs ({config.epochs})")
    _check_one_shot(config)
    _check_budget(config)
    if config.pretrained is not None and not Path(config.pretrained).is_file():
        what = "is a folder" if Path(config.pretrained).is_dir() else "no such file"
        raise UserError(f"--pretrained {config.pretrained}: {what}; pass a local "
                        ".safetensors or .pt/.pth checkpoint")
    if config.dataset != "synthetic" and config.data_dir is None:
        raise UserError(f"--dataset {config.dataset} reads files: pass --data-dir DIR "
                        "(or use --dataset synthetic, which needs none)")
    get_method(config.method).check(config)
    return config


def _check_one_shot(config: RunConfig) -> None:
    """--target-remain: only for methods with a one-shot form, whose state count it fixes."""
    if config.target_remain is None or method_class(config.method).target_over_states:
        return
    states = method_class(config.method).one_shot_states
    if states is None:
        raise UserError(f"--target-remain is for the one-shot methods and admm "
                        f"({', '.join(target_methods())}); "
                        f"{config.method} prunes --rate of "
                        "the remaining weights per state: drop --target-remain")
    if config.states != states:
        form = ("prunes at initialization, then trains once" if states == 1 else
                "trains dense, prunes, rewinds, trains the pruned network")
        raise UserError(f"--target-remain {config.target_remain}: one-shot {config.method} runs "
                        f"{states} state(s) ({form}), not --states {config.states}: drop "
                        "--states, or drop --target-remain for the iterative form (--rate)")


def _check_budget(config: RunConfig) -> None:
    """--target-macs / --target-params: one budget, on a method that removes whole groups."""
    budget = config.budget()
    if budget is None:
        return
    flag = _flag(f"target_{budget[0]}")
    if config.target_macs is not None and config.target_params is not None:
        raise UserError("--target-macs and --target-params together: give one budget")
    if config.target_remain is not None:
        raise UserError(f"{flag} with --target-remain: give one target (the budget fixes how "
                        "many weights go)")
    cls = method_class(config.method)
    if cls.target_over_states:
        raise UserError(f"{flag}: {config.method} reaches --target-remain over its states and "
                        "takes no budget; use --target-remain, or refill/rsst for a budget")
    if not cls.refill or config.structure == "none":
        why = ("prunes single weights" if not cls.refill else "with --structure none prunes "
               "single weights")
        raise UserError(f"{flag}: {config.method} {why}, which compaction cannot remove, so "
                        "the budget could never be met: use a method that removes whole groups "
                        "(refill, rsst, omp, ...) with a --structure other than none")
    states = cls.one_shot_states
    if states is not None and config.states != states:
        raise UserError(f"{flag}: one-shot {config.method} prunes straight to the budget in "
                        f"{states} state(s), not --states {config.states}: drop --states")


def apply_preset(config: RunConfig, name: str) -> RunConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)} (--preset)")
    return dataclasses.replace(config, **copy.deepcopy(PRESETS[name]), preset=name)


def build_config(
    *, config_file: Path | None = None, preset: str | None = None, overrides: dict[str, Any],
    warn: Callable[[str], None] | None = None,
) -> RunConfig:
    """Defaults ← config file ← preset ← flags given on the command line, then validated.

    ``overrides`` are the flags the user gave: one that has no effect in the resolved run is
    reported through ``warn`` (or refused, see `Setting.applies`). An invalid value that came
    from the file or the preset is reported with its source and the flag that overrides it.
    """
    config = RunConfig()
    sources: dict[str, str] = {}
    if config_file is not None:
        config = load_config(config_file)
        if config.out is not None and _same_dir(config.out, Path(config_file).parent):
            # a run directory's record of where it ran: a rerun starts a new run directory
            config = dataclasses.replace(config, out=None)
        sources = {name: f"--config {config_file}" for name, value in config.to_dict().items()
                   if value != getattr(RunConfig(), name)}
    if preset is not None:
        config = apply_preset(config, preset)
        sources.update(dict.fromkeys(PRESETS[preset], f"--preset {preset}"))
    known = {f.name for f in fields(RunConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(sorted(unknown))}")
    config = dataclasses.replace(config, **overrides)
    if ((config.target_remain is not None or config.budget() is not None)
            and "states" not in overrides and config.method in method_names()
            and not method_class(config.method).target_over_states):
        # the one-shot form fixes the number of states (1 at init, 2 for omp)
        states = method_class(config.method).one_shot_states
        config = dataclasses.replace(config, states=states or config.states)
    try:
        validate(config)
    except UserError as exc:
        name = getattr(exc, "setting", None)
        if name is None or name in overrides or name not in sources:
            raise
        flag, value = _flag(name), _shown(getattr(config, name))
        raise UserError(f"{exc} — {flag} {value} comes from {sources[name]}, not from a flag "
                        f"you gave: give {flag} to override it") from None
    for name in overrides:
        when = not_in_effect(name, config)
        if when is None:
            continue
        meta = settings()[name]
        if meta.refuse_ignored:
            raise UserError(f"{_flag(name)} {_shown(overrides[name])} would be ignored: it is "
                            f"used only {when}; {meta.ignored_fix}")
        if warn is not None:
            warn(f"{_flag(name)} has no effect in this run: it is used only {when}")
    return config


def _same_dir(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return value if isinstance(value, str) else json.dumps(value)


def not_in_effect(name: str, config: RunConfig) -> str | None:
    """None if setting ``name`` is in effect in ``config``; else when it would be, in words
    ("with --optimizer sgd", "for --method admm")."""
    declared: tuple[Declared, tuple[str, ...]] | None = declared_settings().get(name)
    if declared is not None and config.method not in declared[1]:
        return f"for --method {', '.join(declared[1])}"
    meta = settings()[name]
    if meta.applies is not None and not meta.applies(config):
        return meta.applies_text
    return None


def load_config(path: Path) -> RunConfig:
    """Read a run's config.toml (top-level keys or a ``[run]`` table), each value type-checked."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; pass a config.toml from a run "
                        "directory or one you wrote") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a directory; pass the config.toml inside it "
                        f"(--config {Path(path) / 'config.toml'})") from None
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read ({exc.strerror}); check its "
                        "permissions") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML ({exc}); fix or regenerate it"
                        ) from None
    data = data.get("run", data)
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: [run] must be a table of settings")
    hints = field_types()
    unknown = set(data) - set(hints)
    if unknown:
        raise UserError(f"config file {path} has unknown key(s) {', '.join(sorted(unknown))}; "
                        f"valid keys are the `rsst run` flags with - → _")
    values = {}
    for key, value in data.items():
        try:
            values[key] = coerce(key, value, hints[key])
        except TypeError as exc:
            raise UserError(f"config file {path}: {exc}") from None
    return RunConfig(**values)


#: The first line of every config.toml rsst writes.
CONFIG_HEADER = "# rsst run config: rerun with `rsst run --config FILE`"


def config_toml(config: RunConfig, *, launch: dict[str, Any] | None = None) -> str:
    """``config`` as the text of a config.toml (None values are left out: TOML has no null).

    ``launch`` (e.g. ``{"world_size": 2}``) is recorded in a ``[launch]`` table: how the run was
    started, which `load_config` does not read back (torchrun decides it, not a flag). Written
    with ``tomli-w``, so any string (a Windows path, an emoji) reads back as it was.
    """
    document: dict[str, Any] = {"run": {key: value for key, value in config.to_dict().items()
                                        if value is not None}}
    if launch:
        document["launch"] = dict(launch)
    return f"{CONFIG_HEADER}\n{tomli_w.dumps(document)}"


def save_config(config: RunConfig, path: Path, *, launch: dict[str, Any] | None = None) -> None:
    """Write `config_toml` to ``path`` atomically."""
    atomic_write_text(Path(path), config_toml(config, launch=launch))


def atomic_write_text(path: Path, text: str) -> None:
    atomic.atomic_write_text(path, text)
