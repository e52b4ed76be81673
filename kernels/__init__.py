"""Triton kernels of rsst, each next to its plain-torch twin (installed as ``rsst_kernels``)."""

from rsst_kernels.fused_update import (
    BYTES_PER_ELEMENT,
    HYPER_SLOTS,
    fused_update,
    fused_update_reference,
    triton_available,
)

__all__ = [
    "BYTES_PER_ELEMENT",
    "HYPER_SLOTS",
    "fused_update",
    "fused_update_reference",
    "triton_available",
]
