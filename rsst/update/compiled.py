"""The ``compiled`` backend: `rsst_kernels.compiled_update`, one Inductor-compiled pass (CPU).

Where the pass cannot compile (no C++ compiler) it warns once and runs the ``torch`` twin.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from rsst.arena import UpdateBackend
from rsst.update.config import UpdateConfig
from rsst.update.target import UpdateTarget, anchor_of, moments_of
from rsst.update.twin import TorchBackend
from rsst_kernels.compiled_update import ADAMW_PASS, SGD_PASS, CompiledPass


def compiled_pass(config: UpdateConfig) -> CompiledPass:
    """The process-wide compiled pass of ``config.optimizer`` (shared by every backend)."""
    return ADAMW_PASS if config.adamw else SGD_PASS


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
        return compiled_pass(self.config)

    def prepare(self, arena: UpdateTarget, lr: float, t: int) -> float:
        config = self.config
        if self.compiled_pass.failed:
            return self._twin.prepare(arena, lr, t)
        arena.write_scalars(config.scalars(lr, t, arena.fresh_momentum, arena.moment_steps + 1))
        if self._switches is None or self._switches.device != arena.device:
            self._switches = torch.tensor(config.switch_values(), dtype=torch.float32,
                                          device=arena.device)
        self._twin.prepare(arena, lr, t)  # host numbers, in case the compile fails
        return config.lam(t)

    def launch(self, arena: UpdateTarget) -> None:
        config = self.config
        if self.compiled_pass.failed:
            self._twin.launch(arena)
            return
        assert self._switches is not None, "launch needs a prepare() first"
        # the anchor goes in only with the ADMM term on: without it the pass is the one
        # specialization that reads no anchor
        anchor = anchor_of(arena, config.admm)
        extra = () if anchor is None else (anchor,)
        if self.compiled_pass(arena.weight, arena.grad, *moments_of(arena, config.adamw),
                              arena.code, arena.scalars, self._switches, *extra):
            self._twin.take_prepared()
            return
        self._twin.launch(arena)


__all__ = ["CompiledBackend", "compiled_pass"]
