"""Former name of `rsst.trackers` (TensorBoard, W&B and CSV mirrors of metrics.jsonl); kept so
that every public name still imports from here."""

from rsst.trackers import *  # noqa: F403
