"""Measured latency per state (`rsst.latency`): latency_ms, dense_latency_ms, latency_ratio."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from helpers import tiny_run
from rich.console import Console
from torch import nn

import rsst.latency
from rsst.compact import count_params
from rsst.compare import compare_runs, find_runs
from rsst.config import RunConfig, validate
from rsst.latency import (
    MIN_PAIRS,
    WARMUP_CALLS,
    compacted_copy,
    compacted_latency,
    deployed,
    time_pair,
)
from rsst.models import create_model

QUIET = Console(quiet=True)
pytestmark = pytest.mark.usefixtures("real_latency")  # the other tests' runs time by shape


CALLS: list[str] = []  # module level: `deployed` times copies of the networks


class Sleeper(nn.Module):
    """A forward pass that takes a known time and logs its name."""

    def __init__(self, name: str, seconds: float) -> None:
        super().__init__()
        self.name, self.seconds = name, seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CALLS.append(self.name)
        time.sleep(self.seconds)
        return x


def test_time_pair_times_one_forward_pass_each_in_milliseconds(monkeypatch):
    CALLS.clear()
    monkeypatch.setattr(rsst.latency, "MIN_SAMPLE_S", 0.0)  # one call per sample
    dense_ms, compact_ms = time_pair(Sleeper("d", 0.02), Sleeper("c", 0.01), (3, 8, 8),
                                     torch.device("cpu"), batch=2, min_run_time=0.0)
    assert 20.0 <= dense_ms < 30.0 and 10.0 <= compact_ms < 20.0  # ms of one pass, not blocks
    warm = ["d"] * WARMUP_CALLS + ["c"] * WARMUP_CALLS
    assert CALLS[: len(warm)] == warm
    # then MIN_PAIRS interleaved pairs whose order alternates (going first favours neither)
    assert CALLS[len(warm):] == ["d", "c", "c", "d"] * (MIN_PAIRS // 2)


class Clock:
    """A stand-in for `time` whose `perf_counter` moves only when a `Ticker` runs."""

    now = 0.0

    @classmethod
    def perf_counter(cls) -> float:
        return cls.now


class Ticker(Sleeper):
    """A forward pass that advances `Clock` by a known time (no real waiting: exact counts)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CALLS.append(self.name)
        Clock.now += self.seconds
        return x


def test_time_pair_samples_a_fast_network_in_blocks_of_calls(monkeypatch):
    CALLS.clear()
    monkeypatch.setattr(rsst.latency, "time", Clock)
    monkeypatch.setattr(rsst.latency, "MIN_SAMPLE_S", 0.01)
    dense_ms, compact_ms = time_pair(Ticker("d", 0.004), Ticker("c", 0.0), (3, 8, 8),
                                     torch.device("cpu"), batch=2, min_run_time=0.0)
    timed = CALLS[2 * WARMUP_CALLS:]
    assert timed.count("d") == 3 * MIN_PAIRS  # a sample of >= 10 ms: 3 calls of 4 ms
    assert timed.count("c") == 1000 * MIN_PAIRS  # a no-op: the cap of 1000 calls per sample
    assert dense_ms == pytest.approx(4.0) and compact_ms == 0.0  # per call, not per sample


def test_time_pair_runs_for_its_time_budget():
    CALLS.clear()
    start = time.perf_counter()
    time_pair(Sleeper("d", 0.002), Sleeper("c", 0.002), (3, 8, 8), torch.device("cpu"),
              batch=2, min_run_time=0.3)
    assert time.perf_counter() - start >= 0.3
    assert CALLS.count("d") > MIN_PAIRS  # more pairs than the minimum fit in the budget


class Branchy(nn.Module):
    """A conv + BatchNorm whose forward torch.fx cannot trace (it branches on a value)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) if x.sum() > -1e9 else x


def _trained_bn(model: nn.Module) -> nn.Module:
    """``model`` with BatchNorm statistics and affine terms away from their defaults."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2), m.bias.uniform_(-1, 1)
    return model.eval()


@pytest.mark.parametrize("arch", ["resnet20", "mobilenet"])
def test_deployed_folds_every_batchnorm_and_computes_the_same(arch):
    model = _trained_bn(create_model(arch, num_classes=10, img_size=8))
    folded = deployed(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original kept
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_deployed_times_an_untraceable_network_as_it_is():
    model = _trained_bn(Branchy())
    kept = deployed(model)
    assert isinstance(kept.bn, nn.BatchNorm2d) and kept is not model
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(kept(x), model(x))


def _half_pruned_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, img_size=8).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.out_channels in (16, 32, 64):
                module.weight[: module.out_channels // 2].zero_()
    return model


def test_compacted_latency_times_the_dense_and_the_compacted_network_side_by_side(monkeypatch):
    model = _half_pruned_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert count_params(compacted_copy(model)) < count_params(model)
    timed: list[tuple[int, int]] = []
    real = rsst.latency.time_pair

    def recording(dense, compact, *args, **kwargs):
        timed.append((count_params(dense), count_params(compact)))
        return real(dense, compact, *args, **kwargs)

    monkeypatch.setattr(rsst.latency, "time_pair", recording)
    record = compacted_latency(model, (3, 8, 8), torch.device("cpu"), min_run_time=0.01)
    assert timed == [(count_params(model), count_params(compacted_copy(model)))]
    assert record["latency_ratio"] == record["latency_ms"] / record["dense_latency_ms"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_latency_ratio_is_compacted_over_dense(monkeypatch):
    monkeypatch.setattr(rsst.latency, "compacted_copy", lambda model: Sleeper("c", 0.005))
    record = compacted_latency(Sleeper("d", 0.02), (3, 8, 8), torch.device("cpu"),
                               min_run_time=0.0)
    assert 0.2 < record["latency_ratio"] < 0.35  # 5 ms / 20 ms, plus the timer's overhead


def _config(**overrides) -> RunConfig:
    base = dict(method="refill", arch="resnet20", states=2, epochs=1, rate=0.5,
                train_subset=64, val_split=32, batch_size=32, eval_batch_size=256,
                device="cpu", backend="torch", seed=0)
    return validate(RunConfig(**{**base, **overrides}))


@pytest.mark.slow
def test_every_state_records_latency_and_compare_plots_it(tmp_path, monkeypatch):
    timed = []
    real = rsst.latency.compacted_latency

    def recording(model, *args, **kwargs):
        timed.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr("rsst.loop.compacted_latency", recording)
    monkeypatch.setattr(rsst.latency, "MIN_RUN_TIME", 0.0)  # real timings, briefly
    monkeypatch.setattr(rsst.latency, "MIN_PAIRS", 2)
    run_dir = tiny_run(_config(), out=tmp_path / "run", console=QUIET)
    records = json.loads((run_dir / "summary.json").read_text())["states"]
    assert len(timed) == 2  # every state's network, timed beside its dense shape
    for record in records:
        assert math.isfinite(record["latency_ms"]) and record["latency_ms"] > 0
        assert math.isfinite(record["dense_latency_ms"]) and record["dense_latency_ms"] > 0
        assert record["latency_ratio"] == record["latency_ms"] / record["dense_latency_ms"]
        saved = json.loads((run_dir / f"state_{record['state']:02d}" / "state.json").read_text())
        assert saved["latency_ratio"] == record["latency_ratio"]
    result = compare_runs(find_runs([run_dir]), x="latency")
    points = result["groups"][0]["points"]
    assert [p["x"] for p in points] == [r["latency_ratio"] for r in records]
    assert "latency" in result["x_label"]


@pytest.mark.slow
def test_no_latency_records_none(tmp_path):
    run_dir = tiny_run(_config(states=1, latency=False), out=tmp_path / "run", console=QUIET)
    record = json.loads((run_dir / "summary.json").read_text())["states"][0]
    assert not {"latency_ms", "dense_latency_ms", "latency_ratio"} & set(record)
    result = compare_runs(find_runs([run_dir]), x="latency")
    assert [p["x"] for p in result["groups"][0]["points"]] == [None]
