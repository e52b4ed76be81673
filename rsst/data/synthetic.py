"""The ``synthetic`` dataset: a seeded, learnable CIFAR-shaped task generated in memory.

Ten classes, each a smooth random prototype image; every sample is its class prototype shifted
(up to 8 px), blended with a random other prototype, laid over a smooth random background,
rescaled in brightness/contrast and noised. The task is fixed (it does not depend on ``seed``),
like a real dataset; ``seed`` only picks the validation split and the train subset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rsst.data.base import ImageSet

SYNTHETIC_SIZES = (6000, 1000)  # train pool (val carved from it), test
SYNTHETIC_VAL = 1000


def load_synthetic() -> tuple[ImageSet, ImageSet, list[str]]:
    """The fixed synthetic task: smooth class prototypes plus per-sample nuisance (see doc)."""
    n_classes, size, shift = 10, 32, 8
    gen = torch.Generator().manual_seed(20240501)
    # Smooth prototypes: 5x5 random colours upsampled to 48x48 (bicubic); a sample is a 32x32
    # window shifted by up to +-8 px, so a small CNN learns it quickly while a linear model on
    # pixels does clearly worse (about 0.77 vs 0.99 without the nuisances below).
    coarse = torch.randn(n_classes, 3, 5, 5, generator=gen)
    big = F.interpolate(coarse, size=(size + 2 * shift,) * 2, mode="bicubic", align_corners=False)
    big = big / big.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    # Every 32x32 window of every prototype: [classes, 17, 17, 3, 32, 32]. Indexing this table by
    # (class, dy, dx) is a plain row copy, much cheaper than a per-pixel gather.
    n_shift = 2 * shift + 1
    windows = big.unfold(2, size, 1).unfold(3, size, 1).permute(0, 2, 3, 1, 4, 5)
    windows = windows.reshape(n_classes * n_shift * n_shift, 3, size, size).contiguous()

    def sample(n: int) -> ImageSet:
        labels = (torch.arange(n) % n_classes)[torch.randperm(n, generator=gen)]
        other = (labels + torch.randint(1, n_classes, (n,), generator=gen)) % n_classes
        offset = torch.randint(0, n_shift * n_shift, (n,), generator=gen)  # same shift for both
        mix = 0.45 * torch.rand(n, 1, 1, 1, generator=gen)
        img = (1 - mix) * windows[labels * n_shift**2 + offset]
        img += mix * windows[other * n_shift**2 + offset]
        # A smooth random background per sample, as strong as the pattern: not pooled away.
        coarse_bg = torch.randn(n, 3, 4, 4, generator=gen)
        img += F.interpolate(coarse_bg, size=(size, size), mode="bilinear", align_corners=False)
        contrast = 0.5 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen)
        brightness = 0.2 * torch.randn(n, 3, 1, 1, generator=gen)
        img = img.mul_(contrast).add_(brightness)
        img += 0.6 * torch.randn(img.shape, generator=gen)
        img = img.mul_(0.18 * 255).add_(0.5 * 255).round_().clamp_(0, 255)
        return ImageSet(img.to(torch.uint8), labels.to(torch.int64))

    n_pool, n_test = SYNTHETIC_SIZES
    pool = sample(n_pool)
    test = sample(n_test)
    return pool, test, [f"class_{i}" for i in range(n_classes)]
