"""``--pretrained PATH``: initialize a created model from a local weights file, safely.

Read with ``safetensors`` (``.safetensors``) or ``torch.load(weights_only=True)`` (anything
else: a torch/timm checkpoint, optionally nested under ``state_dict`` / ``model`` and with a
``module.`` prefix from DataParallel), so nothing in the file runs code; nothing is downloaded.
The file must hold every parameter and buffer of the model with the same shape; the input
normalization's ``mean``/``std`` may be absent (the model keeps its own), and a checkpoint of the
bare timm network (keys without rsst's ``net.`` prefix) loads into rsst's wrapper.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from rsst.errors import UserError
from rsst.models.base import Normalize

_NESTED = ("state_dict", "model", "model_state_dict")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--pretrained {path}: no such file; pass a local .safetensors or "
                        ".pt/.pth checkpoint")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise UserError(f"--pretrained {path} cannot be read as weights "
                        f"({str(exc).splitlines()[0][:160]}); pass a .safetensors file or a "
                        "torch state_dict saved with torch.save") from None
    for key in _NESTED:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"--pretrained {path} holds no state_dict of tensors; save one with "
                        "torch.save(model.state_dict(), PATH) or safetensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Copy the file's tensors into ``model`` (in place: an arena built later sees them)."""
    tensors = read_weights(Path(path))
    own = model.state_dict()
    if own and all(k.startswith("net.") for k in own if not _is_normalize(model, k)) \
            and not any(k.startswith("net.") for k in tensors):
        tensors = {f"net.{k}": v for k, v in tensors.items()}  # a bare timm checkpoint
    optional = {k for k in own if _is_normalize(model, k)}
    missing = sorted(set(own) - set(tensors) - optional)
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} of another shape (e.g. {k}: file "
                        f"{tuple(tensors[k].shape)}, model {tuple(own[k].shape)})")
    if problems:
        raise UserError(f"--pretrained {path} does not fit --arch {getattr(model, 'rsst_arch', '')}"
                        f" with this dataset's classes and image size: {'; '.join(problems)}")
    with torch.no_grad():
        for key, value in tensors.items():
            own[key].copy_(value.to(own[key].dtype))


def _is_normalize(model: nn.Module, key: str) -> bool:
    prefix, _, leaf = key.rpartition(".")
    module = model.get_submodule(prefix) if prefix else model
    return isinstance(module, Normalize) and leaf in ("mean", "std")
