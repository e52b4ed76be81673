"""The per-step update of SPEC §5 behind four interchangeable backends, for SGD and AdamW.

- ``triton``: the fused kernel (`rsst_kernels.fused_update` / `fused_adamw`), one pass over the
  flat buffers (CUDA);
- ``compiled``: the same math as one element-wise expression compiled by Inductor
  (`rsst_kernels.compiled_update`): one vectorized C++/OpenMP pass on the CPU. If compiling fails
  (no C++ compiler) it warns once and runs the ``torch`` twin;
- ``torch``: the same math as a handful of vectorized torch ops over the flat buffers;
- ``eager``: the straightforward per-parameter loop with ``torch.optim.SGD`` / ``AdamW`` (the
  oracle).

``auto`` is ``triton`` on CUDA and ``compiled`` on the CPU: the fastest path that works there, by
the update suite of `rsst bench` (bench/RESULTS.md). All agree to float32 rounding and all leave
the gradient zeroed for the next backward. With ``UpdateConfig.rho > 0`` (SGD only) each also
adds the ADMM penalty gradient ρ·(w − a) to the alive anchored elements (code bit `ANCHORED`),
``a`` being ``arena.anchor`` (Z − U of `rsst.methods.admm`).

With AdamW the RSST penalty enters where SPEC §4 puts it for SGD: as the gradient term ``λ·w``
*before* the adaptive scaling (the gradient of ½λ‖w‖² added to the loss, so the optimizer sees the
same objective whatever it is). Adam then normalises it: once the penalty dominates a pending
weight's gradient, the weight shrinks at about ``lr`` per step whatever its size — a steady
drive to zero rather than SGD's proportional decay. Decoupled weight decay (``w ← w − lr·wd·w``)
applies to every alive weight as in ``torch.optim.AdamW``. The moments and the bias-correction
step count reset with each state, as SGD's momentum does.
The functional `step` drives any backend on plain tensors; `make_backend` gives the object whose
``step(arena, lr, t)`` ends every training step. Every arena-level backend implements the one
protocol `UpdateBackend` (defined next to `Arena.step`, which calls it; re-exported here).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from rsst.arena import Arena, UpdateBackend
from rsst.choices import OPTIMIZERS, UPDATE_BACKENDS
from rsst.errors import UserError
from rsst.schedules import lam_at, schedule_code
from rsst_kernels import fused_update, fused_update_reference, triton_available
from rsst_kernels.compiled_update import ADAMW_PASS, SGD_PASS, CompiledPass
from rsst_kernels.fused_adamw import (
    adamw_bias_corrections,
    fused_adamw,
    fused_adamw_reference,
)
from rsst_kernels.masks import ALIVE, ANCHORED, PENDING
from rsst_kernels.scalars import pack, pack_switches

BACKENDS = UPDATE_BACKENDS


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
    optimizer: str = "sgd"  # sgd | adamw (momentum and nesterov are SGD's, betas and eps AdamW's)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    #: ρ of the ADMM penalty ρ/2‖w − a‖² on anchored elements; 0 switches the term off
    rho: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}: choose one of "
                            f"{', '.join(OPTIMIZERS)} (--optimizer)")
        if self.adamw and self.admm:
            raise UserError("the ADMM term (rho > 0) is a term of the SGD update: use "
                            "--optimizer sgd with --method admm")

    @property
    def adamw(self) -> bool:
        return self.optimizer == "adamw"

    @property
    def admm(self) -> bool:
        """Whether the update adds the ADMM term (and reads the anchor buffer)."""
        return self.rho != 0.0

    def lam(self, t: int) -> float:
        return lam_at(self.schedule, t, self.ramp_steps, self.lam_max, self.exponents)

    def scalars(self, lr: float, t: int, first_step: bool, moment_step: int = 1) -> list[float]:
        """Values for the kernel's ``hyper`` tensor, in the order of its `ScalarSlot`.

        ``moment_step``: k, the 1-based step count since the moments were reset (AdamW's bias
        corrections, computed here in float64 like ``torch.optim.AdamW`` does).
        """
        bc1, bc2_sqrt = (adamw_bias_corrections(self.beta1, self.beta2, moment_step)
                         if self.adamw else (1.0, 1.0))
        return pack(lr=lr, momentum=self.momentum, weight_decay=self.weight_decay,
                    lam_max=self.lam_max, exponents=self.exponents, t=t, T=self.ramp_steps,
                    first_step=first_step, rho=self.rho, beta1=self.beta1, beta2=self.beta2,
                    eps=self.eps, bias_correction1=bc1, bias_correction2_sqrt=bc2_sqrt)

    def switch_values(self) -> list[float]:
        """The switches as the compiled pass's ``switches`` tensor holds them (`SwitchSlot`)."""
        return pack_switches(schedule=schedule_code(self.schedule), nesterov=self.nesterov,
                             block_loss_grad=self.block_loss_grad)

    @property
    def switches(self) -> tuple[Hashable, ...]:
        """The values a kernel launch takes as compile-time constants."""
        return (self.optimizer, self.schedule, self.nesterov, self.block_loss_grad, self.admm)


def resolve_backend(name: str, device: torch.device | str) -> str:
    """``auto`` → ``triton`` on CUDA (when Triton is there), else ``compiled``; validates names.

    ``compiled`` is the fastest CPU path the update suite measured (bench/RESULTS.md); where it
    cannot compile it falls back to the ``torch`` twin by itself, with a warning.
    """
    if name == "auto":
        on_gpu = torch.device(device).type == "cuda" and triton_available(device)
        return "triton" if on_gpu else "compiled"
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose auto, {', '.join(BACKENDS)} (--backend)")
    if name == "triton" and not triton_available(device):
        raise UserError(
            f"the triton backend needs a CUDA device (this run is on {device}); "
            "use --backend torch or auto"
        )
    return name


# -- the eager oracle ---------------------------------------------------------------------------
def _penalise(params: Sequence[torch.nn.Parameter], codes: Sequence[torch.Tensor], *,
              lam: float, block_loss_grad: bool, anchors: Sequence[torch.Tensor] | None = None,
              rho: float = 0.0) -> list[torch.Tensor]:
    """Mask and penalise each parameter's gradient in place (the RSST term, then ADMM's
    ρ·(w − a) on alive anchored elements when ``anchors`` and ``rho`` are given); returns the
    alive masks."""
    alive_masks = []
    admm = anchors is not None and rho != 0.0
    for i, (p, code) in enumerate(zip(params, codes, strict=True)):
        alive = (code & ALIVE) != 0
        pending = (code & PENDING) != 0
        grad = p.grad
        grad.masked_fill_(~alive, 0.0)
        penalty = p.detach() * lam
        grad.copy_(torch.where(pending, penalty if block_loss_grad else grad + penalty, grad))
        if admm:
            anchored = alive & ((code & ANCHORED) != 0)
            grad.add_(torch.where(anchored, p.detach() - anchors[i], 0.0), alpha=rho)
        alive_masks.append(alive)
    return alive_masks


def _remask(params: Sequence[torch.nn.Parameter], states: Sequence[Sequence[torch.Tensor]],
            alive_masks: Sequence[torch.Tensor]) -> None:
    """Zero dead weights and optimizer state, zero the gradients."""
    with torch.no_grad():
        for p, state, alive in zip(params, states, alive_masks, strict=True):
            p.masked_fill_(~alive, 0.0)
            for buffer in state:
                buffer.masked_fill_(~alive, 0.0)
            p.grad.zero_()


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
    alive_masks = _penalise(params, codes, lam=lam, block_loss_grad=block_loss_grad,
                            anchors=anchors, rho=rho)
    for p, buf in zip(params, buffers, strict=True):
        if no_momentum:
            with torch.no_grad():
                torch.add(p.grad, p, alpha=settings["weight_decay"], out=buf)  # d = g + wd·w
        elif first_step:
            buf.zero_()
        optimizer.state[p]["momentum_buffer"] = buf
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    _remask(params, [(buf,) for buf in buffers], alive_masks)


def _eager_adamw_update(
    params: Sequence[torch.nn.Parameter],
    moments: Sequence[tuple[torch.Tensor, torch.Tensor]],
    codes: Sequence[torch.Tensor],
    optimizer: torch.optim.AdamW,
    *,
    lr: float,
    lam: float,
    block_loss_grad: bool,
    moment_step: int,
) -> None:
    """`_eager_update` with ``torch.optim.AdamW``: its state is seeded with the given moments
    (updated in place by the single-tensor implementation) and step count ``moment_step − 1``."""
    alive_masks = _penalise(params, codes, lam=lam, block_loss_grad=block_loss_grad)
    for p, (m, v) in zip(params, moments, strict=True):
        optimizer.state[p].update(
            step=torch.tensor(float(moment_step - 1)), exp_avg=m, exp_avg_sq=v)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    _remask(params, moments, alive_masks)


def _sgd(params: list[torch.nn.Parameter], config: UpdateConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        params,
        lr=0.0,
        momentum=config.momentum,
        dampening=0.0,
        nesterov=config.nesterov and config.momentum != 0,  # at μ = 0 Nesterov is plain SGD
        weight_decay=config.weight_decay,
    )


def _adamw(params: list[torch.nn.Parameter], config: UpdateConfig) -> torch.optim.AdamW:
    # foreach=False: the single-tensor path updates the seeded state tensors in place
    return torch.optim.AdamW(params, lr=0.0, betas=(config.beta1, config.beta2), eps=config.eps,
                             weight_decay=config.weight_decay, foreach=False)


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
    optimizer: str = "sgd",
    exp_avg_sq: torch.Tensor | None = None,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    moment_step: int = 1,
    anchor: torch.Tensor | None = None,
    rho: float = 0.0,
) -> float:
    """One update of SPEC §5 on flat tensors, in place; returns the λ used.

    ``w``, ``g``, ``buf``: 1-D float32 of one length; ``code``: 1-D uint8 (bit 0 alive, bit 1
    pending, bit 2 anchored). ``w`` and ``buf`` are updated, ``g`` is left zeroed for the next
    backward. With ``optimizer="adamw"``, ``buf`` is the first moment, ``exp_avg_sq`` the second
    (both updated), ``moment_step`` the 1-based step count of the bias corrections; ``momentum``,
    ``nesterov`` and ``first_step`` are SGD's and ignored. ``anchor`` (1-D float32, same length)
    with ``rho > 0`` adds the ADMM term ρ·(w − anchor) to the gradient of alive anchored
    elements, after the RSST penalty and before weight decay (SGD only); without an anchor
    ``rho`` must stay 0.
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
        optimizer=optimizer,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        rho=rho if anchor is not None else 0.0,
    )
    anchor = anchor if config.admm else None
    code_of_schedule = schedule_code(schedule)
    lam = config.lam(t)
    if config.adamw:
        if exp_avg_sq is None:
            raise ValueError("optimizer='adamw' needs exp_avg_sq (the second moment)")
        if moment_step < 1:
            raise ValueError(f"moment_step counts from 1 (got {moment_step})")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "triton" and not triton_available(w.device):
        raise UserError("the triton backend needs a CUDA device or TRITON_INTERPRET=1")
    moments = (buf, exp_avg_sq) if config.adamw else (buf,)
    if backend in ("triton", "compiled"):
        hyper = torch.tensor(config.scalars(lr, t, first_step, moment_step),
                             dtype=torch.float32).to(w.device)
        if backend == "triton":
            if config.adamw:
                fused_adamw(w, g, buf, exp_avg_sq, code, hyper, schedule=code_of_schedule,
                            block_loss_grad=block_loss_grad)
            else:
                fused_update(w, g, buf, code, hyper, schedule=code_of_schedule,
                             nesterov=nesterov, block_loss_grad=block_loss_grad, anchor=anchor)
            return lam
        switches = torch.tensor(config.switch_values(), dtype=torch.float32).to(w.device)
        if _run_compiled(config, w, g, moments, code, hyper, switches, anchor):
            return lam
        backend = "torch"  # compiling failed (warned once): the twin does the step
    if backend == "torch":
        _twin_update(config, w, g, moments, code, lr=lr, lam=lam, first_step=first_step,
                     moment_step=moment_step, anchor=anchor)
    else:  # eager
        param = torch.nn.Parameter(w)
        param.grad = g
        if config.adamw:
            _eager_adamw_update([param], [(buf, exp_avg_sq)], [code], _adamw([param], config),
                                lr=lr, lam=lam, block_loss_grad=block_loss_grad,
                                moment_step=moment_step)
        else:
            _eager_update([param], [buf], [code], _sgd([param], config), lr=lr, lam=lam,
                          block_loss_grad=block_loss_grad, first_step=first_step,
                          anchors=None if anchor is None else [anchor], rho=config.rho)
    return lam


def _compiled_pass(config: UpdateConfig) -> CompiledPass:
    return ADAMW_PASS if config.adamw else SGD_PASS


def _run_compiled(config: UpdateConfig, w: torch.Tensor, g: torch.Tensor,
                  moments: Sequence[torch.Tensor], code: torch.Tensor, hyper: torch.Tensor,
                  switches: torch.Tensor, anchor: torch.Tensor | None) -> bool:
    """The shared compiled pass of ``config.optimizer``; False when it could not compile.

    The anchor goes in only with the ADMM term on (SGD only): without it the pass is the one
    specialization that reads no anchor."""
    extra = () if anchor is None else (anchor,)
    return _compiled_pass(config)(w, g, *moments, code, hyper, switches, *extra)


def _twin_update(config: UpdateConfig, w: torch.Tensor, g: torch.Tensor,
                 moments: Sequence[torch.Tensor], code: torch.Tensor, *, lr: float, lam: float,
                 first_step: bool, moment_step: int, block_loss_grad: bool | None = None,
                 anchor: torch.Tensor | None = None) -> None:
    """The torch twin of ``config.optimizer`` on flat buffers (``moments``: buf, or m and v;
    ``anchor``: ADMM's, SGD only)."""
    blg = config.block_loss_grad if block_loss_grad is None else block_loss_grad
    if config.adamw:
        m, v = moments
        fused_adamw_reference(w, g, m, v, code, lr=lr, lam=lam, beta1=config.beta1,
                              beta2=config.beta2, eps=config.eps,
                              weight_decay=config.weight_decay, step=moment_step,
                              block_loss_grad=blg)
    else:
        fused_update_reference(w, g, moments[0], code, lr=lr, lam=lam, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.nesterov,
                               block_loss_grad=blg, first_step=first_step, anchor=anchor,
                               rho=config.rho)


# -- arena-level backends -----------------------------------------------------------------------
def _moments(arena: Arena, config: UpdateConfig) -> tuple[torch.Tensor, ...]:
    """The optimizer state buffers of the arena: (momentum,), or AdamW's (m, v)."""
    if config.adamw:
        return (arena.momentum, arena.ensure_second_moment())
    return (arena.momentum,)


class TritonBackend(UpdateBackend):
    """The fused kernel over the whole arena: one launch per step, scalars in a device tensor.

    `prepare` writes this step's scalars (lr, t, first step, AdamW's bias corrections) into
    ``arena.scalars`` from the host, `launch` runs the kernel, which reads only device memory — so
    `launch` can be captured in a CUDA graph and replayed after each `prepare`. Under
    ``torch.compile`` the SGD update goes through the custom op ``torch.ops.rsst.fused_update``
    so a compiled step does not graph-break on the launcher.
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
        if config.adamw:
            arena.ensure_second_moment()
        arena.write_scalars(config.scalars(lr, t, arena.fresh_momentum, arena.moment_steps + 1))
        return config.lam(t)

    def launch(self, arena: Arena) -> None:
        """The kernel over the whole arena with the scalars `prepare` wrote."""
        config = self.config
        code = schedule_code(config.schedule)
        if config.adamw:
            fused_adamw(arena.weight, arena.grad, arena.momentum, arena.ensure_second_moment(),
                        arena.code, arena.scalars, schedule=code,
                        block_loss_grad=config.block_loss_grad)
            return
        args = (arena.weight, arena.grad, arena.momentum, arena.code, arena.scalars)
        anchor = _anchor(arena, config)
        if torch.compiler.is_compiling():
            torch.ops.rsst.fused_update(*args, code, config.nesterov, config.block_loss_grad,
                                        anchor)
            return
        fused_update(*args, schedule=code, nesterov=config.nesterov,
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
    moment_step: int = 1


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
        self._prepared = _HostStep(lr, lam, arena.fresh_momentum, arena.moment_steps + 1)
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
        _twin_update(config, arena.weight, arena.grad, _moments(arena, config), arena.code,
                     lr=prepared.lr, lam=prepared.lam if arena.has_pending else 0.0,
                     first_step=prepared.first_step, moment_step=prepared.moment_step,
                     block_loss_grad=config.block_loss_grad and arena.has_pending,
                     anchor=_anchor(arena, config))


class CompiledBackend(UpdateBackend):
    """The update as one Inductor-compiled pass over the arena (`rsst_kernels.compiled_update`).

    Scalars live in ``arena.scalars`` and the switches in a small tensor, so lr, λ and t change
    without a recompile; the compiled function is shared by every backend of the process. If it
    cannot compile, the first launch warns once and this backend runs the torch twin from then on.
    """

    name = "compiled"
    capturable = False  # the fallback reads host numbers; Inductor graphs are its own business

    def __init__(self, config: UpdateConfig) -> None:
        self._twin = TorchBackend(config)
        self._switches: torch.Tensor | None = None
        self.config = config

    @property
    def config(self) -> UpdateConfig:
        return self._twin.config

    @config.setter
    def config(self, config: UpdateConfig) -> None:
        self._twin.config = config
        self._switches = None

    @property
    def switches(self) -> tuple[Hashable, ...]:
        return self.config.switches

    @property
    def compiled_pass(self) -> CompiledPass:
        """The shared compiled function (its ``compile_seconds``, ``failure``)."""
        return _compiled_pass(self.config)

    def prepare(self, arena: Arena, lr: float, t: int) -> float:
        config = self.config
        if self.compiled_pass.failed:
            return self._twin.prepare(arena, lr, t)
        arena.write_scalars(config.scalars(lr, t, arena.fresh_momentum, arena.moment_steps + 1))
        if self._switches is None or self._switches.device != arena.device:
            self._switches = torch.tensor(config.switch_values(), dtype=torch.float32,
                                          device=arena.device)
        self._twin.prepare(arena, lr, t)  # host numbers, in case the compile fails
        return config.lam(t)

    def launch(self, arena: Arena) -> None:
        config = self.config
        if self.compiled_pass.failed:
            self._twin.launch(arena)
            return
        assert self._switches is not None, "launch needs a prepare() first"
        if _run_compiled(config, arena.weight, arena.grad, _moments(arena, config), arena.code,
                         arena.scalars, self._switches, _anchor(arena, config)):
            self._twin._take_prepared()
            return
        self._twin.launch(arena)


class EagerBackend(_HostScalarsBackend):
    """Per-parameter loop with ``torch.optim.SGD`` / ``AdamW``: the oracle and bench baseline."""

    name = "eager"

    def __init__(self, config: UpdateConfig) -> None:
        super().__init__(config)
        self._arena: Arena | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    @_HostScalarsBackend.config.setter
    def config(self, config: UpdateConfig) -> None:
        self._config = config
        self._optimizer = None  # momentum, Nesterov, weight decay live in the optimizer

    def launch(self, arena: Arena) -> None:
        prepared = self._take_prepared()
        config = self._config
        if self._optimizer is None or self._arena is not arena:
            self._arena = arena
            params = list(arena.params)
            self._optimizer = _adamw(params, config) if config.adamw else _sgd(params, config)
            self._buffers = [arena.view(n, "momentum") for n in arena.names]
            self._codes = [arena.view(n, "code") for n in arena.names]
        if config.adamw:
            arena.ensure_second_moment()
            second = [arena.view(n, "second_moment") for n in arena.names]
            _eager_adamw_update(arena.params, list(zip(self._buffers, second, strict=True)),
                                self._codes, self._optimizer, lr=prepared.lr, lam=prepared.lam,
                                block_loss_grad=config.block_loss_grad,
                                moment_step=prepared.moment_step)
            return
        anchor = _anchor(arena, config)
        _eager_update(
            arena.params,
            self._buffers,
            self._codes,
            self._optimizer,
            lr=prepared.lr,
            lam=prepared.lam,
            block_loss_grad=config.block_loss_grad,
            first_step=prepared.first_step,
            anchors=None if anchor is None else [arena.view(n, "anchor") for n in arena.names],
            rho=config.rho,
        )


_BACKEND_CLASSES = {"triton": TritonBackend, "compiled": CompiledBackend, "torch": TorchBackend,
                    "eager": EagerBackend}


def make_backend(
    name: str, device: torch.device | str, config: UpdateConfig | None = None
) -> TritonBackend | CompiledBackend | TorchBackend | EagerBackend:
    """The arena-level backend ``name`` (``auto`` resolved for ``device``)."""
    return _BACKEND_CLASSES[resolve_backend(name, device)](config or UpdateConfig())


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
