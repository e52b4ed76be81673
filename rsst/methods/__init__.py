"""Pruning methods, one module each, registered by name (see `rsst.methods.base.Method`).

Adding a method: a module here whose class carries ``@register_method``, and its module name in
`METHOD_MODULES` (its position there sets its place in ``method_names()``, hence in
``rsst run --help``). Nothing in the state machine (`rsst.loop`) changes.
"""

from __future__ import annotations

import importlib

from rsst.methods.base import Method, PruneContext
from rsst.methods.registry import (
    get_method,
    method_class,
    method_names,
    register_method,
    unregister_method,
)

#: the registry: one module of rsst.methods per method, in the order --help lists them
METHOD_MODULES = ("rsst", "refill", "imp", "omp", "random", "snip", "grasp", "synflow",
                  "admm")

for _module in METHOD_MODULES:
    importlib.import_module(f"rsst.methods.{_module}")

__all__ = ["METHOD_MODULES", "Method", "PruneContext", "get_method", "method_class",
           "method_names", "register_method", "unregister_method"]
