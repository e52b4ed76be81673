"""Model registry: shapes, parameter counts, fx traceability, normalization, error messages."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import fx, nn

from rsst.errors import UserError
from rsst.models import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CNN_MODELS,
    VIT_MODELS,
    Normalize,
    create_model,
    list_models,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Batch-2 forwards gain nothing from 2 threads, and OpenMP spin-waits make a busy 2-core
    box up to 20x slower with them; restore the setting for the other test files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_architecture() -> None:
    assert set(list_models()) == set(CNN_MODELS) | set(VIT_MODELS)


# Big models get a 32 px input anyway (it is what they are built for); batch 2 keeps them quick.
@pytest.mark.parametrize("name", [*CNN_MODELS, *VIT_MODELS])
def test_forward_shape_and_metadata(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, img_size=32).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert model.rsst_arch == name
    assert model.rsst_num_classes == 7
    assert model.rsst_input_size == (3, 32, 32)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet20", 0.272e6), ("resnet32", 0.467e6), ("resnet56", 0.856e6), ("resnet110", 1.731e6),
     ("resnet18", 11.17e6), ("resnet50", 23.52e6), ("vgg16_bn", 14.72e6), ("mobilenet", 3.217e6)],
)  # fmt: skip
def test_parameter_counts(name: str, expected: float) -> None:
    assert n_params(create_model(name)) == pytest.approx(expected, rel=0.01)


def test_cnn_input_sizes_other_than_32() -> None:
    model = create_model("resnet20", num_classes=200, img_size=64).eval()
    assert model.rsst_input_size == (3, 64, 64)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 200)


def _conv_bn_pairs(gm: fx.GraphModule) -> tuple[int, int, int]:
    """(#convs, #convs whose only user is a BatchNorm2d, #residual adds) in the traced graph."""
    modules = dict(gm.named_modules())
    convs = paired = adds = 0
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            convs += 1
            users = list(node.users)
            if (
                len(users) == 1
                and users[0].op == "call_module"
                and isinstance(modules[users[0].target], nn.BatchNorm2d)
            ):
                paired += 1
        if node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add):
            adds += 1
    return convs, paired, adds


@pytest.mark.parametrize("name", CNN_MODELS)
def test_cnn_is_fx_traceable_with_conv_bn_pairs(name: str) -> None:
    model = create_model(name).eval()
    gm = fx.symbolic_trace(model)
    convs, paired, adds = _conv_bn_pairs(gm)
    assert convs > 0 and paired == convs, "every conv must feed exactly its own BatchNorm"
    assert all(not m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    # The first op of the graph after the input is the normalization.
    first = next(n for n in gm.graph.nodes if n.op != "placeholder")
    assert first.op == "get_attr" and first.target.startswith("normalize.")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))
    if name.startswith("resnet"):
        blocks = {"resnet20": 9, "resnet32": 15, "resnet56": 27, "resnet110": 54,
                  "resnet18": 8, "resnet50": 16}[name]  # fmt: skip
        assert adds == blocks


def test_resnet20_uses_projection_shortcuts_where_shape_changes() -> None:
    model = create_model("resnet20")
    shortcuts = [n for n, _ in model.named_modules() if n.endswith("shortcut")]
    assert shortcuts == ["layers.1.0.shortcut", "layers.2.0.shortcut"]


@pytest.mark.parametrize("name", ["resnet20", "vit_tiny", "timm:resnet18"])
def test_normalization_buffers_in_state_dict(name: str) -> None:
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    model = create_model(name, mean=mean, std=std)
    sd = model.state_dict()
    torch.testing.assert_close(sd["normalize.mean"].flatten(), torch.tensor(mean))
    torch.testing.assert_close(sd["normalize.std"].flatten(), torch.tensor(std))
    default = create_model("resnet20").state_dict()
    torch.testing.assert_close(default["normalize.mean"].flatten(), torch.tensor(CIFAR10_MEAN))
    torch.testing.assert_close(default["normalize.std"].flatten(), torch.tensor(CIFAR10_STD))


def test_normalize_math() -> None:
    norm = Normalize((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    out = norm(torch.ones(1, 3, 2, 2))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_vit_defaults_to_patch_4_and_names_blocks_like_timm() -> None:
    model = create_model("vit_tiny", num_classes=10, img_size=32)
    sd = model.state_dict()
    assert sd["net.patch_embed.proj.weight"].shape == (192, 3, 4, 4)
    assert sd["net.blocks.0.attn.qkv.weight"].shape == (3 * 192, 192)
    assert sd["net.blocks.0.mlp.fc1.weight"].shape == (4 * 192, 192)
    assert sd["net.head.weight"].shape == (10, 192)
    assert model.net.patch_embed.num_patches == 64
    assert model.rsst_patch_size is None


def test_vit_custom_patch_and_size() -> None:
    model = create_model("vit_tiny", num_classes=5, img_size=16, patch_size=8).eval()
    assert model.net.patch_embed.num_patches == 4
    assert model.rsst_patch_size == 8
    with torch.no_grad():
        assert model(torch.rand(2, 3, 16, 16)).shape == (2, 5)
    with pytest.raises(UserError, match="multiple of patch_size"):
        create_model("vit_tiny", img_size=32, patch_size=5)


@pytest.mark.parametrize("name", ["timm:resnet18", "timm:vit_tiny_patch16_224"])
def test_timm_prefix(name: str) -> None:
    model = create_model(name, num_classes=3, img_size=32).eval()
    assert model.rsst_arch == name
    assert any(k.startswith("net.") for k in model.state_dict())
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_unknown_names_raise_user_error_listing_choices() -> None:
    with pytest.raises(UserError, match="resnet20") as info:
        create_model("resnet21")
    assert "did you mean" in str(info.value) and "timm:" in str(info.value)
    with pytest.raises(UserError, match="unknown timm model"):
        create_model("timm:not_a_real_model_xyz")
    with pytest.raises(UserError, match="unknown timm model"):
        create_model("timm:")


def test_bad_arguments_raise_user_error() -> None:
    with pytest.raises(UserError, match="no patch size"):
        create_model("resnet20", patch_size=4)
    with pytest.raises(UserError, match="extra options"):
        create_model("resnet20", width=2)
    with pytest.raises(UserError, match="pretrained"):
        create_model("vit_tiny", pretrained=True)
    with pytest.raises(UserError, match="num_classes"):
        create_model("resnet20", num_classes=0)
    with pytest.raises(UserError, match="mean"):
        create_model("resnet20", mean=(0.5, 0.5))
    with pytest.raises(UserError, match="img_size >= 32"):
        create_model("vgg16_bn", img_size=16)
