"""``rsst``: Refill's groups removed softly (SPEC §2, §4).

The elements Refill would drop become the pending set P = H ∧ ¬R; during the next state the
per-step update adds the penalty λ(t)·w to their gradient (λ rising by --schedule up to
--reg-granularity), so they fade; at the end of that state they are cut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rsst.methods.base import Method
from rsst.methods.registry import register_method

if TYPE_CHECKING:
    from rsst.config import RunConfig


@register_method
class RSST(Method):
    name = "rsst"
    refill = True
    soft = True

    def update_terms(self, config: RunConfig) -> dict[str, Any]:
        return {"schedule": config.schedule, "lam_max": config.reg_granularity,
                "exponents": config.exponents, "block_loss_grad": config.block_loss_grad}
