"""``cifar10`` / ``cifar100`` in the official python-pickle layout.

Files: ``data_batch_1..5``, ``test_batch``, ``batches.meta`` (CIFAR-10) / ``train``, ``test``,
``meta`` (CIFAR-100), also inside the ``cifar-10-batches-py`` / ``cifar-100-python`` subfolder.

CIFAR pickles are read with a restricted unpickler (`read_cifar_pickle`): the official files
hold only dicts, lists, bytes, ints and numpy uint8/int arrays, so those are all it builds; a
pickle that names any other callable (``os.system``, ``builtins.eval``, a class of some package)
is refused with one line before anything runs. The official loaders' plain ``pickle.load`` would
run such a file's code.
"""

from __future__ import annotations

import builtins
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


_TEST_FILE = {"cifar10": "test_batch", "cifar100": "test"}


def find_cifar_pickles(key: str, root: Path, split: str = "train") -> Path | None:
    """The folder holding the official pickles of ``split`` (``train``: the training batches,
    ``test``: the test batch alone) — root or its standard subfolder — else None."""
    sub = "cifar-10-batches-py" if key == "cifar10" else "cifar-100-python"
    if split == "test":
        marker = _TEST_FILE[key]
    else:
        marker = "data_batch_1" if key == "cifar10" else "train"
    for folder in (root, root / sub):
        if (folder / marker).is_file():
            return folder
    return None


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 pickles of ``bytes`` at protocol < 3 call (``_codecs.encode(s, 'latin1')``),
    limited to that one encoding."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}: only latin1 is allowed")
    return text.encode("latin1")


def _numpy_internals() -> tuple[object, object]:
    """numpy's ``multiarray._reconstruct`` and ``numeric._frombuffer`` (moved to ``numpy._core``
    in numpy 2), found without the deprecated ``numpy.core`` shim."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    return multiarray._reconstruct, numeric._frombuffer


_NUMPY_RECONSTRUCT, _NUMPY_FROMBUFFER = _numpy_internals()
# plain data types; not bytes/bytearray, whose bytes(n) would turn a tiny file into a huge buffer
_SAFE_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "complex",
                  "bool")  # fmt: skip
# (module, name) a CIFAR pickle may name → the object it gets. Python 2 pickles (and Python 3
# ones at protocol < 3) say ``__builtin__``: the base class's find_class maps that name, which
# this table does itself since it replaces find_class.
_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    **{(mod, "_reconstruct"): _NUMPY_RECONSTRUCT
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "_frombuffer"): _NUMPY_FROMBUFFER  # protocol 5 pickles of arrays
       for mod in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
    **{(mod, name): getattr(builtins, name) for name in _SAFE_BUILTINS
       for mod in ("builtins", "__builtin__")},
}  # fmt: skip


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a callable outside what a CIFAR file holds."""


class CifarUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that builds only the CIFAR format's types (see `_ALLOWED_GLOBALS`).

    Every global a pickle references — the only way a pickle reaches code — goes through
    `find_class`; anything not listed is refused before it is called.
    """

    def find_class(self, module: str, name: str) -> object:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise UnsafePickleError(f"{module}.{name}")
        return found


def read_cifar_pickle(path: Path) -> object:
    """Unpickle a CIFAR file with `CifarUnpickler` (``encoding="bytes"``: the official files are
    Python 2 pickles whose str fields are byte strings). `UserError` for anything but plain data."""
    try:
        with open(path, "rb") as f:
            return CifarUnpickler(f, encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UserError(
            f"refusing to load CIFAR pickle {path}: it references {exc}, which a CIFAR file never "
            "holds (only dicts, lists, bytes and numpy arrays), so it may run code; replace it "
            "with the file from the official python-version archive"
        ) from None


def _read_pickle(path: Path) -> dict[str, object]:
    try:
        obj = read_cifar_pickle(path)
    except UserError:
        raise
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


def load_cifar_test(key: str, folder: Path) -> tuple[ImageSet, list[str]]:
    """The test batch and the class names alone (``rsst eval --split test`` needs no training
    batches): ``test_batch`` (+ ``batches.meta``) or ``test`` (+ ``meta``)."""
    if key == "cifar10":
        test = _pickle_batch(folder / "test_batch", "labels", 10)
        meta = folder / "batches.meta"
        classes = (_label_names(meta, "label_names", 10) if meta.is_file()
                   else list(CIFAR10_CLASSES))  # fmt: skip
        return test, classes
    test = _pickle_batch(folder / "test", "fine_labels", 100)
    meta = folder / "meta"
    classes = (_label_names(meta, "fine_label_names", 100) if meta.is_file()
               else [f"class_{i}" for i in range(100)])  # fmt: skip
    return test, classes


def _label_names(path: Path, field: str, expected: int) -> list[str]:
    d = _read_pickle(path)
    raw = d.get(field)
    if not isinstance(raw, list) or len(raw) != expected:
        raise UserError(
            f"{path} should list {expected} {field}, found "
            f"{len(raw) if isinstance(raw, list) else 'none'}: check --dataset or replace the file"
        )
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]
