"""Triton kernels of rsst, each next to its plain-torch twin (installed as ``rsst_kernels``).

The bottom layer: the mask bits (`masks`), the per-step scalar slots (`scalars`) and the λ
formulas (`schedules`) live here, and nothing in this package imports ``rsst``.
"""

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
    "ALIVE",
    "ANCHORED",
    "BYTES_PER_ELEMENT",
    "BYTES_PER_ELEMENT_ADMM",
    "HYPER_SLOTS",
    "PENDING",
    "SCHEDULES",
    "ScalarSlot",
    "bytes_per_element",
    "fused_update",
    "fused_update_reference",
    "lam_of_code",
    "ramp_position",
    "triton_available",
]
