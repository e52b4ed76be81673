"""Masks from weights (SPEC §2–§3): magnitude pruning, kept-group counts, refill, criteria."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import calibration, small_cnn, tiny_vit

from rsst.arena import Arena
from rsst.criteria import group_scores
from rsst.models import create_model
from rsst.pruning import kept_groups, magnitude_prune, refill
from rsst.structure import build_structure


# -- magnitude pruning ----------------------------------------------------------------------------
def test_magnitude_prune_removes_smallest_alive_prunable_jointly():
    gen = torch.Generator().manual_seed(0)
    n = 200
    weight = (torch.randperm(n, generator=gen).float() + 1.0) / n
    weight *= torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    prunable = torch.zeros(n, dtype=torch.bool)
    prunable[20:180] = True
    hard = torch.ones(n, dtype=torch.bool)
    hard[torch.randperm(n, generator=gen)[:50]] = False
    weight[~hard] = 0.0  # dead elements are zero (the smallest of all)
    weight[:20] = 1e-6  # tiny but outside the scope: never pruned
    candidates = hard & prunable
    alive = int(candidates.sum())
    for rate in (0.2, 0.37, 0.5):
        u = magnitude_prune(weight, hard, prunable, rate)
        k = round(rate * alive)
        assert int((hard & ~u).sum()) == k
        assert not (u & ~hard).any(), "a dead element came back"
        assert torch.equal(u[~prunable], hard[~prunable])
        removed = hard & ~u
        assert bool((removed <= prunable).all())
        # every removed weight is smaller than every kept alive prunable one
        assert weight[removed].abs().max() < weight[candidates & u].abs().min()


def test_magnitude_prune_is_global_across_layers():
    model, arena, structure = small_cnn()
    with torch.no_grad():
        arena.view("conv_a.weight").uniform_(0.5, 1.0)
        arena.view("conv_b.weight").uniform_(0.01, 0.4)
        arena.view("stem.weight").fill_(1e-4)
        arena.view("fc.weight").fill_(1e-4)
    hard = arena.hard_mask
    n_a = arena.slots["conv_a.weight"].numel
    n_b = arena.slots["conv_b.weight"].numel
    rate = n_b / (n_a + n_b)
    u = magnitude_prune(arena.weight, hard, structure.prunable, rate)
    a, b = (arena.slots[f"{n}.weight"] for n in ("conv_a", "conv_b"))
    assert u[a.offset:a.stop].all()
    assert not u[b.offset:b.stop].any()
    assert torch.equal(u & ~structure.prunable, hard & ~structure.prunable)


def test_magnitude_prune_ties_and_zero_rate():
    weight = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.9])
    hard = torch.ones(5, dtype=torch.bool)
    prunable = torch.ones(5, dtype=torch.bool)
    u = magnitude_prune(weight, hard, prunable, 0.4)  # k = 2 of three tied 0.1s: lower indices
    assert u.tolist() == [True, False, False, True, True]
    assert torch.equal(magnitude_prune(weight, hard, prunable, 0.05), hard)


# -- kept groups ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("density", "groups", "alive", "fill", "expected"), [
    (0.5, 10, 10, 0.0, 5),
    (0.5, 10, 10, 0.5, 7),   # floor(5 + 5·0.5)
    (0.55, 10, 10, 0.0, 5),  # floor
    (0.7, 10, 10, 0.0, 7),   # 0.7·10 is 7.000000000000001 or 6.99…: still 7
    (0.29, 100, 100, 0.0, 29),
    (0.0, 10, 10, 0.0, 1),   # at least one group
    (0.8, 10, 3, 0.0, 3),    # never more than the alive groups
    (0.1, 10, 10, 1.0, 10),  # full fill-back
    (0.3, 16, 12, 0.25, 7),  # floor(4.8 + 11.2·0.25) = floor(7.6)
])
def test_kept_groups_formula(density, groups, alive, fill, expected):
    assert kept_groups(density, groups, alive, fill) == expected
    assert kept_groups(density, groups, alive, fill) == max(1, min(alive, math.floor(
        round(density * groups + (groups - density * groups) * fill, 9))))


# -- refill ---------------------------------------------------------------------------------------
def _group_state(structure, unit, mask):
    """Per group: True all members alive, False all dead; asserts group completeness."""
    values = mask[unit.member_index].long()
    alive = torch.zeros(unit.num_groups, dtype=torch.int64).index_add_(0, unit.member_group, values)
    size = torch.zeros(unit.num_groups, dtype=torch.int64).index_add_(
        0, unit.member_group, torch.ones_like(values))
    assert bool(((alive == 0) | (alive == size)).all()), "a group is partly alive"
    return alive == size


def test_refill_keeps_k_whole_groups_by_score_ties_lower_index():
    model, arena, structure = small_cnn()
    unit_a, unit_b = structure.units
    assert (unit_a.name, unit_b.name) == ("conv_a", "conv_b")
    hard = arena.hard_mask.clone()
    # H: channel 4 of conv_a is already dead (with its BN γ/β)
    hard[unit_a.member_index[unit_a.member_group == 4]] = False
    # U: conv_a keeps half of its weights (d = 0.5 → k = 3); conv_b keeps 40 % (k = 2)
    gen = torch.Generator().manual_seed(1)
    u = hard.clone()
    wa = unit_a.weight_index
    u[wa[torch.randperm(wa.numel(), generator=gen)[: wa.numel() // 2]]] = False
    wb = unit_b.weight_index
    n_dead_b = wb.numel() - int(0.4 * wb.numel())
    u[wb[torch.randperm(wb.numel(), generator=gen)[:n_dead_b]]] = False
    da = float(u[wa].sum()) / wa.numel()
    db = float(u[wb].sum()) / wb.numel()
    ka, kb = max(1, min(5, math.floor(da * 6))), max(1, math.floor(db * 5))
    assert 2 <= ka <= 4 and kb == 2  # the checks below need a partial keep
    u_before = u.clone()
    scores = {
        "conv_a": torch.tensor([1.0, 5.0, 3.0, 3.0, 99.0, 3.0], dtype=torch.float64),  # 4 dead
        "conv_b": torch.tensor([2.0, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64),  # all tied
    }
    r = refill(structure, u, hard, scores)
    assert torch.equal(u, u_before), "refill modified U in place (SPEC §7 defect 1)"
    kept_a = _group_state(structure, unit_a, r)
    kept_b = _group_state(structure, unit_b, r)
    order_a = [1, 2, 3, 5, 0]  # by score, ties by lower index; 4 is dead in H
    assert kept_a.tolist() == [i in order_a[:ka] for i in range(6)]
    assert not kept_a[4], "a group dead in H was revived"
    assert kept_b.tolist() == [i < kb for i in range(5)]
    # pruned weights inside kept groups are refilled; everything outside the units is U
    members = torch.zeros_like(r)
    for unit in structure.units:
        members[unit.member_index] = True
    assert torch.equal(r[~members], u[~members])
    assert int(r[wa].sum()) == ka * wa.numel() // 6


def test_refill_fillback_rate_and_clamps():
    model, arena, structure = small_cnn()
    unit_a = structure.units[0]
    hard = arena.hard_mask.clone()
    u = hard.clone()
    u[unit_a.weight_index] = False  # d = 0 for conv_a
    scores = {un.name: torch.arange(un.num_groups, dtype=torch.float64)
              for un in structure.units}
    r = refill(structure, u, hard, scores)
    assert _group_state(structure, unit_a, r).tolist() == [False] * 5 + [True]  # k clamps to 1
    r = refill(structure, u, hard, scores, fillback_rate=0.5)  # floor(0 + 6·0.5) = 3
    assert _group_state(structure, unit_a, r).tolist() == [False] * 3 + [True] * 3
    # conv_b: U keeps everything → all alive groups stay
    assert _group_state(structure, structure.units[1], r).all()
    # clamp to the alive groups: only two alive in H
    hard2 = hard.clone()
    for g in (0, 1, 2, 3):
        hard2[unit_a.member_index[unit_a.member_group == g]] = False
    r = refill(structure, hard2.clone(), hard2, scores, fillback_rate=1.0)
    assert _group_state(structure, unit_a, r).tolist() == [False] * 4 + [True] * 2


def test_refill_layers_without_groups_take_u():
    model = tiny_vit()
    arena = Arena(model)
    structure = build_structure(model, arena, "head")
    assert [u.kind for u in structure.units] == ["head", "head"]
    hard = arena.hard_mask
    u = magnitude_prune(arena.weight, hard, structure.prunable, 0.5)
    scores = group_scores("magnitude", model, structure, arena, u)
    r = refill(structure, u, hard, scores)
    for name in ("blocks.0.mlp.fc1.weight", "blocks.1.mlp.fc2.weight"):
        slot = arena.slots[name]
        assert torch.equal(r[slot.offset:slot.stop], u[slot.offset:slot.stop])
        assert not u[slot.offset:slot.stop].all()  # U really pruned there
    for unit in structure.units:
        kept = _group_state(structure, unit, r)
        d = float(u[unit.weight_index].sum()) / unit.weight_index.numel()
        assert int(kept.sum()) == kept_groups(d, 3, 3, 0.0)


# -- criteria -------------------------------------------------------------------------------------
def test_remain_and_magnitude_scores_on_planted_weights():
    model, arena, structure = small_cnn()
    unit_a = structure.units[0]
    with torch.no_grad():
        w = arena.view("conv_a.weight")
        w.copy_(torch.arange(w.numel(), dtype=torch.float32).view_as(w) * 0.01 - 1.0)
    u = arena.hard_mask.clone()
    per_row = w[0].numel()
    dead_per_row = [0, 3, 36, 10, 1, 7]
    for c, n in enumerate(dead_per_row):
        u[arena.slots["conv_a.weight"].offset + c * per_row + torch.arange(n)] = False
    remain = group_scores("remain", model, structure, arena, u)["conv_a"]
    assert remain.tolist() == [per_row - n for n in dead_per_row]
    mag = group_scores("magnitude", model, structure, arena, u)["conv_a"]
    expected = [float(w[c].reshape(-1)[n:].abs().double().sum())
                for c, n in enumerate(dead_per_row)]
    torch.testing.assert_close(mag, torch.tensor(expected, dtype=torch.float64))
    assert remain.shape == (unit_a.num_groups,)


def test_l1_l2_score_the_layers_own_activation_before_bn():
    model, arena, structure = small_cnn()
    batches = calibration(2)
    u = magnitude_prune(arena.weight, arena.hard_mask, structure.prunable, 0.3)
    outs = []
    hook = model.conv_a.register_forward_hook(lambda _m, _i, out: outs.append(out.detach()))
    saved = arena.weight.clone()
    with torch.no_grad():
        arena.weight.mul_(u)
        model.eval()
        for x, _ in batches:
            model(x)
        arena.weight.copy_(saved)
    hook.remove()
    a = torch.cat(outs).double()
    l1 = group_scores("l1", model, structure, arena, u, batches)
    l2 = group_scores("l2", model, structure, arena, u, batches)
    torch.testing.assert_close(l1["conv_a"], a.abs().sum(dim=(0, 2, 3)))
    torch.testing.assert_close(l2["conv_a"], a.pow(2).sum(dim=(0, 2, 3)).sqrt())
    assert torch.equal(arena.weight, saved)


@pytest.mark.parametrize("criteria", ["l1", "l2", "saliency"])
def test_activation_criteria_read_each_layers_own_output(criteria):
    torch.manual_seed(0)
    model = create_model("resnet20", img_size=16)
    arena = Arena(model)
    structure = build_structure(model, arena)
    batches = calibration(1, size=16, classes=10)
    target, upstream = "layers.1.1.conv1", "layers.0.1.conv1"
    u = arena.hard_mask.clone()
    before = group_scores(criteria, model, structure, arena, u, batches)
    with torch.no_grad():
        arena.view(f"{target}.weight")[3] *= 50.0
    after = group_scores(criteria, model, structure, arena, u, batches)
    assert int(after[target].argmax()) == 3
    assert int(before[target].argmax()) != 3
    if criteria != "saliency":  # the gradient flows back into upstream layers; activations don't
        torch.testing.assert_close(after[upstream], before[upstream])
    assert not torch.allclose(after["layers.2.0.conv1"], before["layers.2.0.conv1"])


def test_calibration_restores_weights_and_leaves_grads_zero():
    torch.manual_seed(0)
    model = create_model("resnet20", img_size=16)
    arena = Arena(model)
    structure = build_structure(model, arena)
    model.train()
    u = magnitude_prune(arena.weight, arena.hard_mask, structure.prunable, 0.5)
    saved = arena.weight.clone()
    bn_stats = model.layers[0][0].bn1.running_mean.clone()
    scores = group_scores("saliency", model, structure, arena, u, calibration(1, 16, 10))
    assert torch.equal(arena.weight, saved)
    assert torch.count_nonzero(arena.grad) == 0
    assert model.training
    assert torch.equal(model.layers[0][0].bn1.running_mean, bn_stats), "calibration ran BN in train"
    assert all(float(s.sum()) > 0 for s in scores.values())
    arena.verify()  # grads still the arena's views


def test_dominant_vit_head_survives_refill():
    model = tiny_vit(seed=3)
    arena = Arena(model)
    structure = build_structure(model, arena)
    unit = next(u for u in structure.units if u.name == "blocks.1.attn")
    e, d, h = 24, 8, 2
    with torch.no_grad():
        qkv = arena.view("blocks.1.attn.qkv.weight")
        qkv[2 * e + h * d: 2 * e + (h + 1) * d] *= 30.0  # v rows of head 2: a large output
        # its q, k rows and proj columns are small, so remain would not favour it
        qkv[h * d:(h + 1) * d] *= 0.05
        qkv[e + h * d: e + (h + 1) * d] *= 0.05
        arena.view("blocks.1.attn.proj.weight")[:, h * d:(h + 1) * d] *= 0.05
    hard = arena.hard_mask
    u = magnitude_prune(arena.weight, hard, structure.prunable, 0.6)
    density = float(u[unit.weight_index].sum()) / unit.weight_index.numel()
    assert kept_groups(density, 3, 3, 0.0) == 1
    remain = group_scores("remain", model, structure, arena, u)
    assert int(remain["blocks.1.attn"].argmax()) != h
    for criteria in ("l1", "l2"):
        scores = group_scores(criteria, model, structure, arena, u, calibration(1, 16, 5))
        assert int(scores["blocks.1.attn"].argmax()) == h
        r = refill(structure, u, hard, scores)
        kept = _group_state(structure, unit, r)
        assert kept.tolist() == [g == h for g in range(3)], criteria
