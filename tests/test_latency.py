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
from rsst.latency import ROUNDS, compacted_copy, compacted_latency, forward_ms
from rsst.models import create_model

QUIET = Console(quiet=True)
pytestmark = pytest.mark.usefixtures("real_latency")  # the other tests' runs time by shape


class Sleeper(nn.Module):
    """A forward pass that takes a known time."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.seconds)
        return x


def test_forward_ms_is_one_forward_pass_in_milliseconds():
    sleeper = Sleeper(0.02)
    ms = forward_ms(sleeper, (3, 8, 8), torch.device("cpu"), batch=2, min_run_time=0.2)
    assert 20.0 <= ms < 30.0  # one pass (not a block of them), in ms (not seconds)
    assert sleeper.calls >= 2  # a warm-up pass, then timed ones


def _half_pruned_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, img_size=8).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.out_channels in (16, 32, 64):
                module.weight[: module.out_channels // 2].zero_()
    return model


def test_compacted_latency_times_dense_and_compacted_in_alternating_rounds(monkeypatch):
    model = _half_pruned_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert count_params(compacted_copy(model)) < count_params(model)
    timed: list[int] = []
    real = rsst.latency.forward_ms

    def recording(net, *args, **kwargs):
        timed.append(count_params(net))
        return real(net, *args, **kwargs)

    monkeypatch.setattr(rsst.latency, "forward_ms", recording)
    first = compacted_latency(model, (3, 8, 8), torch.device("cpu"), min_run_time=0.01)
    assert timed == [count_params(model), count_params(compacted_copy(model))] * ROUNDS
    assert first["latency_ratio"] == first["latency_ms"] / first["dense_latency_ms"]
    again = compacted_latency(model, (3, 8, 8), torch.device("cpu"), dense_ms=7.0,
                              min_run_time=0.01)
    assert len(timed) == 2 * ROUNDS + 1 and again["dense_latency_ms"] == 7.0  # given: reused
    assert again["latency_ratio"] == again["latency_ms"] / 7.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _config(**overrides) -> RunConfig:
    base = dict(method="refill", arch="resnet20", states=2, epochs=1, rate=0.5,
                train_subset=64, val_split=32, batch_size=32, eval_batch_size=256,
                device="cpu", backend="torch", seed=0)
    return validate(RunConfig(**{**base, **overrides}))


@pytest.mark.slow
def test_every_state_records_latency_and_compare_plots_it(tmp_path, monkeypatch):
    dense_timings = []
    real = rsst.latency.compacted_latency

    def recording(model, *args, dense_ms=None, **kwargs):
        dense_timings.append(dense_ms is None)
        return real(model, *args, dense_ms=dense_ms, **kwargs)

    monkeypatch.setattr("rsst.loop.compacted_latency", recording)
    monkeypatch.setattr(rsst.latency, "MIN_RUN_TIME", 0.01)  # real timings, briefly
    run_dir = tiny_run(_config(), out=tmp_path / "run", console=QUIET)
    records = json.loads((run_dir / "summary.json").read_text())["states"]
    assert dense_timings == [True, True]  # the dense network is timed beside every state's
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
