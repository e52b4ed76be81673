"""``imp``: iterative magnitude pruning, unstructured (the lottery-ticket baseline, SPEC §2).

After every state but the last, the --rate fraction of alive prunable weights with the smallest
|w| die at once: H ← U.
"""

from __future__ import annotations

from rsst.methods.base import Method
from rsst.methods.registry import register_method


@register_method
class IMP(Method):
    name = "imp"
