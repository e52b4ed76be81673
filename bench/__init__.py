"""Benchmarks behind ``rsst bench`` (installed as ``rsst_bench``); measured tables in RESULTS.md.

`SUITES` and `run_suites` load `rsst_bench.common` (torch) on first use, so importing this package
(which ``import rsst`` does from a source checkout) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SUITES", "run_suites"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("rsst_bench.common"), name)
    raise AttributeError(f"module 'rsst_bench' has no attribute {name!r}")
