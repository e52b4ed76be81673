"""The per-step update behind four interchangeable backends, for SGD and AdamW.

- ``triton`` (`rsst.update.triton`): the fused kernel (`rsst_kernels.fused_update` /
  `fused_adamw`), one pass over the flat buffers (CUDA);
- ``compiled`` (`rsst.update.compiled`): the same math as one element-wise expression compiled
  by Inductor (`rsst_kernels.compiled_update`): one vectorized C++/OpenMP pass on the CPU. If
  compiling fails (no C++ compiler) it warns once and runs the ``torch`` twin;
- ``torch`` (`rsst.update.twin`): the same math as a handful of vectorized torch ops over the
  flat buffers;
- ``eager`` (`rsst.update.eager`): the straightforward per-parameter loop with
  ``torch.optim.SGD`` / ``AdamW`` (the oracle).

``auto`` is ``triton`` on CUDA and ``compiled`` on the CPU: the fastest path that works there, by
the update suite of `rsst bench` (bench/RESULTS.md). All agree to float32 rounding and all leave
the gradient zeroed for the next backward. With ``UpdateConfig.rho > 0`` (SGD only) each also
adds the ADMM penalty gradient ρ·(w − a) to the alive anchored elements (code bit `ANCHORED`),
``a`` being ``arena.anchor`` (Z − U of `rsst.methods.admm`).

With AdamW the RSST penalty enters where it does for SGD: as the gradient term ``λ·w`` *before*
the adaptive scaling (the gradient of ½λ‖w‖² added to the loss, so the optimizer sees the same
objective whatever it is). Adam then normalises it: once the penalty dominates a pending
weight's gradient, the weight shrinks at about ``lr`` per step whatever its size — a steady
drive to zero rather than SGD's proportional decay. Decoupled weight decay (``w ← w − lr·wd·w``)
applies to every alive weight as in ``torch.optim.AdamW``. The moments and the bias-correction
step count reset with each state, as SGD's momentum does.

Every backend implements the one protocol `UpdateBackend` (defined next to `Arena.step`, which
calls it): ``prepare`` then ``launch`` on an arena. `make_backend` gives the backend object;
the functional `step` drives the same object on plain flat tensors (`rsst.update.dispatch`).
"""

from __future__ import annotations

from rsst.arena import UpdateBackend
from rsst.update.compiled import CompiledBackend
from rsst.update.config import BACKENDS, OPTIMIZERS, UpdateConfig, resolve_backend
from rsst.update.dispatch import make_backend, step
from rsst.update.eager import EagerBackend
from rsst.update.triton import TritonBackend
from rsst.update.twin import TorchBackend

__all__ = [
    "BACKENDS",
    "OPTIMIZERS",
    "CompiledBackend",
    "EagerBackend",
    "TorchBackend",
    "TritonBackend",
    "UpdateBackend",
    "UpdateConfig",
    "make_backend",
    "resolve_backend",
    "step",
]
