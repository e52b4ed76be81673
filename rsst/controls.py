"""``rsst ticket``: the lottery-ticket controls of one state of a finished run.

A ticket is the mask a state delivers (for RSST, after its cut). Its controls train that
sparsity pattern for one state with the run's recipe (optimizer, learning-rate schedule, epochs,
data), as plain masked training:

- ``reinit``: the same mask from a fresh random initialization (another seed; Frankle & Carbin
  2019). If it matches the ticket, the ticket's initial weights did not matter.
- ``shuffle``: the same number of alive weights per tensor at uniformly random positions, from
  the run's rewind point (the weights every state restarts from). In a structured run (refill,
  rsst, structured baselines) the same number of kept channels / heads / neurons per unit is drawn
  uniformly instead, so the control stays structured (Frankle et al. 2021). If it matches the
  ticket, which groups were kept did not matter.

A ticket whose controls match it is not a winning ticket. The control is an ordinary run
directory (method ``imp``, one state), so ``rsst run --resume``, ``rsst compare`` and
``rsst export`` work on it; ``control.json`` says what it controls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from rsst import rundir
from rsst.atomic import atomic_write_json
from rsst.config import RunConfig, load_config, save_config, validate
from rsst.errors import UserError
from rsst.methods import method_class
from rsst.study.identity import identity_hash

CONTROLS = ("reinit", "shuffle")
#: reinit's default seed is the run's plus this: another initialization, and not the one of a
#: study's next seed, whose own run would then share it
REINIT_SEED_OFFSET = 10_000
#: written into a control's run directory: the source run, state, control and seed
CONTROL_RECORD = "control.json"


#: what a control killed during its setup (before config.toml) leaves; it is set up again
_SETUP_FILES = (rundir.LOCK, rundir.CHECKPOINT, CONTROL_RECORD)


def control_config(source: RunConfig, seed: int) -> RunConfig:
    """The run's recipe as one state of plain masked training (no pruning, no penalty)."""
    return validate(dataclasses.replace(
        source, method="imp", states=1, target_remain=None, target_macs=None, target_params=None,
        fade_epochs=0, seed=seed,
        out=None, pretrained=None, preset=None))


def default_seed(source: RunConfig, control: str) -> int:
    """reinit: another seed (a fresh initialization); shuffle: the run's own seed."""
    return source.seed + REINIT_SEED_OFFSET if control == "reinit" else source.seed


def default_out(run_dir: Path, state: int, control: str) -> Path:
    return Path(run_dir).parent / f"{Path(run_dir).name}-{control}-state{state:02d}"


def ticket_mask(structure: Any, arena: Any, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The flat hard mask H of a state from its saved ``<param>.mask`` tensors: the prunable
    weights as saved, every other element alive, except the members (biases, BatchNorm γ/β) of
    groups whose weights are all dead, which are dead in H too."""
    flat = torch.ones(arena.numel, dtype=torch.uint8, device=arena.device)
    for name in structure.prunable_names:
        if name not in masks:
            raise UserError(f"the state file has no mask for {name}: it is not a state of this "
                            "run's model; pass a run directory `rsst run` wrote")
        arena.slots[name].shaped(flat).copy_(masks[name])  # the arena's layout (NHWC or not)
    hard = flat != 0
    for unit in structure.units:
        dead = ~structure.group_alive(unit, hard)
        hard[unit.member_index[dead[unit.member_group]]] = False
    return hard & ~arena.padding_mask()


def shuffled_mask(structure: Any, arena: Any, hard: torch.Tensor, *, structured: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """``hard`` with its alive elements moved to uniformly random places: per unit, the same
    number of alive groups (``structured``); per prunable tensor elsewhere, the same number of
    alive elements. Elements outside the prunable scope and the units keep their state."""
    hard = hard.cpu()
    new = hard.clone()
    done = torch.zeros_like(hard)
    if structured:
        for unit in structure.units:
            keep_count = int(structure.group_alive(unit, hard).sum())
            keep = torch.zeros(unit.num_groups, dtype=torch.bool)
            keep[torch.randperm(unit.num_groups, generator=generator)[:keep_count]] = True
            new[unit.member_index] = keep[unit.member_group]
            done[unit.member_index] = True
    for name in structure.prunable_names:
        slot = arena.slots[name]
        index = torch.arange(slot.offset, slot.stop)
        index = index[~done[index]]
        if index.numel() == 0:
            continue
        alive = int(hard[index].sum())
        new[index] = False
        new[index[torch.randperm(index.numel(), generator=generator)[:alive]]] = True
    return new.to(arena.device)


def _read_state(run_dir: Path, state: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    path = rundir.state_weights(run_dir, state)
    finished = rundir.finished_states(run_dir)
    if not path.is_file():
        have = ", ".join(map(str, finished)) or "none yet"
        raise UserError(f"--state {state}: {run_dir} has no finished state {state} (finished: "
                        f"{have}); pass one of those")
    tensors = load_file(str(path))
    masks = {k[:-5]: v for k, v in tensors.items() if k.endswith(".mask")}
    record = rundir.read_state_record(run_dir, state) or {}
    return masks, record


def ticket_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The numbers of the network a state delivers (after the RSST cut)."""
    after = "val_acc_after_cut" in record

    def pick(key: str) -> Any:
        return record.get(f"{key}_after_cut", record.get(key)) if after else record.get(key)

    return {"val_acc": pick("val_acc"), "test_acc": pick("test_acc"),
            "remain_weight": pick("remain_weight")}


def run_control(run_dir: str | Path, state: int | str, control: str, *, seed: int | None = None,
                out: str | Path | None = None, console: Console | None = None,
                load_data: Callable[[RunConfig], Any] | None = None) -> Path:
    """Train the ``control`` of ``run_dir``'s state ``state`` ("last" allowed) into ``out``;
    ``load_data`` reads the dataset (`rsst.loop.load_run_data` unless given)."""
    from rsst.loop import PruningRun, load_run_data

    console = console or Console()
    run_dir = Path(run_dir)
    if control not in CONTROLS:
        raise UserError(f"--control {control!r}: choose one of {', '.join(CONTROLS)}")
    if not (run_dir / rundir.CONFIG).is_file():
        raise UserError(f"{run_dir} is not an rsst run directory (no config.toml); pass the "
                        "directory `rsst run` printed")
    source = load_config(run_dir / rundir.CONFIG)
    if state == "last":
        finished = rundir.finished_states(run_dir)
        if not finished:
            raise UserError(f"{run_dir} has no finished state yet: let the run finish one")
        state = finished[-1]
    if not isinstance(state, int) or state < 0:
        raise UserError(f"--state {state!r}: give a state number ≥ 0 or last")
    masks, record = _read_state(run_dir, state)
    seed = default_seed(source, control) if seed is None else seed
    if seed < 0:
        raise UserError(f"--seed {seed}: give a seed ≥ 0")
    out = Path(out) if out is not None else default_out(run_dir, state, control)
    rundir.check_writable(out, "--out")
    if (out / rundir.CONFIG).is_file() or (out.is_dir() and any(
            p.name not in _SETUP_FILES and not rundir.is_stale_temp(p) for p in out.iterdir())):
        raise UserError(f"--out {out} already exists: continue a killed control with "
                        f"`rsst run --resume {out}`, or pass another --out")
    config = control_config(source, seed)
    data = (load_data or load_run_data)(config)
    pruning = PruningRun(config, out, console, data)  # data and model: errors before any write
    hard = ticket_mask(pruning.structure, pruning.arena, masks)
    if control == "shuffle":
        saved = rundir.load_checkpoint(run_dir, pruning.device)
        rewind = {k[7:]: v for k, v in (saved[0] if saved else {}).items()
                  if k.startswith("rewind.")}
        if rewind:  # otherwise (--rewind none) the run's own initialization: same seed
            pruning.model.load_state_dict(rewind)
        structured = method_class(source.method).refill and bool(pruning.structure.units)
        hard = shuffled_mask(pruning.structure, pruning.arena, hard, structured=structured,
                             generator=torch.Generator().manual_seed(seed))
    pruning.arena.set_masks(hard)
    lock = rundir.RunLock(out)
    out.mkdir(parents=True, exist_ok=True)
    lock.acquire("a second control in it")
    try:
        rundir.remove_stale_temps(out)
        # the checkpoint (weights and masks) first and config.toml last: a directory with a
        # config is resumable exactly; one killed before it is set up again from the start
        pruning.start()
        atomic_write_json(out / CONTROL_RECORD, {
            "control": control, "source": str(run_dir), "state": state, "seed": seed,
            "source_method": source.method, "source_seed": source.seed,
            "source_identity": identity_hash(source),
            "ticket": ticket_summary(record)})
        save_config(dataclasses.replace(config, out=str(out)), out / rundir.CONFIG)
        console.print(f"control [bold]{control}[/] of {run_dir} state {state} → {out}",
                      highlight=False)
        pruning.run(resume=True)
    finally:
        lock.release()
    console.print(f"done: {out}")
    return out
