"""The fused AdamW update as one Triton kernel, and its plain-torch twin.

Per element, one pass: the same masked, penalised gradient as the SGD kernel (``H·g``, then
``+ λ·w`` for pending elements, λ in-kernel from the step — the RSST penalty enters as a gradient
term *before* the adaptive scaling, as SPEC §4 states it for SGD), then torch's AdamW:

    m ← m + (1 − β1)·(g − m)          v ← β2·v + (1 − β2)·g²
    w ← w·(1 − lr·wd)                  (decoupled weight decay)
    w ← w − lr/(1 − β1^k) · m / (√v / √(1 − β2^k) + ε)

with ``k`` the steps since the moments were last reset (every state starts fresh moments, like
SGD's momentum), then ``w``, ``m`` and ``v`` re-masked so dead elements stay exactly zero, and the
gradient zeroed for the next backward. The bias corrections are per-step scalars the host computes
in float64 (``hyper`` slots), like ``torch.optim.AdamW`` does.

Bytes per element: reads w, g, m, v (4 × 4) and the code (1); writes w, m, v and the zeroed g
(4 × 4): `ADAMW_BYTES_PER_ELEMENT` = 33.
"""

from __future__ import annotations

import torch

from .fused_update import penalise_gradient_, triton_available
from .scalars import ScalarSlot

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on platforms without triton
    triton = None
    tl = None

#: Bytes the AdamW kernel moves per element (see the module docstring).
ADAMW_BYTES_PER_ELEMENT = 33

if triton is not None:
    from .fused_update import _ALIVE, penalised_gradient, schedule_lambda

    _LR = tl.constexpr(int(ScalarSlot.LR))
    _WEIGHT_DECAY = tl.constexpr(int(ScalarSlot.WEIGHT_DECAY))
    _BETA1 = tl.constexpr(int(ScalarSlot.BETA1))
    _BETA2 = tl.constexpr(int(ScalarSlot.BETA2))
    _EPS = tl.constexpr(int(ScalarSlot.EPS))
    _BIAS_CORRECTION1 = tl.constexpr(int(ScalarSlot.BIAS_CORRECTION1))
    _BIAS_CORRECTION2_SQRT = tl.constexpr(int(ScalarSlot.BIAS_CORRECTION2_SQRT))

    @triton.jit
    def _fused_adamw_kernel(
        w_ptr,
        g_ptr,
        m_ptr,
        v_ptr,
        code_ptr,
        hyper_ptr,
        n,
        SCHEDULE: tl.constexpr,
        BLOCK_LOSS_GRAD: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        in_range = offs < n

        lr = tl.load(hyper_ptr + _LR)
        wd = tl.load(hyper_ptr + _WEIGHT_DECAY)
        beta1 = tl.load(hyper_ptr + _BETA1)
        beta2 = tl.load(hyper_ptr + _BETA2)
        eps = tl.load(hyper_ptr + _EPS)
        step_size = lr / tl.load(hyper_ptr + _BIAS_CORRECTION1)
        bc2_sqrt = tl.load(hyper_ptr + _BIAS_CORRECTION2_SQRT)
        lam = schedule_lambda(hyper_ptr, SCHEDULE)

        w = tl.load(w_ptr + offs, mask=in_range, other=0.0)
        g = tl.load(g_ptr + offs, mask=in_range, other=0.0)
        m = tl.load(m_ptr + offs, mask=in_range, other=0.0)
        v = tl.load(v_ptr + offs, mask=in_range, other=0.0)
        code = tl.load(code_ptr + offs, mask=in_range, other=0)
        alive = (code & _ALIVE) != 0

        # No ADMM term here (ADMM runs with SGD only): the anchor pointer is never read.
        g = penalised_gradient(g, w, code, lam, hyper_ptr, w_ptr, offs, in_range,
                               BLOCK_LOSS_GRAD, False)
        m = m + (1.0 - beta1) * (g - m)
        v = beta2 * v + (1.0 - beta2) * g * g
        w = w * (1.0 - lr * wd)
        w = w - step_size * m / (tl.sqrt(v) / bc2_sqrt + eps)

        tl.store(w_ptr + offs, tl.where(alive, w, 0.0), mask=in_range)
        tl.store(m_ptr + offs, tl.where(alive, m, 0.0), mask=in_range)
        tl.store(v_ptr + offs, tl.where(alive, v, 0.0), mask=in_range)
        tl.store(g_ptr + offs, tl.zeros_like(g), mask=in_range)


def fused_adamw(
    w: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    code: torch.Tensor,
    hyper: torch.Tensor,
    *,
    schedule: int,
    block_loss_grad: bool = False,
    block: int = 4096,
    num_warps: int = 8,
) -> None:
    """Launch the fused AdamW update over flat buffers, in place; ``g`` is left zeroed.

    ``w``, ``g``, ``m``, ``v`` contiguous 1-D float32 of one length, ``code`` uint8 (bits
    `ALIVE`, `PENDING`), ``hyper`` float32 with the slots of `ScalarSlot` on their device.
    """
    if triton is None:
        raise RuntimeError("triton is not installed: use the 'torch' backend")
    n = w.numel()
    tensors = (w, g, m, v)
    if any(t.numel() != n for t in tensors) or code.numel() != n:
        raise ValueError("w, g, m, v and code must have the same number of elements")
    if any(t.dtype != torch.float32 for t in tensors) or hyper.dtype != torch.float32:
        raise TypeError("w, g, m, v and hyper must be float32")
    if code.dtype != torch.uint8:
        raise TypeError("code must be uint8")
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("w, g, m and v must be contiguous")
    if n == 0:
        return
    _fused_adamw_kernel[(triton.cdiv(n, block),)](
        w, g, m, v, code, hyper, n,
        SCHEDULE=schedule, BLOCK_LOSS_GRAD=block_loss_grad, BLOCK=block, num_warps=num_warps,
    )


def fused_adamw_reference(
    w: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    code: torch.Tensor,
    *,
    lr: float,
    lam: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    step: int = 1,
    block_loss_grad: bool = False,
) -> None:
    """The same math as `fused_adamw` in a handful of in-place torch ops (the kernel's twin).

    ``step`` is k, the 1-based count of steps since the moments were reset. Any device and
    dtype; ``g`` is the scratch buffer for the denominator and is left zeroed.
    """
    dead = penalise_gradient_(w, g, code, lam=lam, block_loss_grad=block_loss_grad)
    m.lerp_(g, 1.0 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = (1.0 - beta2**step) ** 0.5
    w.mul_(1.0 - lr * weight_decay)
    denom = torch.sqrt(v, out=g).div_(bias_correction2_sqrt).add_(eps)
    w.addcdiv_(m, denom, value=-lr / bias_correction1)
    w.masked_fill_(dead, 0.0)
    m.masked_fill_(dead, 0.0)
    v.masked_fill_(dead, 0.0)
    g.zero_()


def adamw_bias_corrections(beta1: float, beta2: float, step: int) -> tuple[float, float]:
    """(1 − β1^k, √(1 − β2^k)) for step ``k`` (1-based), in float64 as torch's AdamW has them."""
    return 1.0 - beta1**step, (1.0 - beta2**step) ** 0.5


__all__ = [
    "ADAMW_BYTES_PER_ELEMENT",
    "adamw_bias_corrections",
    "fused_adamw",
    "fused_adamw_reference",
    "triton_available",
]
