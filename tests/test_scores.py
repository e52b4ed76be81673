"""The baselines' scorers (`rsst.scores`) against independent float64 re-implementations.

The oracles here share nothing with `rsst.scores` but torch's autograd: the tiny network's
forward is written out by hand (BatchNorm with batch statistics for SNIP/GraSP, with running
statistics for SynFlow), GraSP's Hg is the explicit Hessian matrix times g, and SynFlow's
schedule is the reference's loop written again. Numbers are compared, not only rankings.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from helpers import synflow_prune
from torch import nn
from torch.nn import functional as F

from rsst.arena import Arena
from rsst.config import RunConfig, validate
from rsst.methods import PruneContext, get_method
from rsst.models import create_model
from rsst.models.base import Normalize
from rsst.pruning import prune_lowest
from rsst.scores import (
    grasp_scores,
    keep_highest,
    random_scores,
    snip_scores,
    synflow_schedule,
    synflow_scores,
)
from rsst.structure import build_structure

NAMES = ["fc1.weight", "fc2.weight", "fc3.weight"]
EPS = 1e-5


class Tiny(nn.Module):
    """x[B, 6] → fc1 → BN → relu → fc2 → tanh → fc3 → logits[B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5, eps=EPS)
        self.fc2 = nn.Linear(5, 4)
        self.fc3 = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.bn(self.fc1(x))))))


def tiny_model(dtype: torch.dtype = torch.float64) -> Tiny:
    torch.manual_seed(3)
    model = Tiny().to(dtype)
    with torch.no_grad():  # BN away from identity, with running statistics of its own
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.3, 0.3)
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def tiny_batches(dtype: torch.dtype = torch.float64, n: int = 2) -> list:
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(8, 6, generator=g).to(dtype), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n)]


def params64(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float64).clone() for k, v in model.state_dict().items()}


def forward(p: dict[str, torch.Tensor], w: list[torch.Tensor], x: torch.Tensor, bn: str):
    """The tiny network by hand; BatchNorm on batch statistics (biased variance) for ``train``,
    on the running statistics for ``eval``."""
    h = x @ w[0].T + p["fc1.bias"]
    if bn == "train":
        mean, var = h.mean(0), h.var(0, unbiased=False)
    else:
        mean, var = p["bn.running_mean"], p["bn.running_var"]
    h = (h - mean) / torch.sqrt(var + EPS) * p["bn.weight"] + p["bn.bias"]
    h = torch.tanh(torch.clamp(h, min=0) @ w[1].T + p["fc2.bias"])
    return h @ w[2].T + p["fc3.bias"]


def oracle_loss(p, w, x, y, temperature=1.0, bn="train"):
    logits = forward(p, w, x.double(), bn) / temperature
    return -(logits.log_softmax(1)[torch.arange(len(y)), y]).mean()


# -- SNIP ------------------------------------------------------------------------------------
def _snip_oracle(model, batches, bn):
    """|θ ⊙ Σ_b ∂L_b/∂θ|: the gradients summed over the batches, then the absolute value."""
    p = params64(model)
    w = [p[n].clone().requires_grad_(True) for n in NAMES]
    total = [torch.zeros_like(t) for t in w]
    for x, y in batches:
        for acc, g in zip(total, torch.autograd.grad(oracle_loss(p, w, x, y, bn=bn), w),
                          strict=True):
            acc += g
    return {n: (wi.detach() * gi).abs() for n, wi, gi in zip(NAMES, w, total, strict=True)}


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """The two score sets differ by far more than the comparisons' tolerance."""
    scale = max(float(v.abs().max()) for v in a.values())
    return max(float((a[n] - b[n]).abs().max()) for n in a) > 1e-3 * scale


@pytest.mark.parametrize(("train", "bn"), [(None, "eval"), (False, "eval"), (True, "train")])
@pytest.mark.parametrize("start_mode", ["eval", "train"])
def test_snip_matches_oracle_and_leaves_the_model_alone(train, bn, start_mode):
    """SNIP's default is BatchNorm in eval mode (the authors' snip-public prunes with
    is_train=False); train=True uses batch statistics. Either way the model's mode, buffers
    and .grad are untouched."""
    model, batches = tiny_model(), tiny_batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train(start_mode == "train")
    kw = {} if train is None else {"train": train}
    got = snip_scores(model, NAMES, batches, **kw)
    assert model.training == (start_mode == "train")  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())

    want = _snip_oracle(model, batches, bn)
    for name in NAMES:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12)
        assert float(want[name].abs().max()) > 1e-3  # a real signal, not all zeros
    other = _snip_oracle(model, batches, "train" if bn == "eval" else "eval")
    assert _differ(want, other)  # the BatchNorm mode changes the scores on this network


def test_snip_sums_the_gradients_before_the_absolute_value():
    """|Σ_b g_b ⊙ θ|, not Σ_b |g_b ⊙ θ| nor the first batch only: on these two batches the three
    differ, and only the first matches."""
    model, batches = tiny_model(), tiny_batches()
    got = snip_scores(model, NAMES, batches)
    per_batch = [_snip_oracle(model, [b], "eval") for b in batches]
    summed_abs = {n: per_batch[0][n] + per_batch[1][n] for n in NAMES}
    assert _differ(got, summed_abs) and _differ(got, per_batch[0])
    # signed: the score is |θ·g| ≥ 0, while θ·g itself takes both signs here
    p = params64(model)
    w = [p[n].clone().requires_grad_(True) for n in NAMES]
    loss = sum(oracle_loss(p, w, x, y, bn="eval") for x, y in batches)
    signed = torch.cat([(wi.detach() * g).reshape(-1)
                        for wi, g in zip(w, torch.autograd.grad(loss, w), strict=True)])
    assert (signed < 0).any() and (signed > 0).any()
    assert all(bool((got[n] >= 0).all()) for n in NAMES)


# -- GraSP -----------------------------------------------------------------------------------
def _grasp_oracle(model, batches, temperature, bn="train"):
    """S = −θ ⊙ (H g) with H the explicit Hessian of Σ_b L_b over the flat weights."""
    p = params64(model)
    shapes = [p[n].shape for n in NAMES]
    flat0 = torch.cat([p[n].reshape(-1) for n in NAMES])

    def split(flat):
        out, start = [], 0
        for s in shapes:
            size = math.prod(s)
            out.append(flat[start:start + size].view(s))
            start += size
        return out

    def total_loss(flat):
        return sum(oracle_loss(p, split(flat), x, y, temperature, bn) for x, y in batches)

    flat = flat0.clone().requires_grad_(True)
    g = torch.autograd.grad(total_loss(flat), flat)[0]
    hessian = torch.autograd.functional.hessian(total_loss, flat0)
    assert torch.allclose(hessian, hessian.T, atol=1e-10)
    return dict(zip(NAMES, split(-flat0 * (hessian @ g)), strict=True))


@pytest.mark.parametrize(("train", "bn"), [(None, "train"), (True, "train"), (False, "eval")])
@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_matches_explicit_hessian_oracle_with_its_sign(temperature, train, bn):
    """GraSP's default is BatchNorm in training mode (alecwangcq/GraSP scores the network as
    built, in training mode); train=False uses the running statistics."""
    model, batches = tiny_model(), tiny_batches()
    model.eval()
    kw = {} if train is None else {"train": train}
    got = grasp_scores(model, NAMES, batches, temperature=temperature, **kw)
    assert not model.training
    want = _grasp_oracle(model, batches, temperature, bn)
    scale = max(float(v.abs().max()) for v in want.values())
    assert scale > 0
    for name in NAMES:
        torch.testing.assert_close(got[name], want[name], rtol=1e-7, atol=1e-9 * scale)
    # signed: both signs occur, so an abs() or a flipped sign would not match
    flat = torch.cat([v.reshape(-1) for v in want.values()])
    assert (flat > 0).any() and (flat < 0).any()
    assert _differ(want, _grasp_oracle(model, batches, temperature,
                                       "eval" if bn == "train" else "train"))


def test_grasp_method_removes_the_highest_score():
    """The method ranks by −S, so the weights that go are those of HIGHEST S (the paper's)."""
    model = tiny_model(torch.float32)
    arena = Arena(model)
    structure = build_structure(model, arena, "none", scope="all")
    assert sorted(structure.prunable_names) == NAMES
    batches = tiny_batches(torch.float32)
    config = RunConfig(method="grasp", target_remain=0.5, states=1, score_batches=2,
                       grasp_temperature=200.0)
    ctx = PruneContext(model, arena, structure, config, lambda n: batches[:n], -1)
    method = get_method("grasp")
    total = int(structure.prunable.sum())
    count = method.removal_count(total, total, config)
    assert count == total - round(0.5 * total)
    mask = prune_lowest(method.score(ctx), arena.hard_mask, structure.prunable, count)
    removed = torch.cat([(~arena.slots[n].shaped(mask)).reshape(-1) for n in NAMES])
    want = _grasp_oracle(model, batches, 200.0)
    s = torch.cat([want[n].reshape(-1) for n in NAMES])
    top = torch.zeros_like(removed)
    top[torch.argsort(s, descending=True)[:count]] = True
    assert torch.equal(removed, top)


# -- the methods read their flags --------------------------------------------------------------
def method_context(method: str, **kw) -> tuple[PruneContext, list]:
    """A PruneContext over the tiny network (float32 arena, every weight prunable)."""
    model = tiny_model(torch.float32)
    arena = Arena(model)
    structure = build_structure(model, arena, "none", scope="all")
    batches = tiny_batches(torch.float32, n=3)
    config = validate(RunConfig(**{"method": method, "target_remain": 0.5, "states": 1, **kw}))
    return PruneContext(model, arena, structure, config, lambda n: batches[:n], -1), batches


def method_scores(ctx: PruneContext) -> dict[str, torch.Tensor]:
    flat = get_method(ctx.config.method).score(ctx)
    return {n: ctx.arena.slots[n].shaped(flat) for n in NAMES}


@pytest.mark.parametrize(("flags", "bn", "batches"), [
    ({}, "eval", 1),
    ({"score_bn": "eval"}, "eval", 1),
    ({"score_bn": "train"}, "train", 1),
    ({"score_batches": 3}, "eval", 3),
    ({"score_batches": 2, "score_bn": "train"}, "train", 2),
])
def test_snip_method_follows_score_bn_and_score_batches(flags, bn, batches):
    ctx, data = method_context("snip", **flags)
    got = method_scores(ctx)
    want = _snip_oracle(ctx.model, data[:batches], bn)
    for name in NAMES:
        torch.testing.assert_close(got[name], want[name].double(), rtol=1e-4, atol=1e-7)
    # the flag matters: a setting other than the default gives other scores on this network
    default = _snip_oracle(ctx.model, data[:1], "eval")
    assert _differ(want, default) == ((bn, batches) != ("eval", 1))


@pytest.mark.parametrize(("flags", "temperature", "bn", "batches"), [
    ({}, 200.0, "train", 1),
    ({"score_bn": "eval"}, 200.0, "eval", 1),
    ({"score_bn": "train"}, 200.0, "train", 1),
    ({"grasp_temperature": 1.0}, 1.0, "train", 1),
    ({"score_batches": 3}, 200.0, "train", 3),
])
def test_grasp_method_follows_score_bn_temperature_and_score_batches(flags, temperature, bn,
                                                                     batches):
    ctx, data = method_context("grasp", **flags)
    got = method_scores(ctx)
    want = _grasp_oracle(ctx.model, data[:batches], temperature, bn)
    scale = max(float(v.abs().max()) for v in want.values())
    for name in NAMES:  # the method's ranking score is −S
        torch.testing.assert_close(got[name], -want[name], rtol=1e-3, atol=1e-6 * scale)
    default = _grasp_oracle(ctx.model, data[:1], 200.0, "train")
    assert _differ(want, default) == ((temperature, bn, batches) != (200.0, "train", 1))


# -- SynFlow ---------------------------------------------------------------------------------
def _synflow_oracle_scores(model, masks):
    """|θ ⊙ ∂R/∂θ| of the |θ|-network in eval mode on an input of ones, by hand."""
    p = {k: v.abs() for k, v in params64(model).items()}
    w = [(p[n] * masks[n].double()).requires_grad_(True) for n in NAMES]
    h = torch.ones(1, 6, dtype=torch.float64) @ w[0].T + p["fc1.bias"]
    h = (h - p["bn.running_mean"]) / torch.sqrt(p["bn.running_var"] + EPS) * p["bn.weight"] \
        + p["bn.bias"]
    h = torch.tanh(torch.clamp(h, min=0) @ w[1].T + p["fc2.bias"])
    r = (h @ w[2].T + p["fc3.bias"]).sum()
    grads = torch.autograd.grad(r, w)
    return {n: (wi.detach() * g).abs() for n, wi, g in zip(NAMES, w, grads, strict=True)}


def test_synflow_scores_match_oracle():
    model = tiny_model()
    masks = {n: torch.rand(model.get_parameter(n).shape, generator=torch.Generator()
                           .manual_seed(i)) > 0.3 for i, n in enumerate(NAMES)}
    signs = {k: v.sign() for k, v in model.state_dict().items()}
    got = synflow_scores(model, masks, (6,))
    want = _synflow_oracle_scores(model, masks)
    for name in NAMES:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-14)
        assert torch.all(got[name][~masks[name]] == 0)
    # the model keeps its signs (functional call on copies) and its mode
    assert all(torch.equal(v.sign(), signs[k]) for k, v in model.state_dict().items())


def test_synflow_schedule_numbers():
    assert synflow_schedule(1000, 10, 1) == [10]
    assert synflow_schedule(1000, 10, 2) == [100, 10]
    assert synflow_schedule(1000, 10, 4) == [316, 100, 32, 10]
    assert synflow_schedule(500, 500, 3) == [500, 500, 500]
    with pytest.raises(ValueError):
        synflow_schedule(10, 5, 0)


def test_synflow_prune_follows_the_reference_loop():
    """The iterative prune equals the reference's loop (score, re-mask at density
    ρ^(k/n), repeat), re-implemented here with the oracle scores."""
    model = tiny_model()
    keep, n = 9, 5
    masks = {nm: torch.ones_like(model.get_parameter(nm), dtype=torch.bool) for nm in NAMES}
    got = synflow_prune(model, masks, keep, n, (6,))
    oracle = _synflow_reference_loop(model, masks, keep, n)
    assert sum(int(v.sum()) for v in got.values()) == keep
    for m in NAMES:
        assert torch.equal(got[m], oracle[m]), m
    # iterating matters: one scoring keeps a different set on this network
    one_shot = keep_highest(_synflow_oracle_scores(model, masks), masks, keep)
    assert any(not torch.equal(one_shot[m], got[m]) for m in NAMES)


def _synflow_reference_loop(model, masks, keep, n, stop=None):
    """The reference's loop: n oracle scorings, each keeping the round(total·(keep/total)^(k/n))
    highest (ties: lower index) and re-masking; ``stop``: the masks after that many."""
    total = sum(m.numel() for m in masks.values())
    oracle = dict(masks)
    for k in range(1, (n if stop is None else stop) + 1):
        scores = _synflow_oracle_scores(model, oracle)
        target = round(total * (keep / total) ** (k / n))
        flat = torch.cat([torch.where(oracle[m], scores[m], torch.tensor(-1.0)).reshape(-1)
                          for m in NAMES])
        order = sorted(range(len(flat)), key=lambda i: (-float(flat[i]), i))
        alive = torch.zeros(len(flat), dtype=torch.bool)
        alive[order[:target]] = True
        start = 0
        for m in NAMES:
            size = oracle[m].numel()
            oracle[m] = alive[start:start + size].view(oracle[m].shape)
            start += size
    return oracle


@pytest.mark.parametrize("iterations", [1, 4])
def test_synflow_method_follows_synflow_iterations(iterations):
    """The method's prune (its scores, the loop's global cut) keeps exactly what the reference
    loop keeps with --synflow-iterations scorings; 1 and 4 keep different sets here."""
    ctx, _ = method_context("synflow", target_remain=0.15, synflow_iterations=iterations)
    method, arena, prunable = get_method("synflow"), ctx.arena, ctx.structure.prunable
    total = int(prunable.sum())
    count = method.removal_count(total, total, ctx.config)
    scores = method.score(ctx)
    mask = prune_lowest(scores, arena.hard_mask, prunable, count)
    got = {n: arena.slots[n].shaped(mask) for n in NAMES}
    keep = round(0.15 * total)
    masks = {n: torch.ones_like(ctx.model.get_parameter(n), dtype=torch.bool) for n in NAMES}
    model64 = copy.deepcopy(ctx.model).double()  # the same weights, in float64
    # what the first n − 1 iterations removed scores −inf: the cut takes them whatever the ties
    before_last = _synflow_reference_loop(model64, masks, keep, iterations, iterations - 1)
    for n in NAMES:
        assert torch.equal(torch.isinf(arena.slots[n].shaped(scores)), ~before_last[n]), n
    for iters in (1, 4):
        want = _synflow_reference_loop(model64, masks, keep, iters)
        same = all(torch.equal(got[n], want[n]) for n in NAMES)
        assert same == (iters == iterations), iters


class NormalizedConv(nn.Module):
    """Normalize → conv 3×3 (no bias) → BN → relu → flatten → linear, on 3×4×4 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize([0.4, 0.5, 0.6], [0.2, 0.3, 0.25])
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4, eps=EPS)
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(self.norm(x))))
        return self.fc(h.flatten(1))


def test_synflow_uses_ones_unnormalized_abs_parameters_and_eval_batchnorm():
    """SynFlow's documented choices, pinned against a hand-written forward: the input is all
    ones and reaches the first conv as ones (the model's input normalization is bypassed),
    every parameter and buffer enters as its absolute value (negative BN bias, running mean
    and weights here), BatchNorm uses its (abs'd) running statistics."""
    torch.manual_seed(11)
    model = NormalizedConv().double()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([1.2, -0.8, 0.9, -1.1]))
        model.bn.bias.copy_(torch.tensor([0.3, -0.4, 0.2, -0.1]))
        model.bn.running_mean.copy_(torch.tensor([-0.4, 0.3, -0.2, 0.1]))
        model.bn.running_var.copy_(torch.tensor([0.5, 1.5, 2.0, 0.8]))
    model.train()
    names = ["conv.weight", "fc.weight"]
    masks = {n: torch.rand(model.get_parameter(n).shape, generator=torch.Generator()
                           .manual_seed(5)) > 0.2 for n in names}
    got = synflow_scores(model, masks, (3, 4, 4))
    assert model.training  # mode untouched

    p = {k: v.abs() for k, v in params64(model).items()}
    w = [(p[n] * masks[n].double()).requires_grad_(True) for n in names]
    h = F.conv2d(torch.ones(1, 3, 4, 4, dtype=torch.float64), w[0], padding=1)
    shape = (1, -1, 1, 1)
    h = ((h - p["bn.running_mean"].view(shape)) / torch.sqrt(p["bn.running_var"].view(shape)
                                                             + EPS)
         * p["bn.weight"].view(shape) + p["bn.bias"].view(shape))
    r = (torch.relu(h).flatten(1) @ w[1].T + p["fc.bias"]).sum()
    grads = torch.autograd.grad(r, w)
    for name, wi, g in zip(names, w, grads, strict=True):
        torch.testing.assert_close(got[name], (wi.detach() * g).abs(), rtol=1e-10, atol=0)
        assert float(got[name].max()) > 0


def test_synflow_does_not_collapse_resnet20_at_99_percent():
    """99 % sparsity on the real resnet20 (default scope, 32 px input): no layer on the
    input→output path is emptied and the pruned network still carries flow (R > 0) — the
    guarantee of iterative conservation. One scoring (no iterations) does collapse layers.

    Not asserted: the 1×1 shortcut convs. They run beside a residual branch, so emptying one
    disconnects nothing, and faithful SynFlow does empty one for some seeds (see README)."""
    torch.manual_seed(0)
    model = create_model("resnet20", img_size=32)
    arena = Arena(model)
    names = build_structure(model, arena, "none").prunable_names
    masks = {n: torch.ones_like(model.get_parameter(n), dtype=torch.bool) for n in names}
    total = sum(m.numel() for m in masks.values())
    keep = round(0.01 * total)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    main_path = [n for n in names if "shortcut" not in n]
    assert len(main_path) == 18

    got = synflow_prune(model, masks, keep, 20, (3, 32, 32))
    assert sum(int(m.sum()) for m in got.values()) == keep
    alive = {n: int(got[n].sum()) for n in main_path}
    assert min(alive.values()) > 0, alive
    flow = synflow_scores(model, got, (3, 32, 32))
    assert all(float(flow[n].sum()) > 0 for n in main_path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    one_shot = synflow_prune(model, masks, keep, 1, (3, 32, 32))
    assert min(int(one_shot[n].sum()) for n in main_path) == 0


# -- random ----------------------------------------------------------------------------------
def test_random_scores_are_seeded_uniform():
    a, b = random_scores(10_000, 5), random_scores(10_000, 5)
    assert torch.equal(a, b) and not torch.equal(a, random_scores(10_000, 6))
    assert a.dtype == torch.float64 and 0 <= float(a.min()) and float(a.max()) < 1
    assert abs(float(a.mean()) - 0.5) < 0.02


def test_random_method_draws_from_seed_and_state():
    """The random baseline's scores are U[0, 1) from the CPU generator seeded with
    --seed + 1_000_003 · (state + 1) (state −1: pruning at init): a different --seed or state
    gives another draw."""
    for seed, state in [(0, -1), (5, -1), (5, 2)]:
        ctx, _ = method_context("random", seed=seed)
        ctx = dataclasses.replace(ctx, state=state)
        got = get_method("random").score(ctx)
        generator = torch.Generator().manual_seed(seed + 1_000_003 * (state + 1))
        want = torch.rand(ctx.arena.numel, generator=generator, dtype=torch.float64)
        assert torch.equal(got, want), (seed, state)


def test_omp_scores_the_weight_magnitude():
    ctx, _ = method_context("omp", states=2)
    weight = ctx.arena.weight
    assert (weight < 0).any()
    assert torch.equal(get_method("omp").score(ctx), weight.abs())
