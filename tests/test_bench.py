"""The bench suites (step, train, plot, CLI wiring) and the fused update's custom op, on CPU.

Tiny settings throughout: these tests check that every suite runs and emits well-formed records
of the Bench output contract; performance is never asserted.
"""

from __future__ import annotations

import importlib
import io
import json
import shutil
import sys

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from rsst.cli import app
from rsst.data import ImageSet
from rsst.errors import UserError
from rsst.update import step
from rsst_bench import common
from rsst_bench import step as step_suite
from rsst_bench import train as train_suite
from rsst_bench import update as update_suite
from rsst_bench.plot import plot_results, require_matplotlib
from rsst_kernels.fused_update import HYPER_SLOTS, fused_update_op

CPU = torch.device("cpu")
CONTRACT = ("suite", "model", "path", "device", "median_ms")


def quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


def tiny_images(n: int = 16) -> ImageSet:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n) % 10)


# -- update suite -------------------------------------------------------------------------------
@pytest.mark.slow
def test_update_suite_records() -> None:
    records = update_suite.run(CPU, models=["resnet20"], console=quiet(), quick=True)
    assert [r["path"] for r in records] == [  # no triton on CPU
        "compiled", "torch", "eager", "copy", "compiled-adamw", "torch-adamw", "eager-adamw",
        "copy-adamw", "seed", "torch-pruning"]
    by_path = {r["path"]: r for r in records}
    peer_row = by_path.pop("torch-pruning")
    records = list(by_path.values())
    if peer_row["status"] is None:  # installed: timed with the others, SGD rows compare to it
        assert peer_row["median_ms"] > 0 and peer_row["vs_peer"] == 1.0
        assert by_path["compiled"]["vs_peer"] == pytest.approx(
            peer_row["median_ms"] / by_path["compiled"]["median_ms"])
    else:
        assert peer_row["status"].startswith("not installed") and peer_row["median_ms"] is None
    for r in records:
        assert all(r[k] is not None for k in CONTRACT)
        nbytes = 25 if r["optimizer"] == "sgd" else 33
        assert r["suite"] == "update" and r["bytes_per_elem"] == nbytes
        assert r["gbps"] == pytest.approx(nbytes * r["numel"] / (r["median_ms"] * 1e-3) / 1e9)
        assert r["min_ms"] <= r["median_ms"] and r["spread_pct"] >= 0 and r["samples"] == 3
        assert r["threads"] == torch.get_num_threads() and r["load_avg_before"] >= 0
        assert r["numel"] % 16 == 0 and r["numel"] >= r["params"] == 272_474
        assert 0.5 < r["alive"] < 0.7 and 0.05 < r["pending"] < 0.15
        copy = by_path["copy" if r["optimizer"] == "sgd" else "copy-adamw"]
        assert r["pct_of_copy"] == pytest.approx(100 * copy["median_ms"] / r["median_ms"])
    assert by_path["eager"]["vs_eager"] == 1.0 and by_path["seed"]["vs_seed"] == 1.0
    assert by_path["eager-adamw"]["vs_eager"] == 1.0 and by_path["torch-adamw"]["vs_seed"] is None
    assert by_path["compiled"]["vs_eager"] == pytest.approx(
        by_path["eager"]["median_ms"] / by_path["compiled"]["median_ms"])


def test_samples_are_interleaved_and_long_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounds rotate the order; a variant faster than min_sample_ms gets more calls per sample;
    every variant gets its warm-up calls before the first sample."""
    log: list[tuple[str, int]] = []
    per_call = {"fast": 0.5, "slow": 30.0}

    def fake_sample_ms(fn, device, number):
        for _ in range(number):
            fn()
        log.append((fn.name, number))
        return per_call[fn.name]

    def variant(name):
        def fn():
            calls[name] += 1
        fn.name = name
        return fn

    calls = {"fast": 0, "slow": 0}
    monkeypatch.setattr(common, "sample_ms", fake_sample_ms)
    counts: dict[str, int] = {}
    samples = common.interleaved_ms({"fast": variant("fast"), "slow": variant("slow")}, CPU,
                                    warmup=3, rounds=3, min_sample_ms=20.0, calls=counts)
    assert counts == {"fast": 40, "slow": 1}
    timed = log[2:]  # after the two one-call estimates
    assert [name for name, _ in timed] == ["fast", "slow", "slow", "fast", "fast", "slow"]
    assert samples == {"fast": [0.5] * 3, "slow": [30.0] * 3}
    assert calls == {"fast": 3 + 3 * 40, "slow": 3 + 3}
    assert common.summary([1.0, 2.0, 4.0]) == {"min_ms": 1.0, "median_ms": 2.0,
                                               "spread_pct": 150.0, "samples": 3}


def test_cuda_samples_are_blocks_of_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA a sample is CUDA_BLOCK back-to-back calls and the figure is per call."""
    numbers = []

    def fake_sample_ms(fn, device, number):
        numbers.append(number)
        return 5.0

    monkeypatch.setattr(common, "sample_ms", fake_sample_ms)
    ms = update_suite.time_block_ms(lambda: None, torch.device("cuda"), warmup=0, repeats=2)
    assert numbers == [update_suite.CUDA_BLOCK] * 2 and ms == 5.0
    numbers.clear()
    assert update_suite.time_block_ms(lambda: None, CPU, warmup=0, repeats=1) == 5.0
    assert numbers == [1]


@pytest.mark.slow
def test_inference_suite_interleaves_and_reports_spread() -> None:
    from rsst_bench import inference as inference_suite

    records = inference_suite.run(CPU, models=["resnet20"], console=quiet(), quick=True)
    assert [(r["path"], r["batch"]) for r in records] == [
        ("dense", 1), ("compact", 1), ("dense", 32), ("compact", 32)]
    for dense, compact in (records[:2], records[2:]):
        assert compact["speedup"] == pytest.approx(dense["median_ms"] / compact["median_ms"])
        assert compact["speedup_min"] == pytest.approx(dense["min_ms"] / compact["min_ms"])
        for r in (dense, compact):
            assert r["warmup_calls"] >= 3 and r["samples"] == 3 and r["calls_per_sample"] >= 1
            assert r["min_ms"] <= r["median_ms"] and r["threads"] >= 1


# -- step suite ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_step_suite_records() -> None:
    settings = step_suite.StepSettings(batch=2, warmup=1, rounds=1, block=1)
    records = step_suite.run(CPU, models=["resnet20"], console=quiet(), settings=settings)
    # no triton on CPU
    assert [r["path"] for r in records] == ["dense", "seed", "eager", "torch", "compiled",
                                            "torch-pruning"]
    if records[-1]["status"] is not None:  # torch_pruning not installed: a row that says so
        assert records.pop()["median_ms"] is None
    for r in records:
        assert all(r[k] is not None for k in CONTRACT)
        assert (r["suite"], r["model"], r["device"], r["batch"]) == ("step", "resnet20", "cpu", 2)
        assert r["median_ms"] > 0 and r["images_per_s"] > 0
        assert r["overhead_pct"] == pytest.approx(100 * (r["vs_dense"] - 1))
    dense = records[0]
    assert dense["overhead_pct"] == 0.0 and dense["alive"] == 1.0
    arena_paths = [r for r in records if r["path"] in ("eager", "torch", "compiled")]
    assert all(0.5 < r["alive"] < 0.7 and 0.05 < r["pending"] < 0.15 for r in arena_paths)
    for r in records:
        assert r["min_ms"] <= r["median_ms"] and r["threads"] >= 1 and r["load_avg"] >= 0
        if r["mem_kind"] is not None:  # Linux: peak RSS above the pre-build baseline
            assert r["peak_mem_mb"] > 0
            assert r["extra_mem_mb"] == pytest.approx(r["peak_mem_mb"] - dense["peak_mem_mb"])


def test_step_paths_keep_pruned_weights_zero() -> None:
    """Each RSST path trains for real: pruned weights stay exactly zero after several steps."""
    config = step_suite.UpdateConfig(weight_decay=5e-4, ramp_steps=10)
    for path in ("eager", "torch", "compiled"):
        runner = step_suite.StepRunner(path, "resnet20", CPU, 2, config)
        for _ in range(3):
            runner()
        arena = runner.arena
        assert arena is not None
        assert torch.count_nonzero(arena.weight[~arena.hard_mask]) == 0
        assert torch.count_nonzero(arena.grad) == 0  # backends leave the grad zeroed
    seed = step_suite.StepRunner("seed", "resnet20", CPU, 2, config)
    seed()
    pruned = [m for m in seed.model.modules() if hasattr(m, "weight_mask")]
    assert pruned, "the seed path must carry torch.nn.utils.prune masks"
    for module in pruned:  # the research forward: weight = weight_orig * mask
        assert torch.count_nonzero(module.weight[module.weight_mask == 0]) == 0


# -- train suite --------------------------------------------------------------------------------
TINY_TRAIN = train_suite.TrainSettings(batch=4, warmup=0, chunks=1, steps=2, compile_models=())


@pytest.mark.slow
def test_train_suite_records() -> None:
    records = train_suite.run(CPU, models=["resnet20", "vit_tiny"], console=quiet(),
                              settings=TINY_TRAIN, data=tiny_images())
    scaling = records.pop()  # one CPU: the data-parallel scaling row says it is unmeasured
    assert scaling["path"] == "scaling" and scaling["status"] == "unmeasured"
    assert scaling["images_per_s"] is None
    # compile_models=(): no compiled variant; the CNN also runs row-major to show the layout gain
    assert [(r["model"], r["variant"], r["memory_format"]) for r in records] == [
        ("resnet20", "eager", "channels_last"), ("resnet20", "nchw", "contiguous"),
        ("vit_tiny", "eager", "contiguous")]
    for r in records:
        assert all(r[k] is not None for k in CONTRACT)
        assert r["suite"] == "train" and r["path"] == "compiled" and r["compile"] is False
        assert r["min_ms"] <= r["median_ms"] and r["threads"] >= 1
        assert r["cuda_graph"] is False
        assert r["epoch_s"] == pytest.approx(train_suite.EPOCH_IMAGES / r["images_per_s"])
        assert r["steps_measured"] == 2 and r["batch"] == 4


@pytest.mark.slow
def test_train_suite_records_compile_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch.compile that fails (no compiler, unsupported op) is recorded, not fatal."""

    def broken_compile(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no C compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    settings = train_suite.TrainSettings(batch=4, warmup=0, chunks=1, steps=1)
    console = quiet()
    records = train_suite.run(CPU, models=["resnet20"], console=console, settings=settings,
                              data=tiny_images())
    plain, nchw, compiled, _scaling = records
    assert plain["compile"] is False and plain["median_ms"] > 0 and nchw["median_ms"] > 0
    assert compiled["compile"] is True and compiled["median_ms"] is None
    assert compiled["error"] == "RuntimeError: no C compiler here"
    assert "resnet20 compile: failed here" in console.file.getvalue()


def test_cpu_compiles_small_models_unless_asked() -> None:
    """A cold compile costs ~1 min per model on a small CPU: by default only two compile."""
    settings = train_suite.TrainSettings.for_device
    assert settings(CPU, quick=False).compile_models == ("resnet20", "vit_tiny")
    assert settings(CPU, False, models_given=True).compile_models is None
    assert settings(torch.device("cuda"), False).compile_models is None


def test_train_variants_per_model_and_device() -> None:
    cuda = torch.device("cuda")
    names = {(m, d.type): [v.name for v in train_suite.variants_for(m, d)]
             for m in ("resnet20", "vit_tiny") for d in (CPU, cuda)}
    assert names == {("resnet20", "cpu"): ["eager", "nchw", "compile"],
                     ("resnet20", "cuda"): ["eager", "nchw", "compile", "graph"],
                     ("vit_tiny", "cpu"): ["eager", "compile"],
                     ("vit_tiny", "cuda"): ["eager", "compile", "graph"]}


# -- JSON, plot and the CLI ---------------------------------------------------------------------
@pytest.mark.slow
def test_cli_step_json_and_plot(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    tiny = step_suite.StepSettings(batch=2, warmup=0, rounds=1, block=1)
    monkeypatch.setattr(step_suite.StepSettings, "for_device", staticmethod(lambda d, q: tiny))
    out, png = tmp_path / "bench.json", tmp_path / "step.png"
    result = CliRunner().invoke(app, ["bench", "--suite", "step", "--device", "cpu", "--models",
                                      "resnet20", "--quick", "--json-out", str(out),
                                      "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert set(doc) == {"env", "results"}
    for key in ("device", "torch", "triton", "commit", "date"):
        assert key in doc["env"]
    assert {r["path"] for r in doc["results"]} == {"dense", "seed", "eager", "torch", "compiled",
                                                   "torch-pruning"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_needs_the_step_suite(tmp_path) -> None:
    result = CliRunner().invoke(app, ["bench", "--suite", "update", "--device", "cpu", "--plot",
                                      str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(UserError, match="step suite"):
        plot_results([{"suite": "update", "median_ms": 1.0}], {}, tmp_path / "y.png")


def test_plot_without_matplotlib_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(UserError, match=r"pip install 'rsst-prune\[plot\]'"):
        require_matplotlib()


def test_all_suite_lists_step_and_train() -> None:
    from rsst_bench import SUITES

    assert {"update", "step", "train"} <= set(SUITES)


# -- the fused update as a torch custom op ------------------------------------------------------
def op_inputs(n: int = 1000, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    w, g, buf = (torch.randn(n, generator=gen) for _ in range(3))
    code = torch.randint(0, 4, (n,), generator=gen, dtype=torch.uint8)
    return w, g, buf, code


def hyper(lr: float, t: int, T: int, *, first: bool = False, rho: float = 0.0) -> torch.Tensor:
    values = {"lr": lr, "momentum": 0.9, "weight_decay": 1e-4, "lam_max": 0.5, "exponents": 4.0,
              "t": float(t), "T": float(T), "first_step": 1.0 if first else 0.0, "rho": rho}
    return torch.tensor([values.get(k, 0.0) for k in HYPER_SLOTS], dtype=torch.float32)


@pytest.mark.parametrize("kernel", [True, False], ids=["triton", "twin"])
@pytest.mark.parametrize("schedule", [0, 4])
@pytest.mark.parametrize("nesterov,block,first", [(False, False, False), (True, True, True)])
def test_custom_op_matches_functional_step(schedule: int, nesterov: bool, block: bool,
                                           first: bool, kernel: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The op launches the kernel where Triton runs, else the torch twin: both match step()."""
    from rsst.schedules import SCHEDULES

    module = importlib.import_module("rsst_kernels.fused_update")  # the module, not the function

    if not kernel:
        monkeypatch.setattr(module, "triton_available", lambda device: False)
    w, g, buf, code = op_inputs(1037)
    mine = [w.clone(), g.clone(), buf.clone()]
    torch.ops.rsst.fused_update(*mine, code, hyper(0.1, 3, 10, first=first), schedule, nesterov,
                                block)
    ref = [w.clone(), g.clone(), buf.clone()]
    step("torch", *ref, code, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=nesterov,
         block_loss_grad=block, first_step=first, schedule=SCHEDULES[schedule], t=3, T=10,
         lam_max=0.5, exponents=4.0)
    for a, b in zip(mine, ref, strict=True):  # the twin path is the same ops: bit-identical
        tol = {"rtol": 1e-6, "atol": 1e-6} if kernel else {"rtol": 0, "atol": 0}
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("kernel", [True, False], ids=["triton", "twin"])
def test_custom_op_with_admm_anchor_matches_functional_step(kernel: bool,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The optional anchor argument switches the ADMM term on in both of the op's paths."""
    module = importlib.import_module("rsst_kernels.fused_update")
    if not kernel:
        monkeypatch.setattr(module, "triton_available", lambda device: False)
    w, g, buf, _ = op_inputs(1037)
    code = torch.randint(0, 8, (1037,), generator=torch.Generator().manual_seed(1),
                         dtype=torch.uint8)
    anchor = torch.randn(1037, generator=torch.Generator().manual_seed(2))
    mine = [w.clone(), g.clone(), buf.clone()]
    torch.ops.rsst.fused_update(*mine, code, hyper(0.1, 3, 10, rho=0.4), 4, True, False, anchor)
    ref = [w.clone(), g.clone(), buf.clone()]
    step("torch", *ref, code, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True,
         schedule="exp_custom_exponents", t=3, T=10, lam_max=0.5, exponents=4.0, anchor=anchor,
         rho=0.4)
    for a, b in zip(mine, ref, strict=True):
        tol = {"rtol": 1e-6, "atol": 1e-6} if kernel else {"rtol": 0, "atol": 0}
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("admm", [False, True], ids=["plain", "admm"])
def test_custom_op_opcheck(admm: bool) -> None:
    w, g, buf, code = op_inputs(257)
    anchor = torch.randn(257) if admm else None
    result = torch.library.opcheck(fused_update_op, (w, g, buf, code, hyper(0.1, 2, 8, rho=0.3),
                                                     4, True, False, anchor))
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.slow
def test_custom_op_compiles_without_graph_breaks() -> None:
    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        pytest.skip("no C++ compiler on this machine: torch.compile's CPU backend needs one")
    import torch._dynamo

    def train_update(w: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, code: torch.Tensor,
                     h: torch.Tensor) -> torch.Tensor:
        g.mul_(2.0)  # stand-in for work before the update, so the op sits inside a real graph
        torch.ops.rsst.fused_update(w, g, buf, code, h, 4, True, False)
        return w.abs().sum()

    torch._dynamo.reset()
    compiled = torch.compile(train_update, fullgraph=True)  # raises on any graph break
    w, g, buf, code = op_inputs(513)
    eager = [w.clone(), g.clone(), buf.clone()]
    comp = [w.clone(), g.clone(), buf.clone()]
    for t in range(3):
        h = hyper(0.05, t, 5, first=t == 0)
        expected = train_update(*eager, code, h)
        got = compiled(*comp, code, h)
        torch.testing.assert_close(got, expected)
    for a, b in zip(comp, eager, strict=True):
        torch.testing.assert_close(a, b)


# -- the Torch-Pruning peer ---------------------------------------------------------------------
@pytest.mark.slow
def test_peer_rows_say_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch_pruning both suites still run and the peer's row names the extra."""
    from rsst_bench import torch_pruning_peer as peer

    monkeypatch.setattr(peer, "_torch_pruning", lambda: None)
    settings = step_suite.StepSettings(batch=2, warmup=1, rounds=1, block=1)
    steps = step_suite.run(CPU, models=["resnet20"], console=quiet(), settings=settings)
    updates = update_suite.run(CPU, models=["resnet20"], console=quiet(), quick=True)
    for records in (steps, updates):
        row = records[-1]
        assert row["path"] == "torch-pruning" and row["median_ms"] is None
        assert row["status"] == peer.NOT_INSTALLED and "rsst-prune[torch-pruning]" in row["status"]
        assert all(r["vs_peer"] is None for r in records[:-1])


def test_peer_skips_attention_models() -> None:
    from rsst.models import create_model
    from rsst_bench import torch_pruning_peer as peer

    if peer._torch_pruning() is None:
        pytest.skip("torch_pruning not installed")
    with torch.device("meta"):
        assert peer.unavailable_reason(create_model("vit_tiny", num_classes=10)) == peer.ATTENTION
        assert peer.unavailable_reason(create_model("resnet20", num_classes=10)) is None


def test_peer_adds_growing_reg_gradient_then_steps() -> None:
    """regularize() adds γ·w (γ = reg at the start; once per dependency a channel is in) to the
    gradients, then torch's SGD steps: with zero gradients, lr 1, no momentum, w ← w − k·γ·w."""
    pytest.importorskip("torch_pruning")
    from rsst_bench import torch_pruning_peer as peer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.Conv2d(4, 5, 3),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(5, 3))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = [m.weight.detach().clone() for m in (model[0], model[3], model[6])]
    optimizer = peer.sgd(model, CPU, lr=1.0, momentum=0.0, weight_decay=0.0)
    peer.added_work(model, torch.randn(1, 3, 8, 8), optimizer)()
    for module, w in zip((model[0], model[3], model[6]), before, strict=True):
        k = (w - module.weight.detach()) / (peer.REG * w)  # how many times γ·w was added
        assert torch.allclose(k, k.round(), atol=1e-3) and k.min() >= 1 - 1e-3, module
    first_out = (before[0] - model[0].weight.detach()) / (peer.REG * before[0])
    torch.testing.assert_close(first_out, torch.ones_like(first_out), rtol=0, atol=1e-3)  # outs
    last_in = (before[2] - model[6].weight.detach()) / (peer.REG * before[2])
    torch.testing.assert_close(last_in, torch.ones_like(last_in), rtol=0, atol=1e-3)  # ins


def test_conv_widths_script_writes_its_rows(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rsst_bench import conv_widths

    out = tmp_path / "widths.json"
    monkeypatch.setattr(sys, "argv", ["conv_widths.py", "--step", "16", "--batch", "1",
                                      "--min-run-time", "0", "--out", str(out)])
    conv_widths.main()
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["size"], r["full"], r["width"]) for r in rows] == [
        (32, 16, 16), (16, 32, 16), (16, 32, 32), (8, 64, 16), (8, 64, 32), (8, 64, 48),
        (8, 64, 64)]
    for r in rows:
        assert r["macs_ratio"] == (r["width"] / r["full"]) ** 2
        assert r["time_ratio"] == r["kept_ms"] / r["full_ms"] and r["full_ms"] > 0
        assert r["speedup_over_macs_cut"] == r["macs_ratio"] / r["time_ratio"]
    assert data["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_coupled_script_times_the_compacted_export_as_runs_do(tmp_path) -> None:
    from helpers import pruned_model, write_run

    from rsst.compact import count_macs
    from rsst.export import export_model
    from rsst.latency import compacted_copy
    from rsst_bench import coupled

    model, masks = pruned_model("resnet20", img_size=8)
    run = write_run(tmp_path / "run", model, masks)
    masked = tmp_path / "masked.safetensors"
    export_model(run, masked, form="masked")
    record = coupled.latency(masked, batch=2, repeats=3, min_run_time=0.0)
    small = compacted_copy(model)
    macs = [sum(count_macs(m, (3, 8, 8)).values()) for m in (model, small)]
    assert record["macs_ratio"] == macs[1] / macs[0] < 1
    widths = sorted({m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)})
    assert record["conv_widths"] == widths
    # the tests time by shape (conftest): the ratio is the compacted share of the parameters
    params = [sum(p.numel() for p in m.parameters()) for m in (model, small)]
    assert record["latency_ratio"] == pytest.approx(params[1] / params[0])
    assert record["ratio_range"][0] <= record["latency_ratio"] <= record["ratio_range"][1]
