"""The method registry: imp/refill/rsst give the pre-registry results, and a new method is one
class plus one register call, run by `rsst.loop` unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_config, tiny_run
from rich.console import Console
from safetensors.torch import load_file

from rsst import config as rsst_config
from rsst.errors import UserError
from rsst.methods import (
    Method,
    PruneContext,
    get_method,
    method_names,
    register_method,
    unregister_method,
)

QUIET = Console(quiet=True)


tiny = tiny_config


def states(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "summary.json").read_text())["states"]


# Recorded from the pre-registry code (commit 69bcb0c, PYTHONPATH=/work/main) running
# `tiny(method=m)` on tiny data: the refactor must not change a single number. Re-keyed (same
# numbers) when `val_acc` / `test_acc` became the saved network's: the old ``*_after_cut`` values
# are now ``val_acc`` / ``test_acc``, the old pre-cut ``val_acc`` / ``last_test_acc`` are
# ``*_before_cut``, and the best-val epoch's test accuracy is ``test_acc_at_best_val``.
_STATE0 = {"remain_weight": 1.0, "structured_sparsity": {"channel": 0.0}, "val_acc": 0.109375,
           "best_val_acc": 0.109375, "test_acc": 0.0625, "test_acc_at_best_val": 0.0625,
           "train_loss": 2.4048537015914917}
PINNED = {
    "imp": [_STATE0, {
        "remain_weight": 0.7000007412239089, "structured_sparsity": {"channel": 0.0},
        "val_acc": 0.09375, "best_val_acc": 0.09375, "test_acc": 0.078125,
        "test_acc_at_best_val": 0.078125, "train_loss": 2.417873740196228}],
    "refill": [_STATE0, {
        "remain_weight": 0.6893382352941176, "structured_sparsity": {"channel": 0.2682291666666667},
        "val_acc": 0.109375, "best_val_acc": 0.109375, "test_acc": 0.078125,
        "test_acc_at_best_val": 0.078125, "train_loss": 2.4145917892456055}],
    "rsst": [_STATE0, {
        "remain_weight": 1.0, "structured_sparsity": {"channel": 0.0},
        "val_acc_before_cut": 0.09375, "best_val_acc": 0.09375, "test_acc_before_cut": 0.0625,
        "test_acc_at_best_val": 0.0625, "train_loss": 2.4153112173080444,
        "val_acc": 0.15625, "test_acc": 0.0625, "remain_weight_after_cut": 0.6893382352941176,
        "structured_sparsity_after_cut": {"channel": 0.2682291666666667},
        "pending_weight_rms": 0.07238321006298065}],
}


def _close(got, want, path: str) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _close(got[k], want[k], f"{path}.{k}")
    else:
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6), (path, got, want)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["imp", "refill", "rsst"])
def test_summary_pinned_to_pre_registry_code(method, tmp_path):
    records = states(tiny_run(tiny(method=method), out=tmp_path / method, console=QUIET))
    assert len(records) == 2
    for s, want in enumerate(PINNED[method]):
        got = {k: records[s].get(k) for k in want}
        _close(got, want, f"{method}[{s}]")
        if "pending_weight_rms" not in want:
            assert "pending_weight_rms" not in records[s]


def test_registry_names_and_config_choices():
    assert method_names()[:3] == ("rsst", "refill", "imp")
    assert rsst_config.METHODS == method_names()
    imp, refill, rsst = (get_method(n) for n in ("imp", "refill", "rsst"))
    assert (imp.refill, imp.soft, refill.refill, refill.soft, rsst.refill, rsst.soft) == (
        False, False, True, False, True, True)
    config = tiny()
    assert rsst.update_terms(config) == {"schedule": config.schedule,
                                         "lam_max": config.reg_granularity,
                                         "exponents": config.exponents,
                                         "block_loss_grad": config.block_loss_grad}
    assert imp.update_terms(config) == {} and refill.update_terms(config) == {}
    with pytest.raises(UserError, match="unknown method 'lottery'"):
        get_method("lottery")
    with pytest.raises(UserError, match="unknown method 'lottery'"):
        tiny(method="lottery")


def test_registering_a_name_twice_is_refused():
    class Other(Method):
        name = "imp"

    with pytest.raises(ValueError, match="registered twice"):
        register_method(Other)
    assert get_method("imp").__class__.__name__ == "IMP"


# -- a method the state machine has never seen -------------------------------------------------
SEEN: dict[str, object] = {}


class LargestFirstAtInit(Method):
    """Prunes once, at initialization, half of the prunable weights — the LARGEST |w| first —
    hard, and never again: everything the default magnitude method does not do."""

    name = "toy-largest-first"

    def prunes_at_init(self, config):
        return True

    def prunes_after_state(self, state, config):
        return False

    def score(self, ctx: PruneContext) -> torch.Tensor:
        SEEN["state"] = ctx.state
        SEEN["init"] = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
        SEEN["batches"] = len(ctx.batches(2))
        return -ctx.arena.weight.abs()

    def removal_count(self, alive, total, config, state=-1):
        SEEN["alive_total"] = (alive, total)
        return total // 2


@pytest.fixture
def toy_method():
    register_method(LargestFirstAtInit)
    yield LargestFirstAtInit.name
    unregister_method(LargestFirstAtInit.name)


@pytest.mark.slow
def test_a_new_method_runs_through_the_loop_unchanged(toy_method, tmp_path):
    run_dir = tiny_run(tiny(method=toy_method), out=tmp_path / "toy", console=QUIET)
    records = states(run_dir)
    alive, total = SEEN["alive_total"]
    assert SEEN["state"] == -1 and SEEN["batches"] == 2 and alive == total
    expected_remain = (total - total // 2) / total
    assert [r["remain_weight"] for r in records] == pytest.approx([expected_remain] * 2)
    assert [r["method"] for r in records] == [toy_method] * 2
    assert all("pending_weight_rms" not in r for r in records)

    # independently of the arena: the weights that died are exactly the largest |w| at init
    tensors = load_file(str(run_dir / "state_00" / "weights.safetensors"))
    masks = {k[: -len(".mask")]: v.bool() for k, v in tensors.items() if k.endswith(".mask")}
    init = SEEN["init"]
    kept = torch.cat([init[n][m].abs().flatten() for n, m in masks.items()])
    dead = torch.cat([init[n][~m].abs().flatten() for n, m in masks.items()])
    assert dead.numel() == total // 2 and kept.numel() + dead.numel() == total
    assert float(kept.max()) <= float(dead.min())
    for name, mask in masks.items():  # hard: pruned weights are zero in the saved state
        assert torch.count_nonzero(tensors[name][~mask]) == 0, name
    later = load_file(str(run_dir / "state_01" / "weights.safetensors"))
    assert all(torch.equal(later[f"{n}.mask"].bool(), m) for n, m in masks.items())
