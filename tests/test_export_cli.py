"""`rsst export` / `rsst eval` / `rsst bench --suite inference` through the CLI: the round trip on
a tiny real run, and every bad input as one stderr line, exit code 2 and no file left behind."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_one_error_line, invoke, pruned_model, write_run
from rich.console import Console
from safetensors.torch import load_file, save_file

from rsst.export import read_file


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rsst.config import build_config
    from rsst.loop import run

    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = build_config(overrides={"method": "refill", "arch": "resnet20", "states": 2,
                                     "epochs": 1, "train_subset": 64, "val_split": 64,
                                     "batch_size": 32, "seed": 3})
    return run(config, out=out, console=Console(file=io.StringIO()))


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-class resnet20 state (synthetic has 10 classes: the class-count mismatch case)."""
    model, masks = pruned_model("resnet20")
    return write_run(tmp_path_factory.mktemp("fake") / "run", model, masks)


@pytest.mark.slow
def test_round_trip_export_load_eval(tiny_run: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    record = json.loads((tiny_run / "state_01" / "state.json").read_text())
    results = {}
    for form in ("compact", "masked"):
        out = tmp_path / f"{form}.safetensors"
        code, stdout, err = invoke(monkeypatch, capsys, "export", str(tiny_run), "--state",
                                   "last", f"--{form}", "-o", str(out))
        assert code == 0, err
        assert "layers.0.0.conv1" in stdout and "total" in stdout
        code, stdout, err = invoke(monkeypatch, capsys, "eval", str(out), "--json")
        assert code == 0, err
        results[form] = json.loads(stdout)
        assert set(results[form]) == {"accuracy", "loss", "n"}
    # the run's own val split (val_split/seed from the metadata), same weights, same accuracy
    assert results["compact"]["n"] == 64
    assert results["compact"]["accuracy"] == pytest.approx(record["val_acc"])
    assert results["masked"]["accuracy"] == pytest.approx(results["compact"]["accuracy"])
    assert results["masked"]["loss"] == pytest.approx(results["compact"]["loss"], rel=1e-4)
    _, meta = read_file(tmp_path / "compact.safetensors")
    assert meta["rsst.method"] == "refill" and meta["rsst.state"] == "1"
    assert json.loads(meta["rsst.config"])["val_split"] == 64
    code, stdout, err = invoke(monkeypatch, capsys, "eval", str(tmp_path / "masked.safetensors"),
                               "--split", "test", "--dataset", "synthetic")
    assert code == 0, err
    assert "accuracy" in stdout


@pytest.mark.slow
def test_export_state_best_and_number(tiny_run: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    for state, expect in (("0", "0"), ("best", None)):
        out = tmp_path / f"s{state}.safetensors"
        code, _, err = invoke(monkeypatch, capsys, "export", str(tiny_run), "--state", state,
                              "-o", str(out))
        assert code == 0, err
        _, meta = read_file(out)
        if expect is not None:
            assert meta["rsst.state"] == expect
        assert meta["rsst.state"] in ("0", "1")


@pytest.mark.slow
def test_bench_inference_on_an_export(fake_run: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.safetensors"
    assert invoke(monkeypatch, capsys, "export", str(fake_run), "--masked", "-o", str(out))[0] == 0
    js = tmp_path / "bench.json"
    code, _, err = invoke(monkeypatch, capsys, "bench", "--suite", "inference", "--model",
                          str(out), "--device", "cpu", "--quick", "--json-out", str(js))
    assert code == 0, err
    records = json.loads(js.read_text())["results"]
    assert {r["path"] for r in records} == {"dense", "compact"}
    for r in records:
        for key in ("suite", "model", "path", "device", "median_ms", "batch", "images_per_s",
                    "flops", "params", "speedup", "flops_ratio"):
            assert key in r
        assert r["suite"] == "inference" and r["device"] == "cpu"
    compact = [r for r in records if r["path"] == "compact"]
    assert all(r["flops_ratio"] > 1 and r["params"] < records[0]["params"] for r in compact)


# -- bad input: one line, exit 2, no traceback, no file ------------------------------------------


# test_export_forms imports this name: it should import `assert_one_error_line` from helpers
_assert_user_error = assert_one_error_line


def _folder_is_empty(folder: Path) -> bool:
    return not any(folder.iterdir())


@pytest.fixture()
def export_file(fake_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rsst.export import export_model

    out = tmp_path_factory.mktemp("exp") / "c.safetensors"
    export_model(fake_run, out, form="compact")
    return out


def test_missing_state(fake_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke(monkeypatch, capsys, "export", str(fake_run), "--state", "7", "-o",
                          str(tmp_path / "x.safetensors"))
    assert_one_error_line(code, err, "state 7", "--state")
    assert _folder_is_empty(tmp_path)


def test_missing_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke(monkeypatch, capsys, "export", str(tmp_path / "nope"), "-o",
                          str(tmp_path / "x.safetensors"))
    assert_one_error_line(code, err, "does not exist")
    assert _folder_is_empty(tmp_path)


def test_output_folder_missing(fake_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "no" / "such" / "x.safetensors"
    code, _, err = invoke(monkeypatch, capsys, "export", str(fake_run), "-o", str(out))
    assert_one_error_line(code, err, "does not exist", "create")
    assert _folder_is_empty(tmp_path)


def test_non_rsst_safetensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    code, _, err = invoke(monkeypatch, capsys, "eval", str(path))
    assert_one_error_line(code, err, "not an rsst export")
    # the same file as a run's state: export refuses it too, and writes nothing
    (tmp_path / "run" / "state_00").mkdir(parents=True)
    path.rename(tmp_path / "run" / "state_00" / "weights.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = invoke(monkeypatch, capsys, "export", str(tmp_path / "run"), "-o",
                          str(out / "x.safetensors"))
    assert_one_error_line(code, err, "not an rsst export")
    assert _folder_is_empty(out)


def test_truncated_file(export_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    data = export_file.read_bytes()
    for i, cut in enumerate((len(data) // 2, 5)):
        bad = tmp_path / f"cut{i}.safetensors"
        bad.write_bytes(data[:cut])
        code, _, err = invoke(monkeypatch, capsys, "eval", str(bad))
        assert_one_error_line(code, err, "truncated or corrupt")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    code, _, err = invoke(monkeypatch, capsys, "eval", str(garbage))
    assert_one_error_line(code, err, "truncated or corrupt")


def test_arch_metadata_does_not_match_tensors(export_file: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    tensors, meta = read_file(export_file)
    for arch in ("resnet32", "vgg16_bn"):
        bad = tmp_path / f"{arch}.safetensors"
        save_file(tensors, str(bad), metadata={**meta, "rsst.arch": arch})
        code, _, err = invoke(monkeypatch, capsys, "eval", str(bad))
        assert_one_error_line(code, err, "do not match", arch)
    bad = tmp_path / "classes.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "rsst.num_classes": "7"})
    code, _, err = invoke(monkeypatch, capsys, "eval", str(bad))
    assert_one_error_line(code, err, "do not match")


@pytest.mark.slow
def test_dataset_class_count_mismatch(export_file: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke(monkeypatch, capsys, "eval", str(export_file), "--dataset",
                          "synthetic")
    assert_one_error_line(code, err, "10 classes", "predicts 5")


@pytest.mark.slow
def test_real_entry_point_prints_one_line(export_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(export_file.read_bytes()[:100])
    proc = subprocess.run([sys.executable, "-m", "rsst", "eval", str(bad)], capture_output=True,
                          text=True, timeout=120)
    assert_one_error_line(proc.returncode, proc.stderr, "truncated or corrupt")
    assert load_file(str(export_file))  # the good file is untouched
