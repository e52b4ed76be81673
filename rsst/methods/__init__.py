"""Pruning methods, one module each, known by name (see `rsst.methods.base.Method`).

Adding a method: a module here whose class carries ``@register_method``, and its `MethodSpec`
(module, summary, own settings) in `rsst.methods.catalog.CATALOG`, whose order sets its place in
``method_names()`` and ``rsst run --help``. Nothing in the state machine (`rsst.loop`) changes.
Importing this package imports no method module (and no torch): `method_class` does, on first use.
"""

from __future__ import annotations

from rsst.methods.base import Method, PruneContext
from rsst.methods.catalog import CATALOG, MethodSpec
from rsst.methods.registry import (
    get_method,
    method_class,
    method_names,
    method_summary,
    register_method,
    unregister_method,
)

#: the built-in methods' modules, in the order --help lists them
METHOD_MODULES = tuple(spec.module.rsplit(".", 1)[1] for spec in CATALOG)

__all__ = ["CATALOG", "METHOD_MODULES", "Method", "MethodSpec", "PruneContext", "get_method",
           "method_class", "method_names", "method_summary", "register_method",
           "unregister_method"]
