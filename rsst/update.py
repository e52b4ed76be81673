"""The per-step update of SPEC §5 behind three interchangeable backends.

- ``triton``: the fused kernel (`rsst_kernels.fused_update`), one pass over the flat buffers;
- ``torch``: the same math as a handful of vectorized torch ops over the flat buffers;
- ``eager``: the straightforward per-parameter loop with ``torch.optim.SGD`` (the oracle).

All three agree to float32 rounding and all leave the gradient zeroed for the next backward.
With ``UpdateConfig.rho > 0`` each also adds the ADMM penalty gradient ρ·(w − a) to the alive
anchored elements (code bit `ANCHORED`), ``a`` being ``arena.anchor`` (Z − U of
`rsst.methods.admm`).
The functional `step` drives any backend on plain tensors; `make_backend` gives the object whose
``step(arena, lr, t)`` ends every training step. Every arena-level backend implements the one
protocol `UpdateBackend` (defined next to `Arena.step`, which calls it; re-exported here).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from rsst.arena import Arena, UpdateBackend
from rsst.errors import UserError
from rsst.schedules import lam_at, schedule_code
from rsst_kernels import fused_update, fused_update_reference, triton_available
from rsst_kernels.masks import ALIVE, ANCHORED, PENDING
from rsst_kernels.scalars import pack

BACKENDS: tuple[str, ...] = ("triton", "torch", "eager")


@dataclass(frozen=True)
class UpdateConfig:
    """Hyper-parameters of the update that stay fixed over a ramp window."""

    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    block_loss_grad: bool = False
    schedule: str = "exp_custom_exponents"
    ramp_steps: int = 1
    lam_max: float = 1.0
    exponents: float = 4.0
    #: ρ of the ADMM penalty ρ/2‖w − a‖² on anchored elements; 0 switches the term off
    rho: float = 0.0

    @property
    def admm(self) -> bool:
        """Whether the update adds the ADMM term (and reads the anchor buffer)."""
        return self.rho != 0.0

    def lam(self, t: int) -> float:
        return lam_at(self.schedule, t, self.ramp_steps, self.lam_max, self.exponents)

    def scalars(self, lr: float, t: int, first_step: bool) -> list[float]:
        """Values for the kernel's ``hyper`` tensor, in the order of its `ScalarSlot`."""
        return pack(lr=lr, momentum=self.momentum, weight_decay=self.weight_decay,
                    lam_max=self.lam_max, exponents=self.exponents, t=t, T=self.ramp_steps,
                    first_step=first_step, rho=self.rho)

    @property
    def switches(self) -> tuple[Hashable, ...]:
        """The values a kernel launch takes as compile-time constants."""
        return (self.schedule, self.nesterov, self.block_loss_grad, self.admm)


def resolve_backend(name: str, device: torch.device | str) -> str:
    """``auto`` → ``triton`` on CUDA (when Triton is there), else ``torch``; validates names."""
    if name == "auto":
        on_gpu = torch.device(device).type == "cuda" and triton_available(device)
        return "triton" if on_gpu else "torch"
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose auto, {', '.join(BACKENDS)} (--backend)")
    if name == "triton" and not triton_available(device):
        raise UserError(
            f"the triton backend needs a CUDA device (this run is on {device}); "
            "use --backend torch or auto"
        )
    return name


# -- the eager oracle ---------------------------------------------------------------------------
def _eager_update(
    params: Sequence[torch.nn.Parameter],
    buffers: Sequence[torch.Tensor],
    codes: Sequence[torch.Tensor],
    optimizer: torch.optim.SGD,
    *,
    lr: float,
    lam: float,
    block_loss_grad: bool,
    first_step: bool,
    anchors: Sequence[torch.Tensor] | None = None,
    rho: float = 0.0,
) -> None:
    """Mask and penalise each gradient, ``optimizer.step()``, re-mask, zero the gradients.

    ``buffers`` are the momentum buffers the optimizer must use (seeded into its state, zeroed on
    the first step so that SGD's ``buf·μ + d`` equals its first-step ``buf ← d``). At μ = 0
    ``torch.optim.SGD`` keeps no buffer, so ``buf ← d`` is written here, as SPEC §5 and the
    other backends do (a checkpoint's momentum then does not depend on the backend).
    ``anchors`` (one per parameter) with ``rho`` add the ADMM term ρ·(w − a) to alive
    anchored elements.
    """
    settings = optimizer.param_groups[0]
    no_momentum = settings["momentum"] == 0
    alive_masks = []
    admm = anchors is not None and rho != 0.0
    for i, (p, buf, code) in enumerate(zip(params, buffers, codes, strict=True)):
        alive = (code & ALIVE) != 0
        pending = (code & PENDING) != 0
        grad = p.grad
        grad.masked_fill_(~alive, 0.0)
        penalty = p.detach() * lam
        grad.copy_(torch.where(pending, penalty if block_loss_grad else grad + penalty, grad))
        if admm:
            anchored = alive & ((code & ANCHORED) != 0)
            grad.add_(torch.where(anchored, p.detach() - anchors[i], 0.0), alpha=rho)
        if no_momentum:
            with torch.no_grad():
                torch.add(grad, p, alpha=settings["weight_decay"], out=buf)  # d = g + wd·w
        elif first_step:
            buf.zero_()
        optimizer.state[p]["momentum_buffer"] = buf
        alive_masks.append(alive)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    with torch.no_grad():
        for p, buf, alive in zip(params, buffers, alive_masks, strict=True):
            p.masked_fill_(~alive, 0.0)
            buf.masked_fill_(~alive, 0.0)
            p.grad.zero_()


def _sgd(params: list[torch.nn.Parameter], config: UpdateConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        params,
        lr=0.0,
        momentum=config.momentum,
        dampening=0.0,
        nesterov=config.nesterov and config.momentum != 0,  # at μ = 0 Nesterov is plain SGD
        weight_decay=config.weight_decay,
    )


# -- the functional contract --------------------------------------------------------------------
def step(
    backend: str,
    w: torch.Tensor,
    g: torch.Tensor,
    buf: torch.Tensor,
    code: torch.Tensor,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    block_loss_grad: bool = False,
    first_step: bool = False,
    schedule: str = "exp_custom_exponents",
    t: int = 0,
    T: int = 1,
    lam_max: float = 1.0,
    exponents: float = 4.0,
    anchor: torch.Tensor | None = None,
    rho: float = 0.0,
) -> float:
    """One update of SPEC §5 on flat tensors, in place; returns the λ used.

    ``w``, ``g``, ``buf``: 1-D float32 of one length; ``code``: 1-D uint8 (bit 0 alive, bit 1
    pending, bit 2 anchored). ``w`` and ``buf`` are updated, ``g`` is left zeroed for the next
    backward. ``anchor`` (1-D float32, same length) with ``rho > 0`` adds the ADMM term
    ρ·(w − anchor) to the gradient of alive anchored elements, after the RSST penalty and before
    weight decay; without an anchor ``rho`` must stay 0.
    """
    if rho != 0.0 and anchor is None:
        raise ValueError("rho > 0 needs an anchor (the ADMM term's a = Z − U)")
    config = UpdateConfig(
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov,
        block_loss_grad=block_loss_grad,
        schedule=schedule,
        ramp_steps=T,
        lam_max=lam_max,
        exponents=exponents,
        rho=rho if anchor is not None else 0.0,
    )
    anchor = anchor if config.admm else None
    lam = config.lam(t)
    if backend == "triton":
        if not triton_available(w.device):
            raise UserError("the triton backend needs a CUDA device or TRITON_INTERPRET=1")
        scalars = torch.tensor(config.scalars(lr, t, first_step), dtype=torch.float32)
        fused_update(
            w,
            g,
            buf,
            code,
            scalars.to(w.device),
            schedule=schedule_code(schedule),
            nesterov=nesterov,
            block_loss_grad=block_loss_grad,
            anchor=anchor,
        )
    elif backend == "torch":
        schedule_code(schedule)
        fused_update_reference(
            w,
            g,
            buf,
            code,
            lr=lr,
            lam=lam,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            block_loss_grad=block_loss_grad,
            first_step=first_step,
            anchor=anchor,
            rho=config.rho,
        )
    elif backend == "eager":
        param = torch.nn.Parameter(w)
        param.grad = g
        _eager_update(
            [param],
            [buf],
            [code],
            _sgd([param], config),
            lr=lr,
            lam=lam,
            block_loss_grad=block_loss_grad,
            first_step=first_step,
            anchors=None if anchor is None else [anchor],
            rho=config.rho,
        )
    else:
        raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    return lam


# -- arena-level backends -----------------------------------------------------------------------
class TritonBackend(UpdateBackend):
    """The fused kernel over the whole arena: one launch per step, scalars in a device tensor.

    `prepare` writes this step's scalars (lr, t, first step) into ``arena.scalars`` from the host,
    `launch` runs the kernel, which reads only device memory — so `launch` can be captured in a
    CUDA graph and replayed after each `prepare`. Under ``torch.compile`` it goes through the
    custom op ``torch.ops.rsst.fused_update`` so a compiled step does not graph-break on the
    launcher.
    """

    name = "triton"
    capturable = True

    def __init__(self, config: UpdateConfig) -> None:
        self.config = config

    @property
    def switches(self) -> tuple[Hashable, ...]:
        return self.config.switches

    def prepare(self, arena: Arena, lr: float, t: int) -> float:
        """Write this step's scalars into ``arena.scalars`` (no host sync); returns λ(t)."""
        config = self.config
        arena.write_scalars(config.scalars(lr, t, arena.fresh_momentum))
        return config.lam(t)

    def launch(self, arena: Arena) -> None:
        """The kernel over the whole arena with the scalars `prepare` wrote."""
        config = self.config
        args = (arena.weight, arena.grad, arena.momentum, arena.code, arena.scalars)
        anchor = _anchor(arena, config)
        if torch.compiler.is_compiling():
            torch.ops.rsst.fused_update(*args, schedule_code(config.schedule), config.nesterov,
                                        config.block_loss_grad, anchor)
            return
        fused_update(*args, schedule=schedule_code(config.schedule), nesterov=config.nesterov,
                     block_loss_grad=config.block_loss_grad, anchor=anchor)


def _anchor(arena: Arena, config: UpdateConfig) -> torch.Tensor | None:
    """The arena's ADMM anchor when the config switches the term on (None when off)."""
    if not config.admm:
        return None
    if arena.anchor is None:
        raise RuntimeError("the update's ADMM term is on (rho > 0) but the arena has no anchor: "
                           "Arena.set_anchored allocates it")
    return arena.anchor


@dataclass(frozen=True)
class _HostStep:
    """What `prepare` hands to `launch` in a backend whose update takes Python numbers."""

    lr: float
    lam: float
    first_step: bool


class _HostScalarsBackend(UpdateBackend):
    """A backend whose update takes lr and λ as Python numbers: `prepare` computes them and
    `launch` uses them (not capturable: a captured graph would freeze them)."""

    name: str
    capturable = False

    def __init__(self, config: UpdateConfig) -> None:
        self._config = config
        self._prepared: _HostStep | None = None

    @property
    def config(self) -> UpdateConfig:
        return self._config

    @config.setter
    def config(self, config: UpdateConfig) -> None:
        self._config = config

    @property
    def switches(self) -> tuple[Hashable, ...]:
        return self._config.switches

    def prepare(self, arena: Arena, lr: float, t: int) -> float:
        lam = self._config.lam(t)
        self._prepared = _HostStep(lr, lam, arena.fresh_momentum)
        return lam

    def _take_prepared(self) -> _HostStep:
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            raise RuntimeError(f"{type(self).__name__}.launch needs a prepare() first")
        return prepared


class TorchBackend(_HostScalarsBackend):
    """The kernel's torch twin over the whole arena: a few vectorized ops, no per-layer loop."""

    name = "torch"

    def launch(self, arena: Arena) -> None:
        config, prepared = self._config, self._take_prepared()
        # with nothing pending the penalty terms are no-ops: skip reading the pending bits
        fused_update_reference(
            arena.weight,
            arena.grad,
            arena.momentum,
            arena.code,
            lr=prepared.lr,
            lam=prepared.lam if arena.has_pending else 0.0,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
            block_loss_grad=config.block_loss_grad and arena.has_pending,
            first_step=prepared.first_step,
            anchor=_anchor(arena, config),
            rho=config.rho,
        )


class EagerBackend(_HostScalarsBackend):
    """Per-parameter loop with ``torch.optim.SGD``: the oracle and the bench baseline."""

    name = "eager"

    def __init__(self, config: UpdateConfig) -> None:
        super().__init__(config)
        self._arena: Arena | None = None
        self._optimizer: torch.optim.SGD | None = None

    @_HostScalarsBackend.config.setter
    def config(self, config: UpdateConfig) -> None:
        self._config = config
        self._optimizer = None  # momentum, Nesterov, weight decay live in the optimizer

    def launch(self, arena: Arena) -> None:
        prepared = self._take_prepared()
        if self._optimizer is None or self._arena is not arena:
            self._arena = arena
            self._optimizer = _sgd(list(arena.params), self._config)
            self._buffers = [arena.view(n, "momentum") for n in arena.names]
            self._codes = [arena.view(n, "code") for n in arena.names]
        anchor = _anchor(arena, self._config)
        _eager_update(
            arena.params,
            self._buffers,
            self._codes,
            self._optimizer,
            lr=prepared.lr,
            lam=prepared.lam,
            block_loss_grad=self._config.block_loss_grad,
            first_step=prepared.first_step,
            anchors=None if anchor is None else [arena.view(n, "anchor") for n in arena.names],
            rho=self._config.rho,
        )


_BACKEND_CLASSES = {"triton": TritonBackend, "torch": TorchBackend, "eager": EagerBackend}


def make_backend(
    name: str, device: torch.device | str, config: UpdateConfig | None = None
) -> TritonBackend | TorchBackend | EagerBackend:
    """The arena-level backend ``name`` (``auto`` resolved for ``device``)."""
    return _BACKEND_CLASSES[resolve_backend(name, device)](config or UpdateConfig())


__all__ = [
    "BACKENDS",
    "EagerBackend",
    "TorchBackend",
    "TritonBackend",
    "UpdateBackend",
    "UpdateConfig",
    "make_backend",
    "resolve_backend",
    "step",
]
