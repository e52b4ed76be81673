"""Triton kernels of rsst, each next to its plain-torch twin (installed as ``rsst_kernels``).

The fused SGD update (`fused_update`) and the fused AdamW update (`fused_adamw`), each a Triton
kernel beside its torch twin, and both as one Inductor-compiled CPU pass (`compiled_update`).
The bottom layer: the mask bits (`masks`), the per-step scalar slots (`scalars`) and the λ
formulas (`schedules`) live here, and nothing in this package imports ``rsst``.
"""

import importlib
import sys
import types
from typing import Any

from .masks import ALIVE, ANCHORED, PENDING
from .scalars import HYPER_SLOTS, ScalarSlot
from .schedules import SCHEDULES, lam_of_code, ramp_position

#: Names whose module imports torch and triton, loaded on first use so that the light parts
#: (mask bits, scalar slots, schedule names and formulas) import in milliseconds: the ``rsst``
#: command reads the schedule names for ``--help`` without loading torch.
_LAZY = {
    "ADAMW_BYTES_PER_ELEMENT": "fused_adamw", "fused_adamw": "fused_adamw",
    "fused_adamw_reference": "fused_adamw",
    "BYTES_PER_ELEMENT": "fused_update", "BYTES_PER_ELEMENT_ADMM": "fused_update",
    "bytes_per_element": "fused_update", "fused_update": "fused_update",
    "fused_update_reference": "fused_update", "triton_available": "fused_update",
}


class _Package(types.ModuleType):
    """This package, whose ``fused_update`` / ``fused_adamw`` are the functions even though
    submodules of the same names exist: Python's import system sets a package attribute to a
    submodule when that submodule is first loaded, which would replace the function."""

    def __getattr__(self, name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", self.__name__), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            value = getattr(value, name)  # the submodule just loaded: keep its function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "ADAMW_BYTES_PER_ELEMENT",
    "ALIVE",
    "ANCHORED",
    "BYTES_PER_ELEMENT",
    "BYTES_PER_ELEMENT_ADMM",
    "HYPER_SLOTS",
    "PENDING",
    "SCHEDULES",
    "ScalarSlot",
    "bytes_per_element",
    "fused_adamw",
    "fused_adamw_reference",
    "fused_update",
    "fused_update_reference",
    "lam_of_code",
    "ramp_position",
    "triton_available",
]
