"""Datasets without downloads, held in memory as uint8 tensors, and a device-resident loader.

Datasets (`load_dataset`):
- ``synthetic`` (default): a seeded, learnable CIFAR-shaped task generated in memory, so
  ``rsst run`` works anywhere. Ten classes, each a smooth random prototype image; every sample
  is its class prototype shifted (up to 8 px), blended with a random other prototype, laid
  over a smooth random background, rescaled in brightness/contrast and noised. The task is
  fixed (it does not depend on ``seed``), like a real dataset; ``seed`` only picks the
  validation split and the train subset.
- ``cifar10`` / ``cifar100``: the official python-pickle layout (``data_batch_1..5``,
  ``test_batch``, ``batches.meta`` / ``train``, ``test``, ``meta``), also inside the
  ``cifar-10-batches-py`` / ``cifar-100-python`` subfolder, or class folders (below).
- ``imagefolder`` (alias ``tiny-imagenet``, which also checks for 200 classes): class folders
  ``train/<class>/*.png|jpg|jpeg`` (images may sit in ``<class>/images/`` as in Tiny-ImageNet),
  an optional labelled held-out split ``test/<class>/...`` or ``val/<class>/...`` or
  Tiny-ImageNet's ``val/images`` + ``val/val_annotations.txt``. Unlabelled folders (Tiny-ImageNet's
  ``test/images``) are ignored. All images must have one size: mixed sizes are a `UserError`
  instead of a silent resize, because resizing changes the task (Tiny-ImageNet is 64x64
  throughout, so it needs none). Grayscale/RGBA images are converted to RGB.

Decoded class-folder images are cached as one ``.npz`` file in ``cache_dir`` (default
``$RSST_CACHE`` or ``~/.cache/rsst``), keyed by the folder's absolute path and the name, size and
mtime of every image, and written atomically; the second load reads that file only.

Splits: ``val`` is carved from the training pool (seeded permutation) — ``val_split`` images,
by default 5000 when the pool has >= 20k images, 1000 for ``synthetic``, else 10 %.
``val_split=0`` gives an empty `ImageSet` (never None), so callers test ``len(splits.val)``.
When a layout has both a labelled ``val/`` and ``test/`` folder, ``val/`` is the val split and
nothing is carved. ``train_subset=N`` keeps N of the remaining training images (seeded).
``test`` is None unless the layout has a labelled test split.

CIFAR pickles are read with `pickle`, as the official loaders do: only point ``data_dir`` at
files you trust.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import pickle
import sys
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rsst.errors import UserError

DATASETS: tuple[str, ...] = ("synthetic", "cifar10", "cifar100", "imagefolder", "tiny-imagenet")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
CACHE_FORMAT = 1  # bump when the cached arrays' meaning changes

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_EXPECTED_CLASSES = {"cifar10": 10, "cifar100": 100, "tiny-imagenet": 200}
_SYNTHETIC_SIZES = (6000, 1000)  # train pool (val carved from it), test
_SYNTHETIC_VAL = 1000
_PARALLEL_DECODE_MIN = 2000  # below this, worker start-up costs more than it saves


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
    key = name.strip().lower().replace("_", "-")
    key = {"cifar-10": "cifar10", "cifar-100": "cifar100", "tinyimagenet": "tiny-imagenet"}.get(
        key, key
    )
    if key not in DATASETS:
        raise UserError(
            f"unknown dataset {name!r}: pass --dataset with one of {', '.join(DATASETS)}"
        )
    if val_split is not None and (not isinstance(val_split, int) or val_split < 0):
        raise UserError(f"val_split must be a count of images >= 0, got {val_split!r}")
    if train_subset is not None and (not isinstance(train_subset, int) or train_subset < 1):
        raise UserError(f"train_subset must be a positive count of images, got {train_subset!r}")

    explicit_val: ImageSet | None = None
    if key == "synthetic":
        pool, test, classes = _synthetic()
        default_val = _SYNTHETIC_VAL
    else:
        root = _check_dir(key, data_dir)
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        if key in ("cifar10", "cifar100") and (pickle_dir := _find_cifar_pickles(key, root)):
            pool, test, classes = _load_cifar_pickles(key, pickle_dir)
        else:
            pool, explicit_val, test, classes = _load_folders(key, root, cache, workers)
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


# ---------------------------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------------------------


def _synthetic() -> tuple[ImageSet, ImageSet, list[str]]:
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

    n_pool, n_test = _SYNTHETIC_SIZES
    pool = sample(n_pool)
    test = sample(n_test)
    return pool, test, [f"class_{i}" for i in range(n_classes)]


# ---------------------------------------------------------------------------------------------
# CIFAR python pickles
# ---------------------------------------------------------------------------------------------


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


def _find_cifar_pickles(key: str, root: Path) -> Path | None:
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


def _load_cifar_pickles(key: str, folder: Path) -> tuple[ImageSet, ImageSet | None, list[str]]:
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


# ---------------------------------------------------------------------------------------------
# class folders
# ---------------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder: Path) -> list[str]:
    """Image files anywhere below ``folder`` (covers Tiny-ImageNet's <class>/images/), sorted.

    Plain strings, not Paths: building 50k Path objects costs more than the cached load itself.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return found


def _class_split(folder: Path) -> dict[str, list[str]] | None:
    """``{class: files}`` if ``folder`` holds class subfolders with images, else None."""
    if not folder.is_dir():
        return None
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if [p.name for p in subdirs] == ["images"]:
        return None  # Tiny-ImageNet style flat split: unlabelled or labelled by annotations
    split = {p.name: _images_under(p) for p in subdirs}
    split = {k: v for k, v in split.items() if v}
    return split or None


def _tiny_val_split(folder: Path) -> dict[str, list[str]] | None:
    """Tiny-ImageNet ``val/images`` + ``val_annotations.txt`` (file, wnid, box) as classes."""
    ann = folder / "val_annotations.txt"
    if not (ann.is_file() and (folder / "images").is_dir()):
        return None
    split: dict[str, list[str]] = {}
    for lineno, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split("\t")
        if not line.strip():
            continue
        if len(parts) < 2:
            raise UserError(f"{ann} line {lineno} is not '<file>\\t<class>...': fix or remove it")
        split.setdefault(parts[1], []).append(os.path.join(folder, "images", parts[0]))
    return split or None


def _load_folders(
    key: str, root: Path, cache_dir: Path, workers: int | None
) -> tuple[ImageSet, ImageSet | None, ImageSet | None, list[str]]:
    """Class-folder layout: (train pool, explicit val or None, test or None, classes)."""
    train_dir = root / "train"
    if not train_dir.is_dir():
        pickle_hint = (
            "the CIFAR python layout (data_batch_1..5, test_batch)" if key == "cifar10"
            else "the CIFAR-100 python layout (train, test, meta)" if key == "cifar100"
            else None
        )  # fmt: skip
        layouts = f"{pickle_hint} or class folders" if pickle_hint else "class folders"
        raise UserError(
            f"data dir {root} has no train/ folder: expected {layouts} train/<class>/*.png|jpg; "
            f"pass --data-dir pointing at it{_layout_hint(key, root)}"
        )
    train_split = _class_split(train_dir)
    if train_split is None:
        raise UserError(
            f"{train_dir} holds no class folders with .png/.jpg/.jpeg images: expected "
            "train/<class>/<image>; pass --data-dir pointing at such a folder"
        )
    classes = sorted(train_split)
    expected = _EXPECTED_CLASSES.get(key)
    if expected is not None and len(classes) != expected:
        raise UserError(
            f"{train_dir} has {len(classes)} class folders but {key} has {expected}: point "
            "--data-dir at the right dataset or use --dataset imagefolder"
        )
    if len(classes) < 2:
        raise UserError(f"{train_dir} has only one class folder: a classifier needs at least two")

    test_split = _class_split(root / "test")
    val_split = _class_split(root / "val") or _tiny_val_split(root / "val")
    explicit_val_split = None
    if test_split is None and val_split is not None:
        test_split, val_split = val_split, None  # the only labelled held-out split is the test
    elif test_split is not None and val_split is not None:
        explicit_val_split = val_split

    splits = {"train": train_split, "val": explicit_val_split, "test": test_split}
    for split_name, split in splits.items():
        if split is None or split_name == "train":
            continue
        unknown = sorted(set(split) - set(classes))
        if unknown:
            raise UserError(
                f"{root}/{split_name} has classes not in train/: {', '.join(unknown[:5])}: make "
                "its class folders match train/"
            )

    files: list[str] = []
    labels: list[int] = []
    bounds: dict[str, tuple[int, int]] = {}
    index = {c: i for i, c in enumerate(classes)}
    for split_name, split in splits.items():
        if split is None:
            continue
        start = len(files)
        for cls in sorted(split):
            files.extend(split[cls])
            labels.extend([index[cls]] * len(split[cls]))
        bounds[split_name] = (start, len(files))
    images = _decode_cached(root, files, cache_dir, workers)
    label_t = torch.tensor(labels, dtype=torch.int64)

    def part(split_name: str) -> ImageSet | None:
        if split_name not in bounds:
            return None
        a, b = bounds[split_name]
        return ImageSet(images[a:b], label_t[a:b])

    train = part("train")
    assert train is not None
    return train, part("val"), part("test"), classes


def _layout_hint(key: str, root: Path) -> str:
    """A pointer for the two common near-misses: CIFAR pickles under the wrong --dataset, and
    --data-dir pointing at train/ itself."""
    for name, marker, sub in (
        ("cifar10", "data_batch_1", "cifar-10-batches-py"),
        ("cifar100", "meta", "cifar-100-python"),
    ):
        if name != key and ((root / marker).is_file() or (root / sub).is_dir()):
            return f" (it looks like {name} python pickles: pass --dataset {name})"
    if _class_split(root) is not None:
        return f" (it holds class folders itself: pass its parent {root.parent} instead)"
    return ""


def _signature(root: Path, files: Sequence[str]) -> str:
    """Hash of the folder and every file's name, size and mtime: any change misses the cache."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "root": str(root)}).encode())
    prefix = len(str(root)) + 1
    for f in files:
        try:
            st = os.stat(f)
        except OSError as exc:
            raise UserError(
                f"cannot read image {f} ({exc}): fix its permissions or remove it"
            ) from exc
        h.update(f"{f[prefix:]}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def cache_path(root: Path, files: Sequence[str], cache_dir: Path) -> Path:
    """Where the decoded images of ``files`` under ``root`` are (or will be) cached."""
    return cache_dir / f"{root.name or 'data'}-{_signature(root, files)}.npz"


def _decode_cached(
    root: Path, files: Sequence[str], cache_dir: Path, workers: int | None
) -> torch.Tensor:
    """uint8 [N,3,H,W] for ``files``: from the cache file if present, else decode and save."""
    path = cache_path(root, files, cache_dir)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                arr = z["images"]
            if arr.shape[0] == len(files):
                return torch.from_numpy(arr)
        except (OSError, ValueError, KeyError, EOFError) as exc:
            warnings.warn(f"ignoring unreadable cache file {path} ({exc}); decoding again",
                          stacklevel=3)  # fmt: skip
    arr = decode_images(files, workers)
    _save_atomic(path, arr)
    return torch.from_numpy(arr)


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    """Write the cache with a temp file + os.replace, so a killed run never leaves a torn file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from rsst.atomic import atomic_write

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, images=arr)

        atomic_write(path, write)
    except OSError as exc:  # a read-only cache must not stop training
        warnings.warn(f"could not write the image cache {path} ({exc}); set RSST_CACHE to a "
                      "writable folder to make the next load fast", stacklevel=3)  # fmt: skip


def _decode_one(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _decode_chunk(
    paths: Sequence[str], size: tuple[int, int]
) -> tuple[np.ndarray | None, str | None]:
    """Decode into one [n,3,H,W] array; on the first bad file return (None, message)."""
    out = np.empty((len(paths), 3, size[0], size[1]), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            img = _decode_one(p)
        except Exception as exc:  # PIL raises many types for corrupt files
            return None, (
                f"cannot read image {p} ({type(exc).__name__}: {exc}): delete or replace the file"
            )
        if img.shape[:2] != size:
            return None, (
                f"image {p} is {img.shape[1]}x{img.shape[0]} but the first image is "
                f"{size[1]}x{size[0]}: resize the dataset to one size offline (rsst does not "
                "resize silently)"
            )
        out[i] = img.transpose(2, 0, 1)
    return out, None


def decode_images(files: Sequence[str | Path], workers: int | None = None) -> np.ndarray:
    """Decode image files with PIL into uint8 [N,3,H,W]; parallel processes for big sets.

    Threads do not help (per-image Python overhead holds the GIL for 32x32 JPEGs), so large
    sets use a fork-based process pool where the platform has fork.
    """
    if not files:
        raise UserError("no images found: expected .png/.jpg/.jpeg files in class folders")
    files = [str(f) for f in files]
    size = _first_size(files[0])
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    use_pool = (
        n_workers > 1
        and len(files) >= _PARALLEL_DECODE_MIN
        and "fork" in multiprocessing.get_all_start_methods()
        and sys.platform != "darwin"
    )
    if not use_pool:
        out, err = _decode_chunk(files, size)
        if err:
            raise UserError(err)
        assert out is not None
        return out
    chunk = math.ceil(len(files) / (n_workers * 4))
    chunks = [files[i : i + chunk] for i in range(0, len(files), chunk)]
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
        results = list(pool.map(_decode_chunk, chunks, [size] * len(chunks)))
    for _, err in results:
        if err:
            raise UserError(err)
    return np.concatenate([r for r, _ in results if r is not None])


def _first_size(path: str) -> tuple[int, int]:
    """(H, W) of the first image, which fixes the size every other image must have."""
    try:
        img = _decode_one(path)
    except Exception as exc:
        raise UserError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}): delete or replace the file"
        ) from exc
    return int(img.shape[0]), int(img.shape[1])


# ---------------------------------------------------------------------------------------------
# device-resident batches
# ---------------------------------------------------------------------------------------------


class Batches:
    """Mini-batches of an `ImageSet` that lives on ``device`` (copied there once).

    Each epoch yields ``(x, y)``: x float32 [B,3,H,W] in [0,1], y int64 [B], both on ``device``.
    With ``augment`` every batch gets the standard CIFAR augmentation — a random crop with
    ``pad`` pixels of zero padding and a random horizontal flip — as ONE gather from the
    pre-padded images, vectorized over the batch (no per-image Python loop, same code on CPU
    and CUDA). The shuffle order and augmentation of epoch ``e`` depend only on (seed, e), so
    resuming at an epoch reproduces it exactly; iterating the object again advances the epoch.
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
    ) -> None:
        if batch_size < 1:
            raise UserError(
                f"batch size must be >= 1, got {batch_size}: pass a positive --batch-size"
            )
        self.device = torch.device(device)
        self.batch_size = batch_size
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
        if self.drop_last:
            return self.n // self.batch_size
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
            x = self._augment(idx, gen) if self.augment else self.images[idx]
            yield x.float().div_(255.0), self.labels[idx]

    def _augment(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Draw a crop offset (0..2*pad in the padded image) and a coin flip per sample."""
        n, p, dev = idx.shape[0], self.pad, self.device
        oy = torch.randint(0, 2 * p + 1, (n,), generator=gen, device=dev)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=gen, device=dev)
        flip = torch.rand(n, generator=gen, device=dev) < 0.5
        return crop_flip(self.images, idx, oy, ox, flip, self.height, self.width)


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


__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "Batches",
    "DataSplits",
    "ImageSet",
    "cache_path",
    "channel_stats",
    "crop_flip",
    "decode_images",
    "default_cache_dir",
    "iterate_batches",
    "load_dataset",
]
