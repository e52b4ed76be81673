"""One dataclass for a run: defaults, presets, TOML load/save and validation a user understands."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rsst.errors import UserError
from rsst.schedules import SCHEDULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

METHODS = ("rsst", "refill", "imp")
CRITERIA = ("remain", "magnitude", "l1", "l2", "saliency")
STRUCTURES = ("auto", "channel", "head", "neuron", "head+neuron", "none")
REG_RAMPS = ("state", "epoch")
LR_SCHEDULES = ("multistep", "cosine", "constant")
OPTIMIZERS = ("sgd", "adamw")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


@dataclass
class RunConfig:
    """Everything that defines a run. Field names are the CLI flags with ``-`` → ``_``."""

    # what
    method: str = "rsst"
    arch: str = "resnet20"
    dataset: str = "synthetic"
    data_dir: str | None = None
    cache_dir: str | None = None
    # pruning
    states: int = 3
    rate: float = 0.3
    criteria: str = "l1"
    criteria_batches: int = 1
    fillback_rate: float = 0.0
    structure: str = "auto"
    rewind: str = "init"
    # RSST penalty
    schedule: str = "x"
    reg_granularity: float = 2.0
    exponents: float = 4.0
    reg_ramp: str = "state"
    block_loss_grad: bool = False
    # training
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    optimizer: str = "sgd"  # sgd | adamw (the fused update implements both)
    beta1: float = 0.9  # AdamW's β1 (momentum and nesterov are SGD's)
    beta2: float = 0.999  # AdamW's β2
    eps: float = 1e-8  # AdamW's ε
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    label_smoothing: float = 0.0
    # data
    train_subset: int | None = None
    val_split: int | None = None
    eval_batch_size: int = 512
    seed: int = 0
    # execution
    backend: str = "auto"
    device: str = "auto"
    compile: bool = False
    amp: bool = True
    memory_format: str = "auto"  # auto: channels_last for CNNs
    cuda_graph: bool = False  # capture each training step as a CUDA graph (triton backend)
    # model shape (ViTs; CNNs ignore patch_size)
    img_size: int | None = None
    patch_size: int | None = None
    # output
    out: str | None = None
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rewind_epoch(self) -> int | None:
        """K of ``epoch:K``, 0 for ``init``, None for ``none``."""
        if self.rewind == "none":
            return None
        if self.rewind == "init":
            return 0
        return int(self.rewind.split(":", 1)[1])


#: Research recipes (SPEC §8). Names say dataset, arch and whose recipe.
PRESETS: dict[str, dict[str, Any]] = {
    # Structure-LTH / OpenLTH CIFAR recipe
    "cifar10-resnet20": dict(
        dataset="cifar10", arch="resnet20", states=20, rate=0.2, criteria="l1", epochs=160,
        batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_schedule="multistep",
        milestones=[80, 120], gamma=0.1, warmup_epochs=0.0, rewind="epoch:8",
    ),
    "cifar100-resnet20": dict(
        dataset="cifar100", arch="resnet20", states=20, rate=0.2, criteria="l1", epochs=160,
        batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_schedule="multistep",
        milestones=[80, 120], gamma=0.1, warmup_epochs=0.0, rewind="epoch:8",
    ),
    "cifar10-resnet18": dict(
        dataset="cifar10", arch="resnet18", states=20, rate=0.2, criteria="l1", epochs=160,
        batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_schedule="multistep",
        milestones=[80, 120], gamma=0.1, warmup_epochs=0.0, rewind="epoch:8",
    ),
    # from-scratch CIFAR ViTs: SGD (the optimizer the fused update implements) with Nesterov,
    # warm-up + cosine and label smoothing; heads and MLP neurons are the groups
    "cifar10-vit_tiny": dict(
        dataset="cifar10", arch="vit_tiny", patch_size=4, structure="head+neuron", states=10,
        rate=0.2, criteria="l1", epochs=100, batch_size=128, lr=0.05, momentum=0.9,
        nesterov=True, weight_decay=1e-4, lr_schedule="cosine", warmup_epochs=5.0,
        label_smoothing=0.1, rewind="init",
    ),
    "cifar10-vit_small": dict(
        dataset="cifar10", arch="vit_small", patch_size=4, structure="head+neuron", states=10,
        rate=0.2, criteria="l1", epochs=100, batch_size=128, lr=0.05, momentum=0.9,
        nesterov=True, weight_decay=1e-4, lr_schedule="cosine", warmup_epochs=5.0,
        label_smoothing=0.1, rewind="init",
    ),
    # DeiT-style AdamW for the same ViTs: lr 1e-3 scaled by batch/512, weight decay 0.05,
    # warm-up + cosine, label smoothing 0.1
    "cifar10-vit_tiny-adamw": dict(
        dataset="cifar10", arch="vit_tiny", patch_size=4, structure="head+neuron", states=10,
        rate=0.2, criteria="l1", epochs=100, batch_size=128, optimizer="adamw",
        lr=1e-3 * 128 / 512, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05,
        lr_schedule="cosine", warmup_epochs=5.0, label_smoothing=0.1, rewind="init",
    ),
    "cifar10-vit_small-adamw": dict(
        dataset="cifar10", arch="vit_small", patch_size=4, structure="head+neuron", states=10,
        rate=0.2, criteria="l1", epochs=100, batch_size=128, optimizer="adamw",
        lr=1e-3 * 128 / 512, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05,
        lr_schedule="cosine", warmup_epochs=5.0, label_smoothing=0.1, rewind="init",
    ),
    # the research code's own recipe (main_imp_fillback.py defaults)
    "cifar10-resnet20-research": dict(
        dataset="cifar10", arch="resnet20", states=20, rate=0.2, criteria="l1", epochs=182,
        batch_size=128, lr=0.01, momentum=0.9, weight_decay=1e-4, lr_schedule="multistep",
        milestones=[91, 136], gamma=0.1, warmup_epochs=20.0, rewind="init",
        schedule="exp_custom_exponents", reg_granularity=1.0, exponents=4.0,
    ),
}


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise UserError(f"unknown {name.replace('_', '-')} {value!r}: choose one of "
                        f"{', '.join(options)} (--{name.replace('_', '-')})")


def validate(config: RunConfig) -> RunConfig:
    """Raise `UserError` naming the flag and its valid range for any bad value."""
    _choice("method", config.method, METHODS)
    _choice("criteria", config.criteria, CRITERIA)
    _choice("structure", config.structure, STRUCTURES)
    _choice("schedule", config.schedule, SCHEDULES)
    _choice("reg_ramp", config.reg_ramp, REG_RAMPS)
    _choice("lr_schedule", config.lr_schedule, LR_SCHEDULES)
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    _choice("backend", config.backend, ("auto", "triton", "compiled", "torch", "eager"))
    _choice("device", config.device, ("auto", "cpu", "cuda"))
    _choice("memory_format", config.memory_format, MEMORY_FORMATS)
    if not 0.0 < config.rate < 1.0:
        raise UserError(f"--rate {config.rate} is outside (0, 1): it is the fraction of the "
                        "remaining weights pruned per state, e.g. 0.2")
    if not 0.0 <= config.fillback_rate <= 1.0:
        raise UserError(f"--fillback-rate {config.fillback_rate} is outside [0, 1]")
    positive = {"states": config.states, "epochs": config.epochs, "batch_size": config.batch_size,
                "criteria_batches": config.criteria_batches,
                "eval_batch_size": config.eval_batch_size}
    for name, value in positive.items():
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise UserError(f"--label-smoothing must be in [0, 1) (got {config.label_smoothing})")
    if config.momentum < 0 or config.weight_decay < 0:
        raise UserError("--momentum and --weight-decay must be ≥ 0")
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(config, name) < 1.0:
            raise UserError(f"--{name} must be in [0, 1) (got {getattr(config, name)})")
    if config.eps <= 0:
        raise UserError(f"--eps must be positive (got {config.eps})")
    if config.lr <= 0:
        raise UserError(f"--lr must be positive (got {config.lr})")
    if config.reg_granularity < 0:
        raise UserError(f"--reg-granularity must be ≥ 0 (got {config.reg_granularity})")
    if config.exponents <= 0:
        raise UserError(f"--exponents must be positive (got {config.exponents})")
    if config.train_subset is not None and config.train_subset < 1:
        raise UserError(f"--train-subset must be at least 1 (got {config.train_subset})")
    if config.val_split is not None and config.val_split < 0:
        raise UserError(f"--val-split must be ≥ 0 (got {config.val_split})")
    if not (config.rewind in ("init", "none") or config.rewind.startswith("epoch:")):
        raise UserError(f"--rewind {config.rewind!r}: use init, none or epoch:K (e.g. epoch:8)")
    if config.rewind.startswith("epoch:"):
        k = config.rewind.split(":", 1)[1]
        if not k.isdigit() or not 0 <= int(k) <= config.epochs:
            raise UserError(f"--rewind {config.rewind!r}: K must be an integer epoch of state 0 "
                            f"between 0 and --epochs ({config.epochs})")
    if config.dataset != "synthetic" and config.data_dir is None:
        raise UserError(f"--dataset {config.dataset} reads files: pass --data-dir DIR "
                        "(or use --dataset synthetic, which needs none)")
    return config


def apply_preset(config: RunConfig, name: str) -> RunConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(config, **PRESETS[name], preset=name)


def build_config(
    *, config_file: Path | None = None, preset: str | None = None, overrides: dict[str, Any]
) -> RunConfig:
    """Defaults ← config file ← preset ← flags given on the command line, then validated."""
    config = RunConfig()
    if config_file is not None:
        config = load_config(config_file)
    if preset is not None:
        config = apply_preset(config, preset)
    known = {f.name for f in fields(RunConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(sorted(unknown))}")
    return validate(dataclasses.replace(config, **overrides))


def load_config(path: Path) -> RunConfig:
    """Read a run's config.toml (top-level keys or a ``[run]`` table)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; pass a config.toml from a run "
                        "directory or one you wrote") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML ({exc}); fix or regenerate it"
                        ) from None
    data = data.get("run", data)
    known = {f.name for f in fields(RunConfig)}
    unknown = set(data) - known
    if unknown:
        raise UserError(f"config file {path} has unknown key(s) {', '.join(sorted(unknown))}; "
                        f"valid keys are the `rsst run` flags with - → _")
    try:
        return RunConfig(**data)
    except TypeError as exc:  # pragma: no cover - dataclass rejects nothing else here
        raise UserError(f"config file {path}: {exc}") from None


def _toml_value(value: Any) -> str:
    """A TOML literal for the value types a `RunConfig` holds (JSON strings are TOML strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def save_config(config: RunConfig, path: Path) -> None:
    """Write config.toml atomically (None values are left out: TOML has no null).

    The config is one flat table of scalars and lists, so it is written directly rather than
    through a TOML writer package (one dependency fewer on machines that have only torch's
    stack); tests read it back with ``tomllib``.
    """
    lines = ["# rsst run config: rerun with `rsst run --config FILE`", "[run]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in config.to_dict().items()
              if value is not None]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
