"""``imagefolder`` / ``tiny-imagenet`` (and CIFAR as class folders): the class-folder reader and
its decode cache.

Layout: class folders ``train/<class>/*.png|jpg|jpeg`` (images may sit in ``<class>/images/`` as
in Tiny-ImageNet), an optional labelled held-out split ``test/<class>/...`` or ``val/<class>/...``
or Tiny-ImageNet's ``val/images`` + ``val/val_annotations.txt``. Unlabelled folders
(Tiny-ImageNet's ``test/images``) are ignored. All images must have one size: mixed sizes are a
`UserError` instead of a silent resize, because resizing changes the task (Tiny-ImageNet is
64x64 throughout, so it needs none). Grayscale/RGBA images are converted to RGB.

Decoded class-folder images are cached as one ``.npz`` file in ``cache_dir`` (default
``$RSST_CACHE`` or ``~/.cache/rsst``), keyed by the folder's absolute path and the name, size and
mtime of every image, and written atomically; the second load reads that file only.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from rsst.data.base import ImageSet
from rsst.errors import UserError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
CACHE_FORMAT = 1  # bump when the cached arrays' meaning changes

_EXPECTED_CLASSES = {"cifar10": 10, "cifar100": 100, "tiny-imagenet": 200}
_PARALLEL_DECODE_MIN = 2000  # below this, worker start-up costs more than it saves


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


def load_folders(
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
    _check_classes(key, train_dir, classes)
    explicit_val_split, test_split = _held_out_splits(root)
    splits = {"train": train_split, "val": explicit_val_split, "test": test_split}
    for split_name, split in splits.items():
        if split is not None and split_name != "train":
            _check_known(root, split_name, split, classes)

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


def _check_classes(key: str, folder: Path, classes: list[str]) -> None:
    expected = _EXPECTED_CLASSES.get(key)
    if expected is not None and len(classes) != expected:
        raise UserError(
            f"{folder} has {len(classes)} class folders but {key} has {expected}: point "
            "--data-dir at the right dataset or use --dataset imagefolder"
        )
    if len(classes) < 2:
        raise UserError(f"{folder} has only one class folder: a classifier needs at least two")


def _check_known(root: Path, split_name: str, split: dict[str, list[str]],
                 classes: list[str]) -> None:
    unknown = sorted(set(split) - set(classes))
    if unknown:
        raise UserError(
            f"{root}/{split_name} has classes not in train/: {', '.join(unknown[:5])}: make "
            "its class folders match train/"
        )


def _held_out_splits(
    root: Path,
) -> tuple[dict[str, list[str]] | None, dict[str, list[str]] | None]:
    """(explicit val, test) class splits: ``val/`` is the val split only when ``test/`` exists
    too; otherwise the one labelled held-out folder is the test split."""
    test_split = _class_split(root / "test")
    val_split = _class_split(root / "val") or _tiny_val_split(root / "val")
    if test_split is None:
        return None, val_split
    return val_split, test_split


def load_folder_split(
    key: str, root: Path, split: str, cache_dir: Path, workers: int | None
) -> tuple[ImageSet, list[str]] | None:
    """One labelled held-out split (``test``, or an explicit ``val``) read on its own, with the
    class names: ``rsst eval`` needs neither train/ images nor the other split.

    Class indices come from ``train/``'s folder names when it is there (as in training), else
    from the split's own sorted folder names, which must then be all of the dataset's classes.
    None for ``val`` when the layout has no explicit val/ (the val split is then carved from
    train/ and needs the whole dataset).
    """
    explicit_val, test = _held_out_splits(root)
    chosen = test if split == "test" else explicit_val
    if chosen is None:
        if split == "val":
            return None
        raise UserError(
            f"data dir {root} has no labelled test split (test/<class>/*.png|jpg, or val/<class>/ "
            "when there is no test/): pass --split val, or a --data-dir that has one"
        )
    folder_name = "test" if split == "test" and _class_split(root / "test") else "val"
    train_split = _class_split(root / "train")
    if train_split is not None:
        classes = sorted(train_split)
        _check_classes(key, root / "train", classes)
        _check_known(root, folder_name, chosen, classes)
    else:
        classes = sorted(chosen)
        _check_classes(key, root / folder_name, classes)
    index = {c: i for i, c in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    for cls in sorted(chosen):
        files.extend(chosen[cls])
        labels.extend([index[cls]] * len(chosen[cls]))
    images = _decode_cached(root, files, cache_dir, workers)
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64)), classes


def _layout_hint(key: str, root: Path) -> str:
    """A pointer for the two common near-misses: CIFAR pickles under the wrong --dataset, and
    --data-dir pointing at train/ itself."""
    for name, marker, sub in (
        ("cifar10", "data_batch_1", "cifar-10-batches-py"),
        ("cifar100", "meta", "cifar-100-python"),
    ):
        if name != key and ((root / marker).is_file() or (root / sub).is_dir()):
            return f" (it looks like {name} python pickles: pass --dataset {name})"
    held_out = [name for name in ("test", "val") if (root / name).is_dir()]
    if held_out:
        return (f" (it has {' and '.join(f'{n}/' for n in held_out)} but no train/: training "
                "and `rsst eval --split val` need train/<class>/; `rsst eval --split test` reads "
                "the test split alone)")
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
