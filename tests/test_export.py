"""Export / compaction / load: compacted models give the masked model's logits, for every family.

Pruning states are built without training: `random_prune` kills random whole groups through the
run's own arena and structure code (weights, biases and BN γ/β zeroed, as Refill does), with
random BatchNorm statistics and affine parameters so that constant channels (BN shifts behind a
zero input) are non-trivial. The state file is written by `rsst.statefile`, as a run writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import NUM_CLASSES, pruned_model, randomize, write_run
from timm.layers import Attention
from torch import nn

import rsst
from rsst.compact import plan_compaction
from rsst.export import export_model, load_model, read_file
from rsst.models import create_model


def export_both(tmp_path: Path, model: nn.Module, masks: dict[str, torch.Tensor]
                ) -> tuple[nn.Module, nn.Module, nn.Module]:
    run = write_run(tmp_path / "run", model, masks)
    export_model(run, tmp_path / "masked.safetensors", form="masked")
    result = export_model(run, tmp_path / "compact.safetensors", form="compact")
    assert result.file_bytes == (tmp_path / "compact.safetensors").stat().st_size
    return model, load_model(tmp_path / "masked.safetensors"), load_model(
        tmp_path / "compact.safetensors")


def assert_same_logits(a: nn.Module, b: nn.Module, size: tuple[int, ...], n: int = 3) -> None:
    x = torch.rand(n, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    scale = max(float(ya.abs().max()), 1.0)
    assert torch.allclose(ya, yb, rtol=0, atol=1e-4 * scale), float((ya - yb).abs().max())


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "patch"), [
    ("resnet20", None), ("resnet18", None), ("resnet50", None), ("vgg16_bn", None),
    ("mobilenet", None), ("vit_tiny", 8),
])
def test_compact_matches_masked(tmp_path: Path, arch: str, patch: int | None) -> None:
    model, masked, compact = export_both(tmp_path, *pruned_model(arch, patch_size=patch))
    size = tuple(model.rsst_input_size)
    assert_same_logits(model, masked, size)
    assert_same_logits(masked, compact, size)
    assert n_params(compact) < n_params(masked) == n_params(model)
    _, meta = read_file(tmp_path / "compact.safetensors")
    assert meta["rsst.form"] == "compact" and meta["rsst.arch"] == arch
    params, flops = json.loads(meta["rsst.params"]), json.loads(meta["rsst.flops"])
    assert params == {"dense": n_params(masked), "compact": n_params(compact)}
    assert flops["compact"] < flops["dense"]
    kept = json.loads(meta["rsst.structure"])["kept"]
    assert kept and all(len(v["kept"]) <= v["total"] for v in kept.values())


@pytest.mark.slow
def test_masked_export_holds_zeros_and_masks(tmp_path: Path) -> None:
    model, masks = pruned_model("resnet20")
    export_both(tmp_path, model, masks)
    tensors, meta = read_file(tmp_path / "masked.safetensors")
    assert meta["rsst.form"] == "masked"
    for name, mask in masks.items():
        assert torch.equal(tensors[f"{name}.mask"], mask)
        assert tensors[f"{name}.mask"].dtype == torch.uint8
        assert bool((tensors[name][mask == 0] == 0).all())


@pytest.mark.slow
def test_vgg_param_count_is_dense_minus_removable(tmp_path: Path) -> None:
    model, masks = pruned_model("vgg16_bn", fraction=0.5)
    _, masked, compact = export_both(tmp_path, model, masks)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    pruned_prev = 0  # the stem is never pruned
    removed = 0
    for conv in convs:
        p = _pruned_rows(model, masks, conv)
        k = conv.kernel_size[0] * conv.kernel_size[1]
        removed += conv.out_channels * conv.in_channels * k
        removed -= (conv.out_channels - p) * (conv.in_channels - pruned_prev) * k
        removed += 2 * p  # BN γ, β
        pruned_prev = p
    removed += pruned_prev * NUM_CLASSES  # classifier columns
    assert n_params(compact) == n_params(masked) - removed


def _pruned_rows(model: nn.Module, masks: dict[str, torch.Tensor], conv: nn.Conv2d) -> int:
    name = next(n for n, m in model.named_modules() if m is conv)
    mask = masks.get(f"{name}.weight")
    if mask is None:
        return 0
    return int((mask.reshape(conv.out_channels, -1).sum(1) == 0).sum())


@pytest.mark.slow
def test_vit_param_count_is_dense_minus_removable(tmp_path: Path) -> None:
    model, masks = pruned_model("vit_tiny", fraction=0.5, patch_size=8)
    _, masked, compact = export_both(tmp_path, model, masks)
    removed = 0
    for block in model.net.blocks:
        name = next(n for n, m in model.named_modules() if m is block)
        e, heads, d = block.attn.qkv.in_features, block.attn.num_heads, block.attn.head_dim
        qkv = masks[f"{name}.attn.qkv.weight"].reshape(3, heads, d, e)
        h = int((qkv.sum(dim=(0, 2, 3)) == 0).sum())
        removed += h * d * (3 * e + 3 + e)  # qkv rows, qkv bias, proj columns
        fc1 = masks[f"{name}.mlp.fc1.weight"]
        n = int((fc1.sum(1) == 0).sum())
        removed += n * (e + 1 + e)  # fc1 row and bias, fc2 column
    assert removed > 0
    assert n_params(compact) == n_params(masked) - removed


@pytest.mark.slow
def test_resnet_residual_channels_removed_only_when_every_addend_is_pruned(
        tmp_path: Path) -> None:
    model = create_model("resnet20", num_classes=NUM_CLASSES)
    randomize(model)
    masks = {f"{n}.weight": torch.ones_like(m.weight, dtype=torch.uint8)
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != "conv1"}
    modules = dict(model.named_modules())

    def prune(conv: str, bn: str, channels: list[int]) -> None:
        with torch.no_grad():
            modules[conv].weight[channels] = 0
            modules[bn].weight[channels] = 0
            modules[bn].bias[channels] = 0
        masks[f"{conv}.weight"][channels] = 0

    # stage 1's residual stream: every tensor added together is pruned in channels 3 and 7
    for conv, bn in [("layers.1.0.shortcut.0", "layers.1.0.shortcut.1"),
                     ("layers.1.0.conv2", "layers.1.0.bn2"), ("layers.1.1.conv2", "layers.1.1.bn2"),
                     ("layers.1.2.conv2", "layers.1.2.bn2")]:
        prune(conv, bn, [3, 7])
    # stage 2: one addend only, so channel 5 must stay
    prune("layers.2.1.conv2", "layers.2.1.bn2", [5])
    model.eval()
    _, masked, compact = export_both(tmp_path, model, masks)
    assert_same_logits(masked, compact, (3, 32, 32))
    assert compact.layers[1][0].conv2.out_channels == 30
    assert compact.layers[1][2].conv1.in_channels == 30
    assert compact.layers[2][0].conv1.in_channels == 30  # stage 2 reads the thinner stream
    assert compact.layers[2][1].conv2.out_channels == 64
    _, meta = read_file(tmp_path / "compact.safetensors")
    stayed = json.loads(meta["rsst.structure"])["stayed"]
    assert "residual" in next(iter(stayed["layers.2.1.conv2"]))


@pytest.mark.slow
def test_mobilenet_folds_constant_depthwise_channels(tmp_path: Path) -> None:
    model, masks = pruned_model("mobilenet", fraction=0.5, seed=3)
    plan = plan_compaction(model, masks)
    assert plan.folds, "a pruned pointwise channel behind an alive depthwise BN is a constant"
    _, masked, compact = export_both(tmp_path, model, masks)
    assert_same_logits(masked, compact, (3, 32, 32))


def test_imp_style_masks_compact_nothing(tmp_path: Path) -> None:
    model = create_model("resnet20", num_classes=NUM_CLASSES)
    randomize(model)
    gen = torch.Generator().manual_seed(0)
    masks = {}
    with torch.no_grad():
        for n, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and n != "conv1":
                mask = (torch.rand(m.weight.shape, generator=gen) > 0.5).to(torch.uint8)
                m.weight.mul_(mask)
                masks[f"{n}.weight"] = mask
    model.eval()
    _, masked, compact = export_both(tmp_path, model, masks)
    assert n_params(compact) == n_params(masked)
    assert_same_logits(masked, compact, (3, 32, 32))


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False])
def test_vit_compact_runs_with_fused_attention_on_and_off(tmp_path: Path, fused: bool) -> None:
    from timm.layers import set_fused_attn, use_fused_attn

    model, masks = pruned_model("vit_tiny", fraction=0.5, patch_size=8, seed=1)
    before = use_fused_attn()
    set_fused_attn(fused)
    try:
        _, masked, compact = export_both(tmp_path, model, masks)
        attns = [m for m in compact.modules() if type(m) is Attention]  # stock timm
        assert attns and all(a.fused_attn == fused for a in attns)
        assert len({a.num_heads for a in attns}) >= 1
        assert_same_logits(masked, compact, (3, 32, 32))
        for a in attns:  # flip the attribute on the live modules too
            a.fused_attn = not fused
        assert_same_logits(masked, compact, (3, 32, 32))
    finally:
        set_fused_attn(before)


@pytest.mark.slow
def test_blocks_keep_different_head_counts(tmp_path: Path) -> None:
    model = create_model("vit_tiny", num_classes=NUM_CLASSES, patch_size=8)
    randomize(model)
    masks = {n: torch.ones_like(p, dtype=torch.uint8) for n, p in model.named_parameters()
             if n.endswith(("qkv.weight", "proj.weight", "fc1.weight", "fc2.weight"))}
    d, e = 64, 192
    with torch.no_grad():
        for b, heads in ((0, [1]), (1, [0, 2])):
            attn = model.net.blocks[b].attn
            for h in heads:
                rows = torch.cat([torch.arange(s * e + h * d, s * e + (h + 1) * d)
                                  for s in range(3)])
                attn.qkv.weight[rows] = 0
                attn.qkv.bias[rows] = 0
                masks[f"net.blocks.{b}.attn.qkv.weight"][rows] = 0
    model.eval()
    _, masked, compact = export_both(tmp_path, model, masks)
    assert [compact.net.blocks[i].attn.num_heads for i in range(3)] == [2, 1, 3]
    assert_same_logits(masked, compact, (3, 32, 32))


@pytest.mark.slow
def test_rsst_load_is_lazy_wrapper(tmp_path: Path) -> None:
    model, masks = pruned_model("resnet20")
    export_both(tmp_path, model, masks)
    loaded = rsst.load(tmp_path / "compact.safetensors")
    assert loaded.rsst_arch == "resnet20" and loaded.rsst_num_classes == NUM_CLASSES
    assert not loaded.training
    assert_same_logits(model, loaded, (3, 32, 32))


def test_run_state_file_loads_as_masked(tmp_path: Path) -> None:
    model, masks = pruned_model("mobilenet")
    run = write_run(tmp_path / "run", model, masks)
    loaded = load_model(run / "state_00" / "weights.safetensors")
    assert_same_logits(model, loaded, (3, 32, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_on_cuda(tmp_path: Path) -> None:
    model, masks = pruned_model("vit_tiny", patch_size=8)
    export_both(tmp_path, model, masks)
    gpu = load_model(tmp_path / "compact.safetensors", device="cuda")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref, got = model(x), gpu(x.cuda()).cpu()
    assert torch.allclose(ref, got, atol=1e-3 * max(float(ref.abs().max()), 1.0))
