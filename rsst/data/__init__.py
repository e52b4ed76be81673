"""Datasets without downloads, held in memory as uint8 tensors, and a device-resident loader.

One module per family: `rsst.data.synthetic`, `rsst.data.cifar` (python pickles),
`rsst.data.folders` (class folders and their decode cache), `rsst.data.loader` (`Batches`);
shared types in `rsst.data.base`. `load_dataset` picks the reader and makes the splits.

Datasets (`load_dataset`):
- ``synthetic`` (default): a seeded, learnable CIFAR-shaped task generated in memory, so
  ``rsst run`` works anywhere (see `rsst.data.synthetic`).
- ``cifar10`` / ``cifar100``: the official python-pickle layout (``data_batch_1..5``,
  ``test_batch``, ``batches.meta`` / ``train``, ``test``, ``meta``), also inside the
  ``cifar-10-batches-py`` / ``cifar-100-python`` subfolder, or class folders (below).
- ``imagefolder`` (alias ``tiny-imagenet``, which also checks for 200 classes): class folders
  ``train/<class>/*.png|jpg|jpeg``, with an optional labelled held-out split (see
  `rsst.data.folders`, which also describes the decode cache).

Splits: ``val`` is carved from the training pool (seeded permutation) — ``val_split`` images,
by default 5000 when the pool has >= 20k images, 1000 for ``synthetic``, else 10 %.
``val_split=0`` gives an empty `ImageSet` (never None), so callers test ``len(splits.val)``.
When a layout has both a labelled ``val/`` and ``test/`` folder, ``val/`` is the val split and
nothing is carved. ``train_subset=N`` keeps N of the remaining training images (seeded).
``test`` is None unless the layout has a labelled test split.

`load_split` reads one held-out split on its own (what ``rsst eval --split test`` needs): the
test pickle alone (``test_batch`` / ``test``) or the ``test/`` (or lone ``val/``) class folders
alone, no training images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rsst.data.base import DATASETS, DataSplits, ImageSet, channel_stats, default_cache_dir
from rsst.data.cifar import (
    CIFAR10_CLASSES,
    find_cifar_pickles,
    load_cifar_pickles,
    load_cifar_test,
)
from rsst.data.folders import (
    CACHE_FORMAT,
    IMAGE_EXTENSIONS,
    cache_path,
    decode_images,
    load_folder_split,
    load_folders,
)
from rsst.data.loader import Batches, crop_flip, iterate_batches
from rsst.data.synthetic import SYNTHETIC_VAL, load_synthetic
from rsst.errors import UserError


def load_dataset(
    name: str = "synthetic",
    data_dir: str | Path | None = None,
    *,
    val_split: int | None = None,
    train_subset: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> DataSplits:
    """Load ``name`` (see module doc) and split it; every user mistake raises `UserError`.

    ``workers`` is the number of decode processes for class-folder images (default: CPU count;
    0 or 1 decodes in this process).
    """
    key = _dataset_key(name)
    if val_split is not None and (not isinstance(val_split, int) or val_split < 0):
        raise UserError(f"val_split must be a count of images >= 0, got {val_split!r}")
    if train_subset is not None and (not isinstance(train_subset, int) or train_subset < 1):
        raise UserError(f"train_subset must be a positive count of images, got {train_subset!r}")

    explicit_val: ImageSet | None = None
    if key == "synthetic":
        pool, test, classes = load_synthetic()
        default_val = SYNTHETIC_VAL
    else:
        root = _check_dir(key, data_dir)
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        if key in ("cifar10", "cifar100") and (pickle_dir := find_cifar_pickles(key, root)):
            pool, test, classes = load_cifar_pickles(key, pickle_dir)
        else:
            pool, explicit_val, test, classes = load_folders(key, root, cache, workers)
        default_val = 5000 if len(pool) >= 20_000 else len(pool) // 10

    gen = torch.Generator().manual_seed(seed)
    if explicit_val is not None:
        if val_split is not None:
            raise UserError(
                f"{data_dir} has its own val/ and test/ folders, so val_split={val_split} has "
                "nothing to carve: drop --val-split (or rename val/ to use carving)"
            )
        val, rest = explicit_val, torch.randperm(len(pool), generator=gen)
    else:
        n_val = default_val if val_split is None else val_split
        if n_val >= len(pool):
            raise UserError(
                f"val_split={n_val} leaves no training images out of {len(pool)}: pass a smaller "
                "--val-split"
            )
        perm = torch.randperm(len(pool), generator=gen)
        val, rest = pool.subset(perm[:n_val].sort().values), perm[n_val:]
    if train_subset is not None:
        if train_subset > len(rest):
            raise UserError(
                f"train_subset={train_subset} is more than the {len(rest)} training images left "
                "after the val split: pass a smaller --train-subset"
            )
        rest = rest[:train_subset]
    train = pool if len(rest) == len(pool) else pool.subset(rest.sort().values)

    mean, std = channel_stats(train.images)
    return DataSplits(
        name=key,
        train=train,
        val=val,
        test=test,
        num_classes=len(classes),
        input_size=(3, int(train.images.shape[2]), int(train.images.shape[3])),
        classes=list(classes),
        mean=mean,
        std=std,
    )


@dataclass
class HeldOutSplit:
    """One labelled held-out split read on its own (`load_split`)."""

    name: str
    images: ImageSet
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (3, int(self.images.images.shape[2]), int(self.images.images.shape[3]))


def load_split(
    name: str,
    data_dir: str | Path | None = None,
    split: str = "test",
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> HeldOutSplit | None:
    """The ``test`` split — or an explicit ``val/`` folder — of ``name``, read without the
    training images; the same images and labels `load_dataset` gives for it.

    None when ``split`` is ``val`` and the layout has no val/ folder of its own: that split is
    carved from the training pool, so it needs `load_dataset` (with the run's seed).
    """
    key = _dataset_key(name)
    if split not in ("val", "test"):
        raise UserError(f"split {split!r}: pass val or test")
    if key == "synthetic":
        if split == "val":
            return None
        _, test, classes = load_synthetic()
        return HeldOutSplit(key, test, classes)
    root = _check_dir(key, data_dir)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if key in ("cifar10", "cifar100"):
        train_pickles = find_cifar_pickles(key, root)
        if split == "val" and train_pickles:
            return None  # the pickle layout has no val split: carved from the training batches
        if split == "test" and (pickle_dir := find_cifar_pickles(key, root, "test")):
            images, classes = load_cifar_test(key, pickle_dir)
            return HeldOutSplit(key, images, classes)
        if train_pickles:
            test_file = "test_batch" if key == "cifar10" else "test"
            raise UserError(f"{train_pickles} has the training pickles but no {test_file}: "
                            "extract the whole python-version archive there, or pass --split val")
    found = load_folder_split(key, root, split, cache, workers)
    if found is None:
        return None
    return HeldOutSplit(key, *found)


def _dataset_key(name: str) -> str:
    """The canonical dataset key for ``name`` (aliases resolved), or `UserError`."""
    key = name.strip().lower().replace("_", "-")
    key = {"cifar-10": "cifar10", "cifar-100": "cifar100", "tinyimagenet": "tiny-imagenet"}.get(
        key, key
    )
    if key not in DATASETS:
        raise UserError(
            f"unknown dataset {name!r}: pass --dataset with one of {', '.join(DATASETS)}"
        )
    return key


def _check_dir(key: str, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise UserError(
            f"dataset {key} is read from disk and no data dir was given: pass --data-dir pointing "
            "at it (or use --dataset synthetic)"
        )
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise UserError(f"data dir {root} does not exist: pass --data-dir pointing at the dataset")
    if not root.is_dir():
        raise UserError(f"data dir {root} is not a folder: pass --data-dir pointing at the folder")
    return root.resolve()


__all__ = [
    "CACHE_FORMAT",
    "CIFAR10_CLASSES",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "Batches",
    "DataSplits",
    "HeldOutSplit",
    "ImageSet",
    "cache_path",
    "channel_stats",
    "crop_flip",
    "decode_images",
    "default_cache_dir",
    "iterate_batches",
    "load_dataset",
    "load_split",
]
