"""The bits of the uint8 code buffer: what the update kernels read for every element.

One byte per element carries both masks of SPEC §1, so the fused update reads one byte instead of
two bool tensors: bit 0 is the hard mask H (the element is alive), bit 1 the pending set P (the
element is alive and receives the RSST penalty), bit 2 the ADMM scope A (the element is alive and
pulled towards the ADMM anchor). Padding and pruned elements have code 0.
"""

from __future__ import annotations

#: Bit 0: the element is alive (in the hard mask H); dead elements stay exactly zero.
ALIVE = 1
#: Bit 1: the element is pending (in P): its gradient gets the penalty term λ·w.
PENDING = 2
#: Bit 2: the element is anchored (in A): with the ADMM term on, its gradient gets ρ·(w − a).
ANCHORED = 4

__all__ = ["ALIVE", "ANCHORED", "PENDING"]
