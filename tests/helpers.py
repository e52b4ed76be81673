"""Builders shared by the test files: tiny models and run configs, tiny data, files in the real
on-disk formats (CIFAR pickles, class folders, run directories), run-record readers and the two
CLI runners (in process and as a subprocess).

A plain module: ``tests/`` is on ``sys.path`` under pytest (rootdir conftest, no package), so a
test imports it as ``from helpers import ...``. Test files never import each other.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from torch import nn

from rsst import cli, loop, statefile
from rsst.arena import Arena
from rsst.compact import random_prune
from rsst.config import RunConfig, validate
from rsst.data import CIFAR10_CLASSES, DataSplits
from rsst.methods import method_class, method_names
from rsst.models import create_model
from rsst.scores import keep_highest, synflow_iterate
from rsst.statefile import ModelSpec
from rsst.structure import build_structure

#: the repository root (what a child process needs on its PYTHONPATH)
ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# tiny run configs and tiny data
# ---------------------------------------------------------------------------------------------

#: the fields every tiny in-process run shares; a test file overrides what it studies
TINY_RUN = dict(states=2, epochs=1, rate=0.3, train_subset=128, val_split=64, batch_size=64,
                eval_batch_size=256, device="cpu", backend="torch", arch="resnet20")


def tiny_config(**kw: Any) -> RunConfig:
    """A validated `RunConfig`: `TINY_RUN` with ``kw`` over it (ResNet-20 on CPU, 128 images)."""
    return validate(RunConfig(**{**TINY_RUN, **kw}))


_SHRUNK: dict[tuple, DataSplits] = {}
_load_full = loop.load_run_data  # bound now: a CLI test may patch loop.load_run_data to us


def tiny_dataset(config: RunConfig) -> DataSplits:
    """``config``'s dataset (its split, subset and seed) shrunk to 8×8 pixels with a 64-image
    test split; cached across tests. A pruning state then takes a few CPU seconds; the loop's
    logic does not depend on the image size."""
    key = (config.dataset, str(config.data_dir), config.val_split, config.train_subset,
           config.seed, str(config.cache_dir))
    if key not in _SHRUNK:
        data = _load_full(config)

        def shrink(s: Any) -> Any:
            return type(s)(s.images[:, :, ::4, ::4].contiguous(), s.labels)

        test = data.test.subset(torch.arange(64)) if data.test is not None else None
        _SHRUNK[key] = dataclasses.replace(
            data, train=shrink(data.train), val=shrink(data.val),
            test=shrink(test) if test is not None else None, input_size=(3, 8, 8))
    return _SHRUNK[key]


#: `rsst.loop.run` on tiny data.
tiny_run = functools.partial(loop.run, load_data=tiny_dataset)


def tiny_pruning_run(config: RunConfig, run_dir: Any, console: Any, **kw: Any) -> loop.PruningRun:
    """`rsst.loop.PruningRun` on tiny data."""
    return loop.PruningRun(config, run_dir, console, tiny_dataset(config), **kw)


# ---------------------------------------------------------------------------------------------
# tiny models
# ---------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Stem conv + BN, two prunable convs (one with BN, one with bias), linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv_a = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(6)
        self.conv_b = nn.Conv2d(6, 5, 3, padding=1, bias=True)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn_a(self.conv_a(x)))
        x = torch.relu(self.conv_b(x))
        return self.fc(x.mean(dim=(2, 3)))


def small_cnn() -> tuple[SmallCNN, Arena, Any]:
    """A seeded `SmallCNN` with its arena and structure."""
    torch.manual_seed(0)
    model = SmallCNN()
    arena = Arena(model)
    return model, arena, build_structure(model, arena)


#: the tiny ViT's shape: 2 blocks of 3 heads × 8 dims, a 48-wide MLP, 5 classes, 16×16 images
VIT_EMBED, VIT_HEADS, VIT_DEPTH, VIT_HIDDEN = 24, 3, 2, 48


def tiny_vit(seed: int = 0) -> nn.Module:
    """A seeded timm `VisionTransformer` of the `VIT_*` shape (patch 8: 4 tokens + cls)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(img_size=16, patch_size=8, embed_dim=VIT_EMBED, depth=VIT_DEPTH,
                             num_heads=VIT_HEADS, mlp_ratio=VIT_HIDDEN / VIT_EMBED,
                             qkv_bias=True, num_classes=5)


def calibration(n: int = 1, size: int = 16, classes: int = 3, seed: int = 0
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` seeded batches of 8 random images with random labels."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(8, 3, size, size, generator=gen),
             torch.randint(0, classes, (8,), generator=gen)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# pruned models and run directories written by the run's own writer
# ---------------------------------------------------------------------------------------------

NUM_CLASSES = 5


def randomize(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics / affine parameters and biases, so folds are really tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.5)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def pruned_model(arch: str, fraction: float = 0.4, seed: int = 0, img_size: int = 32,
                 patch_size: int | None = None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A randomized ``arch`` with random whole groups killed, without training (eval mode)."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=NUM_CLASSES, img_size=img_size,
                         patch_size=patch_size)
    randomize(model, seed)
    masks = random_prune(model, fraction, seed=seed)
    return model.eval(), masks


def write_run(folder: Path, model: nn.Module, masks: dict[str, torch.Tensor], *,
              method: str = "refill", state: int = 0, config: dict | None = None) -> Path:
    """A run directory with one state file, written by the run's own writer (`rsst.statefile`)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = dataclasses.replace(ModelSpec.of(model), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    meta = statefile.state_metadata(
        spec, method=method, state=state, sparsity={"remain_weight": 0.5}, structure={},
        config=config or {"method": method, "arch": spec.arch})
    statefile.write_state(folder, state, model.state_dict(), masks, meta,
                          {"state": state, "val_acc": 0.5})
    return folder


# ---------------------------------------------------------------------------------------------
# datasets in the real on-disk formats
# ---------------------------------------------------------------------------------------------


def _cifar_rows(labels: list[int], salt: int) -> np.ndarray:
    """uint8 [N, 3072] rows (R plane, G plane, B plane) whose R plane encodes the label."""
    rows = np.zeros((len(labels), 3072), dtype=np.uint8)
    for i, lab in enumerate(labels):
        rows[i, :1024] = lab  # R = label
        rows[i, 1024:2048] = (salt + i) % 256  # G = a per-image id
        rows[i, 2048:] = np.arange(1024) % 256  # B = position inside the plane
    return rows


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(folder: Path, per_batch: int = 6, n_test: int = 7) -> None:
    """data_batch_1..5, test_batch and batches.meta as in cifar-10-python.tar.gz."""
    folder.mkdir(parents=True, exist_ok=True)
    for b in range(1, 6):
        labels = [(b + i) % 10 for i in range(per_batch)]
        _dump(
            folder / f"data_batch_{b}",
            {b"batch_label": f"training batch {b} of 5".encode(), b"labels": labels,
             b"data": _cifar_rows(labels, 10 * b), b"filenames": [b"x.png"] * per_batch},
        )  # fmt: skip
    labels = [i % 10 for i in range(n_test)]
    _dump(folder / "test_batch", {b"labels": labels, b"data": _cifar_rows(labels, 200)})
    _dump(
        folder / "batches.meta",
        {b"label_names": [n.encode() for n in CIFAR10_CLASSES], b"num_cases_per_batch": per_batch},
    )


def write_cifar100(folder: Path, n_train: int = 40, n_test: int = 9, bad_label: bool = False):
    """train, test and meta as in cifar-100-python.tar.gz (``bad_label``: one label of 100)."""
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = [(7 * i) % 100 for i in range(n_train)]
    if bad_label:
        train_labels[3] = 100
    _dump(
        folder / "train",
        {b"fine_labels": train_labels, b"coarse_labels": [0] * n_train,
         b"data": _cifar_rows([x % 256 for x in train_labels], 0)},
    )  # fmt: skip
    test_labels = [99 - i for i in range(n_test)]
    _dump(folder / "test", {b"fine_labels": test_labels, b"data": _cifar_rows(test_labels, 50)})
    _dump(folder / "meta", {b"fine_label_names": [f"c{i:02d}".encode() for i in range(100)]})


def save_image(path: Path, value: int, size: tuple[int, int] = (8, 8)) -> None:
    """A solid image whose red channel is ``value`` (PNG exact; JPEG within a few levels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[..., 0] = value
    arr[..., 1] = 128
    Image.fromarray(arr).save(path)


def write_class_folders(
    root: Path,
    classes: list[str],
    per_class: int = 4,
    test_per_class: int = 0,
    size: tuple[int, int] = (8, 8),
    val_dir: str = "test",
) -> None:
    """train/<class>/*.png|jpg (mixed), red channel = 20 * class index."""
    for ci, name in enumerate(classes):
        for i in range(per_class):
            ext = "png" if i % 2 == 0 else "jpg"
            save_image(root / "train" / name / f"{i:04d}.{ext}", 20 * ci, size)
        for i in range(test_per_class):
            save_image(root / val_dir / name / f"{i:04d}.png", 20 * ci, size)


TWO_CLASSES = ("cat", "dog")


def write_two_classes(root: Path, train: int, test: int) -> Path:
    """8x8 RGB PNGs of two classes (cat, dog) in train/ and test/ class folders."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c, name in enumerate(TWO_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                base = np.full((8, 8, 3), 60 + 120 * c, dtype=np.int16)
                img = np.clip(base + rng.integers(-40, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


# ---------------------------------------------------------------------------------------------
# run records
# ---------------------------------------------------------------------------------------------


def summary_states(run_dir: Path) -> list[dict]:
    """The state records of a run's summary.json."""
    return json.loads((run_dir / "summary.json").read_text())["states"]


def strip_seconds(records: list[dict]) -> list[dict]:
    """The records without their wall time (which differs between two identical runs)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def metrics_lines(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl lines, without their wall time."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return strip_seconds([json.loads(line) for line in lines])


def clean(data: Any) -> Any:
    """Without the fields that differ between two identical runs (wall time, measured latency,
    run directory)."""
    from rsst.latency import TIMINGS

    if isinstance(data, dict):
        return {k: clean(v) for k, v in data.items()
                if k not in ("seconds", "run_dir", *TIMINGS)}
    if isinstance(data, list):
        return [clean(v) for v in data]
    return data


# ---------------------------------------------------------------------------------------------
# the CLI: in process and as a subprocess
# ---------------------------------------------------------------------------------------------


def invoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
           *args: str) -> tuple[int, str, str]:
    """``rsst *args`` in process through `rsst.cli.main`: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["rsst", *args])
    monkeypatch.setattr(cli, "console", Console(file=sys.stdout, width=200))
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error_line(code: int, err: str, *words: str) -> None:
    """A user's mistake: exit code 2, one ``error:`` line naming ``words``, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error:")
    for word in words:
        assert word in lines[0], lines[0]


def rsst_subprocess(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m rsst *args`` in a child process (a private cache, 100 columns), captured."""
    env = {**os.environ, "RSST_CACHE": str(cwd / "cache"), "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "rsst", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# compositions of library functions that only the tests need
# ---------------------------------------------------------------------------------------------


def one_shot_methods() -> tuple[str, ...]:
    """The registered methods that have a one-shot form (``--target-remain``)."""
    return tuple(n for n in method_names() if method_class(n).one_shot_states is not None)


def synflow_prune(model: nn.Module, masks: dict[str, torch.Tensor], keep: int, iterations: int,
                  input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """SynFlow's whole iterative pruning (`rsst.scores.synflow_iterate`, then the last cut):
    the masks keeping ``keep`` of the named weights."""
    masks, scores = synflow_iterate(model, masks, keep, iterations, input_shape)
    return keep_highest(scores, masks, keep)


def start(cwd: Path, args: list[str], kill_at: str | None = None) -> subprocess.Popen:
    """`rsst run ARGS` as a child process, killed at ``kill_at`` (`rsst.killpoint`) if given."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RSST_CACHE": str(cwd / "cache"),
           "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    env.pop("RSST_TEST_KILL_AT", None)
    if kill_at is not None:
        env["RSST_TEST_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "-m", "rsst", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err
