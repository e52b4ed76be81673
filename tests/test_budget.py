"""Budgets (``--target-macs`` / ``--target-params``): sizing a prune so the compacted network lands
at or just under a fraction of the dense one."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from rsst.arena import Arena
from rsst.compact import compact_cost
from rsst.criteria import group_scores
from rsst.models import create_model
from rsst.pruning import budget_count, masked_cost, prune_to_budget
from rsst.structure import build_structure


@pytest.mark.parametrize("seed", range(5))
def test_budget_count_is_the_fewest_removals_meeting_the_target(seed):
    rng = random.Random(seed)
    high = rng.randint(1, 200)
    steps = sorted(rng.random() for _ in range(high))  # a falling staircase of costs
    cost = [1.0] + [1.0 - s for s in steps]
    target = rng.uniform(0.0, 1.0)
    calls = []

    def cost_of(n: int) -> float:
        calls.append(n)
        return cost[n]

    expect = next((n for n in range(high + 1) if cost[n] <= target), high)
    assert budget_count(cost_of, target, high) == expect
    assert len(calls) <= high.bit_length() + 2  # bisection, not a scan


@pytest.mark.parametrize("groups", ["per-layer", "coupled"])
@pytest.mark.parametrize(("budget", "target"), [("macs", 0.5), ("params", 0.4)])
def test_prune_to_budget_lands_just_under(groups, budget, target):
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=5, img_size=8).eval()
    size = tuple(model.rsst_input_size)
    arena = Arena(model)
    struct = build_structure(model, arena, groups=groups)
    hard = torch.ones(arena.numel, dtype=torch.bool)

    def scores_of(u):
        return group_scores("magnitude", model, struct, arena, u)

    def cost(mask):
        return masked_cost(model, arena.weight, mask, size, budget)

    before = arena.weight.clone()
    mask, got = prune_to_budget(struct, hard, arena.weight.abs(), scores_of, cost, target)
    assert torch.equal(arena.weight, before)  # the live weights are restored
    # independently: the compacted copy of the masked network
    masked = copy.deepcopy(model)
    Arena(masked).weight.mul_(mask)
    independent = compact_cost(masked, size)[f"{budget}_ratio"]
    assert got == pytest.approx(independent, abs=1e-12)
    assert independent <= target
    assert target - independent < 0.03  # just under: not a prune much deeper than needed
