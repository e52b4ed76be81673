"""Every backend of `rsst.update.step` against an independent float64 reference of SPEC §5."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rsst.schedules import SCHEDULES
from rsst.update import BACKENDS, step
from rsst_kernels import fused_update
from rsst_kernels.compiled_update import SGD_PASS
from rsst_kernels.fused_update import triton_available
from rsst_kernels.scalars import HYPER_SLOTS, ScalarSlot, pack, unpack

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

E1 = math.e - 1.0


def reference_lam(schedule: str, t: int, T: int, lam_max: float, p: float) -> float:
    u = min((t + 1) / T, 1.0)
    shape = {
        "x": u,
        "x^2": u * u,
        "x^3": u**3,
        "exp": (math.exp(u) - 1) / E1,
        "exp_custom_exponents": (math.exp(u**p) - 1) / E1,
    }[schedule]
    return lam_max * shape


def reference_step(w, g, buf, code, *, lr, momentum, wd, nesterov, block, first, lam,
                   anchor=None, rho=0.0):
    """SPEC §5 line by line in float64 (with the README's ADMM line when an anchor is given)."""
    w, g, buf = w.double().clone(), g.double().clone(), buf.double().clone()
    alive = (code & 1).bool()
    pending = (code & 2).bool()
    g = torch.where(alive, g, torch.zeros_like(g))
    if block:
        g = torch.where(pending, lam * w, g)
    else:
        g = torch.where(pending, g + lam * w, g)
    if anchor is not None:  # g ← g + ρ·(w − a) on A = H ∧ anchored
        anchored = alive & (code & 4).bool()
        g = torch.where(anchored, g + rho * (w - anchor.double()), g)
    d = g + wd * w
    buf = d.clone() if first else momentum * buf + d
    update = d + momentum * buf if nesterov else buf
    w = torch.where(alive, w - lr * update, torch.zeros_like(w))
    buf = torch.where(alive, buf, torch.zeros_like(buf))
    return w, buf


def make_inputs(n: int, codes: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=gen)
    g = torch.randn(n, generator=gen)
    buf = torch.randn(n, generator=gen)
    if codes == "mixed":
        code = torch.randint(0, 4, (n,), generator=gen, dtype=torch.uint8)
    elif codes == "admm":  # every combination of alive, pending and anchored (dead ones too)
        code = torch.randint(0, 8, (n,), generator=gen, dtype=torch.uint8)
    else:
        value = {"all_alive": 1, "all_pruned": 0, "no_pending": 1, "all_pending": 3}[codes]
        code = torch.full((n,), value, dtype=torch.uint8)
        if codes == "no_pending":
            code[torch.rand(n, generator=gen) < 0.3] = 0
    # dead elements hold zero weight and momentum, as the invariant says
    dead = (code & 1) == 0
    w[dead] = 0.0
    buf[dead] = 0.0
    return w, g, buf, code


def available(backend: str) -> bool:
    return backend != "triton" or triton_available("cpu")


def check(backend, n, codes, schedule, nesterov, wd, block, first, t=3, T=10, seed=0,
          momentum=0.9):
    if not available(backend):
        pytest.skip("triton not installed")
    w, g, buf, code = make_inputs(n, codes, seed)
    hp = dict(lr=0.05, momentum=momentum, wd=wd, nesterov=nesterov, block=block, first=first)
    lam_max, p = 0.8, 3.0
    lam = reference_lam(schedule, t, T, lam_max, p)
    w_ref, buf_ref = reference_step(w, g, buf, code, lam=lam, **hp)
    used = step(
        backend,
        w,
        g,
        buf,
        code,
        lr=0.05,
        momentum=momentum,
        weight_decay=wd,
        nesterov=nesterov,
        block_loss_grad=block,
        first_step=first,
        schedule=schedule,
        t=t,
        T=T,
        lam_max=lam_max,
        exponents=p,
    )
    assert used == pytest.approx(lam, rel=1e-12)
    torch.testing.assert_close(w.double(), w_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(buf.double(), buf_ref, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(g) == 0, "the gradient is left zeroed"
    dead = (code & 1) == 0
    assert torch.all(w[dead] == 0) and torch.all(buf[dead] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(
    "nesterov,wd,block,first",
    list(itertools.product([False, True], [0.0, 5e-4], [False, True], [False, True])),
)
def test_matches_reference_mixed_codes(backend, schedule, nesterov, wd, block, first):
    # 4096 + 1000: not a multiple of the kernel's block
    check(backend, 5096, "mixed", schedule, nesterov, wd, block, first)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("codes", ["all_alive", "all_pruned", "no_pending", "all_pending"])
@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("n", [1, 17, 4097])
def test_matches_reference_special_codes(backend, codes, block, n):
    check(backend, n, codes, "exp_custom_exponents", True, 1e-4, block, False, t=9, T=10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "nesterov,wd,block,first",
    list(itertools.product([False, True], [0.0, 5e-4], [False, True], [False, True])),
)
def test_matches_reference_without_momentum(backend, nesterov, wd, block, first):
    """μ = 0: the step is d and the buffer holds d (not the stale random buffer make_inputs
    gives), for every backend, Nesterov or not (at μ = 0 Nesterov's step is d too)."""
    check(backend, 4097, "mixed", "x", nesterov, wd, block, first, momentum=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_buffers(backend):
    if not available(backend):
        pytest.skip("triton not installed")
    e = torch.empty(0)
    step(backend, e, e.clone(), e.clone(), torch.empty(0, dtype=torch.uint8), lr=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pruned_stay_zero_over_many_steps(backend):
    if not available(backend):
        pytest.skip("triton not installed")
    w, _, buf, code = make_inputs(3000, "mixed", 1)
    gen = torch.Generator().manual_seed(2)
    for t in range(25):
        g = torch.randn(3000, generator=gen) * 10
        step(backend, w, g, buf, code, lr=0.1, weight_decay=1e-3, nesterov=True,
             first_step=t == 0, schedule="x", t=t, T=25, lam_max=5.0)
        dead = (code & 1) == 0
        assert torch.all(w[dead] == 0) and torch.all(buf[dead] == 0)


@pytest.mark.parametrize("momentum,nesterov", [(0.9, False), (0.0, False), (0.0, True)])
def test_backends_agree_over_a_trajectory(momentum, nesterov):
    runs = {}
    for backend in [b for b in BACKENDS if available(b)]:
        w, _, buf, code = make_inputs(2000, "mixed", 3)
        gen = torch.Generator().manual_seed(4)
        for t in range(10):
            g = torch.randn(2000, generator=gen)
            step(backend, w, g, buf, code, lr=0.1, momentum=momentum, nesterov=nesterov,
                 weight_decay=1e-4, first_step=t == 0, t=t, T=10)
        runs[backend] = (w, buf)
    base_w, base_buf = runs["eager"]
    for backend, (w, buf) in runs.items():
        torch.testing.assert_close(w, base_w, rtol=1e-5, atol=1e-6, msg=backend)
        torch.testing.assert_close(buf, base_buf, rtol=1e-5, atol=1e-6, msg=backend)


@pytest.mark.skipif(not triton_available("cpu"), reason="triton not installed")
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_kernel_lambda_matches_python(schedule):
    """Isolate the in-kernel λ: all pending, task gradient blocked, lr 1, no momentum history.

    Then w ← w − λ·w, so λ = 1 − w_new / w.
    """
    from rsst.schedules import lam_at, schedule_code

    T, lam_max, p = 37, 0.75, 2.5
    for t in (0, 5, 36):
        w = torch.ones(64)
        g = torch.randn(64)
        buf = torch.zeros(64)
        code = torch.full((64,), 3, dtype=torch.uint8)
        hyper = torch.tensor([1.0, 0.0, 0.0, lam_max, p, float(t), float(T), 1.0, 0.0])
        fused_update(w, g, buf, code, hyper, schedule=schedule_code(schedule),
                     block_loss_grad=True, block=64)
        kernel_lam = 1.0 - w
        torch.testing.assert_close(
            kernel_lam, torch.full_like(w, lam_at(schedule, t, T, lam_max, p)), rtol=2e-6, atol=1e-7
        )


def test_scalars_are_packed_in_their_named_slots():
    """The order the kernel reads (the test above: a literal hyper) is the order `pack` writes."""
    values = pack(lr=0.1, momentum=0.9, weight_decay=5e-4, lam_max=0.7, exponents=3.0, t=4, T=9,
                  first_step=True, rho=0.25, beta1=0.8, beta2=0.99, eps=1e-6,
                  bias_correction1=0.2, bias_correction2_sqrt=0.1)
    assert values == [0.1, 0.9, 5e-4, 0.7, 3.0, 4.0, 9.0, 1.0, 0.25, 0.8, 0.99, 1e-6, 0.2, 0.1]
    assert values[ScalarSlot.STEP] == 4.0 and values[ScalarSlot.WINDOW] == 9.0
    assert values[ScalarSlot.BETA2] == 0.99 and values[ScalarSlot.BIAS_CORRECTION1] == 0.2
    assert len(HYPER_SLOTS) == len(ScalarSlot) == len(values)
    assert unpack(values) == {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "lam_max": 0.7,
                              "exponents": 3.0, "t": 4.0, "T": 9.0, "first_step": 1.0,
                              "rho": 0.25, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
                              "bias_correction1": 0.2, "bias_correction2_sqrt": 0.1}
    assert unpack(values[:8])["first_step"] == 1.0  # the SGD slots alone still read by name
    assert values[ScalarSlot.RHO] == 0.25
    assert pack(lr=0.1, momentum=0.9, weight_decay=0.0, lam_max=0.7, exponents=3.0, t=0, T=1,
                first_step=False)[ScalarSlot.RHO] == 0.0  # ρ off by default


# -- the ADMM term: g ← g + ρ·(w − a) for alive anchored elements (README "ADMM") -----------------
def check_admm(backend, n, *, nesterov, wd, first, block=False, codes="admm", rho=0.3, seed=5,
               momentum=0.9):
    if not available(backend):
        pytest.skip("triton not installed")
    w, g, buf, code = make_inputs(n, codes, seed)
    anchor = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1))
    lam = reference_lam("x", 3, 10, 0.8, 4.0)
    hp = dict(lr=0.05, momentum=momentum, wd=wd, nesterov=nesterov, block=block, first=first)
    w_ref, buf_ref = reference_step(w, g, buf, code, lam=lam, anchor=anchor, rho=rho, **hp)
    w_off, _ = reference_step(w, g, buf, code, lam=lam, **hp)
    anchor_before = anchor.clone()
    step(backend, w, g, buf, code, lr=0.05, momentum=momentum, weight_decay=wd,
         nesterov=nesterov, block_loss_grad=block, first_step=first, schedule="x", t=3, T=10,
         lam_max=0.8, anchor=anchor, rho=rho)
    if backend == "compiled":  # the compiled pass itself, not its fallback twin
        assert not SGD_PASS.failed, SGD_PASS.failure
    torch.testing.assert_close(w.double(), w_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(buf.double(), buf_ref, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(g) == 0, "the gradient is left zeroed"
    assert torch.equal(anchor, anchor_before), "the anchor is read, never written"
    dead = (code & 1) == 0  # SPEC §5's hard-mask invariant holds with the term on
    assert torch.all(w[dead] == 0) and torch.all(buf[dead] == 0)
    return w_ref, w_off, code


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nesterov,wd,first",
                         list(itertools.product([False, True], [0.0, 5e-4], [False, True])))
def test_admm_term_matches_reference(backend, nesterov, wd, first):
    # 4096 + 1001: not a multiple of the kernel's block
    w_ref, w_off, code = check_admm(backend, 5097, nesterov=nesterov, wd=wd, first=first)
    anchored = (code & 5) == 5
    # the term is really there: it moves exactly the alive anchored elements
    assert torch.all((w_ref - w_off)[anchored].abs() > 0)
    assert torch.equal(w_ref[~anchored], w_off[~anchored])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 17, 4097])
@pytest.mark.parametrize("block", [False, True])
def test_admm_term_odd_sizes_and_block_loss_grad(backend, n, block):
    check_admm(backend, n, nesterov=True, wd=1e-4, first=False, block=block)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nesterov", [False, True])
def test_admm_term_without_momentum(backend, nesterov):
    check_admm(backend, 1001, nesterov=nesterov, wd=5e-4, first=False, momentum=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_admm_term_only_on_anchored_elements(backend):
    """Codes without the anchored bit: the ADMM switch on changes nothing."""
    w_ref, w_off, _ = check_admm(backend, 999, nesterov=False, wd=5e-4, first=True,
                                 codes="mixed")
    assert torch.equal(w_ref, w_off)


@pytest.mark.parametrize("backend", BACKENDS)
def test_admm_pruned_stay_zero_over_many_steps(backend):
    if not available(backend):
        pytest.skip("triton not installed")
    w, _, buf, code = make_inputs(3000, "admm", 1)
    anchor = torch.randn(3000, generator=torch.Generator().manual_seed(9)) * 5
    gen = torch.Generator().manual_seed(2)
    for t in range(20):
        g = torch.randn(3000, generator=gen) * 10
        step(backend, w, g, buf, code, lr=0.1, weight_decay=1e-3, nesterov=True,
             first_step=t == 0, schedule="x", t=t, T=20, lam_max=5.0, anchor=anchor, rho=2.0)
        dead = (code & 1) == 0
        assert torch.all(w[dead] == 0) and torch.all(buf[dead] == 0)


def test_admm_rho_without_anchor_is_refused():
    e = torch.zeros(4)
    with pytest.raises(ValueError, match="anchor"):
        step("torch", e, e.clone(), e.clone(), torch.ones(4, dtype=torch.uint8), lr=0.1, rho=0.5)


@pytest.mark.skipif(not triton_available("cpu"), reason="triton not installed")
def test_kernel_reads_rho_from_its_slot():
    """Isolate the term: everything anchored, g = 0, lr 1, no momentum history, λ off.

    Then w ← w − ρ·(w − a), so with w = 1, a = 0: ρ = 1 − w_new.
    """
    rho = 0.375
    w, g, buf = torch.ones(64), torch.zeros(64), torch.zeros(64)
    code = torch.full((64,), 5, dtype=torch.uint8)
    hyper = torch.tensor(pack(lr=1.0, momentum=0.0, weight_decay=0.0, lam_max=0.0, exponents=1.0,
                              t=0, T=1, first_step=True, rho=rho))
    fused_update(w, g, buf, code, hyper, schedule=0, anchor=torch.zeros(64), block=64)
    torch.testing.assert_close(1.0 - w, torch.full_like(w, rho))


def test_admm_bytes_per_element():
    from rsst_kernels import BYTES_PER_ELEMENT, bytes_per_element

    assert bytes_per_element() == BYTES_PER_ELEMENT == 25
    assert bytes_per_element(admm=True) == 29  # + the float32 anchor read


@pytest.mark.parametrize("nesterov", [False, True])
def test_arena_backends_agree_without_momentum(nesterov):
    """What ``--backend X --momentum 0 [--nesterov]`` runs: every arena backend leaves the same
    weights and the same momentum buffer (= the last step's d, SPEC §5), so checkpoints agree."""
    from torch import nn

    from rsst.arena import Arena
    from rsst.update import UpdateConfig, make_backend

    gen = torch.Generator().manual_seed(5)
    data = [(torch.randn(6, 4, generator=gen), torch.randint(0, 3, (6,), generator=gen))
            for _ in range(4)]
    config = UpdateConfig(momentum=0.0, weight_decay=1e-3, nesterov=nesterov)
    results = {}
    for backend in [b for b in BACKENDS if available(b)]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
        arena = Arena(model)
        arena.momentum[arena.hard_mask] = 3.0  # stale: μ = 0 must overwrite it, not keep it
        update = make_backend(backend, "cpu", config)
        for t, (x, y) in enumerate(data):
            nn.functional.cross_entropy(model(x), y).backward()
            if t == len(data) - 1:
                alive = arena.hard_mask
                d = arena.grad.double() + 1e-3 * arena.weight.double()  # last step's d
            arena.step(update, 0.1, t)
        torch.testing.assert_close(arena.momentum.double(), torch.where(alive, d, 0.0),
                                   rtol=1e-5, atol=1e-6, msg=backend)
        results[backend] = (arena.weight.clone(), arena.momentum.clone())
    base_w, base_buf = results["torch"]
    for backend, (w, buf) in results.items():
        torch.testing.assert_close(w, base_w, rtol=1e-5, atol=1e-6, msg=backend)
        torch.testing.assert_close(buf, base_buf, rtol=1e-5, atol=1e-6, msg=backend)
