"""Name → method class, filled by ``@register_method`` as each method module is imported.

In the spirit of timm's ``register_model`` / OpenLTH's ``pruning/registry.py``: a method is one
module whose class carries the decorator, plus one import line in ``rsst/methods/__init__.py``.
"""

from __future__ import annotations

from typing import TypeVar

from rsst.errors import UserError
from rsst.methods.base import Method

_METHODS: dict[str, type[Method]] = {}

M = TypeVar("M", bound=type[Method])


def register_method(cls: M) -> M:
    """Class decorator: make ``cls`` available as ``--method cls.name``."""
    name = cls.name
    if not name or name != name.strip() or " " in name:
        raise ValueError(f"method class {cls.__qualname__} needs a one-word `name`")
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(f"method {name!r} is registered twice ({_METHODS[name].__qualname__}, "
                         f"{cls.__qualname__})")
    _METHODS[name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a method (tests register throwaway ones)."""
    _METHODS.pop(name, None)


def method_names() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(_METHODS)


def method_class(name: str) -> type[Method]:
    try:
        return _METHODS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}: choose one of {', '.join(_METHODS)} "
                        "(--method)") from None


def get_method(name: str) -> Method:
    """A fresh instance of the method registered as ``name``."""
    return method_class(name)()
