"""``refill``: IMP-Refill (SPEC §2–§3). U is refilled into whole groups and applied at once."""

from __future__ import annotations

from rsst.methods.base import Method
from rsst.methods.registry import register_method


@register_method
class Refill(Method):
    name = "refill"
    refill = True
