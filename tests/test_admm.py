"""``--method admm`` end to end on ResNet-20 (tiny synthetic data): Z, U and the anchor against an
independent top-k projection (global, and per layer with the final prune by |W|), the hard prune
to Z's support at the target, the refilled variant, resume with Z/U restored, and bad input.
The per-step term itself is tested in test_update.py."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from helpers import metrics_lines, strip_seconds, summary_states, tiny_run
from rich.console import Console
from safetensors.torch import load_file

from rsst.config import RunConfig, validate
from rsst.errors import UserError
from rsst.loop import PruningRun
from rsst.methods import get_method
from rsst.methods.admm import ADMM
from rsst.update import TorchBackend, UpdateConfig
from rsst_kernels.compiled_update import SGD_PASS
from rsst_kernels.masks import ANCHORED
from rsst_kernels.scalars import ScalarSlot

QUIET = Console(quiet=True)
TARGET = 0.2


def config(**kw) -> RunConfig:
    base = dict(method="admm", states=2, epochs=3, admm_interval=2, admm_rho=0.05,
                target_remain=TARGET, structure="none", train_subset=128, val_split=64,
                batch_size=64, eval_batch_size=256, device="cpu", backend="torch",
                arch="resnet20", admm_projection="global")
    return validate(RunConfig(**{**base, **kw}))


def _clone(t):
    return None if t is None else t.detach().clone()


@pytest.fixture(scope="module")
def admm_run(tmp_path_factory):
    """One unstructured run (2 states, 3 epochs, Z/U every 2 epochs, global projection) with
    every hook observed."""
    return observed_run(config(), tmp_path_factory.mktemp("admm") / "run")


@pytest.fixture(scope="module")
def admm_layer_run(tmp_path_factory):
    """The same run with the per-layer projection (the default)."""
    return observed_run(config(admm_projection="layer"),
                        tmp_path_factory.mktemp("admm_layer") / "run")


def observed_run(cfg: RunConfig, out):
    seen: dict = {"begin": [], "epochs": [], "launches": []}
    begin, after, launch = ADMM.begin_state, ADMM.after_epoch, TorchBackend.launch

    def observed_launch(self, arena):
        seen["launches"].append((self.config.rho, arena.anchor is not None))
        return launch(self, arena)

    def observed_begin(self, ctx, start_epoch):
        terms = begin(self, ctx, start_epoch)
        seen["arena"], seen["structure"] = ctx.arena, ctx.structure
        seen["begin"].append({
            "state": ctx.state, "terms": terms, "weight": _clone(ctx.arena.weight),
            "hard": ctx.arena.hard_mask.clone(), "code": ctx.arena.code.clone(),
            "support": _clone(self.support), "dual": _clone(self.dual),
            "anchor": _clone(ctx.arena.anchor)})
        return terms

    def observed_after(self, ctx, epoch):
        before = {"weight": _clone(ctx.arena.weight), "dual": _clone(self.dual),
                  "support": _clone(self.support), "anchor": _clone(ctx.arena.anchor)}
        extra = after(self, ctx, epoch)
        seen["epochs"].append({
            "state": ctx.state, "epoch": epoch, "extra": extra, "before": before,
            "after": {"dual": _clone(self.dual), "support": _clone(self.support),
                      "anchor": _clone(ctx.arena.anchor)}})
        return extra

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ADMM, "begin_state", observed_begin)
        mp.setattr(ADMM, "after_epoch", observed_after)
        mp.setattr(TorchBackend, "launch", observed_launch)
        run_dir = tiny_run(cfg, out=out, console=QUIET)
    return run_dir, seen


def independent_support(values: torch.Tensor, scope: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k |value| over the scope by torch.topk (not the code's prune_lowest)."""
    ranked = torch.where(scope, values.double().abs(), torch.tensor(-1.0, dtype=torch.float64))
    support = torch.zeros_like(scope)
    support[torch.topk(ranked, k).indices] = True
    return support


@pytest.mark.slow
def test_z_and_u_start_at_the_projection_of_w(admm_run):
    _, seen = admm_run
    prunable = seen["structure"].prunable
    total = int(prunable.sum())
    first = seen["begin"][0]
    assert first["state"] == 0 and first["terms"] == {"rho": 0.05}
    scope = first["hard"] & prunable
    assert torch.equal(scope, prunable)  # state 0: everything alive
    k = round(TARGET * total)
    expected = independent_support(first["weight"], scope, k)
    assert torch.equal(first["support"], expected) and int(expected.sum()) == k
    assert torch.count_nonzero(first["dual"]) == 0
    torch.testing.assert_close(first["anchor"], torch.where(expected, first["weight"], 0.0),
                               rtol=0, atol=0)
    # the ADMM scope in the code byte is exactly the alive prunable weights
    assert torch.equal((first["code"] & ANCHORED) != 0, scope)


@pytest.mark.slow
def test_z_and_u_update_every_interval_against_an_independent_projection(admm_run):
    _, seen = admm_run
    prunable = seen["structure"].prunable
    k = round(TARGET * int(prunable.sum()))
    epochs = [e for e in seen["epochs"] if e["state"] == 0]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for e in epochs:
        before, after = e["before"], e["after"]
        if e["epoch"] % 2:  # --admm-interval 2: nothing changes after epochs 1 and 3
            assert e["extra"] == {}
            for key in ("dual", "support", "anchor"):
                assert torch.equal(before[key], after[key]), (e["epoch"], key)
            continue
        w = torch.where(prunable, before["weight"], 0.0).double()
        v = w + before["dual"].double()
        support = independent_support(v, prunable, k)
        z = torch.where(support, v, 0.0)
        dual = before["dual"].double() + w - z
        assert torch.equal(after["support"], support)
        torch.testing.assert_close(after["dual"].double(), dual, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(after["anchor"].double(), z - dual, rtol=1e-6, atol=1e-6)
        assert torch.count_nonzero(after["dual"][~prunable]) == 0  # U lives on the scope only
        residual = float((w - z).norm() / w.norm())
        assert e["extra"] == {"admm_primal_residual": pytest.approx(residual, rel=1e-5)}
        assert before["dual"].abs().sum() == 0 and after["dual"].abs().sum() > 0
    # the epoch lines carry the residual exactly on the update epochs
    run_dir, _ = admm_run
    lines = [m for m in metrics_lines(run_dir) if m["kind"] == "epoch"]
    assert [("admm_primal_residual" in m) for m in lines] == [False, True, False] + [False] * 3


@pytest.mark.slow
def test_hard_prune_to_z_support_reaches_the_target(admm_run):
    run_dir, seen = admm_run
    prunable, arena = seen["structure"].prunable, seen["arena"]
    total = int(prunable.sum())
    records = summary_states(run_dir)
    assert [r["method"] for r in records] == ["admm", "admm"]
    assert records[0]["remain_weight"] == 1.0
    # within one weight per layer of the target (global top-k: exactly round(R · total))
    layers = len(seen["structure"].prunable_names)
    assert abs(records[1]["remain_weight"] - TARGET) <= layers / total
    assert records[1]["remain_weight"] == pytest.approx(round(TARGET * total) / total, abs=1e-12)
    # the mask is Z's support from the last update (epoch 2), and state 1 retrained it without
    # the ADMM term
    last_update = [e for e in seen["epochs"] if e["state"] == 0 and e["extra"]][-1]
    assert torch.equal(arena.hard_mask & prunable, last_update["after"]["support"])
    second = seen["begin"][1]
    assert second["state"] == 1 and second["terms"] == {"rho": 0.0}
    # every step of state 0 (2 batches × 3 epochs) ran the update with the term, state 1 without
    assert seen["launches"] == [(0.05, True)] * 6 + [(0.0, True)] * 6
    assert torch.count_nonzero(second["code"] & ANCHORED) == 0
    tensors = load_file(str(run_dir / "state_01" / "weights.safetensors"))
    for name in seen["structure"].prunable_names:
        mask = tensors[f"{name}.mask"].bool()
        assert torch.count_nonzero(tensors[name][~mask]) == 0, name


def layer_support(values: torch.Tensor, scope: torch.Tensor, ranges: list[tuple[int, int]]
                  ) -> torch.Tensor:
    """The paper's projection, independently: in each layer's range the round(R · n_l) largest
    |value| by torch.topk (all weights alive in the first ADMM state)."""
    support = torch.zeros_like(scope)
    for start, stop in ranges:
        k = round(TARGET * (stop - start))
        support[start:stop] = independent_support(values[start:stop], scope[start:stop], k)
    return support


@pytest.mark.slow
def test_layer_projection_holds_every_layer_to_the_fraction(admm_layer_run):
    """--admm-projection layer (the default, the paper's): Z keeps round(R · n_l) weights of
    every layer — at the start, at each update — and the prune after the state keeps each
    layer's largest |W| of the trained weights, not Z's support."""
    assert RunConfig().admm_projection == "layer"
    run_dir, seen = admm_layer_run
    arena, structure = seen["arena"], seen["structure"]
    prunable = structure.prunable
    ranges = [(arena.slots[n].offset, arena.slots[n].stop) for n in structure.prunable_names]
    first = seen["begin"][0]
    assert torch.equal(first["support"], layer_support(first["weight"], prunable, ranges))
    epochs = [e for e in seen["epochs"] if e["state"] == 0]
    update = epochs[1]
    assert update["epoch"] == 2 and update["extra"]
    before = update["before"]
    v = torch.where(prunable, before["weight"], 0.0).double() + before["dual"].double()
    support = layer_support(v, prunable, ranges)
    assert torch.equal(update["after"]["support"], support)
    # the flag matters: the global projection of the same values keeps another set
    assert not torch.equal(support, independent_support(v, prunable, int(support.sum())))
    z = torch.where(support, v, 0.0)
    dual = v - z  # U + W − Z
    torch.testing.assert_close(update["after"]["dual"].double(), dual, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(update["after"]["anchor"].double(), z - dual, rtol=1e-6,
                               atol=1e-6)

    final = epochs[-1]["before"]["weight"]  # W when state 0 ends, i.e. at the prune
    kept = arena.hard_mask & prunable
    assert torch.equal(kept, layer_support(final, prunable, ranges))
    assert not torch.equal(kept, update["after"]["support"])  # |W|, not Z's support
    for start, stop in ranges:
        assert int(kept[start:stop].sum()) == round(TARGET * (stop - start))
    assert summary_states(run_dir)[1]["remain_weight"] == pytest.approx(
        int(kept.sum()) / int(prunable.sum()), abs=1e-12)


@pytest.mark.slow
def test_refilled_variant_keeps_whole_channels(tmp_path):
    run_dir = tiny_run(config(structure="channel", epochs=1, admm_interval=1),
                       out=tmp_path / "refill", console=QUIET)
    records = summary_states(run_dir)
    assert records[1]["structured_sparsity"]["channel"] > 0.3
    tensors = load_file(str(run_dir / "state_01" / "weights.safetensors"))
    masks = {k[: -len(".mask")]: v.bool() for k, v in tensors.items() if k.endswith(".mask")}
    for name, mask in masks.items():
        if mask.dim() == 4:  # every output channel is whole: all alive or all dead
            per_channel = mask.flatten(1)
            assert torch.all(per_channel.all(1) | ~per_channel.any(1)), name
            assert torch.count_nonzero(tensors[name][~mask]) == 0, name


@pytest.mark.slow
@pytest.mark.parametrize("projection,tolerance", [("global", 2e-5), ("layer", 1e-4)])
@pytest.mark.parametrize("target,expected", [(0.25, [1.0, 0.5, 0.25]), (None, [1.0, 0.7, 0.49])],
                         ids=["target-remain", "rate"])
def test_iterative_form(tmp_path, target, expected, projection, tolerance):
    """Three states: two ADMM states (each pruning to its own Z), then masked retraining.
    --target-remain R: R^(1/2) then R of all prunable weights — of every layer's own weights
    with the per-layer projection, whatever the first prune left alive in it; otherwise --rate
    of the alive (per layer: within one weight per layer)."""
    run_dir = tiny_run(config(states=3, epochs=1, admm_interval=1, target_remain=target,
                              rate=0.3, admm_projection=projection),
                       out=tmp_path / "iterative", console=QUIET)
    remain = [r["remain_weight"] for r in summary_states(run_dir)]
    assert remain == pytest.approx(expected, abs=tolerance)


@pytest.mark.slow
def test_backends_run_the_same_admm(tmp_path):
    """The run-level path of each backend (the Triton kernel under the interpreter on CPU; the
    compiled pass, `auto` on the CPU, really compiled rather than its twin): same Z support, same
    pruned network to float32 rounding."""
    runs = {}
    for backend in ("torch", "eager", "triton", "compiled"):
        run_dir = tiny_run(config(states=2, epochs=1, admm_interval=1, backend=backend),
                           out=tmp_path / backend, console=QUIET)
        runs[backend] = load_file(str(run_dir / "state_01" / "weights.safetensors"))
    assert not SGD_PASS.failed, SGD_PASS.failure
    base = runs["torch"]
    for backend, tensors in runs.items():
        assert tensors.keys() == base.keys()
        for key, value in tensors.items():
            if key.endswith(".mask"):
                assert torch.equal(value, base[key]), (backend, key)
            elif value.is_floating_point():
                torch.testing.assert_close(value, base[key], rtol=1e-4, atol=1e-5,
                                           msg=f"{backend} {key}")


class Killed(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [(0, 1), (0, 3)], ids=["mid-admm-state", "before-prune"])
def test_resume_restores_z_and_u(admm_run, tmp_path, monkeypatch, kill_at):
    reference, _ = admm_run
    out = tmp_path / "killed"
    original = PruningRun.save_checkpoint

    def save_then_die(self, position):
        original(self, position)
        if (position["state"], position["epoch"]) == kill_at:
            raise Killed

    monkeypatch.setattr(PruningRun, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        tiny_run(config(), out=out, console=QUIET)
    monkeypatch.setattr(PruningRun, "save_checkpoint", original)
    saved = load_file(str(out / "checkpoint.safetensors"))
    assert {"method.anchor", "method.dual", "method.support"} <= set(saved)
    assert {"arena.code", "arena.momentum"} <= set(saved)  # beside the arena's own state
    tiny_run(config(), resume=out, console=QUIET)
    assert strip_seconds(summary_states(out)) == strip_seconds(summary_states(reference))
    assert metrics_lines(out) == metrics_lines(reference)
    for s in range(2):
        a = load_file(str(out / f"state_{s:02d}" / "weights.safetensors"))
        b = load_file(str(reference / f"state_{s:02d}" / "weights.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (s, k)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,phrase", [
    (["--admm-rho", "0"], "--admm-rho must be > 0"),
    (["--admm-rho", "-1"], "--admm-rho must be > 0"),
    (["--admm-rho", "nan"], "--admm-rho nan is not a finite number"),
    (["--admm-rho", "inf"], "--admm-rho inf is not a finite number"),
    (["--admm-interval", "0"], "--admm-interval must be ≥ 1"),
    (["--admm-interval", "3"], "--admm-interval 3 is longer than --epochs 1"),
    (["--states", "1"], "--method admm needs --states 2 or more"),
    (["--target-remain", "0"], "--target-remain 0.0 is outside (0, 1]"),
    (["--target-remain", "1.5"], "--target-remain 1.5 is outside (0, 1]"),
], ids=["rho-0", "rho-negative", "rho-nan", "rho-inf", "interval-0", "interval-long",
        "one-state", "target-0", "target-above-1"])
def test_bad_admm_flags(tmp_path, monkeypatch, capsys, args, phrase):
    from rsst.cli import main

    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rsst", "run", "--method", "admm", "--out", str(out),
                                      "--train-subset", "64", "--states", "2", "--epochs", "1",
                                      "--device", "cpu", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert phrase in lines[0], lines[0]
    assert not out.exists()


def test_admm_refuses_a_non_sgd_optimizer():
    """ADMM's term is part of the SGD update only: the method's check refuses AdamW with one
    line, and the update config refuses ρ > 0 with AdamW should anything get past it."""
    bad = dataclasses.replace(config(), optimizer="adamw")
    with pytest.raises(UserError, match="--method admm needs --optimizer sgd"):
        get_method("admm").check(bad)
    with pytest.raises(UserError, match="--optimizer sgd"):
        UpdateConfig(optimizer="adamw", rho=0.5)
    assert UpdateConfig(optimizer="adamw").scalars(0.1, 0, True)[ScalarSlot.RHO] == 0.0

