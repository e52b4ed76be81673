"""Former name of `rsst.methods.scored` (kept so old imports work): `ScoredMethod` serves the
iterative forms too, so its module is named after what it is."""

from rsst.methods.scored import ScoredMethod, arena_scores, hard_masks

__all__ = ["ScoredMethod", "arena_scores", "hard_masks"]
