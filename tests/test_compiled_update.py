"""The compiled CPU pass: one compile serves every step, and a broken compiler falls back.

Its numbers are checked against the float64 oracles with every other backend (test_update.py,
test_adamw.py: ``compiled`` is in `BACKENDS`); here: recompiles, the fallback, ``auto``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import rsst.update as update
from rsst.arena import Arena
from rsst.update import UpdateConfig, make_backend, resolve_backend, step
from rsst_kernels.compiled_update import SGD_PASS, CompiledPass, sgd_pass


def _inputs(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    code = torch.randint(0, 4, (n,), generator=gen, dtype=torch.uint8)
    w = torch.randn(n, generator=gen) * (code & 1)
    return w, torch.randn(n, generator=gen), torch.zeros(n), code


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_no_recompile_as_scalars_switches_and_sizes_change():
    w, g, buf, code = _inputs(300)
    step("compiled", w, g, buf, code, lr=0.1)  # compiled here, or earlier in this process
    assert SGD_PASS.compile_seconds is not None and not SGD_PASS.failed
    before = _graphs()
    schedules = ["x", "x^2", "x^3", "exp", "exp_custom_exponents"]
    for t, n in enumerate([300, 1000, 4097, 300, 1000] * 2):
        w, g, buf, code = _inputs(n, seed=t)
        step("compiled", w, g, buf, code, lr=0.1 / (t + 1), weight_decay=1e-4 * t,
             nesterov=t % 2 == 0, block_loss_grad=t % 3 == 0, first_step=t == 0,
             schedule=schedules[t % 5], t=t, T=10, lam_max=0.5 + t)
    assert _graphs() == before, "lr, λ, t, the switches and the length must not recompile"


def test_auto_is_the_compiled_pass_on_cpu():
    assert resolve_backend("auto", "cpu") == "compiled"
    assert isinstance(make_backend("auto", "cpu"), update.CompiledBackend)


def _failing_compiler(fn):
    raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found in ['g++']\ndetails")


def test_a_failed_compile_warns_once_and_runs_the_twin(monkeypatch):
    """Simulated compiler failure: one warning line, then the twin's (correct) update."""
    broken = CompiledPass(sgd_pass, compiler=_failing_compiler)
    monkeypatch.setattr(update.compiled, "SGD_PASS", broken)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    twin_model = torch.nn.Linear(5, 3)
    twin_model.load_state_dict(model.state_dict())
    arena, twin_arena = Arena(model), Arena(twin_model)
    config = UpdateConfig(weight_decay=1e-3, ramp_steps=4, schedule="x")
    backend, twin = make_backend("compiled", "cpu", config), make_backend("torch", "cpu", config)
    x = torch.randn(8, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(4):
            for m, a, b in ((model, arena, backend), (twin_model, twin_arena, twin)):
                m(x).square().sum().backward()
                a.step(b, 0.1, t)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert "compiled CPU update unavailable" in messages[0] and "torch twin" in messages[0]
    assert broken.failed
    torch.testing.assert_close(arena.weight, twin_arena.weight)
    torch.testing.assert_close(arena.momentum, twin_arena.momentum)


@pytest.mark.slow
def test_a_real_compiler_failure_is_caught():
    """Inductor pointed at a C++ compiler that does not exist, its caches off: the pass fails to
    compile, warns, and leaves the tensors untouched for the twin."""
    import torch._inductor.config as inductor_config

    def pass_copy(w, g, buf, code, hyper, switches):  # a new code object: no compiled cache
        sgd_pass(w, g, buf, code, hyper, switches)

    torch._dynamo.reset()
    broken = CompiledPass(pass_copy)
    w, g, buf, code = _inputs(64)
    before = w.clone()
    # the configs' own patch(): monkeypatch's undo would delete their attributes
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/bin/c++"),
                                "fx_graph_cache": False}), \
            torch.compiler.config.patch(force_disable_caches=True), \
            pytest.warns(RuntimeWarning, match="compiled CPU update unavailable"):
        ran = broken(w, g, buf, code, torch.zeros(13), torch.zeros(3))
    assert not ran and broken.failed
    assert "C++ compiler" in broken.failure
    assert torch.equal(w, before)
    torch._dynamo.reset()
