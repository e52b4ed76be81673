"""`rsst eval` on the inputs a user really has: half-precision exports, a data folder holding only
the split being evaluated, and model files whose metadata names a data folder (followed only when
the run directory on disk vouches for it)."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import invoke, randomize, write_cifar10, write_class_folders
from safetensors.torch import save_file

from rsst.config import RunConfig, save_config
from rsst.data import CIFAR10_CLASSES, load_dataset, load_split
from rsst.errors import UserError
from rsst.export import evaluate_file, export_model, load_model, read_file
from rsst.models import create_model


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "default_cache"
    monkeypatch.setenv("RSST_CACHE", str(cache))
    return cache


def write_state(run_dir: Path, config: RunConfig, img_size: int, *, toml: bool = True) -> Path:
    """A run directory as `rsst run` leaves it: config.toml and state_00/weights.safetensors
    (a random 10-class resnet20 with non-trivial BatchNorm, all masks 1)."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, img_size=img_size)
    randomize(model)
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tensors["layers.0.0.conv1.weight.mask"] = torch.ones_like(
        tensors["layers.0.0.conv1.weight"], dtype=torch.uint8)
    meta = {
        "rsst.format_version": "1", "rsst.arch": "resnet20", "rsst.num_classes": "10",
        "rsst.input_size": json.dumps([3, img_size, img_size]), "rsst.patch_size": "null",
        "rsst.mean": json.dumps([0.4, 0.5, 0.5]), "rsst.std": json.dumps([0.25, 0.25, 0.25]),
        "rsst.method": "refill", "rsst.state": "0", "rsst.sparsity": "{}",
        "rsst.structure": "{}", "rsst.config": json.dumps(config.to_dict()),
    }
    (run_dir / "state_00").mkdir(parents=True)
    save_file(tensors, str(run_dir / "state_00" / "weights.safetensors"), metadata=meta)
    (run_dir / "state_00" / "state.json").write_text(json.dumps({"state": 0, "val_acc": 0.5}))
    if toml:
        save_config(dataclasses.replace(config, out=str(run_dir)), run_dir / "config.toml")
    return run_dir / "state_00" / "weights.safetensors"


def converted(src: Path, dst: Path, dtype: torch.dtype) -> Path:
    """``src`` with every floating tensor cast to ``dtype`` (what a user's converter writes)."""
    tensors, meta = read_file(src)
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()},
              str(dst), metadata=meta)
    return dst


def json_result(monkeypatch, capsys, *args: str) -> dict:
    code, out, err = invoke(monkeypatch, capsys, "eval", *args, "--json")
    assert code == 0, err
    return json.loads(out)


# -- half precision ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_export_evaluates(tmp_path: Path, dtype: torch.dtype,
                                         monkeypatch, capsys) -> None:
    state = write_state(tmp_path / "run", RunConfig(), img_size=32)
    export_model(tmp_path / "run", tmp_path / "model.safetensors", form="compact")
    half = converted(tmp_path / "model.safetensors", tmp_path / "half.safetensors", dtype)
    assert read_file(half)[0]["fc.weight"].dtype == dtype
    model = load_model(half)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the same rounded values stored in float32 are the independent reference
    rounded = tmp_path / "rounded.safetensors"
    tensors, meta = read_file(half)
    save_file({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()},
              str(rounded), metadata=meta)
    got = json_result(monkeypatch, capsys, str(half), "--split", "test")
    want = evaluate_file(rounded, split="test", device="cpu")
    assert got["n"] == want["n"] > 0
    assert got["accuracy"] == want["accuracy"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    exact = evaluate_file(tmp_path / "model.safetensors", split="test", device="cpu")
    assert got["loss"] == pytest.approx(exact["loss"], rel=0.05)  # rounding, not garbage
    # a run's own state file converted to half loads as a masked export too
    half_state = converted(state, tmp_path / "half_state.safetensors", dtype)
    assert evaluate_file(half_state, split="test", device="cpu")["n"] == got["n"]


def test_export_of_a_half_precision_state_file(tmp_path: Path) -> None:
    """`rsst export` widens a state file converted to fp16 like `load_model` does."""
    state = write_state(tmp_path / "run", RunConfig(), img_size=32)
    converted(state, state, torch.float16)
    result = export_model(tmp_path / "run", tmp_path / "model.safetensors", form="compact")
    tensors, _ = read_file(result.path)
    assert all(v.dtype == torch.float32 for v in tensors.values() if v.is_floating_point())


# -- a folder holding only the split evaluated --------------------------------------------------


def test_eval_test_split_from_a_folder_holding_only_test(tmp_path: Path, monkeypatch,
                                                         capsys) -> None:
    full, only = tmp_path / "full", tmp_path / "only"
    write_class_folders(full, list(CIFAR10_CLASSES), per_class=2, test_per_class=3)
    write_class_folders(only, list(CIFAR10_CLASSES), per_class=0, test_per_class=3)
    assert not (only / "train").exists()
    split = load_split("cifar10", only, "test")
    reference = load_dataset("cifar10", full, val_split=0).test
    assert torch.equal(split.images.images, reference.images)
    assert torch.equal(split.images.labels, reference.labels)
    red = split.images.images[:, 0].float().mean(dim=(1, 2))
    assert torch.equal(red / 20, split.images.labels.float())  # red channel = 20 · class

    state = write_state(tmp_path / "run", RunConfig(), img_size=8)
    results = [json_result(monkeypatch, capsys, str(state), "--dataset", "cifar10",
                           "--data-dir", str(d), "--split", "test") for d in (only, full)]
    assert results[0] == results[1] and results[0]["n"] == 30

    # training still needs train/, and the hint no longer says "pass its parent"
    with pytest.raises(UserError, match="no train/ folder") as info:
        load_dataset("cifar10", only)
    assert "parent" not in str(info.value) and "--split test" in str(info.value)


def test_eval_explicit_val_folder_alone(tmp_path: Path, monkeypatch, capsys) -> None:
    full, only = tmp_path / "full", tmp_path / "only"
    write_class_folders(full, ["a", "b", "c"], per_class=2, test_per_class=1)
    for root in (full, only):
        write_class_folders(root, ["a", "b", "c"], per_class=0, test_per_class=2,
                            val_dir="val")
    write_class_folders(only, ["a", "b", "c"], per_class=0, test_per_class=1)
    reference = load_dataset("imagefolder", full).val
    split = load_split("imagefolder", only, "val")
    assert torch.equal(split.images.images, reference.images)
    assert torch.equal(split.images.labels, reference.labels)


def test_eval_test_split_from_a_lone_test_pickle(tmp_path: Path, monkeypatch, capsys) -> None:
    full, only = tmp_path / "full", tmp_path / "only"
    write_cifar10(full)
    only.mkdir()
    (only / "test_batch").write_bytes((full / "test_batch").read_bytes())
    state = write_state(tmp_path / "run", RunConfig(), img_size=32)
    results = [json_result(monkeypatch, capsys, str(state), "--dataset", "cifar10",
                           "--data-dir", str(d), "--split", "test") for d in (only, full)]
    assert results[0] == results[1] and results[0]["n"] == 7
    held_out = load_split("cifar10", only, "test")
    assert held_out.classes == list(CIFAR10_CLASSES)
    assert torch.equal(held_out.images.labels, load_dataset("cifar10", full).test.labels)

    # the training pickles without the test file: one line naming it
    (full / "test_batch").unlink()
    code, _, err = invoke(monkeypatch, capsys, "eval", str(state), "--dataset", "cifar10",
                          "--data-dir", str(full), "--split", "test")
    assert code == 2 and "no test_batch" in err and len(err.strip().splitlines()) == 1


# -- the data folder named in a model file's metadata -------------------------------------------


def _cifar_run(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "cifar"
    write_cifar10(data)
    config = RunConfig(dataset="cifar10", data_dir=str(data), val_split=5)
    return write_state(tmp_path / "run", config, img_size=32), data


def test_state_file_in_its_run_dir_uses_the_runs_data(tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    state, data = _cifar_run(tmp_path)
    implicit = json_result(monkeypatch, capsys, str(state), "--split", "test")
    explicit = json_result(monkeypatch, capsys, str(state), "--split", "test",
                           "--data-dir", str(data))
    assert implicit == explicit and implicit["n"] == 7
    # an export of that run records its source state, which vouches for the data folder too
    export_model(tmp_path / "run", tmp_path / "model.safetensors", form="masked")
    assert json_result(monkeypatch, capsys, str(tmp_path / "model.safetensors"),
                       "--split", "test") == implicit


def test_metadata_data_dir_is_not_followed_outside_its_run(tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    """A file whose metadata names a folder (here: one with a booby-trapped pickle) but that
    does not sit in a run directory naming the same folder: --data-dir is required, and the
    named folder is never read."""
    elsewhere = tmp_path / "elsewhere"
    write_cifar10(elsewhere)
    (elsewhere / "test_batch").write_bytes(pickle.dumps({b"x": np.zeros(2)}, protocol=2))
    (elsewhere / "batches.meta").unlink()
    bait = tmp_path / "bait"
    config = RunConfig(dataset="cifar10", data_dir=str(elsewhere), cache_dir=str(tmp_path / "w"))
    crafted = write_state(bait, config, img_size=32, toml=False)  # no config.toml beside it
    loose = tmp_path / "downloaded.safetensors"
    loose.write_bytes(crafted.read_bytes())
    # a run dir whose config.toml names another folder does not vouch either
    other = tmp_path / "other"
    write_state(other, dataclasses.replace(config, data_dir=str(tmp_path)), img_size=32)
    mismatched = other / "state_00" / "weights.safetensors"
    mismatched.write_bytes(crafted.read_bytes())
    # an export whose rsst.source points at a place with no run
    tensors, meta = read_file(crafted)
    sourced = tmp_path / "sourced.safetensors"
    save_file(tensors, str(sourced), metadata={**meta, "rsst.source": str(crafted)})
    for path in (crafted, loose, mismatched, sourced):
        code, out, err = invoke(monkeypatch, capsys, "eval", str(path), "--split", "test")
        assert code == 2 and out == "", err
        assert "pass --data-dir" in err and str(elsewhere) in err, err
        assert len(err.strip().splitlines()) == 1
    # with --data-dir the user's folder is read, and the metadata's cache_dir is not written
    folders = tmp_path / "folders"
    write_class_folders(folders, list(CIFAR10_CLASSES), per_class=0, test_per_class=1,
                        size=(32, 32))
    result = json_result(monkeypatch, capsys, str(loose), "--split", "test", "--data-dir",
                         str(folders))
    assert result["n"] == 10
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_synthetic_needs_no_data_dir_anywhere(tmp_path: Path, monkeypatch, capsys) -> None:
    state = write_state(tmp_path / "run", RunConfig(), img_size=32)
    loose = tmp_path / "loose.safetensors"
    loose.write_bytes(state.read_bytes())
    assert json_result(monkeypatch, capsys, str(loose), "--split", "test")["n"] > 0


# -- weights holding NaN or infinity -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("form", ["state", "compact"])
def test_weights_with_nan_or_infinity_are_refused(tmp_path: Path, monkeypatch, capsys,
                                                  form: str) -> None:
    """A diverged model has no accuracy: `rsst eval` prints one line naming the tensors and
    exits 2, `rsst.load` raises the same UserError; the finite file still evaluates."""
    import rsst

    state = write_state(tmp_path / "run", RunConfig(), img_size=32)
    path = state
    if form == "compact":
        path = export_model(tmp_path / "run", tmp_path / "model.safetensors", form="compact").path
    if form == "state":  # the file as written evaluates
        assert json_result(monkeypatch, capsys, str(path), "--split", "test")["n"] > 0
    tensors, meta = read_file(path)
    conv, bn = "layers.1.0.conv1.weight", "layers.2.0.bn2.running_var"
    tensors[conv].view(-1)[3] = float("nan")
    tensors[bn][0] = float("inf")
    tensors["fc.bias"][1] = float("-inf")
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)

    code, out, err = invoke(monkeypatch, capsys, "eval", str(bad), "--split", "test")
    assert code == 2 and out == "", (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    line = " ".join(err.split())
    for name in (conv, bn, "fc.bias"):
        assert name in line, line
    assert "NaN or infinity" in line
    assert "layers.1.0.conv2.weight" not in line  # only the offending tensors are named
    with pytest.raises(UserError, match="NaN or infinity") as info:
        rsst.load(bad)
    assert str(info.value).splitlines()[0] in line

    # half precision: an infinity that float16 holds is refused too
    half = converted(path, tmp_path / "half.safetensors", torch.float16)
    tensors, meta = read_file(half)
    tensors["fc.weight"][0, 0] = float("inf")
    save_file(tensors, str(half), metadata=meta)
    with pytest.raises(UserError, match="fc.weight hold NaN or infinity"):
        load_model(half)
