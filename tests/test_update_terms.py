"""Every update rule with every term non-zero, over several steps, against torch's optimizers.

The state makes each term matter: momentum and AdamW's moments have history (the checks start
after the first step), weight decay and Nesterov are on, λ > 0 on pending weights (or the
penalty alone, block_loss_grad), and ADMM's anchor differs from the weights (ρ·(w − a) ≠ 0).
The oracle is written here, independently of the backends: the model's loss gradient masked by
hand, the explicit penalty terms added, then a stock ``torch.optim.SGD`` / ``AdamW`` step on
plain copies of the parameters.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rsst.arena import Arena
from rsst.update import BACKENDS, UpdateConfig, make_backend
from rsst_kernels.fused_update import triton_available

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STEPS, T, LAM_MAX, RHO, WD = 5, 8, 0.6, 0.5, 2e-2


def lam_linear(t: int) -> float:
    """λ of the ``x`` schedule: λ_max · min((t + 1)/T, 1)."""
    return LAM_MAX * min((t + 1) / T, 1.0)


def model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3))
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [(torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen))
               for _ in range(STEPS)]
    return model, batches


def masks(arena: Arena, seed: int = 2):
    """Flat H, P ⊂ H and the ADMM scope, each a real mix; the anchor a ≠ w."""
    gen = torch.Generator().manual_seed(seed)
    alive = torch.rand(arena.numel, generator=gen) < 0.75
    pending = torch.rand(arena.numel, generator=gen) < 0.4
    scope = torch.rand(arena.numel, generator=gen) < 0.5
    anchor = torch.randn(arena.numel, generator=gen)
    return alive, pending, scope, anchor


def per_param(arena: Arena, flat: torch.Tensor) -> list[torch.Tensor]:
    return [flat[s.offset:s.stop].view(s.shape).clone() for s, _ in arena.items()]


def oracle(model: nn.Module, batches, arena: Arena, *, optimizer: str, nesterov: bool,
           block: bool, admm: bool, wd: float = WD, lam_max: float = LAM_MAX
           ) -> list[torch.Tensor]:
    """The weights after STEPS steps: torch's optimizer on hand-masked, hand-penalised grads."""
    hard = per_param(arena, arena.hard_mask.float())
    pend = per_param(arena, arena.pending.float())
    anchored = per_param(arena, ((arena.code & 4) != 0).float())
    anchor = per_param(arena, arena.anchor if admm else torch.zeros(arena.numel))
    ws = [p.detach().clone().requires_grad_(True) for p in arena.params]
    names = arena.names
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(ws, lr=0.05, momentum=0.9,
                                                     nesterov=nesterov, weight_decay=wd)
    else:
        opt = torch.optim.AdamW(ws, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd)
    for t, (x, y) in enumerate(batches):
        out = torch.func.functional_call(model, dict(zip(names, ws, strict=True)), (x,))
        grads = torch.autograd.grad(nn.functional.cross_entropy(out, y), ws)
        lam = lam_linear(t) * lam_max / LAM_MAX
        with torch.no_grad():
            for w, g, h, p, a_scope, a in zip(ws, grads, hard, pend, anchored, anchor,
                                              strict=True):
                task = torch.zeros_like(g) if block else g
                g = h * (g * (1 - p) + p * (task + lam * w))
                if admm:
                    g = g + RHO * a_scope * h * (w - a)
                w.grad = g
        opt.step()
    return [w.detach() for w in ws]


RULES = {
    "sgd": dict(optimizer="sgd", nesterov=False, block=False, admm=False),
    "sgd-nesterov": dict(optimizer="sgd", nesterov=True, block=False, admm=False),
    "sgd-block": dict(optimizer="sgd", nesterov=True, block=True, admm=False),
    "sgd-admm": dict(optimizer="sgd", nesterov=True, block=False, admm=True),
    "sgd-admm-block": dict(optimizer="sgd", nesterov=False, block=True, admm=True),
    "adamw": dict(optimizer="adamw", nesterov=False, block=False, admm=False),
    "adamw-block": dict(optimizer="adamw", nesterov=False, block=True, admm=False),
}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_term_matches_torch_optimizer(backend: str, rule: str) -> None:
    if backend == "triton" and not triton_available("cpu"):
        pytest.skip("triton not installed")
    spec = RULES[rule]
    model, batches = model_and_data()
    arena = Arena(model)
    alive, pending, scope, anchor = masks(arena)
    arena.set_masks(alive, pending)
    if spec["admm"]:
        arena.set_anchored(scope).copy_(anchor)
    expected = oracle(model, batches, arena, **spec)
    config = UpdateConfig(momentum=0.9, weight_decay=WD, nesterov=spec["nesterov"],
                          block_loss_grad=spec["block"], schedule="x", ramp_steps=T,
                          lam_max=LAM_MAX, optimizer=spec["optimizer"], beta1=0.9, beta2=0.99,
                          eps=1e-8, rho=RHO if spec["admm"] else 0.0)
    update = make_backend(backend, "cpu", config)
    lr = 0.05 if spec["optimizer"] == "sgd" else 0.01
    for t, (x, y) in enumerate(batches):
        nn.functional.cross_entropy(model(x), y).backward()
        assert arena.step(update, lr, t) == pytest.approx(lam_linear(t), rel=1e-12)
    for name, got, want in zip(arena.names, arena.params, expected, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.all(arena.weight[~arena.hard_mask] == 0)


@pytest.mark.parametrize("rule", ["sgd-admm", "sgd-block", "adamw"])
def test_every_term_moves_the_weights(rule: str) -> None:
    """The oracle's state makes each term count: switching any one off changes the result."""
    spec = RULES[rule]
    model, batches = model_and_data()
    arena = Arena(model)
    alive, pending, scope, anchor = masks(arena)
    arena.set_masks(alive, pending)
    arena.set_anchored(scope).copy_(anchor)
    full = torch.cat([w.flatten() for w in oracle(model, batches, arena, **spec)])
    variants = [dict(spec, wd=0.0), dict(spec, lam_max=0.0), dict(spec, block=not spec["block"])]
    if spec["optimizer"] == "sgd":
        variants.append(dict(spec, nesterov=not spec["nesterov"]))
    if spec["admm"]:
        variants.append(dict(spec, admm=False))
    for variant in variants:
        other = torch.cat([w.flatten() for w in oracle(model, batches, arena, **variant)])
        assert (full - other).abs().max() > 1e-4, variant
