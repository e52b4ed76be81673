"""The state machine of SPEC §2 end to end on tiny runs: masks, rewinding, RSST fading, resume.

Runs use ResNet-20 on the synthetic task shrunk to 8x8 pixels (and a 64-image test split), so a
state takes a few CPU seconds; the loop's logic does not depend on the image size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    metrics_lines,
    strip_seconds,
    summary_states,
    tiny_config,
    tiny_dataset,
    tiny_pruning_run,
    tiny_run,
)
from rich.console import Console
from safetensors.torch import load_file

import rsst.loop as loop
from rsst.config import RunConfig
from rsst.loop import PruningRun

pytestmark = pytest.mark.slow  # starts real runs or subprocesses

QUIET = Console(quiet=True)


def config(**kw) -> RunConfig:
    return tiny_config(**{"states": 3, **kw})


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory):
    return tiny_run(config(method="imp"), out=tmp_path_factory.mktemp("r") / "imp",
                    console=QUIET)


@pytest.fixture(scope="module")
def refill_run(tmp_path_factory):
    return tiny_run(config(method="refill"), out=tmp_path_factory.mktemp("r") / "refill",
                    console=QUIET)


RSST = dict(method="rsst", epochs=2)


@pytest.fixture(scope="module")
def rsst_run(tmp_path_factory):
    return tiny_run(config(**RSST), out=tmp_path_factory.mktemp("r") / "rsst", console=QUIET)


# -- masks and sparsity ---------------------------------------------------------------------------
def test_imp_remain_weight_follows_rate(imp_run):
    records = summary_states(imp_run)
    assert [r["state"] for r in records] == [0, 1, 2]
    for s, r in enumerate(records):
        assert r["remain_weight"] == pytest.approx(0.7**s, abs=1e-4)
        assert r["method"] == "imp" and r["backend"] == "torch" and r["device"] == "cpu"
        assert "pending_weight_rms" not in r


def test_run_directory_layout(imp_run):
    assert (imp_run / "config.toml").is_file()
    assert (imp_run / "checkpoint.safetensors").is_file()
    lines = metrics_lines(imp_run)
    assert [(r["kind"], r["state"]) for r in lines] == [
        ("epoch", 0), ("state", 0), ("epoch", 1), ("state", 1), ("epoch", 2), ("state", 2)]
    for r in lines:
        for key in ("train_loss", "train_acc", "val_acc", "test_acc", "reg_lambda"):
            assert key in r, key
    records = summary_states(imp_run)
    for s in range(3):
        folder = imp_run / f"state_{s:02d}"
        assert (folder / "weights.safetensors").is_file()
        state = json.loads((folder / "state.json").read_text())
        assert state["state"] == s
        assert state["remain_weight"] == records[s]["remain_weight"]
        assert state["val_acc"] == records[s]["val_acc"]
    assert not (imp_run / "state_03").exists()


def _check_state_files(run_dir: Path, grouped: bool) -> None:
    records = summary_states(run_dir)
    for s, record in enumerate(records):
        tensors = load_file(str(run_dir / f"state_{s:02d}" / "weights.safetensors"))
        masks = {k[: -len(".mask")]: v for k, v in tensors.items() if k.endswith(".mask")}
        assert masks, "no masks saved"
        assert "conv1.weight" not in masks and "fc.weight" not in masks
        alive = total = 0
        for name, mask in masks.items():
            weight = tensors[name]
            assert mask.shape == weight.shape
            assert torch.count_nonzero(weight[mask == 0]) == 0, (s, name)
            alive += int(mask.sum())
            total += mask.numel()
            if grouped:  # whole output channels, and their BN γ/β zero with them
                rows = mask.reshape(mask.shape[0], -1)
                dead = rows.sum(1) == 0
                assert bool((dead | (rows.sum(1) == rows.shape[1])).all()), (s, name)
                bn = name[:-len(".weight")].replace("conv", "bn")
                bn = bn[:-1] + "1" if bn.endswith("shortcut.0") else bn
                for p in ("weight", "bias"):
                    assert torch.count_nonzero(tensors[f"{bn}.{p}"][dead]) == 0, (s, bn)
        remain = record.get("remain_weight_after_cut", record["remain_weight"])
        assert alive / total == pytest.approx(remain)


def test_pruned_elements_are_zero_in_saved_states(imp_run, refill_run, rsst_run):
    _check_state_files(imp_run, grouped=False)
    _check_state_files(refill_run, grouped=True)
    _check_state_files(rsst_run, grouped=True)


def test_structured_sparsity_never_decreases(refill_run, rsst_run):
    refill = [r["structured_sparsity"]["channel"] for r in summary_states(refill_run)]
    assert refill[0] == 0.0
    assert refill[1] > 0.0 and refill[2] > refill[1]
    records = summary_states(rsst_run)
    before = [r["structured_sparsity"]["channel"] for r in records]
    after = [r.get("structured_sparsity_after_cut", r["structured_sparsity"])["channel"]
             for r in records]
    # RSST cuts one state after Refill would: state 1 still trains the dense structure
    assert before[0] == before[1] == 0.0
    assert after[1] > 0.0 and after[2] > after[1]
    for s in range(2):
        assert before[s + 1] == after[s]  # the cut structure is what the next state trains
    for r in records[1:]:
        assert r["reg_lambda"] == pytest.approx(2.0)  # λ ramps to λ_max over the state
        assert r["remain_weight_after_cut"] < r["remain_weight"]


# -- RSST fading and rewinding, driving PruningRun ------------------------------------------------
def test_rewind_restores_init_masked_and_pending_weights_fade(tmp_path):
    cfg = config(method="rsst", train_subset=256, batch_size=32, momentum=0.0,
                 lr_schedule="constant", reg_granularity=20.0, criteria="l1")
    run = tiny_pruning_run(cfg, tmp_path, QUIET)
    init = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    params = set(run.arena.names)
    assert any(k.endswith("running_var") for k in init)
    seen: dict[int, dict] = {}
    train_state, finish_state = run.train_state, run.finish_state

    def checked_train(state, start_epoch, partial):
        arena = run.arena
        if state > 0:
            hard = arena.hard_mask
            for k, v in run.model.state_dict().items():
                if k in params:
                    expected = init[k] * (arena.view(k, "code") & 1).to(v.dtype)
                else:
                    expected = init[k]
                assert torch.equal(v, expected), f"state {state}: {k} not rewound"
            assert torch.count_nonzero(arena.momentum) == 0 and arena.fresh_momentum
            seen[state] = {"dead_at_start": int((~hard & ~arena.padding_mask()).sum())}
        best = train_state(state, start_epoch, partial)
        hard, pending = arena.hard_mask, arena.pending
        assert torch.count_nonzero(arena.weight[~hard]) == 0
        assert torch.count_nonzero(arena.grad[~hard]) == 0
        if state > 0:
            assert bool((pending <= hard).all()) and bool(pending.any())
            kept = hard & ~pending & run.structure.prunable
            seen[state]["pending_rms"] = float(arena.weight[pending].pow(2).mean().sqrt())
            seen[state]["kept_rms"] = float(arena.weight[kept].pow(2).mean().sqrt())
        else:
            assert not pending.any()
            bn = run.model.layers[0][0].bn1.running_mean
            assert not torch.equal(bn, init["layers.0.0.bn1.running_mean"])
        return best

    def checked_finish(state, best):
        record = finish_state(state, best)
        seen.setdefault(state, {})["record"] = record
        return record

    run.train_state = checked_train
    run.finish_state = checked_finish
    run.run(resume=False)
    assert set(seen) == {0, 1, 2}
    assert seen[1]["dead_at_start"] == 0  # RSST: H is still dense in state 1
    assert seen[2]["dead_at_start"] > 0  # …and state 2 rewinds into the cut structure
    for s in (1, 2):
        # the pending weights fade by orders of magnitude; the kept ones keep their scale
        assert seen[s]["kept_rms"] > 0.02
        assert seen[s]["pending_rms"] < seen[s]["kept_rms"] / 100
        assert seen[s]["record"]["pending_weight_rms"] == pytest.approx(seen[s]["pending_rms"])


# -- resume ---------------------------------------------------------------------------------------
class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", [(1, 1), (2, 0)], ids=["mid-state", "state-boundary"])
def test_resume_reaches_the_same_result(rsst_run, tmp_path, monkeypatch, kill_at):
    out = tmp_path / "killed"
    original = PruningRun.save_checkpoint

    def save_then_die(self, position):
        original(self, position)
        if (position["state"], position["epoch"]) == kill_at:
            raise Killed

    monkeypatch.setattr(PruningRun, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        tiny_run(config(**RSST), out=out, console=QUIET)
    monkeypatch.setattr(PruningRun, "save_checkpoint", original)
    assert not (out / "state_02").exists()
    tiny_run(config(method="imp"), resume=out, console=QUIET)  # the saved config wins

    assert strip_seconds(summary_states(out)) == strip_seconds(summary_states(rsst_run))
    assert metrics_lines(out) == metrics_lines(rsst_run)
    for s in range(3):
        a = load_file(str(out / f"state_{s:02d}" / "weights.safetensors"))
        b = load_file(str(rsst_run / f"state_{s:02d}" / "weights.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (s, k)


def test_cli_config_reproduces_the_run(refill_run, tmp_path, monkeypatch):
    from rsst.cli import main

    out = tmp_path / "again"
    monkeypatch.setattr(loop, "load_run_data", tiny_dataset)  # the CLI path has no data seam
    monkeypatch.setattr(sys, "argv", ["rsst", "run", "--config", str(refill_run / "config.toml"),
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    assert strip_seconds(summary_states(out)) == strip_seconds(summary_states(refill_run))
    a = load_file(str(out / "state_02" / "weights.safetensors"))
    b = load_file(str(refill_run / "state_02" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_layout_and_graph_are_recorded(rsst_run, tmp_path):
    """resnet20 trains NHWC by default; --cuda-graph off CUDA gets a note, not an error."""
    assert {(r["memory_format"], r["cuda_graph"]) for r in summary_states(rsst_run)} == {
        ("channels_last", False)}
    console = Console(record=True, width=200)
    run_dir = tiny_run(config(states=1, memory_format="contiguous", cuda_graph=True),
                       out=tmp_path / "g", console=console)
    assert "--cuda-graph needs the triton backend on CUDA" in console.export_text()
    assert {(r["memory_format"], r["cuda_graph"]) for r in summary_states(run_dir)} == {
        ("contiguous", False)}
