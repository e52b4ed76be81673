"""Benchmarks behind ``rsst bench`` (installed as ``rsst_bench``); measured tables in RESULTS.md."""

from rsst_bench.common import SUITES, run_suites

__all__ = ["SUITES", "run_suites"]
