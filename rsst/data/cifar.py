"""``cifar10`` / ``cifar100`` in the official python-pickle layout.

Files: ``data_batch_1..5``, ``test_batch``, ``batches.meta`` (CIFAR-10) / ``train``, ``test``,
``meta`` (CIFAR-100), also inside the ``cifar-10-batches-py`` / ``cifar-100-python`` subfolder.

CIFAR pickles are read with `pickle`, as the official loaders do: only point ``data_dir`` at
files you trust.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rsst.data.base import ImageSet
from rsst.errors import UserError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def find_cifar_pickles(key: str, root: Path) -> Path | None:
    """The folder holding the official pickles (root or its standard subfolder), else None."""
    marker, sub = ("data_batch_1", "cifar-10-batches-py") if key == "cifar10" else (
        "train", "cifar-100-python")  # fmt: skip
    for folder in (root, root / sub):
        if (folder / marker).is_file():
            return folder
    return None


def _read_pickle(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as exc:  # corrupt file: many possible exception types from pickle
        raise UserError(
            f"cannot read CIFAR pickle {path} ({type(exc).__name__}: {exc}): replace it with the "
            "file from the official python-version archive"
        ) from exc
    if not isinstance(obj, dict):
        raise UserError(
            f"CIFAR pickle {path} does not hold a dict: replace it with the official file"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _pickle_batch(path: Path, label_key: str, num_classes: int) -> ImageSet:
    d = _read_pickle(path)
    if "data" not in d or label_key not in d:
        raise UserError(
            f"CIFAR pickle {path} lacks 'data' or {label_key!r} (has {sorted(d)}): this is not "
            f"a {'CIFAR-10' if num_classes == 10 else 'CIFAR-100'} batch; check --dataset"
        )
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"CIFAR pickle {path}: 'data' must be uint8 [N, 3072], got {data.dtype} "
                        f"{data.shape}; replace it with the official file")  # fmt: skip
    if labels.shape != (data.shape[0],):
        raise UserError(f"CIFAR pickle {path}: {len(labels)} labels for {data.shape[0]} images; "
                        "replace it with the official file")  # fmt: skip
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(
            f"CIFAR pickle {path} has labels up to {labels.max()} but the dataset has "
            f"{num_classes} classes: check --dataset (cifar10 vs cifar100)"
        )
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageSet(images, torch.from_numpy(labels))


def _concat(sets: Sequence[ImageSet]) -> ImageSet:
    return ImageSet(torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]))


def load_cifar_pickles(key: str, folder: Path) -> tuple[ImageSet, ImageSet | None, list[str]]:
    if key == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)]
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise UserError(
                f"CIFAR-10 folder {folder} lacks {', '.join(missing)}: extract the whole "
                "cifar-10-python archive there"
            )
        train = _concat([_pickle_batch(folder / n, "labels", 10) for n in names])
        test_path = folder / "test_batch"
        test = _pickle_batch(test_path, "labels", 10) if test_path.is_file() else None
        classes = list(CIFAR10_CLASSES)
        if (folder / "batches.meta").is_file():
            classes = _label_names(folder / "batches.meta", "label_names", 10)
        return train, test, classes
    train = _pickle_batch(folder / "train", "fine_labels", 100)
    test_path = folder / "test"
    test = _pickle_batch(test_path, "fine_labels", 100) if test_path.is_file() else None
    meta = folder / "meta"
    if meta.is_file():
        classes = _label_names(meta, "fine_label_names", 100)
    else:
        classes = [f"class_{i}" for i in range(100)]
    return train, test, classes


def _label_names(path: Path, field: str, expected: int) -> list[str]:
    d = _read_pickle(path)
    raw = d.get(field)
    if not isinstance(raw, list) or len(raw) != expected:
        raise UserError(
            f"{path} should list {expected} {field}, found "
            f"{len(raw) if isinstance(raw, list) else 'none'}: check --dataset or replace the file"
        )
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]
