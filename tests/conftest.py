"""Test setup: Triton kernels run under the interpreter when no GPU is present.

TRITON_INTERPRET must be set before any kernel module is imported (``triton.jit`` reads it at
decoration time), so it is set here, at collection, before the tests import rsst.
"""

from __future__ import annotations

import dataclasses
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


_SHRUNK: dict[tuple, object] = {}


@pytest.fixture(scope="module")
def tiny_data():
    """Make `rsst.loop` read its dataset shrunk to 8×8 pixels, with a 64-image test split.

    A pruning state then takes a few CPU seconds; the loop's logic does not depend on the image
    size. Shrunk datasets are cached across tests.
    """
    import rsst.loop as loop

    original = loop.load_dataset

    def shrunk(name, data_dir=None, **kw):
        key = (name, str(data_dir), tuple(sorted(kw.items())))
        if key not in _SHRUNK:
            data = original(name, data_dir, **kw)

            def shrink(s):
                return type(s)(s.images[:, :, ::4, ::4].contiguous(), s.labels)

            test = data.test.subset(torch.arange(64)) if data.test is not None else None
            _SHRUNK[key] = dataclasses.replace(
                data, train=shrink(data.train), val=shrink(data.val),
                test=shrink(test) if test is not None else None, input_size=(3, 8, 8))
        return _SHRUNK[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "load_dataset", shrunk)
        yield
