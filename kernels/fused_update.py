"""The fused per-step update of SPEC §5 as one Triton kernel, and its plain-torch twin.

One pass over the flat buffers does, per element: mask the gradient with the hard mask, add the
RSST penalty λ·w for pending elements (λ computed in-kernel from the step), optionally the ADMM
penalty gradient ρ·(w − a) for anchored elements (``a`` = Z − U, a flat buffer of its own), weight
decay, the SGD momentum step (first step, Nesterov), the weight update, the re-mask of weight and
momentum, and the zeroing of the gradient for the next backward.

Per-step scalars come in a small float32 device tensor (``hyper``, one named `ScalarSlot` each),
never as Python floats, so one compiled kernel serves every step and the launch can be captured in
a CUDA graph. Only the schedule and the three boolean switches (Nesterov, block_loss_grad, ADMM)
are compile-time constants. The mask bits, the slots and the λ formulas come from this package's
`masks`, `scalars` and `schedules`.
"""

from __future__ import annotations

import os

import torch

from .masks import ALIVE, ANCHORED, PENDING
from .scalars import HYPER_SLOTS, ScalarSlot, unpack
from .schedules import (
    CUBE,
    E_MINUS_1,
    EXP,
    LINEAR,
    SQUARE,
    lam_of_code,
    ramp_position,
)

try:  # triton ships for Linux only; the torch twin covers everything else.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on platforms without triton
    triton = None
    tl = None

#: The mask bits under the names this module used before `masks` held them.
ALIVE_BIT, PENDING_BIT = ALIVE, PENDING

#: Bytes the kernel moves per element: reads w, g, momentum (3 × 4) and the uint8 code (1);
#: writes w, momentum and the zeroed g (3 × 4).
BYTES_PER_ELEMENT = 25
#: With the ADMM term on, the kernel also reads the float32 anchor (+4 B).
BYTES_PER_ELEMENT_ADMM = BYTES_PER_ELEMENT + 4


def bytes_per_element(admm: bool = False) -> int:
    """Bytes the fused update moves per element, with or without the ADMM anchor read."""
    return BYTES_PER_ELEMENT_ADMM if admm else BYTES_PER_ELEMENT


def triton_available(device: torch.device | str) -> bool:
    """True when the Triton kernel can run on tensors of ``device`` (CUDA, or the interpreter)."""
    if triton is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return torch.device(device).type == "cuda"


if triton is not None:
    # A @triton.jit function may read only globals that are constexpr: the shared constants,
    # restated as such (same values, so kernel and torch twin cannot drift apart).
    _ALIVE = tl.constexpr(ALIVE)
    _PENDING = tl.constexpr(PENDING)
    _ALIVE_ANCHORED = tl.constexpr(ALIVE | ANCHORED)
    _LINEAR = tl.constexpr(LINEAR)
    _SQUARE = tl.constexpr(SQUARE)
    _CUBE = tl.constexpr(CUBE)
    _EXP = tl.constexpr(EXP)
    _E_MINUS_1 = tl.constexpr(E_MINUS_1)
    _LR = tl.constexpr(int(ScalarSlot.LR))
    _MOMENTUM = tl.constexpr(int(ScalarSlot.MOMENTUM))
    _WEIGHT_DECAY = tl.constexpr(int(ScalarSlot.WEIGHT_DECAY))
    _LAM_MAX = tl.constexpr(int(ScalarSlot.LAM_MAX))
    _EXPONENTS = tl.constexpr(int(ScalarSlot.EXPONENTS))
    _STEP = tl.constexpr(int(ScalarSlot.STEP))
    _WINDOW = tl.constexpr(int(ScalarSlot.WINDOW))
    _FIRST_STEP = tl.constexpr(int(ScalarSlot.FIRST_STEP))
    _RHO = tl.constexpr(int(ScalarSlot.RHO))

    @triton.jit
    def schedule_lambda(hyper_ptr, SCHEDULE: tl.constexpr):
        """λ(u), u = (t + 1) / T: the closed forms of schedules.lam_of_code (SPEC §4)."""
        lam_max = tl.load(hyper_ptr + _LAM_MAX)
        p = tl.load(hyper_ptr + _EXPONENTS)
        t = tl.load(hyper_ptr + _STEP)
        T = tl.load(hyper_ptr + _WINDOW)
        u = tl.minimum((t + 1.0) / tl.maximum(T, 1.0), 1.0)
        if SCHEDULE == _LINEAR:
            shape = u
        elif SCHEDULE == _SQUARE:
            shape = u * u
        elif SCHEDULE == _CUBE:
            shape = u * u * u
        elif SCHEDULE == _EXP:
            shape = (tl.exp(u) - 1.0) / _E_MINUS_1
        else:  # EXP_CUSTOM_EXPONENTS: e^(u^p), u^p as e^(p·ln u)
            shape = (tl.exp(tl.exp(p * tl.log(u))) - 1.0) / _E_MINUS_1
        return lam_max * shape

    @triton.jit
    def penalised_gradient(g, w, code, lam, hyper_ptr, anchor_ptr, offs, in_range,
                           BLOCK_LOSS_GRAD: tl.constexpr, ADMM: tl.constexpr):
        """The gradient every optimizer of the family steps with (SPEC §5, first two lines).

        ``H·g``, then ``+ λ·w`` on pending elements (``λ·w`` alone with block_loss_grad), then
        with the ADMM switch ``+ ρ·(w − a)`` on alive anchored elements (``a`` read from
        ``anchor_ptr``, ρ from the ``RHO`` slot; neither is read without the switch).
        """
        alive = (code & _ALIVE) != 0
        pending = (code & _PENDING) != 0
        g = tl.where(alive, g, 0.0)
        if BLOCK_LOSS_GRAD:
            g = tl.where(pending, lam * w, g)
        else:
            g = tl.where(pending, g + lam * w, g)
        if ADMM:  # the anchor load is masked by range only (not by the bit): it stays 128-bit
            rho = tl.load(hyper_ptr + _RHO)
            anchored = (code & _ALIVE_ANCHORED) == _ALIVE_ANCHORED
            a = tl.load(anchor_ptr + offs, mask=in_range, other=0.0)
            g = tl.where(anchored, g + rho * (w - a), g)
        return g

    @triton.jit
    def _fused_update_kernel(
        w_ptr,
        g_ptr,
        buf_ptr,
        code_ptr,
        hyper_ptr,
        anchor_ptr,
        n,
        SCHEDULE: tl.constexpr,
        NESTEROV: tl.constexpr,
        BLOCK_LOSS_GRAD: tl.constexpr,
        ADMM: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        in_range = offs < n

        lr = tl.load(hyper_ptr + _LR)
        mu = tl.load(hyper_ptr + _MOMENTUM)
        wd = tl.load(hyper_ptr + _WEIGHT_DECAY)
        first = tl.load(hyper_ptr + _FIRST_STEP)
        lam = schedule_lambda(hyper_ptr, SCHEDULE)

        w = tl.load(w_ptr + offs, mask=in_range, other=0.0)
        g = tl.load(g_ptr + offs, mask=in_range, other=0.0)
        buf = tl.load(buf_ptr + offs, mask=in_range, other=0.0)
        code = tl.load(code_ptr + offs, mask=in_range, other=0)
        alive = (code & _ALIVE) != 0

        g = penalised_gradient(g, w, code, lam, hyper_ptr, anchor_ptr, offs, in_range,
                               BLOCK_LOSS_GRAD, ADMM)
        d = g + wd * w
        buf = tl.where(first != 0.0, d, mu * buf + d)
        if NESTEROV:
            step = d + mu * buf
        else:
            step = buf
        w = tl.where(alive, w - lr * step, 0.0)
        buf = tl.where(alive, buf, 0.0)

        tl.store(w_ptr + offs, w, mask=in_range)
        tl.store(buf_ptr + offs, buf, mask=in_range)
        tl.store(g_ptr + offs, tl.zeros_like(g), mask=in_range)


def fused_update(
    w: torch.Tensor,
    g: torch.Tensor,
    buf: torch.Tensor,
    code: torch.Tensor,
    hyper: torch.Tensor,
    *,
    schedule: int,
    nesterov: bool = False,
    block_loss_grad: bool = False,
    anchor: torch.Tensor | None = None,
    block: int = 4096,
    num_warps: int = 8,
) -> None:
    """Launch the fused update over flat buffers, in place; ``g`` is left zeroed.

    ``w``, ``g``, ``buf`` are contiguous 1-D float32, ``code`` 1-D uint8 of the same length
    (bits `ALIVE`, `PENDING`, `ANCHORED`), ``hyper`` float32 with the slots of `ScalarSlot` on its
    device. ``schedule`` is the integer code of a schedule (its index in `SCHEDULES`). An
    ``anchor`` (contiguous float32, same length) switches the ADMM term on: alive anchored
    elements get ρ·(w − anchor) added to their gradient, ρ from the ``RHO`` slot.
    """
    if triton is None:
        raise RuntimeError("triton is not installed: use the 'torch' backend")
    n = w.numel()
    if not (g.numel() == buf.numel() == code.numel() == n):
        raise ValueError("w, g, buf and code must have the same number of elements")
    if w.dtype != torch.float32 or g.dtype != torch.float32 or buf.dtype != torch.float32:
        raise TypeError("w, g and buf must be float32")
    if code.dtype != torch.uint8 or hyper.dtype != torch.float32:
        raise TypeError("code must be uint8 and hyper float32")
    if not (w.is_contiguous() and g.is_contiguous() and buf.is_contiguous()):
        raise ValueError("w, g and buf must be contiguous")
    if anchor is not None and (anchor.numel() != n or anchor.dtype != torch.float32
                               or not anchor.is_contiguous()):
        raise ValueError("anchor must be contiguous float32 with as many elements as w")
    if n == 0:
        return
    grid = (triton.cdiv(n, block),)
    _fused_update_kernel[grid](
        w,
        g,
        buf,
        code,
        hyper,
        w if anchor is None else anchor,  # never read without the ADMM switch
        n,
        SCHEDULE=schedule,
        NESTEROV=nesterov,
        BLOCK_LOSS_GRAD=block_loss_grad,
        ADMM=anchor is not None,
        BLOCK=block,
        num_warps=num_warps,
    )


def penalise_gradient_(w: torch.Tensor, g: torch.Tensor, code: torch.Tensor, *, lam: float,
                       block_loss_grad: bool, anchor: torch.Tensor | None = None,
                       rho: float = 0.0) -> torch.Tensor:
    """``g ← H·g``, then ``+ λ·w`` on pending elements (``λ·w`` alone with block_loss_grad), then
    ``+ ρ·(w − anchor)`` on alive anchored elements, in place: the gradient every torch twin
    steps with. Returns the dead mask (for the re-mask).

    With ``lam == 0`` and no ``block_loss_grad`` the pending bit changes nothing and is not read;
    without an ``anchor`` (or with ``rho == 0``) the ADMM term is off.
    """
    dead = (code & ALIVE) == 0
    g.masked_fill_(dead, 0.0)
    if lam != 0.0 or block_loss_grad:
        pending = (code & PENDING) != 0
        if block_loss_grad:
            g.masked_fill_(pending, 0.0)
        g.addcmul_(w, pending.to(w.dtype), value=lam)
    if anchor is not None and rho != 0.0:
        anchored = (code & (ALIVE | ANCHORED)) == (ALIVE | ANCHORED)
        g.add_(torch.sub(w, anchor).masked_fill_(~anchored, 0.0), alpha=rho)
    return dead


def fused_update_reference(
    w: torch.Tensor,
    g: torch.Tensor,
    buf: torch.Tensor,
    code: torch.Tensor,
    *,
    lr: float,
    lam: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    block_loss_grad: bool = False,
    first_step: bool = False,
    anchor: torch.Tensor | None = None,
    rho: float = 0.0,
) -> None:
    """The same math as `fused_update` in a handful of in-place torch ops (the kernel's twin).

    Works on any device and any dtype the caller chooses (float64 for references); λ and ρ come
    in as numbers because torch ops need no in-kernel schedule. ``g`` serves as the scratch buffer
    for d and the step (so the ops make no full-size float temporaries besides the ADMM term's)
    and is left zeroed. With ``lam == 0`` and no ``block_loss_grad`` the pending bit changes
    nothing and is not read; without an ``anchor`` (or with ``rho == 0``) the ADMM term is off.
    """
    dead = penalise_gradient_(w, g, code, lam=lam, block_loss_grad=block_loss_grad,
                              anchor=anchor, rho=rho)
    if weight_decay != 0.0:
        g.add_(w, alpha=weight_decay)  # g now holds d
    if first_step:
        buf.copy_(g)
    else:
        buf.mul_(momentum).add_(g)
    if nesterov:
        step = g.add_(buf, alpha=momentum)
    else:
        step = buf
    w.add_(step, alpha=-lr)
    w.masked_fill_(dead, 0.0)
    buf.masked_fill_(dead, 0.0)
    g.zero_()


# -- torch.compile compatibility ----------------------------------------------------------------
# The launcher above is plain Python around a Triton launch, which Dynamo cannot trace: a compiled
# training step that calls it would graph-break there. Registered as a custom op with a fake
# implementation, the update is one opaque node in the compiled graph (mutating w, g and buf in
# place, as the functionalization pass needs to know), so `torch.compile(fullgraph=True)` works.
@torch.library.custom_op("rsst::fused_update", mutates_args=("w", "g", "buf"))
def fused_update_op(
    w: torch.Tensor,
    g: torch.Tensor,
    buf: torch.Tensor,
    code: torch.Tensor,
    hyper: torch.Tensor,
    schedule: int,
    nesterov: bool,
    block_loss_grad: bool,
    anchor: torch.Tensor | None = None,
) -> None:
    """`fused_update` as the custom op ``torch.ops.rsst.fused_update`` (same arguments).

    Where Triton runs (CUDA, or the interpreter) it launches the kernel (λ stays in-kernel: no
    host sync, graph capturable). Elsewhere it runs the torch twin, with λ computed on the host
    from ``hyper``, which lives on the CPU there, so reading it costs no device sync.
    """
    if triton_available(w.device):
        fused_update(w, g, buf, code, hyper, schedule=schedule, nesterov=nesterov,
                     block_loss_grad=block_loss_grad, anchor=anchor)
        return
    values = unpack(hyper.detach().to("cpu", torch.float64).tolist())
    lam_value = lam_of_code(schedule, ramp_position(int(values["t"]), int(values["T"])),
                            values["lam_max"], values["exponents"])
    fused_update_reference(
        w, g, buf, code, lr=values["lr"], lam=lam_value, momentum=values["momentum"],
        weight_decay=values["weight_decay"], nesterov=nesterov, block_loss_grad=block_loss_grad,
        first_step=values["first_step"] != 0.0, anchor=anchor, rho=values.get("rho", 0.0),
    )


@fused_update_op.register_fake
def _fused_update_fake(
    w: torch.Tensor,
    g: torch.Tensor,
    buf: torch.Tensor,
    code: torch.Tensor,
    hyper: torch.Tensor,
    schedule: int,
    nesterov: bool,
    block_loss_grad: bool,
    anchor: torch.Tensor | None = None,
) -> None:
    """Shapes only: the op returns nothing and mutates its inputs in place."""
    return None


__all__ = [
    "ALIVE_BIT",
    "BYTES_PER_ELEMENT",
    "BYTES_PER_ELEMENT_ADMM",
    "HYPER_SLOTS",
    "PENDING_BIT",
    "bytes_per_element",
    "fused_update",
    "fused_update_op",
    "fused_update_reference",
    "penalise_gradient_",
    "triton_available",
]
