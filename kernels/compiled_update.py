"""The fused updates as one compiled pass on the CPU: the kernels' math in torch, `torch.compile`d.

The torch twins (`fused_update_reference`, `fused_adamw_reference`) are a handful of in-place ops,
each streaming the whole arena; on a CPU that is ~10 passes over memory. Written as one
element-wise expression instead and given to Inductor, the same math becomes one vectorized C++
loop (OpenMP over the cores) that reads each buffer once and writes it once — the CPU's
counterpart of the Triton kernel.

Everything that varies between steps or runs is a tensor: the per-step scalars (``hyper``,
`ScalarSlot`) and the switches (``switches``, `SwitchSlot`: schedule, Nesterov, block_loss_grad),
and the length is dynamic — so one compiled function serves every step, every schedule and every
arena (no recompiles as lr, λ or t change). ADMM's ρ·(w − anchor) term is on when an anchor is
passed: one more specialization of the same function (ρ is a ``hyper`` slot). Inductor caches
the generated code on disk, so a second run pays only the trace (seconds), not the C++ compile.

The uint8 code is widened to int32 before its bits are tested: Inductor's CPU vectorizer handled
uint8 masks several times slower than int32 ones when this was written (torch 2.14, x86 AVX2).

Where compiling fails (typically: no working C++ compiler), `CompiledPass` says so in one warning
line and reports the failure to its caller, which runs the torch twin instead.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch

from .masks import ALIVE, ANCHORED, PENDING
from .scalars import ScalarSlot, SwitchSlot
from .schedules import CUBE, E_MINUS_1, EXP, LINEAR, SQUARE


def schedule_lambda(hyper: torch.Tensor, switches: torch.Tensor) -> torch.Tensor:
    """λ(u) of SPEC §4 as a 0-d tensor, for the schedule whose code is in ``switches``."""
    lam_max = hyper[ScalarSlot.LAM_MAX]
    p = hyper[ScalarSlot.EXPONENTS]
    t = hyper[ScalarSlot.STEP]
    window = hyper[ScalarSlot.WINDOW]
    u = torch.clamp((t + 1.0) / torch.clamp(window, min=1.0), max=1.0)
    code = switches[SwitchSlot.SCHEDULE]
    shape = torch.where(
        code == LINEAR, u, torch.where(
            code == SQUARE, u * u, torch.where(
                code == CUBE, u * u * u, torch.where(
                    code == EXP, (torch.exp(u) - 1.0) / E_MINUS_1,
                    (torch.exp(torch.exp(p * torch.log(u))) - 1.0) / E_MINUS_1))))
    return lam_max * shape


def penalised_gradient(w: torch.Tensor, g: torch.Tensor, code: torch.Tensor,
                       hyper: torch.Tensor, switches: torch.Tensor,
                       anchor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``H·g`` plus ``λ·w`` on pending elements — ``λ·w`` alone with block_loss_grad — plus,
    with an ``anchor``, ``ρ·(w − anchor)`` on alive anchored elements; alive).

    The gradient every optimizer of the family steps with. Whether ``anchor`` is None is a trace
    -time branch (Dynamo guards on it): the pass without ADMM never reads an anchor.
    """
    bits = code.to(torch.int32)
    alive = (bits & ALIVE) != 0
    pending = (bits & PENDING) != 0
    lam = schedule_lambda(hyper, switches)
    g = torch.where(alive, g, 0.0)
    penalty = lam * w
    blocked = switches[SwitchSlot.BLOCK_LOSS_GRAD] != 0
    g = torch.where(pending, torch.where(blocked, penalty, g + penalty), g)
    if anchor is not None:
        anchored = (bits & (ALIVE | ANCHORED)) == (ALIVE | ANCHORED)
        g = torch.where(anchored, g + hyper[ScalarSlot.RHO] * (w - anchor), g)
    return g, alive


def sgd_pass(w: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, code: torch.Tensor,
             hyper: torch.Tensor, switches: torch.Tensor,
             anchor: torch.Tensor | None = None) -> None:
    """SPEC §5 in one pass: updates ``w`` and ``buf`` in place, leaves ``g`` zeroed.

    An ``anchor`` switches ADMM's ρ·(w − anchor) term on, as in `fused_update`.
    """
    lr = hyper[ScalarSlot.LR]
    mu = hyper[ScalarSlot.MOMENTUM]
    wd = hyper[ScalarSlot.WEIGHT_DECAY]
    first = hyper[ScalarSlot.FIRST_STEP] != 0
    grad, alive = penalised_gradient(w, g, code, hyper, switches, anchor)
    d = grad + wd * w
    momentum = torch.where(first, d, mu * buf + d)
    step = torch.where(switches[SwitchSlot.NESTEROV] != 0, d + mu * momentum, momentum)
    w.copy_(torch.where(alive, w - lr * step, 0.0))
    buf.copy_(torch.where(alive, momentum, 0.0))
    g.zero_()


def adamw_pass(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
               code: torch.Tensor, hyper: torch.Tensor, switches: torch.Tensor) -> None:
    """The AdamW update of `fused_adamw` in one pass: ``w``, ``m``, ``v`` in place, ``g`` zeroed."""
    lr = hyper[ScalarSlot.LR]
    wd = hyper[ScalarSlot.WEIGHT_DECAY]
    beta1 = hyper[ScalarSlot.BETA1]
    beta2 = hyper[ScalarSlot.BETA2]
    eps = hyper[ScalarSlot.EPS]
    step_size = lr / hyper[ScalarSlot.BIAS_CORRECTION1]
    bc2_sqrt = hyper[ScalarSlot.BIAS_CORRECTION2_SQRT]
    grad, alive = penalised_gradient(w, g, code, hyper, switches)
    m_new = m + (1.0 - beta1) * (grad - m)
    v_new = beta2 * v + (1.0 - beta2) * grad * grad
    decayed = w * (1.0 - lr * wd)
    w_new = decayed - step_size * m_new / (torch.sqrt(v_new) / bc2_sqrt + eps)
    w.copy_(torch.where(alive, w_new, 0.0))
    m.copy_(torch.where(alive, m_new, 0.0))
    v.copy_(torch.where(alive, v_new, 0.0))
    g.zero_()


class CompiledPass:
    """One of the passes above, compiled on first use; falls back (once, with a warning line).

    ``__call__`` returns True when the compiled pass ran, False when compiling failed (then the
    caller runs its torch twin; the warning names the cause). ``compile_seconds`` is the first
    call's wall time — the compile cost, or the on-disk cache's load time on a second run.
    """

    def __init__(self, fn: Callable[..., None], *,
                 compiler: Callable[..., Callable[..., None]] | None = None) -> None:
        self.fn = fn
        self._compiler = compiler or _inductor
        self._compiled: Callable[..., None] | None = None
        self.failure: str | None = None
        self.compile_seconds: float | None = None

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def __call__(self, *tensors: torch.Tensor | None) -> bool:
        if self.failure is not None:
            return False
        if tensors[0].numel() == 0:
            return True
        if self._compiled is not None:
            self._compiled(*tensors)
            return True
        start = time.perf_counter()
        try:
            compiled = self._compiler(self.fn)
            compiled(*tensors)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: use the twin
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            self.failure = f"{type(exc).__name__}: {reason}"
            warnings.warn(f"compiled CPU update unavailable ({self.failure}); "
                          "using the torch twin", RuntimeWarning, stacklevel=2)
            return False
        self.compile_seconds = time.perf_counter() - start
        self._compiled = compiled
        return True


def _inductor(fn: Callable[..., None]) -> Callable[..., None]:
    return torch.compile(fn, fullgraph=True, dynamic=True)


#: One compiled pass per process for each optimizer: every backend shares them (and so the
#: compile cost; Dynamo keeps a specialization per device and dtype under the same object).
SGD_PASS = CompiledPass(sgd_pass)
ADAMW_PASS = CompiledPass(adamw_pass)

__all__ = [
    "ADAMW_PASS",
    "SGD_PASS",
    "CompiledPass",
    "adamw_pass",
    "penalised_gradient",
    "schedule_lambda",
    "sgd_pass",
]
