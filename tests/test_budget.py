"""Budgets (``--target-macs`` / ``--target-params``): sizing a prune so the compacted network lands
at or just under a fraction of the dense one."""

from __future__ import annotations

import copy
import io
import json
import random

import pytest
import torch
from helpers import tiny_run
from rich.console import Console

from rsst import statefile
from rsst.arena import Arena
from rsst.compact import compact_cost
from rsst.config import build_config
from rsst.criteria import group_scores
from rsst.errors import UserError
from rsst.models import create_model
from rsst.pruning import budget_count, masked_cost, prune_lowest, prune_to_budget, refill
from rsst.structure import build_structure

QUIET = Console(quiet=True)


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


@pytest.mark.slow
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


def test_a_coupled_refill_of_an_unchanged_mask_prunes_nothing():
    """Weights a dead stream channel killed do not count against its readers' own density: a
    refill of U = H keeps every alive group, so a prune's cost falls from the current one
    (without this, zero removals already cut about a third more of a pruned network)."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=5, img_size=8).eval()
    arena = Arena(model)
    struct = build_structure(model, arena, groups="coupled")
    dense = torch.ones(arena.numel, dtype=torch.bool)
    unstructured = prune_lowest(arena.weight.abs(), dense, struct.prunable,
                                int(0.4 * int(struct.prunable.sum())))
    hard = refill(struct, unstructured, dense,
                  group_scores("magnitude", model, struct, arena, unstructured))
    assert not torch.equal(hard, dense)
    again = refill(struct, hard.clone(), hard, group_scores("magnitude", model, struct, arena,
                                                            hard))
    assert torch.equal(again, hard)


# -- the loop: --target-macs / --target-params ----------------------------------------------------
def _budget_config(**overrides):
    base = dict(arch="resnet20", epochs=1, rate=0.4, train_subset=64, val_split=32,
                batch_size=32, eval_batch_size=256, device="cpu", backend="torch", seed=0,
                latency=False)
    return build_config(overrides={**base, **overrides})


def _delivered_cost(run_dir, state, budget):
    """Independently: the compacted cost of the network saved in state_XX/weights.safetensors."""
    tensors, _ = statefile.read_file(statefile.state_weights(run_dir, state))
    weights, _ = statefile.masked_state(tensors, "state")
    model = create_model("resnet20", num_classes=10, img_size=8)
    model.load_state_dict(weights)
    return compact_cost(model, (3, 8, 8))[f"{budget}_ratio"]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "groups", "budget", "target"), [
    ("refill", "per-layer", "macs", 0.5),   # iterative: regular prunes, then the sized one
    ("rsst", "coupled", "params", 0.3),     # iterative, soft: the budget is after the cut
    ("omp", "coupled", "macs", 0.6),        # one-shot after the dense state
    ("random", "per-layer", "params", 0.5),  # one-shot at initialization
])
def test_a_budget_run_stops_at_the_budget(tmp_path, method, groups, budget, target):
    iterative = method in ("refill", "rsst")
    config = _budget_config(method=method, groups=groups, **{f"target_{budget}": target},
                            **({"states": 6} if iterative else {}))
    run_dir = tiny_run(config, out=tmp_path / "run", console=QUIET)
    summary = json.loads((run_dir / "summary.json").read_text())
    records = summary["states"]
    last = records[-1]
    ratio = f"{budget}_ratio"
    assert summary["budget"] == {"kind": budget, "target": target, "met": True,
                                 "state": last["state"], ratio: last[ratio]}
    assert last["budget_met"] is True and last[ratio] <= target
    assert not any(r["budget_met"] for r in records[:-1])
    if len(records) > 1:  # (one-shot at init: one state, pruned from dense, 1.0 > target)
        assert records[-2][ratio] > target  # the state before missed it: stopped at once
    assert target - last[ratio] < 0.05  # sized: just under, not a whole --rate deeper
    assert last[ratio] == pytest.approx(_delivered_cost(run_dir, last["state"], budget))
    sized = records[-2]["budget_prune"] if last["state"] > 0 else None
    if sized is not None:
        assert sized == {"target": target, ratio: pytest.approx(last[ratio]), "met": True}
    if iterative:
        assert len(records) < config.states  # stopped early; --states is the maximum
        # a resume of the finished run trains nothing more
        tiny_run(config, resume=run_dir, console=QUIET)
        again = json.loads((run_dir / "summary.json").read_text())["states"]
        assert [r["state"] for r in again] == [r["state"] for r in records]
        assert statefile.finished_states(run_dir) == [r["state"] for r in records]


@pytest.mark.slow
def test_a_budget_that_cannot_be_met_is_said_and_recorded(tmp_path):
    config = _budget_config(method="omp", target_macs=0.001)
    out = io.StringIO()
    run_dir = tiny_run(config, out=tmp_path / "run", console=Console(file=out, width=400))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["budget"]["met"] is False
    assert summary["states"][-1]["budget_met"] is False
    assert summary["states"][0]["budget_prune"]["met"] is False
    warnings = [line for line in out.getvalue().splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "--target-macs 0.001 cannot be met" in warnings[0]


@pytest.mark.slow
def test_a_budget_not_met_within_the_states_is_said_and_recorded(tmp_path):
    config = _budget_config(method="refill", states=2, target_macs=0.1)
    out = io.StringIO()
    run_dir = tiny_run(config, out=tmp_path / "run", console=Console(file=out, width=400))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["budget"]["met"] is False and summary["budget"]["state"] == 1
    assert [r["budget_met"] for r in summary["states"]] == [False, False]
    assert summary["states"][-1]["macs_ratio"] > 0.1
    warnings = [line for line in out.getvalue().splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "is not met after --states 2" in warnings[0]


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(target_macs=0.5, target_params=0.5), "together: give one budget"),
    (dict(method="omp", target_macs=0.5, target_remain=0.2), "with --target-remain"),
    (dict(method="imp", target_macs=0.5), "compaction cannot remove"),
    (dict(method="refill", structure="none", target_params=0.5), "compaction cannot remove"),
    (dict(method="admm", target_macs=0.5), "takes no budget"),
    (dict(method="omp", target_macs=0.5, states=3), "drop --states"),
    (dict(target_macs=0.0), "--target-macs 0.0 is outside (0, 1]"),
    (dict(target_params=1.5), "--target-params 1.5 is outside (0, 1]"),
])
def test_nonsense_budgets_are_refused_in_one_line(overrides, message):
    with pytest.raises(UserError) as caught:
        build_config(overrides=overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_rate_is_in_effect_only_where_states_prune_by_it():
    warned: list[str] = []
    build_config(overrides=dict(method="omp", target_macs=0.5, rate=0.2), warn=warned.append)
    assert len(warned) == 1 and warned[0].startswith("--rate has no effect")
    build_config(overrides=dict(method="refill", target_macs=0.5, rate=0.2), warn=warned.append)
    assert len(warned) == 1  # refill prunes by --rate until its last, sized prune


def test_a_one_shot_budget_fixes_the_states():
    assert build_config(overrides=dict(method="omp", target_macs=0.5)).states == 2
    assert build_config(overrides=dict(method="snip", target_params=0.5)).states == 1
    assert build_config(overrides=dict(method="refill", target_macs=0.5)).states == 3
