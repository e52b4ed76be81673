"""The fused AdamW update, every backend, against an independent float64 oracle.

The oracle is the textbook form (bias-corrected m̂ and v̂, decoupled decay), not torch's
rearranged one, so the kernels, the compiled pass, the twin and ``torch.optim.AdamW`` are all
checked against the same independent computation.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import tiny_run

from rsst.arena import Arena
from rsst.schedules import SCHEDULES, lam_at
from rsst.update import BACKENDS, UpdateConfig, make_backend, step
from rsst_kernels.fused_update import triton_available

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LR, BETA1, BETA2, EPS = 0.01, 0.9, 0.99, 1e-8


def oracle(w, g, m, v, code, *, lam, wd, block, k):
    """AdamW with the RSST gradient in float64, line by line."""
    w, g, m, v = (x.double().clone() for x in (w, g, m, v))
    alive = (code & 1).bool()
    pending = (code & 2).bool()
    g = torch.where(alive, g, 0.0)
    g = torch.where(pending, lam * w if block else g + lam * w, g)
    m = BETA1 * m + (1 - BETA1) * g
    v = BETA2 * v + (1 - BETA2) * g * g
    m_hat = m / (1 - BETA1**k)
    v_hat = v / (1 - BETA2**k)
    w = w - LR * wd * w - LR * m_hat / (v_hat.sqrt() + EPS)
    zero = torch.zeros_like(w)
    return (torch.where(alive, w, zero), torch.where(alive, m, zero), torch.where(alive, v, zero))


def inputs(n: int, seed: int, codes: str = "mixed"):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=gen)
    g = torch.randn(n, generator=gen)
    m = torch.randn(n, generator=gen) * 0.1
    v = torch.rand(n, generator=gen) * 0.1
    if codes == "mixed":
        code = torch.randint(0, 4, (n,), generator=gen, dtype=torch.uint8)
    else:
        code = torch.full((n,), {"all_pruned": 0, "all_pending": 3}[codes], dtype=torch.uint8)
    dead = (code & 1) == 0
    for x in (w, m, v):
        x[dead] = 0.0
    return w, g, m, v, code


def skip_unavailable(backend: str) -> None:
    if backend == "triton" and not triton_available("cpu"):
        pytest.skip("triton not installed")


def run_step(backend, w, g, m, v, code, *, schedule, wd, block, k, t=3, T=10):
    return step(backend, w, g, m, code, lr=LR, weight_decay=wd, block_loss_grad=block,
                schedule=schedule, t=t, T=T, lam_max=0.8, exponents=3.0, optimizer="adamw",
                exp_avg_sq=v, beta1=BETA1, beta2=BETA2, eps=EPS, moment_step=k)


def check(backend, n, schedule, wd, block, k, codes="mixed", seed=0):
    skip_unavailable(backend)
    w, g, m, v, code = inputs(n, seed, codes)
    lam = lam_at(schedule, 3, 10, 0.8, 3.0)
    expected = oracle(w, g, m, v, code, lam=lam, wd=wd, block=block, k=k)
    used = run_step(backend, w, g, m, v, code, schedule=schedule, wd=wd, block=block, k=k)
    assert used == pytest.approx(lam, rel=1e-12)
    for got, want, name in zip((w, m, v), expected, ("w", "m", "v"), strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.count_nonzero(g) == 0, "the gradient is left zeroed"
    dead = (code & 1) == 0
    for x in (w, m, v):
        assert torch.all(x[dead] == 0), "dead elements stay exactly zero"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("wd,block,k", list(itertools.product([0.0, 0.05], [False, True], [1, 7])))
def test_matches_float64_oracle(backend, schedule, wd, block, k):
    check(backend, 5096, schedule, wd, block, k)  # not a multiple of the kernel's block


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("codes", ["all_pruned", "all_pending"])
@pytest.mark.parametrize("n", [1, 17])
def test_special_codes_and_odd_sizes(backend, codes, n):
    check(backend, n, "exp_custom_exponents", 0.05, False, 2, codes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dead_stay_zero_in_weights_and_both_moments(backend):
    skip_unavailable(backend)
    w, _, m, v, code = inputs(3000, 1)
    gen = torch.Generator().manual_seed(2)
    for k in range(1, 21):
        g = torch.randn(3000, generator=gen) * 10
        run_step(backend, w, g, m, v, code, schedule="x", wd=0.05, block=False, k=k, t=k, T=20)
        dead = (code & 1) == 0
        assert torch.all(w[dead] == 0) and torch.all(m[dead] == 0) and torch.all(v[dead] == 0)


def _train(backend: str, steps: int = 6) -> tuple[torch.nn.Module, Arena]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    arena = Arena(model)
    gen = torch.Generator().manual_seed(3)
    draw = torch.rand(arena.numel, generator=gen)
    arena.set_masks(draw < 0.7, draw < 0.2)
    config = UpdateConfig(optimizer="adamw", weight_decay=0.05, beta1=BETA1, beta2=BETA2,
                          schedule="x", ramp_steps=steps, lam_max=0.5)
    update = make_backend(backend, "cpu", config)
    x = torch.randn(16, 6, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    for t in range(steps):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        arena.step(update, LR, t)
    return model, arena


def test_arena_backends_agree_over_a_trajectory():
    """Arena-level AdamW (moments in the arena, k counted by the arena) agrees across backends."""
    base_model, base = _train("eager")
    assert base.second_moment is not None and base.moment_steps == 6
    for backend in BACKENDS:
        if backend == "eager" or (backend == "triton" and not triton_available("cpu")):
            continue
        _, arena = _train(backend)
        for key in ("weight", "momentum", "second_moment"):
            torch.testing.assert_close(getattr(arena, key), getattr(base, key), rtol=1e-5,
                                       atol=1e-6, msg=f"{backend} {key}")


def test_sgd_arena_has_no_second_moment():
    torch.manual_seed(0)
    arena = Arena(torch.nn.Linear(4, 2))
    arena.step(make_backend("torch", "cpu"), 0.1, 0)
    assert arena.second_moment is None and "second_moment" not in arena.state_dict()


def test_state_dict_round_trip_keeps_the_second_moment_and_step_count():
    _, arena = _train("torch", steps=3)
    state = arena.state_dict()
    assert state["moment_steps"].tolist() == [3]
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    fresh = Arena(model)
    fresh.load_state_dict(state)
    assert fresh.moment_steps == 3
    torch.testing.assert_close(fresh.second_moment, arena.second_moment)
    torch.testing.assert_close(fresh.momentum, arena.momentum)
    fresh.reset_momentum()
    assert fresh.moment_steps == 0 and torch.count_nonzero(fresh.second_moment) == 0


# -- a run with AdamW: checkpoint and resume carry the second moment and the step count ----------
class _Killed(Exception):
    pass


@pytest.mark.slow
def test_adamw_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from rich.console import Console
    from safetensors.torch import load_file

    from rsst.config import RunConfig, validate
    from rsst.loop import PruningRun

    config = validate(RunConfig(
        method="rsst", states=2, epochs=2, rate=0.3, train_subset=128, val_split=64,
        batch_size=64, eval_batch_size=256, device="cpu", backend="compiled", arch="resnet20",
        optimizer="adamw", lr=1e-3, weight_decay=0.05, beta2=0.99))
    quiet = Console(quiet=True)
    whole = tiny_run(config, out=tmp_path / "whole", console=quiet)
    original = PruningRun.save_checkpoint

    def save_then_die(self, position):
        original(self, position)
        if (position["state"], position["epoch"]) == (1, 1):
            assert self.arena.second_moment is not None and self.arena.moment_steps > 0
            raise _Killed

    monkeypatch.setattr(PruningRun, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        tiny_run(config, out=tmp_path / "killed", console=quiet)
    monkeypatch.setattr(PruningRun, "save_checkpoint", original)
    saved = load_file(str(tmp_path / "killed" / "checkpoint.safetensors"))
    assert {"arena.code", "arena.momentum", "arena.second_moment", "arena.moment_steps"} <= set(
        saved)
    resumed = tiny_run(config, resume=tmp_path / "killed", console=quiet)
    a = load_file(str(resumed / "state_01" / "weights.safetensors"))
    b = load_file(str(whole / "state_01" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
