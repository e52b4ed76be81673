"""ViT embedding-width pruning (``--structure embed``): the residual stream's dimensions as groups,
the LayerNorms that skip pruned dimensions, exact compaction, and stock-timm loading.

A pruned stream dimension must leave the network as if the model were narrower: everything that
writes the stream is zero there, and the norms compute their statistics over the live width, so
the compacted network (stock timm LayerNorms over fewer dimensions) gives the masked network's
logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import randomize, write_run
from rich.console import Console
from safetensors import safe_open
from torch import nn

import rsst.loop as loop
from rsst.arena import Arena
from rsst.compact import random_prune
from rsst.config import RunConfig, validate
from rsst.export import export_model, load_model
from rsst.models import create_model
from rsst.models.stream_norm import StreamLayerNorm
from rsst.pruning import refill
from rsst.structure import build_structure


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("vit_tiny", num_classes=5, img_size=16, patch_size=8)
    randomize(model)
    return model


def test_embed_groups_span_every_tensor_of_the_stream() -> None:
    model = tiny_vit()
    structure = build_structure(model, Arena(model), "head+embed")
    embed = [u for u in structure.units if u.kind == "embed"]
    assert len(embed) == 1 and embed[0].num_groups == 192
    net, unit = model.net, embed[0]
    blocks = len(net.blocks)
    # prunable weights per dimension: qkv and fc1 columns, proj and fc2 rows, in every block
    per_block = 3 * 192 + 4 * 192 + 192 + 4 * 192
    assert unit.weight_index.numel() == 192 * blocks * per_block
    assert torch.equal(torch.bincount(unit.weight_group), torch.full((192,), blocks * per_block))
    # members on top: patch embedding row + bias, cls token, 5 positions, 2 norms per block and
    # the final one (γ, β), proj and fc2 biases, one classifier column
    extra = 3 * 8 * 8 + 1 + 1 + 5 + 2 * (2 * blocks + 1) + 2 * blocks + 5
    assert unit.member_index.numel() == 192 * (blocks * per_block + extra)
    assert unit.member_index.unique().numel() == unit.member_index.numel()
    assert all(isinstance(n, StreamLayerNorm) for n in (net.norm, net.blocks[0].norm1))


def test_stream_norm_skips_dead_dimensions_and_is_layernorm_otherwise() -> None:
    norm = nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(4, 6)
    reference = norm(x)
    norm.__class__ = StreamLayerNorm
    assert torch.allclose(norm(x), reference, atol=1e-6)
    with torch.no_grad():
        norm.weight[[1, 4]] = 0
        norm.bias[[1, 4]] = 0
    live = [0, 2, 3, 5]
    narrow = nn.LayerNorm(4)
    with torch.no_grad():
        narrow.weight.copy_(norm.weight[live])
        narrow.bias.copy_(norm.bias[live])
    x[:, [1, 4]] = 0
    got = norm(x)
    assert torch.allclose(got[:, live], narrow(x[:, live]), atol=1e-6)
    assert torch.count_nonzero(got[:, [1, 4]]) == 0


def test_refill_never_revives_what_another_unit_killed() -> None:
    """A dead head's qkv rows cross every embed column: keeping the columns must not revive
    them (an element shared by units lives only when every unit keeps it)."""
    model = tiny_vit()
    arena = Arena(model)
    structure = build_structure(model, arena, "head+embed")
    head = next(u for u in structure.units if u.kind == "head")
    hard = torch.ones(arena.numel, dtype=torch.bool)
    hard[head.member_index[head.member_group == 0]] = False
    scores = {u.name: torch.arange(u.num_groups, dtype=torch.float64) for u in structure.units}
    embed = next(u for u in structure.units if u.kind == "embed")
    # a refill of an unchanged U keeps every alive group: head 0's dead rows do not count
    # against the embed columns' density (they are another unit's doing)
    unchanged = refill(structure, hard.clone(), hard, scores)
    assert torch.equal(unchanged, hard)
    # U drops half of the embed weights no head holds (fc1/fc2, patch embedding, classifier):
    # the embed unit keeps fewer columns, every alive head stays
    heads = torch.cat([u.weight_index for u in structure.units if u.kind == "head"])
    own = embed.weight_index[~torch.isin(embed.weight_index, heads)]
    unstructured = hard.clone()
    unstructured[own[: own.numel() // 2]] = False
    kept = refill(structure, unstructured, hard, scores)
    assert not bool(kept[head.member_index[head.member_group == 0]].any())
    # head 1 lives wherever its embed column is kept (and its biases, which no column holds)
    column_kept = structure.group_alive(embed, kept)
    assert 0 < int(column_kept.sum()) < 192
    in_column = torch.zeros(arena.numel, dtype=torch.bool)
    in_column[embed.member_index] = True
    column_alive = torch.zeros(arena.numel, dtype=torch.bool)
    column_alive[embed.member_index] = column_kept[embed.member_group]
    head1 = head.member_index[head.member_group == 1]
    assert torch.equal(kept[head1], torch.where(in_column[head1], column_alive[head1], True))


@pytest.fixture(scope="module")
def embed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    model = tiny_vit()
    masks = random_prune(model, 0.4, seed=0, structure="head+neuron+embed")
    return write_run(tmp_path_factory.mktemp("embed") / "run", model.eval(), masks), model


@pytest.mark.slow
def test_embed_pruned_vit_compacts_to_the_masked_logits(embed_run, tmp_path) -> None:
    run, masked = embed_run
    result = export_model(run, tmp_path / "c.safetensors", form="compact")
    compact = load_model(tmp_path / "c.safetensors")
    alive = int(((masked.net.norm.weight != 0) | (masked.net.norm.bias != 0)).sum())
    assert alive == 192 - int(0.4 * 192)
    assert compact.net.embed_dim == alive and compact.net.cls_token.shape[-1] == alive
    assert compact.net.blocks[3].mlp.fc2.out_features == alive
    assert type(compact.net.norm) is nn.LayerNorm  # stock norms over the narrower width
    row = next(r for r in result.rows if r["kind"] == "embed")
    assert (row["kept"], row["total"]) == (alive, 192)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference, got = masked(x), compact(x)
        via_file = load_model(run / "state_00" / "weights.safetensors")(x)
    assert torch.allclose(got, reference, atol=1e-4), float((got - reference).abs().max())
    assert torch.allclose(via_file, reference, atol=1e-5)  # rsst.load restores the norms
    stock = create_model("vit_tiny", num_classes=5, img_size=16, patch_size=8)
    stock.load_state_dict(masked.state_dict())  # same weights, full-width LayerNorms
    with torch.no_grad():
        assert (stock.eval()(x) - reference).abs().max() > 1e-3  # the norms matter


@pytest.mark.slow
def test_embed_pruned_vit_loads_in_stock_timm(embed_run, tmp_path) -> None:
    run, masked = embed_run
    out = tmp_path / "stock.safetensors"
    export_model(run, out, form="timm")
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    args = json.loads(meta["timm.create_model"])
    assert args["embed_dim"] < 192
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    scope = {"FILE": str(out), "x": x}
    exec(meta["timm.usage"], scope)  # noqa: S102 - the recipe users copy, timm + torch only
    assert type(scope["model"]).__module__.startswith("timm.")
    with torch.no_grad():
        reference = masked(x)
    assert torch.allclose(scope["logits"], reference, atol=1e-4)


@pytest.mark.slow
def test_a_run_prunes_the_embedding_width(tmp_path, tiny_data) -> None:
    config = validate(RunConfig(
        arch="vit_tiny", patch_size=4, states=2, epochs=1, rate=0.3, train_subset=128,
        val_split=64, batch_size=64, eval_batch_size=256, device="cpu", backend="torch",
        structure="head+neuron+embed", criteria="l1", lr=0.01, method="refill"))
    run_dir = loop.run(config, out=tmp_path / "run", console=Console(quiet=True),
                       load_data=tiny_data)
    last = json.loads((run_dir / "summary.json").read_text())["states"][-1]
    assert last["structured_sparsity"]["embed"] > 0
    result = export_model(run_dir, tmp_path / "c.safetensors", form="compact")
    compact = load_model(tmp_path / "c.safetensors")
    masked = load_model(run_dir / "state_01" / "weights.safetensors")
    assert compact.net.embed_dim < 192 and result.max_abs_diff < 1e-4
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(compact(x), masked(x), atol=1e-4)


@pytest.mark.slow
def test_embed_pruned_vit_hf_folder_is_compacted_and_exact(embed_run, tmp_path) -> None:
    import timm

    import rsst.timm_models  # noqa: F401 - registers rsst_model with timm

    run, masked = embed_run
    out = tmp_path / "hf"
    result = export_model(run, out, form="hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "rsst_model"  # stock shapes cannot hold the narrow norms
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert sum(p.numel() for p in loaded.parameters()) == result.params["compact"]
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(loaded(x), masked(x), atol=1e-4)
