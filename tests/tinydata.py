"""Old home of the tiny-data builders, kept so that files not yet moved keep working: import
them from `helpers` (``from helpers import tiny_dataset, tiny_run, tiny_pruning_run``)."""

from helpers import tiny_dataset, tiny_pruning_run, tiny_run

__all__ = ["tiny_dataset", "tiny_pruning_run", "tiny_run"]
