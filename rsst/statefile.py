"""A pruning state's files, and the model contract they carry: the one writer and reader.

```
state_XX/
  weights.safetensors    the state's weights (pruned elements zero) + ``<param>.mask`` (uint8),
                         with the metadata below
  state.json             the state's record (accuracies, sparsity, λ, time)
```

The metadata of ``weights.safetensors`` (every value a string, JSON where structured):
``rsst.format_version``; the model contract, `ModelSpec`: ``rsst.arch``, ``rsst.num_classes``,
``rsst.input_size`` (C, H, W), ``rsst.patch_size``, ``rsst.mean``, ``rsst.std``; and the
provenance of the weights: ``rsst.method``, ``rsst.state``, ``rsst.sparsity``, ``rsst.structure``
(alive / total groups per unit), ``rsst.config`` (the run's full config). An export
(`rsst.export`) keeps this layout and adds keys of its own (``rsst.form`` …).

A model built by `rsst.models.create_model` carries its contract as ``model.rsst_spec`` (a
`ModelSpec`, like timm's ``pretrained_cfg``): the file's metadata is written from it and read
back into it, so what a file says about its model is spelled in this module alone. Nothing here
runs code from a file: tensors are safetensors, metadata is parsed as JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsst.atomic import atomic_write, atomic_write_json
from rsst.errors import UserError

__all__ = [
    "FORMAT_VERSION", "MASK_SUFFIX", "STATE_RECORD", "STATE_WEIGHTS", "ModelSpec",
    "accuracy", "finished_states", "json_metadata", "masked_state", "read_file",
    "read_state_record", "save_tensors", "split_masks", "state_dir", "state_metadata",
    "state_records", "state_weights", "write_state",
]

#: Version of the safetensors layout of state files and exports (``rsst.format_version``).
FORMAT_VERSION = 1

STATE_WEIGHTS = "weights.safetensors"
STATE_RECORD = "state.json"
MASK_SUFFIX = ".mask"

# metadata keys
FORMAT_KEY = "rsst.format_version"
ARCH = "rsst.arch"
NUM_CLASSES = "rsst.num_classes"
INPUT_SIZE = "rsst.input_size"
PATCH_SIZE = "rsst.patch_size"
MEAN = "rsst.mean"
STD = "rsst.std"
METHOD = "rsst.method"
STATE = "rsst.state"
SPARSITY = "rsst.sparsity"
STRUCTURE = "rsst.structure"
CONFIG = "rsst.config"
FORM = "rsst.form"

REEXPORT = "re-export it with `rsst export RUN_DIR -o FILE.safetensors`"


# -- the model contract ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """Everything `create_model` needs to rebuild a model around a state_dict."""

    arch: str
    num_classes: int
    input_size: tuple[int, int, int]
    patch_size: int | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def create(self, device: str | torch.device = "cpu") -> nn.Module:
        """A fresh (randomly initialized) model of this spec, built on ``device``."""
        from rsst.models import CIFAR10_MEAN, CIFAR10_STD, create_model

        with torch.device(device):
            return create_model(self.arch, num_classes=self.num_classes,
                                img_size=self.input_size[1], patch_size=self.patch_size,
                                mean=self.mean or CIFAR10_MEAN, std=self.std or CIFAR10_STD)

    def to_metadata(self) -> dict[str, str]:
        return {ARCH: self.arch, NUM_CLASSES: str(self.num_classes),
                INPUT_SIZE: json.dumps(list(self.input_size)),
                PATCH_SIZE: json.dumps(self.patch_size),
                MEAN: json.dumps(list(self.mean)), STD: json.dumps(list(self.std))}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path | str) -> ModelSpec:
        """The spec a file's metadata states; a missing or malformed key is a `UserError`."""
        def bad(key: str) -> UserError:
            return UserError(f"{path}: metadata {key}={meta.get(key)!r} is not valid; {REEXPORT}")

        if ARCH not in meta:
            raise bad(ARCH)
        try:
            num_classes = int(meta[NUM_CLASSES])
        except (KeyError, ValueError):
            raise bad(NUM_CLASSES) from None
        try:
            size = json.loads(meta[INPUT_SIZE])
            input_size = (int(size[0]), int(size[1]), int(size[2]))
        except (KeyError, ValueError, TypeError, IndexError, json.JSONDecodeError):
            raise bad(INPUT_SIZE) from None
        try:
            patch = json.loads(meta.get(PATCH_SIZE, "null"))
            patch_size = None if patch is None else int(patch)
            mean = tuple(float(v) for v in json.loads(meta.get(MEAN, "[]")))
            std = tuple(float(v) for v in json.loads(meta.get(STD, "[]")))
        except (ValueError, TypeError, json.JSONDecodeError):
            raise bad(f"{PATCH_SIZE} / {MEAN} / {STD}") from None
        return cls(meta[ARCH], num_classes, input_size, patch_size, mean, std)

    @classmethod
    def of(cls, model: nn.Module) -> ModelSpec:
        """The spec ``model`` was created with (`create_model` attaches it)."""
        spec = getattr(model, "rsst_spec", None)
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"{type(model).__name__} carries no rsst_spec: build it with "
                            "rsst.models.create_model")
        return spec

    def attach(self, model: nn.Module) -> nn.Module:
        """Set ``model.rsst_spec`` (and the older loose attributes ``rsst_arch``,
        ``rsst_num_classes``, ``rsst_input_size``, ``rsst_patch_size``, read from it)."""
        model.rsst_spec = self
        model.rsst_arch = self.arch
        model.rsst_num_classes = self.num_classes
        model.rsst_input_size = self.input_size
        model.rsst_patch_size = self.patch_size
        return model


# -- names ----------------------------------------------------------------------------------------
def state_dir(run_dir: Path, state: int) -> Path:
    return Path(run_dir) / f"state_{state:02d}"


def state_weights(run_dir: Path, state: int) -> Path:
    return state_dir(run_dir, state) / STATE_WEIGHTS


def finished_states(run_dir: Path) -> list[int]:
    """Indices of the states whose weights file exists, ascending."""
    return sorted(int(p.parent.name[6:]) for p in Path(run_dir).glob(f"state_*/{STATE_WEIGHTS}")
                  if p.parent.name[6:].isdigit())


# -- writing --------------------------------------------------------------------------------------
def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """safetensors, written atomically; tensors are copied to the CPU so no two share storage."""
    from safetensors.torch import save_file

    body = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(body, str(tmp), metadata=metadata))


def state_metadata(spec: ModelSpec, *, method: str, state: int, sparsity: dict[str, Any],
                   structure: dict[str, Any], config: dict[str, Any]) -> dict[str, str]:
    """The metadata of a state's weights file (see the module doc)."""
    return {FORMAT_KEY: str(FORMAT_VERSION), **spec.to_metadata(), METHOD: method,
            STATE: str(state), SPARSITY: json.dumps(sparsity), STRUCTURE: json.dumps(structure),
            CONFIG: json.dumps(config)}


def write_state(run_dir: Path, state: int, weights: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor], metadata: dict[str, str],
                record: dict[str, Any]) -> None:
    """``state_XX/weights.safetensors`` (``weights`` + ``<name>.mask`` per mask), then
    ``state_XX/state.json``: a state whose record exists has its weights."""
    folder = state_dir(run_dir, state)
    folder.mkdir(exist_ok=True)
    tensors = dict(weights)
    tensors.update({f"{name}{MASK_SUFFIX}": mask.to(torch.uint8) for name, mask in masks.items()})
    save_tensors(folder / STATE_WEIGHTS, tensors, metadata)
    atomic_write_json(folder / STATE_RECORD, record)


# -- reading --------------------------------------------------------------------------------------
def read_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of an rsst safetensors file (a state file or an export); every
    problem is a `UserError`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: pass the .safetensors file `rsst export` wrote")
    if not path.is_file():
        raise UserError(f"{path} is not a file: pass the .safetensors file `rsst export` wrote")
    other = {".onnx": "an ONNX file (`--form onnx`): run it with onnxruntime",
             ".pt2": "a torch.export archive (`--form pt2`): load it with "
                     "torch.export.load(FILE).module()"}.get(path.suffix.lower())
    if other:
        raise UserError(f"{path} is {other}; rsst reads the .safetensors files and --form hf "
                        "folders `rsst export` writes")
    try:
        with safe_open(str(path), "pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a readable safetensors file (truncated or corrupt: "
                        f"{detail}); {REEXPORT}") from None
    if FORMAT_KEY not in meta or ARCH not in meta:
        raise UserError(f"{path} is a safetensors file but not an rsst export (no rsst.* "
                        f"metadata); {REEXPORT}")
    try:
        version = int(meta[FORMAT_KEY])
    except ValueError:
        version = -1
    if version < 1 or version > FORMAT_VERSION:
        raise UserError(f"{path} has rsst format version {meta[FORMAT_KEY]!r}; this "
                        f"rsst reads versions 1..{FORMAT_VERSION}: upgrade rsst or {REEXPORT}")
    return tensors, meta


def split_masks(tensors: dict[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state_dict, masks by parameter name) of a file's tensors."""
    state = {k: v for k, v in tensors.items() if not k.endswith(MASK_SUFFIX)}
    masks = {k[: -len(MASK_SUFFIX)]: v for k, v in tensors.items() if k.endswith(MASK_SUFFIX)}
    return state, masks


def masked_state(tensors: dict[str, torch.Tensor], path: Path | str
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state_dict with every mask applied, masks); checks each mask fits its tensor."""
    state, masks = split_masks(tensors)
    for name, mask in masks.items():
        w = state.get(name)
        if w is None or w.shape != mask.shape:
            raise UserError(f"{path}: mask {name}{MASK_SUFFIX} has no tensor of its shape; "
                            f"{REEXPORT}")
        state[name] = w * (mask != 0).to(w.dtype)
    return state, masks


def json_metadata(meta: dict[str, str], key: str, default: Any) -> Any:
    """A JSON-valued metadata entry, ``default`` when absent or malformed."""
    try:
        return json.loads(meta.get(key, ""))
    except json.JSONDecodeError:
        return default


def read_state_record(run_dir: Path, state: int) -> dict[str, Any] | None:
    """A state's record, or None when it is missing or unreadable."""
    try:
        record = json.loads((state_dir(run_dir, state) / STATE_RECORD).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def state_records(run_dir: Path) -> Iterator[dict[str, Any]]:
    """Every readable ``state_XX/state.json`` of a run directory, by folder name."""
    for path in sorted(Path(run_dir).glob(f"state_*/{STATE_RECORD}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict):
            yield record


# -- what a record's accuracies mean --------------------------------------------------------------
def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def accuracy(record: dict[str, Any], split: str, *, before_cut: bool = False) -> float | None:
    """A state's ``split`` ("val" or "test") accuracy of the network its weights file holds
    (after the RSST cut when there was one), or with ``before_cut`` of the trained network just
    before the cut (None for a state without a cut).

    Records written since the keys were made one meaning carry ``val_acc`` / ``test_acc`` (the
    saved network) and ``*_before_cut``; older records carried the pre-cut value in ``val_acc``
    / ``last_test_acc`` and the saved network in ``*_after_cut``. Both are read here.
    """
    if "val_acc_before_cut" in record or "test_acc_before_cut" in record:
        return _finite(record.get(f"{split}_acc_before_cut" if before_cut else f"{split}_acc"))
    # an older record
    cut = f"{split}_acc_after_cut" in record
    last = record.get("val_acc") if split == "val" else record.get(
        "last_test_acc", record.get("test_acc"))
    if before_cut:
        return _finite(last) if cut else None
    return _finite(record.get(f"{split}_acc_after_cut")) if cut else _finite(last)
