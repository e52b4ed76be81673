"""Data-parallel training under ``torchrun``: the process group, and the few collectives a run
makes (one all-reduce of the flat grad buffer per step, sums at evaluation, broadcasts of the
arena at state boundaries).

``torchrun --nproc-per-node N -m rsst run ...`` starts N processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; `start` joins that group (NCCL on
CUDA with ``cuda:LOCAL_RANK``, gloo on the CPU) with a timeout on every collective, so a rank
that dies or hangs ends the job with one line instead of a hang. Without torchrun (or with one
process) nothing is initialized and every method of `World` is a no-op, so a single process runs
exactly the code and numbers it always did.

Every rank holds the whole arena (weights, masks, λ, momentum). Per step each rank computes the
gradient of its share of the global batch, weighted 1/N (equal shares: see
`rsst.data.Batches`), and ONE all-reduce (sum) of the flat grad buffer makes them the gradient of
the global batch on every rank; the fused update then runs identically everywhere. Pruning
decisions are computed on every rank from the same calibration batches and then broadcast from
rank 0 (`World.sync_arena`), so masks can never diverge, whatever the floating-point order of
a device.
"""

from __future__ import annotations

import copy
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from rsst.errors import UserError

if TYPE_CHECKING:
    from rsst.arena import Arena

__all__ = ["SINGLE", "World", "launched", "resolve_device", "shard_range", "start", "stop",
           "sync_batchnorm_twin"]

#: Default seconds a collective may wait for the other ranks (`--dist-timeout`).
DEFAULT_TIMEOUT_S = 600.0


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names: ``auto`` is CUDA when visible, else the CPU; ``cuda``
    without a visible CUDA device is a `UserError`. The one resolver rsst uses (run, eval,
    bench, env)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is visible; "
                        "use --device cpu or auto")
    return torch.device(name)


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its env)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run: ``rank`` of ``size`` (1: a single process)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # -- collectives (no-ops for a single process) ---------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """``fn(*args, **kwargs)``; a failed or timed-out collective becomes one line."""
        try:
            fn(*args, **kwargs)
        except (RuntimeError, dist.DistError) as exc:  # DistError is a RuntimeError in torch 2.x
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise _own(UserError(
                f"rank {self.rank}: {what} failed: another rank died or did not answer within "
                f"--dist-timeout {self.timeout_s:g} s ({first}); see that rank's error above"
            )) from None

    def average_grad(self, flat_grad: torch.Tensor) -> None:
        """Sum the ranks' flat grad buffers in place (each was weighted 1/N by its loss).

        One contiguous all-reduce: the arena makes every gradient one buffer, so there is no
        bucketing to do. Asynchronous on the device with NCCL; no host sync is added.
        """
        if self.distributed:
            self._call("the gradient all-reduce", dist.all_reduce, flat_grad, op=dist.ReduceOp.SUM)

    def sum_(self, values: torch.Tensor) -> torch.Tensor:
        """Sum ``values`` over the ranks, in place (evaluation counts and sums)."""
        if self.distributed:
            self._call("a metric all-reduce", dist.all_reduce, values, op=dist.ReduceOp.SUM)
        return values

    def broadcast_(self, tensor: torch.Tensor) -> None:
        """Overwrite ``tensor`` on every rank with rank 0's."""
        if self.distributed:
            self._call("a broadcast from rank 0", dist.broadcast, tensor, src=0)

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's module buffers (BatchNorm running statistics) everywhere: each rank's
        statistics come from its own shard unless --sync-bn; rank 0's are the run's, as with
        DDP's ``broadcast_buffers``."""
        if self.distributed:
            for buffer in model.buffers():
                self.broadcast_(buffer)

    def sync_arena(self, arena: Arena, model: nn.Module) -> None:
        """Rank 0's weights, masks (code) and optimizer state on every rank, and its module buffers.

        Called at start and after every pruning decision: masks are identical on every rank by
        construction, whatever a scorer does with floating-point order or randomness.
        """
        if not self.distributed:
            return
        for buffer in (arena.weight, arena.momentum, arena.second_moment, arena.code,
                       arena.anchor):
            # None unless used: the second moment is AdamW's (allocated alike on every rank),
            # the anchor ADMM's
            if buffer is not None:
                self.broadcast_(buffer)
        arena.has_pending = bool(arena.pending.any())  # a state boundary: one host read
        self.sync_buffers(model)

    def settle(self, error: UserError | None) -> None:
        """After a step that may fail on any rank (checks, data, model): all ranks stop together.

        The lowest failing rank raises its error (one line); the others raise a quiet
        `UserError` (``quiet = True``: the CLI prints nothing for it). No-op if nobody failed.
        """
        if not self.distributed:
            if error is not None:
                raise error
            return
        device = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" \
            else torch.device("cpu")
        failed = torch.zeros(self.size, dtype=torch.int32, device=device)
        failed[self.rank] = int(error is not None)
        self.sum_(failed)
        ranks = [r for r, f in enumerate(failed.tolist()) if f]
        if not ranks:
            return
        if error is None:
            error = UserError(f"rank {ranks[0]} failed (its error is above)")
        if ranks[0] == self.rank:
            raise _own(error)
        error.quiet = True  # type: ignore[attr-defined]
        raise error


def _own(error: UserError) -> UserError:
    """Mark ``error`` as this rank's own, so it is printed on any rank (`rsst.errors.is_shown`)."""
    error.every_rank = True  # type: ignore[attr-defined]
    return error


#: The world of a process not started by torchrun.
SINGLE = World()


def start(device_name: str, timeout_s: float = DEFAULT_TIMEOUT_S
          ) -> tuple[World, torch.device | None]:
    """Join torchrun's process group, if this process was started by it.

    Returns the world and, under torchrun, the device this rank trains on (``cuda:LOCAL_RANK``
    with NCCL, or the CPU with gloo); ``(SINGLE, None)`` otherwise, and for one process.
    """
    if not launched():
        return SINGLE, None
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA device is visible; use "
                            "--device cpu (gloo) or auto")
        if local_rank >= torch.cuda.device_count():
            raise _own(UserError(f"rank {rank}: LOCAL_RANK {local_rank} but only "
                            f"{torch.cuda.device_count()} CUDA device(s) visible: start at most "
                            "that many processes per node (--nproc-per-node)"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    world = World(rank, size, local_rank, timeout_s)
    if size == 1:
        return SINGLE if rank == 0 else world, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": device} if use_cuda else {}))
    return world, device


def stop(world: World) -> None:
    """Leave the process group (at the end of a run, also after an error)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard_range(n: int, world: World) -> slice:
    """Rank ``world.rank``'s contiguous part of ``n`` items (sizes differ by at most one)."""
    lo = n * world.rank // world.size
    hi = n * (world.rank + 1) // world.size
    return slice(lo, hi)


def sync_batchnorm_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose BatchNorm layers are `nn.SyncBatchNorm` (statistics over the
    global batch), sharing every parameter and buffer with ``model``.

    Training runs through the twin; everything else (structure, compaction, export, pruning
    scores) keeps seeing plain ``BatchNorm2d`` layers in ``model``. Torch's SyncBatchNorm
    synchronizes on CUDA only. Call `train()`/`eval()` on the twin itself.
    """
    twin = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    originals = dict(model.named_modules())
    for name, module in twin.named_modules():
        source = originals[name]
        for key in list(module._parameters):
            if module._parameters[key] is not None:
                module._parameters[key] = source._parameters[key]
        for key in list(module._buffers):
            if module._buffers[key] is not None:
                module._buffers[key] = source._buffers[key]
    return twin
