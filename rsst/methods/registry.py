"""Name → method: the built-in methods from `rsst.methods.catalog` (their modules imported on
first use), plus any class registered with ``@register_method`` (tests register throwaway ones).

In the spirit of timm's ``register_model`` / OpenLTH's ``pruning/registry.py``; unlike them the
names, summaries and settings are known without importing a method, so nothing here loads torch.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from rsst.errors import UserError
from rsst.methods.base import Method
from rsst.methods.catalog import CATALOG, MethodSpec

_SPECS: dict[str, MethodSpec] = {spec.name: spec for spec in CATALOG}
#: classes loaded so far: catalogued ones as their module is imported, and registered extras
_METHODS: dict[str, type[Method]] = {}

M = TypeVar("M", bound=type[Method])


def register_method(cls: M) -> M:
    """Class decorator: make ``cls`` available as ``--method cls.name``."""
    name = cls.name
    if not name or name != name.strip() or " " in name:
        raise ValueError(f"method class {cls.__qualname__} needs a one-word `name`")
    spec = _SPECS.get(name)
    owner = (_METHODS[name].__qualname__ if name in _METHODS
             else spec.module if spec is not None and spec.module != cls.__module__ else None)
    if owner is not None and _METHODS.get(name) is not cls:
        raise ValueError(f"method {name!r} is registered twice ({owner}, {cls.__qualname__})")
    _METHODS[name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a registered extra (tests register throwaway ones); built-ins stay."""
    if name not in _SPECS:
        _METHODS.pop(name, None)


def method_names() -> tuple[str, ...]:
    """The built-in methods in catalog order, then registered extras."""
    return (*_SPECS, *(n for n in _METHODS if n not in _SPECS))


def method_summary(name: str) -> str:
    """One line on method ``name`` for ``--help``, without importing it."""
    spec = _SPECS.get(name)
    return spec.summary if spec is not None else method_class(name).summary


def method_class(name: str) -> type[Method]:
    """The class of method ``name``, importing its module on first use."""
    if name not in _METHODS and name in _SPECS:
        importlib.import_module(_SPECS[name].module)
        if name not in _METHODS:
            raise RuntimeError(f"{_SPECS[name].module} registers no method {name!r}")
    try:
        return _METHODS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}: choose one of {', '.join(method_names())} "
                        "(--method)") from None


def get_method(name: str) -> Method:
    """A fresh instance of the method registered as ``name``."""
    return method_class(name)()
