"""CIFAR pickles are data, never code: the restricted unpickler loads the real format (Python 2
pickles with numpy arrays, and pickles re-saved by Python 3) and refuses anything that names a
callable, before it runs."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_cifar10

from rsst.data import load_dataset, load_split
from rsst.data.cifar import read_cifar_pickle
from rsst.errors import UserError

REPO = Path(__file__).resolve().parent.parent


class RunsShell:
    """Unpickling calls ``os.system(command)`` (pickled as ``posix.system``)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class RunsEval:
    """Unpickling calls ``builtins.eval(source)``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return (builtins.eval, (self.source,))


class RunsNumpyLoad:
    """Unpickling calls ``numpy.load`` on a path: a numpy callable that is not an array type."""

    def __reduce__(self):
        return (np.load, ("/nonexistent.npy",))


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle wrote it (SHORT_BINSTRING / BINSTRING)."""
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _py2_int(n: int) -> bytes:
    return (b"K" + bytes([n])) if 0 <= n < 256 else (b"J" + struct.pack("<i", n))


def _py2_array(a: np.ndarray) -> bytes:
    """A numpy array as Python 2's cPickle wrote it at protocol 2 (how the official CIFAR files
    hold their ``data``): ``numpy.core.multiarray._reconstruct`` + ``ndarray.__setstate__``."""
    dtype = (b"cnumpy\ndtype\n" + _py2_str(a.dtype.str[1:].encode()) + _py2_int(0) + _py2_int(1)
             + b"\x87R(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2
             + _py2_int(0) + b"tb")  # fmt: skip
    shape = b"(" + b"".join(_py2_int(d) for d in a.shape) + b"t"
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85"
            + _py2_str(b"b") + b"\x87R(" + _py2_int(1) + shape + dtype + b"\x89"
            + _py2_str(a.tobytes()) + b"tb")  # fmt: skip


def py2_cifar_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A whole CIFAR-10 batch file in the byte format of the official (Python 2) archive."""
    return (b"\x80\x02}(" + _py2_str(b"batch_label") + _py2_str(b"testing batch 1 of 1")
            + _py2_str(b"labels") + b"](" + b"".join(_py2_int(x) for x in labels) + b"e"
            + _py2_str(b"data") + _py2_array(data) + _py2_str(b"filenames") + b"]("
            + b"".join(_py2_str(f"img_{i}.png".encode()) for i in range(len(labels)))
            + b"eu.")  # fmt: skip


def test_python2_cifar_batch_loads(tmp_path: Path) -> None:
    labels = [3, 1, 4, 1, 5]
    data = np.random.default_rng(0).integers(0, 256, (5, 3072), dtype=np.uint8)
    write_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(py2_cifar_batch(data, labels))
    assert pickle.loads(py2_cifar_batch(data, labels), encoding="bytes")[b"labels"] == labels
    obj = read_cifar_pickle(tmp_path / "test_batch")
    assert isinstance(obj, dict) and obj[b"labels"] == labels
    assert obj[b"data"].dtype == np.uint8 and np.array_equal(obj[b"data"], data)
    for test in (load_dataset("cifar10", tmp_path, val_split=5).test,
                 load_split("cifar10", tmp_path, "test").images):
        assert torch.equal(test.labels, torch.tensor(labels))
        assert torch.equal(test.images, torch.from_numpy(data.reshape(5, 3, 32, 32)))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python3_pickles_of_every_protocol_load(tmp_path: Path, protocol: int) -> None:
    """A genuine CIFAR-format dict re-saved by Python 3 (protocol 2 pickles bytes through
    ``_codecs.encode``, protocol 5 pickles arrays through ``numeric._frombuffer``)."""
    data = np.arange(4 * 3072, dtype=np.int64).astype(np.uint8).reshape(4, 3072)
    batch = {b"batch_label": b"x", b"labels": [0, 9, 2, 2], b"data": data,
             b"filenames": [b"a.png"] * 4, b"coarse": np.array([1, 2], dtype=np.int32)}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    obj = read_cifar_pickle(path)
    assert obj[b"labels"] == [0, 9, 2, 2] and obj[b"filenames"] == [b"a.png"] * 4
    assert np.array_equal(obj[b"data"], data) and obj[b"data"].dtype == np.uint8
    assert obj[b"coarse"].dtype == np.int32


@pytest.mark.parametrize("payload,referenced", [
    (lambda: RunsShell("touch PWNED"), "system"),
    (lambda: RunsEval("open('PWNED', 'w').close()"), "eval"),
    (lambda: {b"data": RunsShell("touch PWNED"), b"labels": [0]}, "system"),
    (lambda: {b"labels": [0], b"data": RunsNumpyLoad()}, "numpy.load"),
])
def test_malicious_pickle_is_refused_before_it_runs(tmp_path: Path, monkeypatch, payload,
                                                    referenced: str) -> None:
    monkeypatch.chdir(tmp_path)
    write_cifar10(tmp_path / "data")
    (tmp_path / "data" / "data_batch_2").write_bytes(pickle.dumps(payload(), protocol=2))
    with pytest.raises(UserError) as info:
        load_dataset("cifar10", tmp_path / "data")
    message = str(info.value)
    assert "refusing to load CIFAR pickle" in message and "data_batch_2" in message
    assert referenced in message and "\n" not in message
    assert not (tmp_path / "PWNED").exists()


def test_python2_builtin_data_types_load(tmp_path: Path) -> None:
    """``__builtin__.set`` (a Python 2 name) is a data type and loads; ``__builtin__.getattr``
    is not."""
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c__builtin__\nset\n]K\x01a\x85R.")
    assert read_cifar_pickle(path) == {1}
    path.write_bytes(b"\x80\x02c__builtin__\ngetattr\n.")
    with pytest.raises(UserError, match="getattr"):
        read_cifar_pickle(path)


def test_codecs_encode_only_decodes_latin1(tmp_path: Path) -> None:
    """``_codecs.encode`` is admitted for protocol-2 bytes, but only as latin1 → bytes."""
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64"
                     b"\x86R.")
    with pytest.raises(pickle.UnpicklingError, match="only latin1"):
        read_cifar_pickle(path)


@pytest.mark.slow
def test_cli_refuses_malicious_pickle_with_one_line(tmp_path: Path) -> None:
    """Through the real entry point: exit 2, one stderr line, no traceback, no side effect."""
    data = tmp_path / "data"
    write_cifar10(data)
    (data / "data_batch_1").write_bytes(pickle.dumps(RunsShell("touch PWNED"), protocol=2))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RSST_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "rsst", "run", "--dataset", "cifar10", "--data-dir", str(data),
         "--out", str(tmp_path / "run"), "--states", "1", "--epochs", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "refusing to load CIFAR pickle" in lines[0] and "data_batch_1" in lines[0]
    assert not (tmp_path / "PWNED").exists()
