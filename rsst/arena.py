"""The flat parameter arena: every trainable parameter is a view into one contiguous buffer.

One fp32 weight buffer, one grad buffer (its views are the parameters' ``.grad``), one momentum
buffer (AdamW: the first moment; a second-moment buffer is added only when AdamW asks for it,
`ensure_second_moment`) and one uint8 code buffer (bit 0 alive in the hard mask H, bit 1
pending in P, bit 2 anchored by ADMM), all of the same length (ADMM alone adds a flat anchor,
`set_anchored`), so the per-step update is one pass over four flat tensors instead of a loop
over layers. Offsets are aligned to `ALIGN` elements; padding elements are dead (code 0) and stay
0.

With ``channels_last=True`` every 4-D (conv) weight is laid out NHWC inside its slot — the flat
slice holds the ``[O, kh, kw, I]`` order and the parameter is a channels_last-strided view of it —
so cuDNN's NHWC kernels run on the arena's own memory without a per-step layout conversion. The
element-wise update does not care about order; an output channel is still one contiguous range.
Checkpoints (`state_dict`) store every buffer in the canonical row-major order of each parameter,
so a run saved with one layout resumes with the other.

Traps it guards: ``model.to(...)`` / a memory-format change after the arena is built silently
replaces parameter storage, and ``zero_grad(set_to_none=True)`` drops the grad views.
`Arena.verify` detects both with a clear error; the arena owns zeroing (`Arena.zero_grad`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from rsst_kernels.masks import ALIVE, ANCHORED, PENDING
from rsst_kernels.scalars import ScalarSlot

ALIGN = 16


class ArenaError(RuntimeError):
    """A parameter or gradient no longer lives in the arena (a bug in the calling code)."""


@runtime_checkable
class UpdateBackend(Protocol):
    """One update of every element of the arena per training step (SPEC §5): the one protocol
    of the update backends (`rsst.update`), of `Arena.step` and of the engine.

    A step is two halves so that the device half can be captured in a CUDA graph: `prepare` does
    the host work (λ(t), this step's scalars) and returns λ; `launch` runs the element-wise update
    with what `prepare` set up and leaves the gradient zeroed. ``capturable``: `launch` reads its
    per-step values from device memory only (``arena.scalars``), so a captured launch stays right
    when replayed after each `prepare`. `switches`: what a launch bakes in besides addresses (a
    captured graph is valid while they hold). Subclasses inherit `step`.
    """

    name: str
    capturable: bool

    @property
    def switches(self) -> tuple[Hashable, ...]: ...

    def prepare(self, arena: Arena, lr: float, t: int) -> float: ...

    def launch(self, arena: Arena) -> None: ...

    def step(self, arena: Arena, lr: float, t: int) -> float:
        """`prepare` then `launch`; returns λ(t). `Arena.step` calls this."""
        lam = self.prepare(arena, lr, t)
        self.launch(arena)
        return lam


@dataclass(frozen=True)
class Slot:
    """Where one parameter lives in the flat buffers."""

    name: str
    offset: int
    numel: int
    shape: tuple[int, ...]
    channels_last: bool = False

    @property
    def stop(self) -> int:
        return self.offset + self.numel

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def shaped(self, flat: torch.Tensor) -> torch.Tensor:
        """This slot of ``flat`` as a parameter-shaped view (NHWC when so laid out)."""
        part = flat[self.offset : self.stop]
        if self.channels_last:
            o, i, h, w = self.shape
            return part.view(o, h, w, i).permute(0, 3, 1, 2)
        return part.view(self.shape)


def _aligned(n: int, align: int) -> int:
    return (n + align - 1) // align * align


class Arena:
    """Flat buffers over a model's trainable parameters, built once."""

    def __init__(self, model: nn.Module, *, align: int = ALIGN,
                 channels_last: bool = False) -> None:
        named: list[tuple[str, nn.Parameter]] = []
        seen: set[int] = set()
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                named.append((name, p))
        if not named:
            raise ArenaError("the model has no trainable parameters")
        device = named[0][1].device
        for name, p in named:
            if p.device != device:
                raise ArenaError(f"parameter {name} is on {p.device}, others on {device}")
            if p.dtype != torch.float32:
                raise ArenaError(f"parameter {name} is {p.dtype}: the arena holds fp32 weights")

        slots: list[Slot] = []
        offset = 0
        for name, p in named:
            nhwc = channels_last and p.dim() == 4
            slots.append(Slot(name, offset, p.numel(), tuple(p.shape), nhwc))
            offset = _aligned(offset + p.numel(), align)
        self.numel = offset
        self.device = device
        self.slots: dict[str, Slot] = {s.name: s for s in slots}
        self.weight = torch.zeros(offset, dtype=torch.float32, device=device)
        self.grad = torch.zeros_like(self.weight)
        self.momentum = torch.zeros_like(self.weight)
        self.code = torch.zeros(offset, dtype=torch.uint8, device=device)
        self.scalars = torch.zeros(len(ScalarSlot), dtype=torch.float32, device=device)
        self.params: list[nn.Parameter] = [p for _, p in named]
        self.names: list[str] = [n for n, _ in named]
        with torch.no_grad():
            for slot, p in zip(slots, self.params, strict=True):
                view = slot.shaped(self.weight)
                view.copy_(p)
                p.data = view
                p.grad = slot.shaped(self.grad)
                self.code[slot.offset : slot.stop] = ALIVE
        self._padding = self.code == 0  # fixed by the layout: every parameter starts alive
        self._pointers = [(p, p.data_ptr(), p.grad.data_ptr()) for p in self.params]
        self.fresh_momentum = True
        self.has_pending = False
        #: AdamW's second moment, allocated on first use (SGD runs never pay for it)
        self.second_moment: torch.Tensor | None = None
        #: optimizer steps since the state was last reset (AdamW's bias-correction count k − 1)
        self.moment_steps = 0
        #: ADMM's flat anchor a = Z − U (`rsst.methods.admm`); allocated by `set_anchored` only
        self.anchor: torch.Tensor | None = None

    @property
    def channels_last(self) -> bool:
        """Whether any parameter is laid out NHWC (inputs should then be channels_last too)."""
        return any(slot.channels_last for slot in self.slots.values())

    # -- views ---------------------------------------------------------------------------
    def view(self, name: str, buffer: str = "weight") -> torch.Tensor:
        """The parameter-shaped view of ``buffer`` (weight, grad, momentum, code) for ``name``."""
        return self.slots[name].shaped(getattr(self, buffer))

    def items(self) -> Iterator[tuple[Slot, nn.Parameter]]:
        for name, p in zip(self.names, self.params, strict=True):
            yield self.slots[name], p

    def element_mask(self, names: list[str]) -> torch.Tensor:
        """A flat bool mask selecting every element of the named parameters."""
        mask = torch.zeros(self.numel, dtype=torch.bool, device=self.device)
        for name in names:
            slot = self.slots[name]
            mask[slot.offset : slot.stop] = True
        return mask

    def padding_mask(self) -> torch.Tensor:
        """A flat bool mask of the alignment padding (elements that belong to no parameter)."""
        return self._padding

    # -- masks ---------------------------------------------------------------------------
    @property
    def hard_mask(self) -> torch.Tensor:
        """Flat bool H (padding is dead)."""
        return (self.code & ALIVE) != 0

    @property
    def pending(self) -> torch.Tensor:
        """Flat bool P."""
        return (self.code & PENDING) != 0

    def set_masks(self, hard_mask: torch.Tensor, pending: torch.Tensor | None = None) -> None:
        """Install H and P (P is restricted to H) and zero what H kills in weights and momentum.

        Called at state boundaries, so the one host read (whether P is empty) is harmless.
        """
        hard = hard_mask.to(device=self.device, dtype=torch.bool) & ~self.padding_mask()
        code = hard.to(torch.uint8) * ALIVE
        if pending is not None:
            pend = pending.to(device=self.device, dtype=torch.bool) & hard
            code |= pend.to(torch.uint8) * PENDING
            self.has_pending = bool(pend.any())
        else:
            self.has_pending = False
        self.code.copy_(code)
        self.apply_hard_mask()

    def anchor_buffer(self) -> torch.Tensor:
        """The flat ADMM anchor, allocated (zero) on first use and kept at the same address
        (a captured CUDA graph reads it)."""
        if self.anchor is None:
            self.anchor = torch.zeros_like(self.weight)
        return self.anchor

    def set_anchored(self, scope: torch.Tensor) -> torch.Tensor:
        """Mark the alive elements of ``scope`` as anchored (ADMM's A), clearing the bit
        elsewhere; returns `anchor_buffer`. `set_masks` clears the bit (a new mask means a new
        ADMM problem)."""
        inside = scope.to(device=self.device, dtype=torch.bool) & self.hard_mask
        self.code.copy_((self.code & (0xFF ^ ANCHORED)) | inside.to(torch.uint8) * ANCHORED)
        return self.anchor_buffer()

    def apply_hard_mask(self) -> None:
        """Zero weights, grads and momentum of elements dead in H."""
        dead = ~self.hard_mask
        self.weight.masked_fill_(dead, 0.0)
        self.grad.masked_fill_(dead, 0.0)
        self.momentum.masked_fill_(dead, 0.0)
        if self.second_moment is not None:
            self.second_moment.masked_fill_(dead, 0.0)

    # -- training ------------------------------------------------------------------------
    def reset_momentum(self) -> None:
        """Fresh optimizer state: the next step takes ``buf ← d`` (torch SGD's first step)."""
        self.momentum.zero_()
        if self.second_moment is not None:
            self.second_moment.zero_()
        self.fresh_momentum = True
        self.moment_steps = 0

    def ensure_second_moment(self) -> torch.Tensor:
        """AdamW's second-moment buffer (zeros, like the arena's other buffers), made once."""
        if self.second_moment is None:
            self.second_moment = torch.zeros_like(self.weight)
        return self.second_moment

    def zero_grad(self) -> None:
        """Zero the flat grad buffer; never ``zero_grad(set_to_none=True)`` on an arena model."""
        self.grad.zero_()

    def write_scalars(self, values: list[float]) -> None:
        """Copy per-step scalars into ``self.scalars`` without a host sync."""
        host = torch.tensor(values, dtype=torch.float32, pin_memory=self.device.type == "cuda")
        self.scalars.copy_(host, non_blocking=True)

    def step(self, backend: UpdateBackend, lr: float, t: int) -> float:
        """One update of every element with ``backend``; returns the λ it used."""
        if self.fresh_momentum:
            self.verify()
        lam = backend.step(self, lr, t)
        self.fresh_momentum = False
        self.moment_steps += 1
        return lam

    def verify(self) -> None:
        """Raise `ArenaError` if a parameter or its gradient no longer lives in the arena."""
        for (p, w_ptr, g_ptr), name in zip(self._pointers, self.names, strict=True):
            if p.data_ptr() != w_ptr or not p.is_contiguous(
                    memory_format=self.slots[name].memory_format):
                raise ArenaError(
                    f"parameter {name} no longer lives in the arena: the model was moved or "
                    "converted (.to(), .cuda(), a memory format) after the arena was built; "
                    "move the model first, then build the arena (Arena(channels_last=True) "
                    "for NHWC)"
                )
            if p.grad is None or p.grad.data_ptr() != g_ptr:
                raise ArenaError(
                    f"the gradient of {name} is not the arena's view: zero_grad(set_to_none=True) "
                    "or an assignment to .grad dropped it; zero gradients with arena.zero_grad()"
                )

    def canonical_index(self) -> torch.Tensor | None:
        """Flat positions in canonical order (each slot row-major), or None when they coincide.

        ``flat[canonical_index()]`` is the buffer as a contiguous-layout arena would hold it.
        """
        if not self.channels_last:
            return None
        index = torch.arange(self.numel, device=self.device)
        for slot in self.slots.values():
            if slot.channels_last:
                index[slot.offset : slot.stop] = slot.shaped(index).contiguous().view(-1)
        return index

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Masks and optimizer state in canonical order, for checkpoints (weights travel in the
        model's state_dict); independent of the layout, so either layout can load them.

        Keys: ``code``, ``momentum``, and with AdamW ``second_moment`` and ``moment_steps`` (a
        one-element int64 tensor): a checkpoint stores every key, `load_state_dict` takes them.
        """
        index = self.canonical_index()
        buffers = {"code": self.code, "momentum": self.momentum}
        if self.second_moment is not None:
            buffers["second_moment"] = self.second_moment
        state = {key: value.clone() if index is None else value[index]
                 for key, value in buffers.items()}
        if self.second_moment is not None:
            state["moment_steps"] = torch.tensor([self.moment_steps], dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        keys = ["code", "momentum"]
        if "second_moment" in state:
            self.ensure_second_moment()
            keys.append("second_moment")
        for key in keys:
            if state[key].shape != getattr(self, key).shape:
                raise ArenaError(f"arena {key} has the wrong length for this model")
        index = self.canonical_index()
        for key in keys:
            target: torch.Tensor = getattr(self, key)
            values = state[key].to(device=target.device, dtype=target.dtype)
            if index is None:
                target.copy_(values)
            else:
                target[index] = values
        if "moment_steps" in state:
            self.moment_steps = int(state["moment_steps"].reshape(-1)[0])
        self.has_pending = bool(((self.code & PENDING) != 0).any())
