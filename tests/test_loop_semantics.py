"""What each state of `rsst.loop.run` starts from and steps with (SPEC §2, §4), observed through
public behaviour — the engine's `train_epoch` and the arena's `step`, wrapped to record — and
compared with values computed here: the weights and BatchNorm buffers each state starts from
(``--rewind init``, ``epoch:K``, ``none``), the learning rate of every step (the schedule
restarts each state) and the λ of every step (``--reg-ramp epoch`` restarts it each epoch).

Runs use ResNet-20 on the synthetic task shrunk to 8×8 pixels, 4 steps per epoch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import tiny_run
from rich.console import Console
from safetensors.torch import load_file

from rsst.arena import Arena
from rsst.config import RunConfig, validate
from rsst.engine import Engine

pytestmark = pytest.mark.slow  # starts real runs or subprocesses

STATES, EPOCHS, STEPS = 3, 2, 4  # 128 training images, batch 32


@dataclass
class EpochStart:
    """The model as an epoch begins: every state_dict entry and each parameter's hard mask."""

    tensors: dict[str, torch.Tensor]
    alive: dict[str, torch.Tensor]
    steps: list[tuple[float, int, float]] = field(default_factory=list)  # (lr, t, λ) per step


def recorded_run(out: Path, **overrides) -> tuple[Path, list[EpochStart]]:
    """Run the loop with `Engine.train_epoch` and `Arena.step` wrapped to record."""
    base = dict(states=STATES, epochs=EPOCHS, rate=0.3, train_subset=128, val_split=64,
                batch_size=32, eval_batch_size=256, device="cpu", backend="torch",
                arch="resnet20", seed=5)
    config = validate(RunConfig(**{**base, **overrides}))
    epochs: list[EpochStart] = []
    train_epoch, arena_step = Engine.train_epoch, Arena.step

    def recording_train_epoch(self, *args, **kwargs):
        epochs.append(EpochStart(
            {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            {n: (self.arena.view(n, "code") & 1).bool() for n in self.arena.names}))
        return train_epoch(self, *args, **kwargs)

    def recording_step(self, backend, lr, t):
        lam = arena_step(self, backend, lr, t)
        epochs[-1].steps.append((lr, t, lam))
        return lam

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Engine, "train_epoch", recording_train_epoch)
        mp.setattr(Arena, "step", recording_step)
        run_dir = tiny_run(config, out=out, console=Console(quiet=True))
    assert len(epochs) == STATES * EPOCHS
    assert all(len(e.steps) == STEPS for e in epochs)
    return run_dir, epochs


def state_start(epochs: list[EpochStart], state: int) -> EpochStart:
    return epochs[state * EPOCHS]


def assert_starts_from(start: EpochStart, source: dict[str, torch.Tensor], what: str) -> None:
    """Parameters = source ⊙ H (H: this state's hard mask), buffers = source exactly."""
    assert set(source) >= set(start.tensors)
    for name, value in start.tensors.items():
        if name in start.alive:
            expected = source[name] * start.alive[name].to(value.dtype)
        else:  # BatchNorm running mean / var / num_batches_tracked
            expected = source[name]
        assert torch.equal(value, expected), f"{what}: {name} is not restored"


def assert_buffers_moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Training changed the BatchNorm statistics, so restoring them is a real check."""
    moved = [n for n in a if n.endswith("running_mean") and not torch.equal(a[n], b[n])]
    assert moved, "BatchNorm running statistics did not change during training"


# -- rewinding ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rewind_init(tmp_path_factory):
    return recorded_run(tmp_path_factory.mktemp("r") / "init", method="refill", rewind="init",
                        lr_schedule="multistep", lr=0.1, warmup_epochs=1.0, milestones=[1],
                        gamma=0.1, momentum=0.9)


def test_rewind_init_restores_initial_weights_and_bn_buffers(rewind_init):
    _, epochs = rewind_init
    init = state_start(epochs, 0).tensors  # nothing has run before the first epoch
    assert_buffers_moved(epochs[0].tensors, epochs[EPOCHS - 1].tensors)
    for state in (1, 2):
        start = state_start(epochs, state)
        assert not all(bool(m.all()) for m in start.alive.values()), "refill cut nothing"
        assert_starts_from(start, init, f"state {state}")


def test_rewind_epoch_k_restores_the_weights_after_k_epochs(tmp_path):
    run_dir, epochs = recorded_run(tmp_path / "run", method="refill", rewind="epoch:1")
    after_one_epoch = epochs[1].tensors  # state 0, as its second epoch begins
    assert_buffers_moved(epochs[0].tensors, after_one_epoch)  # ≠ init
    end_of_state_0 = load_file(str(run_dir / "state_00" / "weights.safetensors"))
    assert_buffers_moved(after_one_epoch, end_of_state_0)  # ≠ the trained state
    for state in (1, 2):
        assert_starts_from(state_start(epochs, state), after_one_epoch, f"state {state}")


def test_rewind_none_continues_from_the_trained_state(tmp_path):
    run_dir, epochs = recorded_run(tmp_path / "run", method="refill", rewind="none")
    for state in (1, 2):
        trained = load_file(str(run_dir / f"state_{state - 1:02d}" / "weights.safetensors"))
        assert_starts_from(state_start(epochs, state), trained, f"state {state}")
        assert_buffers_moved(state_start(epochs, 0).tensors, trained)  # ≠ init


# -- the learning-rate schedule restarts at each state ---------------------------------------------
def test_lr_schedule_restarts_at_every_state(rewind_init):
    _, epochs = rewind_init
    # warm-up over the first epoch (4 steps: 0.1·(i+1)/4), then ×0.1 from epoch 1 (milestone 1)
    per_state = [0.025, 0.05, 0.075, 0.1, 0.01, 0.01, 0.01, 0.01]
    for state in range(STATES):
        lrs = [lr for e in epochs[state * EPOCHS:(state + 1) * EPOCHS] for lr, _, _ in e.steps]
        assert lrs == pytest.approx(per_state, rel=1e-12), f"state {state}"


# -- the RSST penalty ramp ---------------------------------------------------------------------
@pytest.mark.parametrize("ramp", ["epoch", "state"])
def test_reg_ramp_window(tmp_path, ramp):
    """λ at each step from SPEC §4's ``x`` schedule, λ_max·u with u = (t+1)/T: T = one epoch
    (restarting every epoch) for ``--reg-ramp epoch``, the whole state for ``state``."""
    lam_max = 2.0
    run_dir, epochs = recorded_run(tmp_path / "run", method="rsst", reg_ramp=ramp,
                                   schedule="x", reg_granularity=lam_max, lr=0.02)
    for state in (1, 2):  # states with pending weights
        lams = [lam for e in epochs[state * EPOCHS:(state + 1) * EPOCHS] for _, _, lam in e.steps]
        if ramp == "epoch":
            want = [lam_max * (i + 1) / STEPS for _ in range(EPOCHS) for i in range(STEPS)]
        else:
            want = [lam_max * (k + 1) / (STEPS * EPOCHS) for k in range(STEPS * EPOCHS)]
        assert lams == pytest.approx(want, rel=1e-12), f"state {state}"
    records = json.loads((run_dir / "summary.json").read_text())["states"]
    assert [r["reg_lambda"] for r in records] == pytest.approx([0.0, lam_max, lam_max])
