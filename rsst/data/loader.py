"""Device-resident mini-batches with the CIFAR augmentation done on the device (`Batches`)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from rsst.data.base import ImageSet
from rsst.errors import UserError


class Batches:
    """Mini-batches of an `ImageSet` that lives on ``device`` (copied there once).

    Each epoch yields ``(x, y)``: x float32 [B,3,H,W] in [0,1], y int64 [B], both on ``device``.
    With ``augment`` every batch gets the standard CIFAR augmentation — a random crop with
    ``pad`` pixels of zero padding and a random horizontal flip — as ONE gather from the
    pre-padded images, vectorized over the batch (no per-image Python loop, same code on CPU
    and CUDA). The shuffle order and augmentation of epoch ``e`` depend only on (seed, e), so
    resuming at an epoch reproduces it exactly; iterating the object again advances the epoch.

    Data-parallel (``world_size`` > 1): ``batch_size`` is the global batch; each rank yields its
    equal, contiguous share of every global batch of the same permutation, augmented with the
    crop offsets and flips the whole global batch drew, so N ranks see together exactly what one
    process sees. A global batch is trimmed to a multiple of ``world_size`` (the epoch's last
    batch: at most N - 1 images skipped) so every rank takes the same number of images.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        pad: int = 4,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise UserError(
                f"batch size must be >= 1, got {batch_size}: pass a positive --batch-size"
            )
        if batch_size % world_size:
            raise UserError(f"--batch-size {batch_size} is the global batch and must split evenly "
                            f"over the {world_size} processes: pass a multiple of {world_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.pad = pad
        self.n = len(data)
        self.height, self.width = int(data.images.shape[2]), int(data.images.shape[3])
        images = data.images
        if augment and pad > 0:
            images = F.pad(images, (pad, pad, pad, pad))  # zero border, padded once
        self.images = images.to(self.device).contiguous()
        self.labels = data.labels.to(self.device)
        self.epoch = 0
        self._generator = torch.Generator(device=self.device)

    def __len__(self) -> int:
        if self.drop_last or self.n % self.batch_size < self.world_size:
            return self.n // self.batch_size  # (with N ranks: a last batch under N is skipped)
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self.iter_epoch(epoch)

    def iter_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of epoch ``epoch`` (deterministic in (seed, epoch))."""
        gen = self._generator
        gen.manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
        if self.shuffle:
            order = torch.randperm(self.n, generator=gen, device=self.device)
        else:
            order = torch.arange(self.n, device=self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.augment:
                x, idx = self._augment(idx, gen)
            else:
                idx = idx[self._share(idx.shape[0])]
                x = self.images[idx]
            yield x.float().div_(255.0), self.labels[idx]

    def _share(self, n: int) -> slice:
        """This rank's equal part of a global batch of ``n`` (all of it for one process)."""
        share = n // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def _augment(self, idx: torch.Tensor, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a crop offset (0..2*pad in the padded image) and a coin flip per sample of the
        global batch ``idx``, then crop this rank's share (the same draws on every rank);
        returns the crops and the share's indices."""
        n, p, dev = idx.shape[0], self.pad, self.device
        oy = torch.randint(0, 2 * p + 1, (n,), generator=gen, device=dev)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=gen, device=dev)
        flip = torch.rand(n, generator=gen, device=dev) < 0.5
        if self.world_size > 1:
            part = self._share(n)
            idx, oy, ox, flip = idx[part], oy[part], ox[part], flip[part]
        return crop_flip(self.images, idx, oy, ox, flip, self.height, self.width), idx


def crop_flip(
    padded: torch.Tensor,
    idx: torch.Tensor,
    oy: torch.Tensor,
    ox: torch.Tensor,
    flip: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """``padded[idx[i], :, oy[i]:oy[i]+height, ox[i]:ox[i]+width]``, mirrored where ``flip[i]``.

    One advanced-index gather for the whole batch: the flip only reverses the column index.
    """
    n, dev = idx.shape[0], padded.device
    ar_w = torch.arange(width, device=dev)
    rows = oy.view(n, 1) + torch.arange(height, device=dev)  # [n, h]
    cols = ox.view(n, 1) + torch.where(flip.view(n, 1), width - 1 - ar_w, ar_w)  # [n, w]
    chans = torch.arange(padded.shape[1], device=dev).view(1, -1, 1, 1)
    return padded[
        idx.view(n, 1, 1, 1), chans, rows.view(n, 1, height, 1), cols.view(n, 1, 1, width)
    ]


def iterate_batches(
    data: ImageSet,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
    drop_last: bool = False,
    epoch: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of `Batches` (convenience for evaluation and one-off passes)."""
    loader = Batches(data, batch_size, shuffle=shuffle, augment=augment, device=device,
                     seed=seed, drop_last=drop_last)  # fmt: skip
    return loader.iter_epoch(epoch)
