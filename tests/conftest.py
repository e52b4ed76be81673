"""Test setup: Triton kernels run under the interpreter when no GPU is present.

TRITON_INTERPRET must be set before any kernel module is imported (``triton.jit`` reads it at
decoration time), so it is set here, at collection, before the tests import rsst.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# one thread: small ops on a shared 2-core machine are far slower with a second spinning thread
torch.set_num_threads(1)
