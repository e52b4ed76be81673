"""Types every dataset reader shares: `ImageSet`, `DataSplits`, the dataset names, the cache
location and the normalization statistics."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rsst.choices import DATASETS as DATASETS  # re-exported: the names live there
from rsst.errors import UserError


@dataclass
class ImageSet:
    """Images as uint8 [N, 3, H, W] (RGB, 0..255) and int64 labels [N], on the CPU."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N,3,H,W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")  # fmt: skip
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be int64 [N] matching the images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> ImageSet:
        """The images at ``index`` (a copy, so the parent array can be freed)."""
        return ImageSet(self.images[index].contiguous(), self.labels[index].contiguous())


@dataclass
class DataSplits:
    """A dataset ready for training: splits, class names and normalization statistics."""

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    num_classes: int
    input_size: tuple[int, int, int]
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def default_cache_dir() -> Path:
    """``$RSST_CACHE`` if set, else ``~/.cache/rsst``."""
    env = os.environ.get("RSST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rsst"


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], ...]:
    """Per-channel mean and std of uint8 images scaled to [0, 1].

    Exact and cheap: a 256-bin histogram per channel gives both moments without a float copy.
    """
    if images.shape[0] == 0:
        raise UserError("the training split is empty: pass a smaller --val-split")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(3):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        p = hist / hist.sum()
        mean = float((p * values).sum())
        var = float((p * (values - mean).square()).sum())
        means.append(mean)
        stds.append(math.sqrt(var) if var > 0 else 1.0)  # a constant channel: leave it as is
    return tuple(means), tuple(stds)  # type: ignore[return-value]
