"""Datasets and the device-resident loader, on tiny fixtures written in the real on-disk formats."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import save_image, write_cifar10, write_cifar100, write_class_folders
from PIL import Image
from torch import nn

import rsst.data.folders as folders_mod
from rsst.data import (
    CIFAR10_CLASSES,
    Batches,
    ImageSet,
    channel_stats,
    crop_flip,
    iterate_batches,
    load_dataset,
)
from rsst.errors import UserError


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from 2 threads, and OpenMP spin-waits make a busy 2-core box
    up to 20x slower with them; restore the setting for the other test files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# CIFAR pickles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["", "cifar-10-batches-py"])
def test_cifar10_pickles(tmp_path: Path, sub: str) -> None:
    write_cifar10(tmp_path / sub if sub else tmp_path)
    splits = load_dataset("cifar10", tmp_path, val_split=5)
    assert splits.num_classes == 10 and splits.classes == list(CIFAR10_CLASSES)
    assert splits.input_size == (3, 32, 32)
    assert len(splits.train) == 25 and len(splits.val) == 5
    assert splits.test is not None and len(splits.test) == 7
    for part in (splits.train, splits.val, splits.test):
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (3, 32, 32)
        assert part.labels.dtype == torch.int64
        # R plane holds the label, B plane the position: the CHW reshape is right.
        torch.testing.assert_close(part.images[:, 0, 0, 0].long(), part.labels)
        assert part.images[0, 2, 0, 5] == 5 and part.images[0, 2, 1, 0] == 32
    torch.testing.assert_close(splits.test.labels, torch.arange(7) % 10)
    assert splits.name == "cifar10"


def test_cifar100_pickles_and_labels_out_of_range(tmp_path: Path) -> None:
    write_cifar100(tmp_path / "cifar-100-python")
    splits = load_dataset("cifar100", tmp_path, val_split=4, seed=3)
    assert splits.num_classes == 100 and splits.classes[:2] == ["c00", "c01"]
    assert len(splits.train) == 36 and len(splits.val) == 4 and len(splits.test) == 9
    torch.testing.assert_close(splits.test.labels, 99 - torch.arange(9))
    assert int(splits.train.labels.max()) < 100

    bad = tmp_path / "bad"
    write_cifar100(bad, bad_label=True)
    with pytest.raises(UserError, match="labels up to 100 .*cifar10 vs cifar100"):
        load_dataset("cifar100", bad)


def test_cifar_pickle_problems(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(UserError, match="lacks data_batch_3"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="cannot read CIFAR pickle .*data_batch_3"):
        load_dataset("cifar10", tmp_path)
    # A CIFAR-100 pickle where CIFAR-10 is expected: wrong label key.
    write_cifar100(tmp_path / "c100")
    (tmp_path / "data_batch_3").write_bytes((tmp_path / "c100" / "train").read_bytes())
    with pytest.raises(UserError, match="lacks 'data' or 'labels'"):
        load_dataset("cifar10", tmp_path)


# ---------------------------------------------------------------------------------------------
# class folders
# ---------------------------------------------------------------------------------------------


def test_cifar10_class_folders_png_and_jpg(tmp_path: Path) -> None:
    write_class_folders(tmp_path, list(CIFAR10_CLASSES), per_class=3, test_per_class=2)
    splits = load_dataset("cifar10", tmp_path, val_split=0, cache_dir=tmp_path / "cache")
    assert splits.classes == list(CIFAR10_CLASSES)
    assert splits.input_size == (3, 8, 8)
    assert len(splits.train) == 30 and len(splits.val) == 0
    assert splits.val.images.shape == (0, 3, 8, 8)
    assert splits.test is not None and len(splits.test) == 20
    for part in (splits.train, splits.test):
        red = part.images[:, 0].float().mean(dim=(1, 2))
        assert (red - 20 * part.labels.float()).abs().max() <= 3  # jpg is lossy
        assert (part.images[:, 1].float() - 128).abs().max() <= 3


def test_imagefolder_default_val_split_and_seeds(tmp_path: Path) -> None:
    write_class_folders(tmp_path, ["a", "b", "c"], per_class=10)
    kw = {"cache_dir": tmp_path / "cache"}
    splits = load_dataset("imagefolder", tmp_path, **kw)
    assert splits.classes == ["a", "b", "c"] and splits.num_classes == 3
    assert len(splits.val) == 3 and len(splits.train) == 27  # 10 % by default
    assert splits.test is None

    again = load_dataset("imagefolder", tmp_path, **kw)
    assert torch.equal(again.train.images, splits.train.images)
    assert torch.equal(again.val.labels, splits.val.labels)

    sub = load_dataset("imagefolder", tmp_path, val_split=5, train_subset=7, **kw)
    assert len(sub.val) == 5 and len(sub.train) == 7


def test_seeded_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=20)  # 100 distinct images: G plane = id
    a = load_dataset("cifar10", tmp_path, val_split=10, train_subset=30, seed=0)
    b = load_dataset("cifar10", tmp_path, val_split=10, train_subset=30, seed=0)
    c = load_dataset("cifar10", tmp_path, val_split=10, train_subset=30, seed=1)

    def key(s: ImageSet) -> set[tuple[int, int]]:
        return {
            (int(x), int(y))
            for x, y in zip(s.images[:, 1, 0, 0], s.images[:, 0, 0, 0], strict=True)
        }

    assert key(a.val) == key(b.val) and key(a.train) == key(b.train)
    assert key(a.val) != key(c.val)
    assert not key(a.val) & key(a.train)
    assert len(a.train) == 30 and len(a.val) == 10


def test_tiny_imagenet_layout(tmp_path: Path) -> None:
    wnids = [f"n0{i}" for i in range(3)]
    for ci, w in enumerate(wnids):
        for i in range(4):
            save_image(tmp_path / "train" / w / "images" / f"{w}_{i}.JPEG", 20 * ci, (16, 16))
        (tmp_path / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    lines = []
    for i in range(6):
        save_image(tmp_path / "val" / "images" / f"val_{i}.JPEG", 20 * (i % 3), (16, 16))
        lines.append(f"val_{i}.JPEG\t{wnids[i % 3]}\t0\t0\t10\t10")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    save_image(tmp_path / "test" / "images" / "test_0.JPEG", 0, (16, 16))  # unlabelled
    splits = load_dataset("imagefolder", tmp_path, val_split=2, cache_dir=tmp_path / "cache")
    assert splits.classes == wnids and splits.input_size == (3, 16, 16)
    assert len(splits.train) == 10 and len(splits.val) == 2
    assert splits.test is not None and len(splits.test) == 6
    red = splits.test.images[:, 0].float().mean(dim=(1, 2))
    assert (red - 20 * splits.test.labels.float()).abs().max() <= 3
    with pytest.raises(UserError, match="3 class folders but tiny-imagenet has 200"):
        load_dataset("tiny-imagenet", tmp_path, cache_dir=tmp_path / "cache")


def test_explicit_val_and_test_folders(tmp_path: Path) -> None:
    write_class_folders(tmp_path, ["a", "b"], per_class=4, test_per_class=2, val_dir="test")
    write_class_folders(tmp_path / "v", ["a", "b"], per_class=0, test_per_class=3, val_dir="val")
    os.rename(tmp_path / "v" / "val", tmp_path / "val")
    splits = load_dataset("imagefolder", tmp_path, cache_dir=tmp_path / "cache")
    assert len(splits.train) == 8 and len(splits.val) == 6 and len(splits.test) == 4
    with pytest.raises(UserError, match="drop --val-split"):
        load_dataset("imagefolder", tmp_path, val_split=2, cache_dir=tmp_path / "cache")


def test_decoded_images_are_cached_and_reused(tmp_path: Path, monkeypatch) -> None:
    write_class_folders(tmp_path / "d", ["a", "b"], per_class=3)
    cache = tmp_path / "cache"
    first = load_dataset("imagefolder", tmp_path / "d", val_split=1, cache_dir=cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    mtime = files[0].stat().st_mtime_ns

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(folders_mod, "decode_images", no_decode)
    second = load_dataset("imagefolder", tmp_path / "d", val_split=1, cache_dir=cache)
    assert torch.equal(first.train.images, second.train.images)
    assert list(cache.iterdir()) == files and files[0].stat().st_mtime_ns == mtime
    monkeypatch.undo()

    # Changing an image invalidates the cache: a new file appears, nothing temporary is left.
    save_image(tmp_path / "d" / "train" / "a" / "0000.png", 250)
    third = load_dataset("imagefolder", tmp_path / "d", val_split=0, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2 and not list(cache.glob("*.tmp"))
    assert 250 in third.train.images[:, 0, 0, 0].tolist()

    # RSST_CACHE is the default location.
    monkeypatch.setenv("RSST_CACHE", str(tmp_path / "envcache"))
    load_dataset("imagefolder", tmp_path / "d", val_split=0)
    assert len(list((tmp_path / "envcache").iterdir())) == 1


def test_parallel_decode_matches_serial(tmp_path: Path) -> None:
    paths = []
    for i in range(12):
        p = tmp_path / f"{i}.png"
        save_image(p, 10 * i)
        paths.append(p)
    serial = folders_mod.decode_images(paths, workers=1)
    old = folders_mod._PARALLEL_DECODE_MIN
    folders_mod._PARALLEL_DECODE_MIN = 1
    try:
        parallel = folders_mod.decode_images(paths, workers=2)
    finally:
        folders_mod._PARALLEL_DECODE_MIN = old
    assert serial.shape == (12, 3, 8, 8) and np.array_equal(serial, parallel)
    assert serial[:, 0, 0, 0].tolist() == [10 * i for i in range(12)]


# ---------------------------------------------------------------------------------------------
# user errors
# ---------------------------------------------------------------------------------------------


def test_user_errors(tmp_path: Path) -> None:
    cache = {"cache_dir": tmp_path / "cache"}
    with pytest.raises(UserError, match="unknown dataset 'mnist'.*synthetic"):
        load_dataset("mnist")
    with pytest.raises(UserError, match="pass --data-dir"):
        load_dataset("cifar10")
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        load_dataset("imagefolder", tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no train/ folder: expected the CIFAR python layout"):
        load_dataset("cifar10", tmp_path / "empty")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no class folders with .png"):
        load_dataset("imagefolder", tmp_path / "empty", **cache)

    write_cifar10(tmp_path / "c10" / "cifar-10-batches-py")
    with pytest.raises(
        UserError, match="looks like cifar10 python pickles: pass --dataset cifar10"
    ):
        load_dataset("imagefolder", tmp_path / "c10")
    write_class_folders(tmp_path / "nested", ["a", "b"], per_class=1)
    with pytest.raises(UserError, match="holds class folders itself: pass its parent"):
        load_dataset("imagefolder", tmp_path / "nested" / "train")

    seven = tmp_path / "seven"
    write_class_folders(seven, [f"c{i}" for i in range(7)], per_class=1)
    with pytest.raises(UserError, match="7 class folders but cifar10 has 10"):
        load_dataset("cifar10", seven, **cache)

    one = tmp_path / "one"
    write_class_folders(one, ["only"], per_class=2)
    with pytest.raises(UserError, match="at least two"):
        load_dataset("imagefolder", one, **cache)

    ok = tmp_path / "ok"
    write_class_folders(ok, ["a", "b"], per_class=3)
    with pytest.raises(UserError, match="leaves no training images"):
        load_dataset("imagefolder", ok, val_split=6, **cache)
    with pytest.raises(UserError, match="train_subset=9 is more than"):
        load_dataset("imagefolder", ok, val_split=1, train_subset=9, **cache)
    with pytest.raises(UserError, match="val_split must be"):
        load_dataset("imagefolder", ok, val_split=-1, **cache)
    with pytest.raises(UserError, match="train_subset must be"):
        load_dataset("imagefolder", ok, train_subset=0, **cache)

    write_class_folders(ok, ["a", "b", "z"], per_class=0, test_per_class=1, val_dir="test")
    with pytest.raises(UserError, match="classes not in train/: z"):
        load_dataset("imagefolder", ok, **cache)


def test_corrupt_and_mismatched_images_are_named(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_class_folders(root, ["a", "b"], per_class=2)
    bad = root / "train" / "b" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(UserError, match=r"cannot read image .*broken\.jpg.*delete or replace"):
        load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    bad.unlink()
    save_image(root / "train" / "b" / "big.png", 0, size=(12, 8))
    with pytest.raises(UserError, match=r"big\.png is 12x8 but the first image is 8x8"):
        load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")


def test_grayscale_images_become_rgb(tmp_path: Path) -> None:
    root = tmp_path / "g"
    for cls, value in (("a", 30), ("b", 90)):
        (root / "train" / cls).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), value, np.uint8), mode="L").save(
            root / "train" / cls / "x.png"
        )
    splits = load_dataset("imagefolder", root, val_split=0, cache_dir=tmp_path / "cache")
    assert splits.train.images.shape == (2, 3, 8, 8)
    assert splits.train.images[:, :, 0, 0].tolist() == [[30, 30, 30], [90, 90, 90]]


# ---------------------------------------------------------------------------------------------
# statistics and synthetic data
# ---------------------------------------------------------------------------------------------


def test_channel_stats_exact() -> None:
    imgs = torch.randint(0, 256, (50, 3, 4, 5), dtype=torch.uint8)
    mean, std = channel_stats(imgs)
    x = imgs.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)))
    expected_std = x.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), expected_std)


@pytest.mark.slow
def test_synthetic_shapes_and_determinism() -> None:
    a = load_dataset("synthetic")
    assert (len(a.train), len(a.val), len(a.test)) == (5000, 1000, 1000)
    assert a.input_size == (3, 32, 32) and a.num_classes == 10 and len(a.classes) == 10
    assert a.train.images.dtype == torch.uint8 and a.train.labels.dtype == torch.int64
    assert torch.bincount(a.test.labels).tolist() == [100] * 10
    b = load_dataset("synthetic", "/ignored/path")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    c = load_dataset("synthetic", seed=5, val_split=500, train_subset=2000)
    assert torch.equal(c.test.images, a.test.images)  # the task itself does not depend on seed
    assert (len(c.train), len(c.val)) == (2000, 500)
    assert all(0.3 < m < 0.7 for m in a.mean) and all(0.05 < s < 0.4 for s in a.std)


@pytest.mark.slow
def test_synthetic_is_learnable() -> None:
    """A tiny CNN beats chance (10 %) clearly after two epochs (156 steps) on the CPU."""
    splits = load_dataset("synthetic")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    mean = torch.tensor(splits.mean).view(1, 3, 1, 1)
    std = torch.tensor(splits.std).view(1, 3, 1, 1)
    loader = Batches(splits.train, 64, shuffle=True, seed=0, drop_last=True)
    for _ in range(2):
        for x, y in loader:
            loss = F.cross_entropy(net((x - mean) / std), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in iterate_batches(splits.val, 500):
            correct += int((net((x - mean) / std).argmax(1) == y).sum())
    assert correct / len(splits.val) > 0.25


# ---------------------------------------------------------------------------------------------
# device-resident batches
# ---------------------------------------------------------------------------------------------


def _toy_set(n: int = 10, h: int = 6, w: int = 7) -> ImageSet:
    imgs = torch.randint(1, 256, (n, 3, h, w), dtype=torch.uint8)  # no zeros: padding is visible
    return ImageSet(imgs, torch.arange(n, dtype=torch.int64))


def test_batches_plain_order_and_lengths() -> None:
    data = _toy_set(10)
    loader = Batches(data, 4)
    assert len(loader) == 3 and len(Batches(data, 4, drop_last=True)) == 2
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4, 3, 6, 7)
    torch.testing.assert_close(x, data.images[:4].float() / 255)
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))
    assert sum(len(y) for _, y in Batches(data, 4, drop_last=True)) == 8


def test_batches_shuffle_is_seeded_and_epoch_dependent() -> None:
    data = _toy_set(20)
    a = Batches(data, 5, shuffle=True, seed=3)
    b = Batches(data, 5, shuffle=True, seed=3)
    ea = [torch.cat([y for _, y in a]) for _ in range(2)]
    eb = [torch.cat([y for _, y in b]) for _ in range(2)]
    assert torch.equal(ea[0], eb[0]) and torch.equal(ea[1], eb[1])
    assert not torch.equal(ea[0], ea[1])  # a new order every epoch
    assert sorted(ea[0].tolist()) == list(range(20))
    # Resuming at epoch 1 reproduces it exactly.
    assert torch.equal(torch.cat([y for _, y in b.iter_epoch(1)]), ea[1])
    c = Batches(data, 5, shuffle=True, seed=4)
    assert not torch.equal(torch.cat([y for _, y in c]), ea[0])


def test_augmentation_is_a_padded_crop_with_optional_flip() -> None:
    """Each augmented image equals one of the 9x9x2 crop/flip candidates of its source."""
    data = _toy_set(64, 6, 7)
    loader = Batches(data, 64, augment=True, seed=0)
    x, y = next(iter(loader))
    assert x.shape == (64, 3, 6, 7) and x.dtype == torch.float32
    padded = F.pad(data.images, (4, 4, 4, 4)).float() / 255
    seen_flip, seen_offsets = set(), set()
    for i in range(64):
        src = padded[int(y[i])]
        matches = [
            (oy, ox, flip)
            for oy in range(9)
            for ox in range(9)
            for flip in (False, True)
            if torch.equal(
                x[i], (lambda c: c.flip(-1) if flip else c)(src[:, oy : oy + 6, ox : ox + 7])
            )
        ]
        assert matches, f"sample {i} is not a crop/flip of its source image"
        seen_flip |= {m[2] for m in matches}
        seen_offsets |= {m[:2] for m in matches}
    assert seen_flip == {False, True} and len(seen_offsets) > 10
    again = next(iter(Batches(data, 64, augment=True, seed=0)))[0]
    assert torch.equal(x, again)


def test_known_crop_and_flip() -> None:
    """A crop at (dy, dx) of the padded image plus a flip gives the expected shifted image."""
    img = torch.arange(1, 3 * 4 * 4 + 1, dtype=torch.uint8).view(1, 3, 4, 4)
    padded = F.pad(img, (1, 1, 1, 1))
    one = torch.tensor([0])
    # oy = 2: the image moves up by one row; ox = 0: it moves right by one column.
    out = crop_flip(padded, one, torch.tensor([2]), torch.tensor([0]), torch.tensor([False]), 4, 4)
    expected = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    expected[:, :, :3, 1:] = img[:, :, 1:, :3]
    assert torch.equal(out, expected)
    flipped = crop_flip(
        padded, one, torch.tensor([2]), torch.tensor([0]), torch.tensor([True]), 4, 4
    )
    assert torch.equal(flipped, expected.flip(-1))
    centre = crop_flip(
        padded, one, torch.tensor([1]), torch.tensor([1]), torch.tensor([False]), 4, 4
    )
    assert torch.equal(centre, img)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_on_cuda() -> None:
    data = _toy_set(16)
    loader = Batches(data, 8, shuffle=True, augment=True, device="cuda", seed=0)
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda and x.shape == (8, 3, 6, 7)
    again = next(iter(Batches(data, 8, shuffle=True, augment=True, device="cuda", seed=0)))
    assert torch.equal(x, again[0])
