"""Triton kernels of rsst, each next to its plain-torch twin (installed as ``rsst_kernels``).

The fused SGD update (`fused_update`) and the fused AdamW update (`fused_adamw`), each a Triton
kernel beside its torch twin, and both as one Inductor-compiled CPU pass (`compiled_update`).
The bottom layer: the mask bits (`masks`), the per-step scalar slots (`scalars`) and the λ
formulas (`schedules`) live here, and nothing in this package imports ``rsst``.
"""

from .fused_adamw import ADAMW_BYTES_PER_ELEMENT, fused_adamw, fused_adamw_reference
from .fused_update import (
    BYTES_PER_ELEMENT,
    BYTES_PER_ELEMENT_ADMM,
    bytes_per_element,
    fused_update,
    fused_update_reference,
    triton_available,
)
from .masks import ALIVE, ANCHORED, PENDING
from .scalars import HYPER_SLOTS, ScalarSlot
from .schedules import SCHEDULES, lam_of_code, ramp_position

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
