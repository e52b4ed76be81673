"""Structural groups (SPEC §1): which arena elements make up a channel, a head, a neuron."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from helpers import VIT_DEPTH, VIT_EMBED, VIT_HEADS, VIT_HIDDEN, tiny_vit
from torch import nn

from rsst.arena import Arena
from rsst.errors import UserError
from rsst.models import create_model
from rsst.structure import build_structure

EMBED, HEADS, DEPTH, HIDDEN = VIT_EMBED, VIT_HEADS, VIT_DEPTH, VIT_HIDDEN
HEAD_DIM = EMBED // HEADS


@contextmanager
def restored_weights(arena: Arena) -> Iterator[torch.Tensor]:
    """Let a test write into the shared fixture's weights: they are put back afterwards."""
    saved = arena.weight.clone()
    try:
        yield saved
    finally:
        with torch.no_grad():
            arena.weight.copy_(saved)


def with_ids(arena: Arena) -> None:
    """Give every arena element a unique value (its flat index; exact in float32)."""
    arena.weight.copy_(torch.arange(arena.numel, dtype=torch.float32))


def ids(t: torch.Tensor) -> set[int]:
    return {int(v) for v in t.reshape(-1).tolist()}


def group_ids(arena: Arena, unit, g: int, *, weights_only: bool = False) -> set[int]:
    index = unit.weight_index[unit.weight_group == g] if weights_only else \
        unit.member_index[unit.member_group == g]
    values = arena.weight[index]
    assert len(set(values.tolist())) == index.numel(), "an element is listed twice"
    return ids(values)


# -- CNN ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[False, True], ids=["nchw", "nhwc"])
def resnet(request):
    """resnet20 in both arena layouts: a channel is one contiguous range either way."""
    torch.manual_seed(0)
    model = create_model("resnet20")
    arena = Arena(model, channels_last=request.param)
    return model, arena, build_structure(model, arena)


def _bn_of(conv: str) -> str:
    if conv.endswith("shortcut.0"):
        return conv[:-1] + "1"
    return conv.replace("conv", "bn")


def test_cnn_scope_excludes_stem_and_classifier(resnet):
    model, arena, structure = resnet
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs[0] == "conv1"
    assert structure.prunable_names == [f"{n}.weight" for n in convs[1:]]
    assert [u.name for u in structure.units] == convs[1:]
    assert structure.kinds == ["channel"]
    prunable = structure.prunable
    for name, slot in arena.slots.items():
        inside = prunable[slot.offset:slot.stop]
        expected = name in structure.prunable_names
        assert bool(inside.all()) is expected and bool(inside.any()) is expected, name
    assert int(prunable.sum()) == sum(arena.slots[n].numel for n in structure.prunable_names)
    assert "conv1.weight" not in structure.prunable_names
    assert "fc.weight" not in structure.prunable_names


def test_channel_groups_are_conv_rows_plus_following_bn(resnet):
    model, arena, structure = resnet
    with restored_weights(arena):
        with torch.no_grad():
            with_ids(arena)
        for unit in structure.units:
            bn = _bn_of(unit.name)
            conv_w = arena.view(f"{unit.name}.weight")
            gamma, beta = arena.view(f"{bn}.weight"), arena.view(f"{bn}.bias")
            assert unit.num_groups == conv_w.shape[0] == gamma.shape[0]
            for c in range(unit.num_groups):
                assert group_ids(arena, unit, c, weights_only=True) == ids(conv_w[c])
                expected = ids(conv_w[c]) | ids(gamma[c]) | ids(beta[c])
                assert group_ids(arena, unit, c) == expected, (unit.name, c)


def test_pruned_channel_emits_exactly_zero(resnet):
    model, arena, structure = resnet
    unit = next(u for u in structure.units if u.name == "layers.1.0.conv1")
    outputs = {}
    hook = model.layers[1][0].bn1.register_forward_hook(
        lambda _m, _i, out: outputs.__setitem__("bn", out))
    try:
        with restored_weights(arena), torch.no_grad():
            arena.weight[unit.member_index[unit.member_group == 5]] = 0.0
            model.eval()
            model(torch.rand(2, 3, 32, 32))
    finally:
        hook.remove()
    bn_out = outputs["bn"]
    assert torch.count_nonzero(bn_out[:, 5]) == 0
    assert torch.count_nonzero(bn_out[:, 4]) > 0


def test_cnn_sparsity_and_remain_weight_on_hand_built_masks(resnet):
    _, arena, structure = resnet
    mask = arena.hard_mask.clone()
    assert structure.sparsity(mask) == {"channel": 0.0}
    assert structure.remain_weight(mask) == 1.0
    total = sum(u.num_groups for u in structure.units)
    a, b = structure.units[0], structure.units[3]
    killed = 0
    for unit, groups in ((a, [0, 1, 2]), (b, [7])):
        for g in groups:
            idx = unit.weight_index[unit.weight_group == g]
            mask[idx] = False
            killed += idx.numel()
    # a channel with one live weight left is alive; a dead weight alone kills no channel
    last = b.weight_index[b.weight_group == 9]
    mask[last[1:]] = False
    killed += last.numel() - 1
    # elements outside the prunable scope do not count
    fc = arena.slots["fc.weight"]
    mask[fc.offset:fc.stop] = False
    stem = arena.slots["conv1.weight"]
    mask[stem.offset:stem.offset + 5] = False
    n_prunable = int(structure.prunable.sum())
    assert structure.sparsity(mask)["channel"] == pytest.approx(4 / total)
    assert structure.remain_weight(mask) == pytest.approx((n_prunable - killed) / n_prunable)
    per_unit = structure.per_unit(mask)
    assert per_unit[a.name] == {"kind": "channel", "alive": a.num_groups - 3,
                                "total": a.num_groups}
    assert per_unit[b.name]["alive"] == b.num_groups - 1


def test_structure_kind_checks():
    torch.manual_seed(0)
    model = create_model("resnet20")
    arena = Arena(model)
    none = build_structure(model, arena, "none")
    assert none.units == [] and none.kinds == []
    assert none.sparsity(arena.hard_mask) == {}
    assert none.remain_weight(arena.hard_mask) == 1.0
    with pytest.raises(UserError, match="transformer"):
        build_structure(model, arena, "head")
    vit = tiny_vit()
    with pytest.raises(UserError, match="CNN"):
        build_structure(vit, Arena(vit), "channel")


# -- ViT ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit():
    model = tiny_vit()
    arena = Arena(model)
    return model, arena, build_structure(model, arena)


def test_vit_scope_and_units(vit):
    model, arena, structure = vit
    expected = [f"blocks.{b}.{m}.{p}.weight" for b in range(DEPTH)
                for m, p in (("attn", "qkv"), ("attn", "proj"))]
    expected += [f"blocks.{b}.mlp.{p}.weight" for b in range(DEPTH) for p in ("fc1", "fc2")]
    assert structure.prunable_names == expected
    assert structure.kinds == ["head", "neuron"]
    assert [(u.kind, u.name, u.num_groups) for u in structure.units] == (
        [("head", f"blocks.{b}.attn", HEADS) for b in range(DEPTH)]
        + [("neuron", f"blocks.{b}.mlp", HIDDEN) for b in range(DEPTH)])
    for name in ("patch_embed.proj.weight", "head.weight", "blocks.0.attn.qkv.bias"):
        slot = arena.slots[name]
        assert not structure.prunable[slot.offset:slot.stop].any()


def test_head_groups_cover_qkv_rows_bias_and_proj_columns(vit):
    model, arena, structure = vit
    with restored_weights(arena):
        with torch.no_grad():
            with_ids(arena)
        for unit in (u for u in structure.units if u.kind == "head"):
            assert unit.head_dim == HEAD_DIM
            qkv = arena.view(f"{unit.name}.qkv.weight")
            bias = arena.view(f"{unit.name}.qkv.bias")
            proj = arena.view(f"{unit.name}.proj.weight")
            for h in range(HEADS):
                rows = [s * EMBED + h * HEAD_DIM + i for s in range(3) for i in range(HEAD_DIM)]
                cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
                weights = ids(qkv[rows]) | ids(proj[:, cols])
                assert group_ids(arena, unit, h, weights_only=True) == weights
                assert group_ids(arena, unit, h) == weights | ids(bias[rows]), (unit.name, h)


def test_neuron_groups_cover_fc1_row_bias_and_fc2_column(vit):
    model, arena, structure = vit
    with restored_weights(arena):
        with torch.no_grad():
            with_ids(arena)
        for unit in (u for u in structure.units if u.kind == "neuron"):
            fc1 = arena.view(f"{unit.name}.fc1.weight")
            b1 = arena.view(f"{unit.name}.fc1.bias")
            fc2 = arena.view(f"{unit.name}.fc2.weight")
            for n in range(HIDDEN):
                weights = ids(fc1[n]) | ids(fc2[:, n])
                assert group_ids(arena, unit, n, weights_only=True) == weights
                assert group_ids(arena, unit, n) == weights | ids(b1[n]), (unit.name, n)


def _attention_by_hand(attn: nn.Module, x: torch.Tensor, drop: int) -> torch.Tensor:
    """The attention output with head ``drop`` removed from the computation (original weights)."""
    b, n, e = x.shape
    qkv = nn.functional.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(b, n, 3, HEADS, HEAD_DIM)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    a = ((q @ k.transpose(-2, -1)) * HEAD_DIM**-0.5).softmax(-1)
    heads = a @ v  # [B, H, N, d]
    out = attn.proj.bias.expand(b, n, e).clone()
    for h in range(HEADS):
        if h != drop:
            cols = attn.proj.weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM]
            out = out + heads[:, h] @ cols.T
    return out


def test_pruned_head_contributes_exactly_nothing(vit):
    model, arena, structure = vit
    model.eval()
    attn = model.blocks[1].attn
    unit = next(u for u in structure.units if u.name == "blocks.1.attn")
    x = torch.randn(2, 5, EMBED, generator=torch.Generator().manual_seed(1))
    with restored_weights(arena) as saved:
        with torch.no_grad():
            for drop in range(HEADS):
                expected = _attention_by_hand(attn, x, drop)
                arena.weight[unit.member_index[unit.member_group == drop]] = 0.0
                got = attn(x)
                arena.weight.copy_(saved)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
                # the check is sharp: the dense output differs
                assert not torch.allclose(attn(x), expected, atol=1e-3)


def test_pruned_neuron_contributes_exactly_nothing(vit):
    model, arena, structure = vit
    model.eval()
    mlp = model.blocks[0].mlp
    unit = next(u for u in structure.units if u.name == "blocks.0.mlp")
    x = torch.randn(2, 5, EMBED, generator=torch.Generator().manual_seed(2))
    with restored_weights(arena):
        with torch.no_grad():
            keep = [i for i in range(HIDDEN) if i != 7]
            h = mlp.act(nn.functional.linear(x, mlp.fc1.weight[keep], mlp.fc1.bias[keep]))
            expected = nn.functional.linear(h, mlp.fc2.weight[:, keep], mlp.fc2.bias)
            arena.weight[unit.member_index[unit.member_group == 7]] = 0.0
            torch.testing.assert_close(mlp(x), expected, rtol=1e-5, atol=1e-6)


def test_vit_sparsity_on_hand_built_mask(vit):
    _, arena, structure = vit
    mask = arena.hard_mask.clone()
    head_unit = structure.units[1]  # blocks.1.attn
    mlp_unit = structure.units[2]  # blocks.0.mlp
    mask[head_unit.member_index[head_unit.member_group == 2]] = False
    for n in (0, 5, 6):
        mask[mlp_unit.member_index[mlp_unit.member_group == n]] = False
    sparsity = structure.sparsity(mask)
    assert sparsity["head"] == pytest.approx(1 / (DEPTH * HEADS))
    assert sparsity["neuron"] == pytest.approx(3 / (DEPTH * HIDDEN))
    per_head = 3 * HEAD_DIM * EMBED + EMBED * HEAD_DIM
    per_neuron = 2 * EMBED
    n_prunable = DEPTH * (4 * EMBED * EMBED + 2 * EMBED * HIDDEN)
    assert int(structure.prunable.sum()) == n_prunable
    assert structure.remain_weight(mask) == pytest.approx(
        1 - (per_head + 3 * per_neuron) / n_prunable)
