"""The flat parameter arena: shared storage, training equivalence with torch SGD, the traps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rsst.arena import ALIGN, Arena, ArenaError, UpdateBackend
from rsst.update import BACKENDS, UpdateConfig, make_backend
from rsst_kernels.fused_update import triton_available


class Tiny(nn.Module):
    """Conv (no bias) + BN + conv with bias + linear with bias: every kind of trainable tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1, bias=True)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def batches(n: int = 6):
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 6, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(n)]


def test_views_share_storage_before_and_after_backward():
    torch.manual_seed(0)
    model = Tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    arena = Arena(model)
    for name, p in model.named_parameters():
        slot = arena.slots[name]
        assert slot.offset % ALIGN == 0
        assert p.data_ptr() == arena.weight[slot.offset:].data_ptr()
        assert torch.equal(p.detach(), before[name])
        assert p.grad.data_ptr() == arena.grad[slot.offset:].data_ptr()
    x, y = batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        slot = arena.slots[name]
        assert p.grad.data_ptr() == arena.grad[slot.offset:].data_ptr()
        assert torch.equal(arena.view(name, "grad"), p.grad)
    assert arena.grad.abs().sum() > 0
    arena.verify()
    arena.zero_grad()
    assert torch.count_nonzero(arena.grad) == 0 and all(
        torch.count_nonzero(p.grad) == 0 for p in model.parameters()
    )


def test_padding_is_dead_and_parameters_alive():
    arena = Arena(Tiny())
    pad = arena.padding_mask()
    assert pad.any(), "the Tiny model's sizes need alignment padding"
    assert torch.all(arena.code[pad] == 0)
    assert torch.all(arena.code[~pad] == 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nesterov", [False, True])
def test_trains_like_torch_sgd(backend, nesterov):
    if backend == "triton" and not triton_available("cpu"):
        pytest.skip("triton not installed")
    torch.manual_seed(0)
    reference = Tiny()
    model = copy.deepcopy(reference)
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3,
                          nesterov=nesterov)
    ref_losses = []
    for x, y in batches():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(reference(x), y)
        loss.backward()
        opt.step()
        ref_losses.append(loss.item())

    arena = Arena(model)
    update = make_backend(backend, "cpu", UpdateConfig(momentum=0.9, weight_decay=1e-3,
                                                       nesterov=nesterov))
    losses = []
    for t, (x, y) in enumerate(batches()):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        arena.step(update, 0.05, t)
        losses.append(loss.item())
    assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_training_keeps_pruned_exactly_zero(backend):
    if backend == "triton" and not triton_available("cpu"):
        pytest.skip("triton not installed")
    torch.manual_seed(1)
    model = Tiny()
    arena = Arena(model)
    hard = torch.rand(arena.numel) > 0.5
    pending = torch.rand(arena.numel) > 0.7
    arena.set_masks(hard, pending)
    dead = ~arena.hard_mask
    assert torch.all(arena.weight[dead] == 0)
    update = make_backend(backend, "cpu", UpdateConfig(ramp_steps=6, schedule="x", lam_max=2.0))
    for t, (x, y) in enumerate(batches()):
        nn.functional.cross_entropy(model(x), y).backward()
        arena.step(update, 0.1, t)
        assert torch.all(arena.weight[dead] == 0)
        assert torch.all(arena.momentum[dead] == 0)


def test_set_masks_restricts_pending_to_alive():
    arena = Arena(Tiny())
    hard = torch.zeros(arena.numel, dtype=torch.bool)
    hard[:10] = True
    pending = torch.ones(arena.numel, dtype=torch.bool)
    arena.set_masks(hard, pending)
    assert torch.equal(arena.pending, hard & ~arena.padding_mask())
    assert arena.has_pending


def test_moving_the_model_after_building_is_detected():
    model = Tiny()
    arena = Arena(model)
    model.to(memory_format=torch.channels_last)
    with pytest.raises(ArenaError, match="moved or converted"):
        arena.verify()


def test_replacing_parameter_data_is_detected():
    model = Tiny()
    arena = Arena(model)
    model.fc.weight.data = model.fc.weight.data.clone()
    with pytest.raises(ArenaError, match="no longer lives in the arena"):
        arena.step(make_backend("torch", "cpu"), 0.1, 0)


def test_set_to_none_is_detected():
    model = Tiny()
    arena = Arena(model)
    model.zero_grad(set_to_none=True)
    with pytest.raises(ArenaError, match="arena.zero_grad"):
        arena.verify()


def test_rejects_non_fp32():
    with pytest.raises(ArenaError, match="fp32"):
        Arena(Tiny().double())


# -- channels_last layout -------------------------------------------------------------------------
def test_channels_last_arena_holds_nhwc_views():
    torch.manual_seed(0)
    model = Tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    arena = Arena(model, channels_last=True)
    for name, p in model.named_parameters():
        slot = arena.slots[name]
        assert slot.channels_last == (p.dim() == 4)
        assert p.data_ptr() == arena.weight[slot.offset:].data_ptr()
        assert torch.equal(p.detach(), before[name])
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last)
            assert not p.is_contiguous()
            # the flat slice holds [O, kh, kw, I]
            o, i, h, w = p.shape
            flat = arena.weight[slot.offset:slot.stop]
            assert torch.equal(flat, before[name].permute(0, 2, 3, 1).reshape(-1))
    x, y = batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():  # autograd accumulated into the NHWC grad views
        assert p.grad.data_ptr() == arena.grad[arena.slots[name].offset:].data_ptr()
        assert p.grad.stride() == p.stride()
    arena.verify()


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_trains_like_contiguous(backend):
    """Same masks (by parameter position), same updates: the layout changes nothing but order."""
    if backend == "triton" and not triton_available("cpu"):
        pytest.skip("triton not installed")
    torch.manual_seed(2)
    models = [Tiny(), None]
    models[1] = copy.deepcopy(models[0])
    arenas = [Arena(models[0]), Arena(models[1], channels_last=True)]
    gen = torch.Generator().manual_seed(3)
    for name, slot in arenas[0].slots.items():  # draw masks per parameter, install in both
        draw = torch.rand(slot.shape, generator=gen)
        for arena in arenas:
            arena.view(name, "code").copy_(((draw < 0.7).to(torch.uint8))
                                           | ((draw < 0.2).to(torch.uint8) * 2))
    for arena in arenas:
        arena.set_masks(arena.hard_mask, arena.pending)
    config = UpdateConfig(weight_decay=1e-3, ramp_steps=6, schedule="x^2", lam_max=1.5)
    for model, arena in zip(models, arenas, strict=True):
        update = make_backend(backend, "cpu", config)
        for t, (x, y) in enumerate(batches(4)):
            nn.functional.cross_entropy(model(x), y).backward()
            arena.step(update, 0.05, t)
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(arenas[1].view(name, "momentum"),
                                   arenas[0].view(name, "momentum"), rtol=1e-5, atol=1e-6)


def test_state_dict_is_canonical_across_layouts():
    """A checkpoint of one layout loads into the other: code and momentum per parameter agree."""
    torch.manual_seed(4)
    source = Arena(Tiny(), channels_last=True)
    source.momentum.copy_(torch.randn(source.numel))
    source.set_masks(torch.rand(source.numel) > 0.3, torch.rand(source.numel) > 0.8)
    state = source.state_dict()
    for target in (Arena(Tiny()), Arena(Tiny(), channels_last=True)):
        target.load_state_dict(state)
        assert target.has_pending == source.has_pending
        for name in source.names:
            for buffer in ("code", "momentum"):
                assert torch.equal(target.view(name, buffer), source.view(name, buffer)), name
    plain = Arena(Tiny())
    plain.load_state_dict(state)
    assert torch.equal(plain.state_dict()["code"], state["code"])


def test_losing_the_nhwc_layout_is_detected():
    model = Tiny()
    arena = Arena(model, channels_last=True)
    model.to(memory_format=torch.contiguous_format)
    with pytest.raises(ArenaError, match="memory format"):
        arena.verify()


@pytest.mark.parametrize("backend", BACKENDS)
def test_prepare_then_launch_is_one_step(backend):
    """Every backend implements the one protocol: `prepare` + `launch` does what `step` does."""
    if backend == "triton" and not triton_available("cpu"):
        pytest.skip("triton not installed")
    config = UpdateConfig(ramp_steps=4, schedule="x", lam_max=0.5, weight_decay=1e-3)
    arenas, lams = [], []
    for halves in (False, True):
        torch.manual_seed(2)
        model = Tiny()
        arena = Arena(model)
        arena.set_masks(torch.rand(arena.numel) > 0.3, torch.rand(arena.numel) > 0.6)
        update = make_backend(backend, "cpu", config)
        assert isinstance(update, UpdateBackend)
        x, y = batches(1)[0]
        nn.functional.cross_entropy(model(x), y).backward()
        if halves:
            lams.append(update.prepare(arena, 0.1, 2))
            update.launch(arena)
        else:
            lams.append(arena.step(update, 0.1, 2))
        arenas.append(arena)
    assert lams[0] == lams[1] == pytest.approx(0.5 * 3 / 4)
    for buffer in ("weight", "momentum", "grad"):
        torch.testing.assert_close(getattr(arenas[1], buffer), getattr(arenas[0], buffer),
                                   rtol=0, atol=0, msg=buffer)
    assert torch.count_nonzero(arenas[0].grad) == 0


@pytest.mark.parametrize("backend", ["torch", "eager"])
def test_launch_without_prepare_is_an_error(backend):
    arena = Arena(Tiny())
    with pytest.raises(RuntimeError, match="prepare"):
        make_backend(backend, "cpu").launch(arena)
