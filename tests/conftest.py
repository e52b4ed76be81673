"""Test setup: Triton kernels run under the interpreter when no GPU is present.

TRITON_INTERPRET must be set before any kernel module is imported (``triton.jit`` reads it at
decoration time), so it is set here, at collection, before the tests import rsst.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# one thread: small ops on a shared 2-core machine are far slower with a second spinning thread
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def kernels_only_env(tmp_path_factory) -> dict[str, str]:
    """Environment for a child process that can import ``rsst_kernels`` but not ``rsst``.

    From a source checkout ``rsst_kernels`` exists only through rsst's alias; here it is a
    symlink to ``kernels/`` in a folder that is the child's whole PYTHONPATH, so the child sees
    the kernels package exactly as installed, with no rsst beside it.
    """
    root = tmp_path_factory.mktemp("kernels_only")
    (root / "rsst_kernels").symlink_to(Path(__file__).resolve().parent.parent / "kernels")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(root)
    return env


@pytest.fixture(scope="session")
def tiny_data():
    """`helpers.tiny_dataset`: a run config's dataset shrunk to 8×8 pixels with a 64-image test
    split, for `rsst.loop.run(config, load_data=tiny_data)` (or `helpers.tiny_run`)."""
    from helpers import tiny_dataset

    return tiny_dataset



def _parameter_count_ms(dense, compact, *args, **kwargs) -> tuple[float, float]:
    """A stand-in for `rsst.latency.time_pair`: "times" that are a function of the networks'
    shapes alone, so runs compare exactly (a resumed run's records equal an uninterrupted one's)
    and time nothing."""
    return tuple(float(sum(p.numel() for p in net.parameters())) / 1e4 for net in (dense, compact))


@pytest.fixture(scope="session", autouse=True)
def _latency_by_shape():
    """Runs record latency (on by default) with `_parameter_count_ms` instead of a timer, from
    before the first fixture that runs one (module-scoped runs included) and whatever a test's
    ``monkeypatch.undo()`` does; `real_latency` puts the timer back for one test. Yields the
    real `rsst.latency.time_pair`."""
    import rsst.latency

    real = rsst.latency.time_pair
    patch = pytest.MonkeyPatch()
    patch.setattr(rsst.latency, "time_pair", _parameter_count_ms)
    yield real
    patch.undo()


@pytest.fixture
def real_latency(_latency_by_shape, monkeypatch):
    """`rsst.latency` times for real in this test (tests/test_latency.py)."""
    import rsst.latency

    monkeypatch.setattr(rsst.latency, "time_pair", _latency_by_shape)
