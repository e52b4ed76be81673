"""Coupled channel groups (``--groups coupled``) and ``--round-to``: the groups come from the same
channel graph as compaction, so every dead group is removed and nothing stays."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from helpers import randomize
from torch import nn

from rsst.arena import Arena
from rsst.compact import apply_plan, compact_state_dict, plan_compaction, random_prune
from rsst.config import RunConfig
from rsst.criteria import group_scores
from rsst.errors import UserError
from rsst.methods import get_method
from rsst.models import create_model
from rsst.models.resnet import BasicBlock, Bottleneck, ResNet
from rsst.pruning import kept_groups, magnitude_prune, prune_lowest, refill, round_kept
from rsst.structure import build_structure

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def family(arch: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A small member of each model family (tiny widths where the constructor allows)."""
    torch.manual_seed(0)
    if arch == "basic":  # the resnet18 family at tiny widths
        model, size = ResNet(BasicBlock, [2, 1], [8, 16], 5, MEAN, STD), (3, 16, 16)
    elif arch == "bottleneck":  # the resnet50 family at tiny widths
        model, size = ResNet(Bottleneck, [2, 1], [4, 8], 5, MEAN, STD), (3, 16, 16)
    else:
        img = 8 if arch == "resnet20" else 32
        model = create_model(arch, num_classes=5, img_size=img)
        size = tuple(model.rsst_input_size)
    model.rsst_input_size = size
    randomize(model)
    return model.eval(), size


def masked_and_compact(model: nn.Module, size: tuple[int, ...]):
    """The plan of the (already masked) model, the compacted copy, and one batch of logits each."""
    plan = plan_compaction(model)
    small = apply_plan(copy.deepcopy(model), plan.modules)
    small.load_state_dict(compact_state_dict(model, plan))
    x = torch.rand(3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return plan, small.eval(), model(x), small.eval()(x)


def assert_nothing_stays(plan, masks: dict[str, torch.Tensor]) -> None:
    """Every conv channel dead in the masks is removed by compaction."""
    assert plan.units
    for unit in plan.units:
        mask = masks.get(f"{unit['layer']}.weight")
        if mask is None:
            continue
        dead = (mask.reshape(unit["total"], -1).sum(1) == 0).nonzero().flatten().tolist()
        assert not set(dead) & set(unit["kept"]), (unit["layer"], unit["stayed"])
        assert not unit["stayed"], unit


# -- the groups -----------------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_coupled_group_is_the_residual_stream_with_its_readers(channels_last):
    model, _ = family("resnet20")
    arena = Arena(model, channels_last=channels_last)
    with torch.no_grad():
        arena.weight.copy_(torch.arange(arena.numel, dtype=torch.float32))
    struct = build_structure(model, arena, groups="coupled")
    unit = next(u for u in struct.units if u.name == "layers.1.0.conv2")
    m = dict(model.named_modules())
    writers = ["layers.1.0.conv2", "layers.1.0.shortcut.0", "layers.1.1.conv2", "layers.1.2.conv2"]
    bns = ["layers.1.0.bn2", "layers.1.0.shortcut.1", "layers.1.1.bn2", "layers.1.2.bn2"]
    readers = ["layers.1.1.conv1", "layers.1.2.conv1", "layers.2.0.conv1",
               "layers.2.0.shortcut.0"]
    assert unit.num_groups == 32
    assert sorted(unit.layers) == sorted(writers + bns + readers)
    assert {id(x) for x in unit.activation_modules} == {id(m[w]) for w in writers}
    for g in (0, 7, 31):
        rows = [m[w].weight[g] for w in writers] + [m[b].weight[g:g + 1] for b in bns]
        rows += [m[b].bias[g:g + 1] for b in bns]
        cols = [m[r].weight[:, g] for r in readers]
        expect_w = {int(v) for t in [m[w].weight[g] for w in writers] + cols
                    for v in t.reshape(-1).tolist()}
        expect = expect_w | {int(v) for t in rows for v in t.reshape(-1).tolist()}
        got = arena.weight[unit.member_index[unit.member_group == g]]
        assert got.numel() == len(expect) and {int(v) for v in got.tolist()} == expect
        got_w = arena.weight[unit.weight_index[unit.weight_group == g]]
        assert {int(v) for v in got_w.tolist()} == expect_w


def test_per_layer_units_outside_couplings_are_unchanged():
    model, _ = family("resnet20")
    arena = Arena(model)
    per_layer = {u.name: u for u in build_structure(model, arena).units}
    coupled = build_structure(model, arena, groups="coupled")
    singles = [u for u in coupled.units if not u.modules]
    assert {u.name for u in singles} == {n for n in per_layer if n.endswith("conv1")}
    for u in singles:
        assert torch.equal(u.member_index, per_layer[u.name].member_index)
        assert torch.equal(u.weight_index, per_layer[u.name].weight_index)


def test_mobilenet_ties_pointwise_and_depthwise_channels():
    model, _ = family("mobilenet")
    struct = build_structure(model, Arena(model), groups="coupled")
    dw = {n for n, x in model.named_modules() if isinstance(x, nn.Conv2d) and x.groups > 1}
    coupled = [u for u in struct.units if u.modules]
    assert coupled and all(len(u.modules) == 2 for u in coupled)
    assert {n for u in coupled for n in u.layers} >= dw


# -- every family: dead coupled groups are all removed, exactly -----------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet20", "basic", "bottleneck", "vgg16_bn", "mobilenet",
                                  "timm:resnet10t"])
def test_dead_coupled_groups_are_all_removed(arch):
    model, size = family(arch)
    masks = random_prune(model, 0.5, seed=3, groups="coupled")
    plan, small, y_masked, y_small = masked_and_compact(model, size)
    assert_nothing_stays(plan, masks)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    scale = max(float(y_masked.abs().max()), 1.0)
    assert float((y_masked - y_small).abs().max()) <= 1e-4 * scale


def test_coupled_refill_leaves_no_pruned_channel():
    model, size = family("resnet20")
    arena = Arena(model)
    struct = build_structure(model, arena, groups="coupled")
    hard = torch.ones(arena.numel, dtype=torch.bool)
    unstructured = magnitude_prune(arena.weight, hard, struct.prunable, 0.5)
    scores = group_scores("magnitude", model, struct, arena, unstructured)
    mask = refill(struct, unstructured, hard, scores)
    arena.set_masks(mask)
    # a channel is dead when every conv writing it has its row dead; then every element of its
    # group is dead, the input columns of the layers reading it too (though those layers' own
    # per-layer units keep their rows)
    mods = dict(model.named_modules())
    coupled = [u for u in struct.units if u.modules]
    assert coupled
    for unit in coupled:
        writers = [n for n in unit.layers if any(m is mods[n] for m in unit.modules)]
        rows_alive = sum((arena.view(f"{w}.weight", "code") & 1).reshape(unit.num_groups, -1)
                         .sum(1) for w in writers)
        dead = rows_alive == 0
        assert 1 <= int((~dead).sum()) < unit.num_groups
        assert not bool(mask[unit.member_index[dead[unit.member_group]]].any())
    masks = {n: (arena.view(n, "code") & 1).clone() for n in struct.prunable_names}
    plan, _, y_masked, y_small = masked_and_compact(model, size)
    assert_nothing_stays(plan, masks)
    assert float((y_masked - y_small).abs().max()) <= 1e-4 * max(float(y_masked.abs().max()), 1)


# -- scores of a coupled group -------------------------------------------------------------------
def test_coupled_magnitude_sums_rows_and_reading_columns():
    model, _ = family("resnet20")
    arena = Arena(model)
    struct = build_structure(model, arena, groups="coupled")
    unstructured = torch.ones(arena.numel, dtype=torch.bool)
    scores = group_scores("magnitude", model, struct, arena, unstructured)
    m = dict(model.named_modules())
    unit = next(u for u in struct.units if u.name == "layers.2.0.conv2")
    writers = ["layers.2.0.conv2", "layers.2.0.shortcut.0", "layers.2.1.conv2", "layers.2.2.conv2"]
    readers = ["layers.2.1.conv1", "layers.2.2.conv1"]  # the classifier is outside the scope
    expect = sum(m[w].weight.detach().double().abs().sum((1, 2, 3)) for w in writers)
    expect = expect + sum(m[r].weight.detach().double().abs().sum((0, 2, 3)) for r in readers)
    assert torch.allclose(scores[unit.name], expect, rtol=1e-9)


@pytest.mark.parametrize("criteria", ["l1", "l2"])
def test_coupled_activation_scores_sum_over_the_writers(criteria):
    model, size = family("resnet20")
    arena = Arena(model)
    struct = build_structure(model, arena, groups="coupled")
    unit = next(u for u in struct.units if u.name == "layers.1.0.conv2")
    x = torch.rand(4, *size, generator=torch.Generator().manual_seed(2))
    scores = group_scores(criteria, model, struct, arena, torch.ones(arena.numel, dtype=torch.bool),
                          [(x, torch.zeros(4, dtype=torch.long))])
    outs = []
    m = dict(model.named_modules())
    hooks = [m[w].register_forward_hook(lambda _m, _i, o: outs.append(o.detach().double()))
             for w in ["layers.1.0.conv2", "layers.1.0.shortcut.0", "layers.1.1.conv2",
                       "layers.1.2.conv2"]]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    assert len(outs) == 4
    if criteria == "l1":
        expect = sum(o.abs().sum((0, 2, 3)) for o in outs)
    else:
        expect = sum((o ** 2).sum((0, 2, 3)) for o in outs).sqrt()
    assert torch.allclose(scores[unit.name], expect, rtol=1e-6)


# -- --round-to -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "alive", "n", "expected"), [
    (5, 16, 1, 5), (5, 16, 4, 8), (8, 16, 8, 8), (1, 16, 8, 8), (9, 16, 8, 16),
    (13, 14, 8, 14), (3, 3, 8, 3), (17, 64, 16, 32)])
def test_round_kept(k, alive, n, expected):
    assert round_kept(k, alive, n) == expected


@pytest.mark.parametrize("groups", ["per-layer", "coupled"])
@pytest.mark.parametrize("scope", ["unit", "global"])
def test_refill_round_to_keeps_multiples(groups, scope):
    model, _ = family("resnet20")
    arena = Arena(model)
    struct = build_structure(model, arena, groups=groups)
    hard = torch.ones(arena.numel, dtype=torch.bool)
    unstructured = magnitude_prune(arena.weight, hard, struct.prunable, 0.6)
    scores = group_scores("magnitude", model, struct, arena, unstructured)
    plain = refill(struct, unstructured, hard, scores, scope=scope)
    rounded = refill(struct, unstructured, hard, scores, scope=scope, round_to=8)
    for unit in struct.units:
        k = int(struct.group_alive(unit, plain).sum())
        kept = struct.group_alive(unit, rounded)
        assert int(kept.sum()) == min(math.ceil(k / 8) * 8, unit.num_groups)
        if scope == "unit":  # the rounded set is the best groups by score
            order = torch.argsort(-scores[unit.name], stable=True)
            assert bool(kept[order[:int(kept.sum())]].all())
    assert struct.remain_weight(rounded) >= struct.remain_weight(plain)


@pytest.mark.parametrize("method", ["refill", "rsst"])
def test_removal_count_catches_up_with_the_schedule_under_round_to(method):
    """With --round-to a prune after state s removes at least down to (1 − rate)^(s+1) of the
    total; without it (or at initialization) --rate of the alive, as the paper's runs do."""
    m = get_method(method)
    rounded = RunConfig(method=method, rate=0.3, round_to=16, groups="coupled", states=8)
    plain = RunConfig(method=method, rate=0.3, groups="coupled", states=8)
    assert m.removal_count(800, 1000, rounded, 1) == 800 - 490  # schedule 0.7² · 1000 = 490
    assert m.removal_count(800, 1000, plain, 1) == 240  # 0.3 · 800
    assert m.removal_count(480, 1000, rounded, 1) == 144  # already under the schedule
    assert m.removal_count(1000, 1000, rounded, 0) == 300  # the first prune: the same
    assert m.removal_count(800, 1000, rounded, -1) == 240  # at initialization: no schedule


def test_round_to_widths_keep_moving_over_iterative_prunes():
    """--rate 0.3 of the alive weights stays inside every 16-channel rounding step once the
    widths are 16/32 (a 32-wide unit asked for 22 keeps 32): the schedule's catch-up moves
    them on down to the floor of 16 instead of stalling there for good."""
    model, _ = family("resnet20")
    arena = Arena(model)
    struct = build_structure(model, arena, groups="coupled")
    cfg = RunConfig(method="refill", rate=0.3, round_to=16, groups="coupled", states=8)
    method, total = get_method("refill"), int(struct.prunable.sum())
    hard = torch.ones(arena.numel, dtype=torch.bool)
    widths = []
    for state in range(5):
        count = method.removal_count(int((hard & struct.prunable).sum()), total, cfg, state)
        unstructured = prune_lowest(arena.weight.abs(), hard, struct.prunable, count)
        scores = group_scores("magnitude", model, struct, arena, unstructured)
        hard = refill(struct, unstructured, hard, scores, round_to=16)
        widths.append(sorted({int(struct.group_alive(u, hard).sum()) for u in struct.units}))
    assert widths[1] == [16, 32]  # rounded up: more than the schedule's weights are left
    assert widths[-1] == [16]  # every unit down to one 16-channel block


def test_kept_groups_is_unchanged_by_default_round_to():
    assert round_kept(kept_groups(0.3, 16, 16, 0.0), 16, 1) == kept_groups(0.3, 16, 16, 0.0)


# -- refusals -------------------------------------------------------------------------------------
class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = self.b(torch.cat([s, self.a(s)], 1))
        return self.fc(y.mean((2, 3)))


class Branchy(Concat):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        if s.sum() > 0:  # data-dependent control flow: does not trace
            s = -s
        return self.fc(self.a(s).mean((2, 3)))


@pytest.mark.parametrize(("model", "words"), [
    (Concat(), "go through cat"), (Branchy(), "does not trace with torch.fx")])
def test_coupled_refuses_what_the_graph_cannot_model(model, words):
    with pytest.raises(UserError, match=words) as info:
        build_structure(model, Arena(model), groups="coupled")
    assert "--groups per-layer" in str(info.value)
    build_structure(model, Arena(model))  # per-layer still works


def test_coupled_is_for_cnns():
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                            num_classes=3)
    with pytest.raises(UserError, match="--groups coupled is for CNNs"):
        build_structure(vit, Arena(vit), groups="coupled")


# -- end to end: a coupled RSST run exports with nothing left behind ------------------------------
@pytest.mark.slow
@pytest.mark.usefixtures("tiny_data")
def test_coupled_rsst_run_exports_compact_with_no_pruned_channel(tmp_path):
    from rich.console import Console
    from safetensors.torch import load_file

    import rsst.loop as loop
    from rsst.config import RunConfig, validate
    from rsst.export import export_model, load_model

    cfg = validate(RunConfig(method="rsst", arch="resnet20", states=2, epochs=1, rate=0.4,
                             train_subset=128, val_split=64, batch_size=64, eval_batch_size=256,
                             device="cpu", backend="torch", groups="coupled", round_to=4))
    run = loop.run(cfg, out=tmp_path / "run", console=Console(quiet=True))
    record = json.loads((run / "summary.json").read_text())["states"][-1]
    coupled = record["groups"]["layers.1.0.conv2"]
    assert coupled["alive"] < coupled["total"] and coupled["alive"] % 4 == 0
    export_model(run, tmp_path / "c.safetensors", form="compact")
    export_model(run, tmp_path / "m.safetensors", form="masked")
    masked, small = load_model(tmp_path / "m.safetensors"), load_model(tmp_path / "c.safetensors")
    state = load_file(str(sorted(run.glob("state_*"))[-1] / "weights.safetensors"))
    masks = {k.removesuffix(".mask"): v for k, v in state.items() if k.endswith(".mask")}
    plan = plan_compaction(masked)
    assert_nothing_stays(plan, masks)
    dead = (masks["layers.1.0.conv2.weight"].reshape(32, -1).sum(1) == 0).sum()
    assert dead > 0 and small.get_submodule("layers.1.0.conv2").out_channels == 32 - dead
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb = masked.eval()(x), small.eval()(x)
    assert float((ya - yb).abs().max()) <= 1e-4 * max(float(ya.abs().max()), 1.0)
