"""Test setup: Triton kernels run under the interpreter when no GPU is present.

TRITON_INTERPRET must be set before any kernel module is imported (``triton.jit`` reads it at
decoration time), so it is set here, at collection, before the tests import rsst.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# one thread: small ops on a shared 2-core machine are far slower with a second spinning thread
torch.set_num_threads(1)


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
