"""The training engine: one update per step, channels_last inputs, and the CUDA-graph step.

The graph path is tested on the CPU with a stand-in capture that returns the captured function
itself: that covers the warm-up count, the static input buffers, the split of the update into
scalar writes (every step) and the kernel launch (captured), shape and switch changes, and the
fallback when capture fails. The real capture is tested where CUDA is.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from rsst.arena import Arena
from rsst.engine import GRAPH_WARMUP, Engine
from rsst.update import UpdateConfig, make_backend
from rsst_kernels import triton_available

CONFIG = UpdateConfig(momentum=0.9, weight_decay=1e-3, ramp_steps=20, schedule="x",
                      lam_max=1.0)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


def batches(sizes: list[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, 3, 6, 6, generator=gen), torch.randint(0, 4, (n,), generator=gen))
            for n in sizes]


class CountingCapture:
    """Stand-in for `cuda_graph_capture`: records captures, replays by calling the function."""

    def __init__(self, fail: bool = False) -> None:
        self.captures = 0
        self.replays = 0
        self.fail = fail

    def __call__(self, fn, stream):
        self.captures += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")

        def replay() -> None:
            self.replays += 1
            fn()

        return replay


def make_engine(backend: str, capture=None, *, channels_last: bool = False,
                masks: bool = True) -> tuple[Engine, nn.Module, Arena]:
    model = tiny_cnn()
    arena = Arena(model, channels_last=channels_last)
    if masks:  # drawn per parameter, so both layouts get the same masks
        gen = torch.Generator().manual_seed(5)
        for name, slot in arena.slots.items():
            draw = torch.rand(slot.shape, generator=gen)
            arena.view(name, "code").copy_((draw < 0.7).to(torch.uint8)
                                           | (draw < 0.2).to(torch.uint8) * 2)
        arena.set_masks(arena.hard_mask, arena.pending)
    engine = Engine(model, arena, make_backend(backend, "cpu", CONFIG), torch.device("cpu"),
                    capture=capture)
    return engine, model, arena


def train(engine: Engine, data, epochs: int = 1):
    results = []
    for _ in range(epochs):
        results.append(engine.train_epoch(data, lambda i: 0.05 * (1 + i % 3), lambda i: i))
    return results


needs_triton = pytest.mark.skipif(not triton_available("cpu"), reason="triton not installed")


@needs_triton
def test_graphed_step_equals_eager_steps():
    """Warm-up eagerly, capture once, replay for every full batch; the short one runs eagerly."""
    data = batches([8] * 6 + [5])
    eager, eager_model, eager_arena = make_engine("triton")
    capture = CountingCapture()
    graphed, model, arena = make_engine("triton", capture)
    expected = train(eager, data, epochs=2)
    got = train(graphed, data, epochs=2)
    assert capture.captures == 1
    assert capture.replays == 2 * 6 - GRAPH_WARMUP  # full batches after the warm-up
    assert [r.loss for r in got] == [r.loss for r in expected]
    assert [r.acc for r in got] == [r.acc for r in expected]
    for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(arena.momentum, eager_arena.momentum)
    assert torch.count_nonzero(arena.grad) == 0
    assert not arena.fresh_momentum


@needs_triton
def test_graphed_step_under_bf16_autocast():
    """The GPU configuration's autocast (bf16, weight cache off inside the graph), run on the CPU:
    the graphed path still equals eager training step for step."""
    data = batches([8] * 5 + [3])
    runs = []
    for capture in (None, CountingCapture()):
        engine, model, arena = make_engine("triton", capture, channels_last=True)
        engine.autocast = True  # what amp=True means on CUDA
        runs.append((train(engine, data, epochs=2), model))
    assert [r.loss for r in runs[1][0]] == [r.loss for r in runs[0][0]]
    for p, q in zip(runs[0][1].parameters(), runs[1][1].parameters(), strict=True):
        assert torch.equal(p, q)


@needs_triton
def test_fresh_momentum_reaches_a_replayed_step():
    """A state boundary resets momentum between replays: the replay must take buf ← d."""
    data = batches([8] * 4)
    runs = []
    for capture in (None, CountingCapture()):
        engine, model, arena = make_engine("triton", capture)
        train(engine, data)
        arena.reset_momentum()
        train(engine, data)
        runs.append((model, arena))
    assert torch.equal(runs[0][1].weight, runs[1][1].weight)
    assert torch.equal(runs[0][1].momentum, runs[1][1].momentum)


@needs_triton
def test_new_kernel_switches_recapture():
    capture = CountingCapture()
    engine, _, _ = make_engine("triton", capture)
    data = batches([8] * (GRAPH_WARMUP + 2))
    train(engine, data)
    engine.backend.config = dataclasses.replace(CONFIG, ramp_steps=99)  # scalar only: same graph
    train(engine, data)
    assert capture.captures == 1
    engine.backend.config = dataclasses.replace(CONFIG, nesterov=True)  # a constexpr: new graph
    train(engine, data)
    assert capture.captures == 2


@needs_triton
def test_failed_capture_falls_back_to_eager():
    data = batches([8] * 6)
    eager, eager_model, _ = make_engine("triton")
    graphed, model, _ = make_engine("triton", CountingCapture(fail=True))
    train(eager, data)
    train(graphed, data)
    assert graphed.capture is None and "capture failed" in graphed.graph_note
    for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_only_capturable_backends_get_a_graph():
    for backend in ("torch", "eager"):
        engine, _, _ = make_engine(backend, CountingCapture())
        assert engine.capture is None
    if triton_available("cpu"):
        model = tiny_cnn()
        engine = Engine(model, Arena(model), make_backend("triton", "cpu", CONFIG),
                        torch.device("cpu"), compile=True, capture=CountingCapture())
        assert engine.capture is None  # compiled models: torch.compile's own graphs


def test_channels_last_engine_trains_like_contiguous():
    data = batches([8] * 3 + [3])
    plain, plain_model, _ = make_engine("torch")
    nhwc, model, arena = make_engine("torch", channels_last=True)
    expected, got = train(plain, data), train(nhwc, data)
    assert got[0].loss == pytest.approx(expected[0].loss, rel=1e-5)
    for p, q in zip(model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    acc, loss = nhwc.evaluate(data)
    assert (acc, loss) == pytest.approx(plain.evaluate(data), rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels_last", [False, True])
def test_real_cuda_graph_matches_eager_on_gpu(channels_last: bool):
    """On a GPU: the captured step gives the eager step's weights (to bf16-autocast rounding)."""
    device = torch.device("cuda")
    data = [(x.to(device), y.to(device)) for x, y in batches([16] * 8 + [7])]
    runs = []
    for graph in (False, True):
        model = tiny_cnn().to(device)
        arena = Arena(model, channels_last=channels_last)
        engine = Engine(model, arena, make_backend("triton", device, CONFIG), device,
                        cuda_graph=graph)
        results = train(engine, data, epochs=2)
        assert engine.graph_note is None
        runs.append((copy.deepcopy(model).cpu(), results))
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4)
    assert runs[1][1][-1].loss == pytest.approx(runs[0][1][-1].loss, rel=1e-3)


HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


@pytest.mark.parametrize("backend", ["torch", "compiled"])
def test_training_steps_read_nothing_back_from_the_device(monkeypatch: pytest.MonkeyPatch,
                                                          backend: str):
    """The step loop never reads a tensor on the host (each read is a sync on a GPU); progress
    callbacks and the epoch's end are the only reads. Checked with the torch backend and the
    compiled pass (the CPU default; the Triton interpreter itself reads tensors); the fused path
    is checked on a GPU below."""
    engine, _, _ = make_engine(backend, channels_last=True)
    data = batches([8] * 3)
    engine.train_epoch(data[:1], lambda i: 0.05, lambda i: i)  # first step: verify, lazy init
    reads: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    for i, (x, y) in enumerate(data):
        engine._train_step(x, y, 0.05, i)
    monkeypatch.undo()
    assert reads == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_fused_steps_do_not_sync_on_gpu(cuda_graph: bool):
    device = torch.device("cuda")
    model = tiny_cnn().to(device)
    arena = Arena(model, channels_last=True)
    engine = Engine(model, arena, make_backend("triton", device, CONFIG), device,
                    cuda_graph=cuda_graph)
    data = [(x.to(device), y.to(device)) for x, y in batches([16] * (GRAPH_WARMUP + 3))]
    for i, (x, y) in enumerate(data[:GRAPH_WARMUP + 1]):  # warm-up and capture may sync
        engine._train_step(x, y, 0.05, i)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, (x, y) in enumerate(data[GRAPH_WARMUP + 1:]):
            engine._train_step(x, y, 0.05, i)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_triton
def test_compiled_update_goes_through_the_custom_op():
    """Under torch.compile the fused backend calls torch.ops.rsst.fused_update: no graph break,
    same result as the eager launch."""
    import shutil

    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        pytest.skip("no C++ compiler on this machine: torch.compile's CPU backend needs one")
    import torch._dynamo

    runs = []
    for compiled in (False, True):
        engine, model, arena = make_engine("triton")
        x, y = batches([8])[0]
        nn.functional.cross_entropy(model(x), y).backward()
        engine.backend.prepare(arena, 0.05, 3)

        def launch(backend=engine.backend, arena=arena) -> torch.Tensor:
            backend.launch(arena)
            return arena.weight.sum()

        torch._dynamo.reset()
        (torch.compile(launch, fullgraph=True) if compiled else launch)()
        runs.append(arena)
    assert torch.equal(runs[0].weight, runs[1].weight)
    assert torch.equal(runs[0].momentum, runs[1].momentum)
    assert torch.count_nonzero(runs[1].grad) == 0
