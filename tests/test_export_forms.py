"""``--form hf``, ``--form onnx`` and ``--form pt2``: each output loads back the way a user loads
it (timm's ``local-dir:`` loader and eval transform, onnxruntime, ``torch.export.load``) and
gives the logits of the run's masked model; bad outputs fail with one line and write nothing.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import timm
import torch
from helpers import NUM_CLASSES, invoke, pruned_model, write_class_folders, write_run
from helpers import assert_one_error_line as _assert_user_error
from PIL import Image

from rsst.errors import UserError
from rsst.export import export_model

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(n) is None for n in ("onnx", "onnxruntime", "onnxscript")),
    reason="the onnx extra (onnx, onnxruntime, onnxscript) is not installed")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory):
    model, masks = pruned_model("resnet20", img_size=8)
    return write_run(tmp_path_factory.mktemp("cnn") / "run", model, masks), model


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory):
    model, masks = pruned_model("vit_tiny", img_size=16, patch_size=8)
    return write_run(tmp_path_factory.mktemp("vit") / "run", model, masks), model


def _images(size: int, n: int = 3) -> tuple[list[Image.Image], torch.Tensor]:
    """PIL images and the [0, 1] tensor rsst's data pipeline makes of them (uint8 / 255)."""
    pixels = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return [Image.fromarray(p) for p in pixels], x


def _timm_eval(model: torch.nn.Module, images: list[Image.Image]) -> torch.Tensor:
    """Logits through timm's own eval transform for the model's pretrained_cfg."""
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config, is_training=False)
    with torch.no_grad():
        return model(torch.stack([transform(im) for im in images]))


def test_hf_folder_of_an_rsst_cnn_is_compacted_and_loads_in_timm(cnn, tmp_path):
    import rsst.timm_models  # noqa: F401 - registers rsst_model with timm

    run, masked = cnn
    out = tmp_path / "hf"
    result = export_model(run, out, form="hf")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json",
                                                     "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "rsst_model"
    assert config["pretrained_cfg"]["crop_pct"] == 1.0
    assert config["rsst"]["check"]["max_abs_logit_diff"] == result.check["max_abs_logit_diff"]
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert sum(p.numel() for p in loaded.parameters()) == result.params["compact"]
    assert result.params["compact"] < result.params["dense"]
    images, x = _images(8)
    with torch.no_grad():
        reference = masked(x)
    got = _timm_eval(loaded, images)
    assert torch.allclose(got, reference, atol=1e-4), float((got - reference).abs().max())
    assert (out / "README.md").read_text().count("pruned by refill") == 1
    # config.json: every compacted width, equal to the kept indices of the compaction plan
    layers = config["rsst"]["architecture"]["layers"]
    plan = config["model_args"]["compact"]
    assert layers["conv1"] == {"type": "conv", "in": 3, "out": 16, "kernel": [3, 3],
                               "stride": [1, 1], "groups": 1}
    for name, entry in plan.items():
        if entry["type"] == "conv" and entry["out"] is not None:
            assert layers[name]["out"] == len(entry["out"]), name
        if entry["type"] == "conv" and entry["in"] is not None:
            assert layers[name]["in"] == len(entry["in"]), name
    for name, module in loaded.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            assert (layers[name]["in"], layers[name]["out"]) == (module.in_channels,
                                                                 module.out_channels)


@pytest.mark.slow
def test_hf_folder_of_a_timm_vit_loads_with_timm_alone(vit, tmp_path):
    run, masked = vit
    out = tmp_path / "vit-hf"
    export_model(run, out, form="hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert config["model_args"]["patch_size"] == 8
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert type(loaded).__module__.startswith("timm.")
    images, x = _images(16)
    with torch.no_grad():
        reference = masked(x)
    got = _timm_eval(loaded, images)
    assert torch.allclose(got, reference, atol=1e-4), float((got - reference).abs().max())


def test_hf_refuses_an_existing_output_and_writes_nothing(cnn, tmp_path, monkeypatch, capsys):
    run, _ = cnn
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    code, _, err = invoke(monkeypatch, capsys, "export", str(run), "--form", "hf", "-o",
                          str(taken))
    _assert_user_error(code, err, "is a file", "folder")
    (tmp_path / "dir").mkdir()
    with pytest.raises(UserError, match="already exists"):
        export_model(run, tmp_path / "dir", form="hf")
    assert taken.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "taken"]
    assert not any((tmp_path / "dir").iterdir())


@pytest.mark.slow
def test_pt2_loads_back_with_any_batch_size(vit, tmp_path):
    run, masked = vit
    out = tmp_path / "m.pt2"
    result = export_model(run, out, form="pt2")
    assert result.check["max_abs_logit_diff"] <= 1e-4
    extra = {"rsst.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    meta = json.loads(extra["rsst.json"])
    assert meta["rsst.form"] == "pt2"
    assert json.loads(meta["rsst.check"]) == result.check
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        got, reference = program.module()(x), masked(x)
    assert torch.allclose(got, reference, atol=1e-4)
    assert (tmp_path / "m.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.md", "m.pt2"]


@pytest.mark.slow
@needs_onnx
def test_onnx_runs_in_onnxruntime_and_records_its_check(cnn, tmp_path, monkeypatch, capsys):
    import onnx
    import onnxruntime as ort

    run, masked = cnn
    out = tmp_path / "m.onnx"
    code, stdout, err = invoke(monkeypatch, capsys, "export", str(run), "--form", "onnx", "-o",
                               str(out))
    assert code == 0, err
    assert "onnxruntime gives the rsst model's logits to max |Δlogit|" in stdout
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    check = json.loads(props["rsst.check"])
    assert check["checked_with"] == "onnxruntime" and check["max_abs_logit_diff"] <= 1e-4
    assert props["rsst.arch"] == "resnet20" and props["rsst.form"] == "onnx"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(4, 3, 8, 8)
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        reference = masked(x)
    assert torch.allclose(got, reference, atol=1e-4)


def test_onnx_without_the_extra_is_one_line(cnn, tmp_path, monkeypatch, capsys):
    import importlib.util as util

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code, _, err = invoke(monkeypatch, capsys, "export", str(cnn[0]), "--form", "onnx", "-o",
                          str(tmp_path / "m.onnx"))
    _assert_user_error(code, err, "onnxruntime", "rsst-prune[onnx]")
    assert not any(tmp_path.iterdir())


def test_rsst_load_and_eval_read_an_hf_folder(cnn, tmp_path, monkeypatch, capsys):
    import rsst

    run, masked = cnn
    out = tmp_path / "hf"
    export_model(run, out, form="hf")
    loaded = rsst.load(out)  # images in [0, 1], as every rsst model takes them
    _, x = _images(8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), masked(x), atol=1e-4, rtol=1e-4)
    assert loaded.rsst_spec.arch == "resnet20" and loaded.rsst_input_size == (3, 8, 8)
    args = json.loads((out / "config.json").read_text())["model_args"]  # the model's own
    assert loaded.rsst_spec.mean == tuple(args["mean"]) != (0.0, 0.0, 0.0)
    assert loaded.rsst_spec.std == tuple(args["std"]) != (1.0, 1.0, 1.0)
    assert loaded.rsst_metadata["rsst.form"] == "hf"
    assert json.loads(loaded.rsst_metadata["rsst.config"])["method"] == "refill"  # the run's
    data = tmp_path / "data"  # NUM_CLASSES classes of 8x8 images, a test split
    write_class_folders(data, [f"c{i}" for i in range(NUM_CLASSES)], per_class=2,
                        test_per_class=3)
    state = run / "state_00" / "weights.safetensors"
    results = []
    for model_path in (out, state):
        code, text, err = invoke(monkeypatch, capsys, "eval", str(model_path), "--split", "test",
                                 "--dataset", "imagefolder", "--data-dir", str(data), "--json")
        assert code == 0, err
        results.append(json.loads(text))
    assert results[0] == results[1] and results[0]["n"] == 3 * NUM_CLASSES


@pytest.mark.slow
def test_rsst_load_puts_a_stock_timm_folders_normalization_in_front(vit, tmp_path):
    import rsst

    run, masked = vit
    out = tmp_path / "vit-hf"
    export_model(run, out, form="hf")
    loaded = rsst.load(out)
    assert type(loaded.net).__module__.startswith("timm.")  # the stock model, behind normalize
    _, x = _images(16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), masked(x), atol=1e-4, rtol=1e-4)


def test_rsst_load_says_what_a_folder_onnx_or_pt2_file_is(cnn, tmp_path):
    import rsst

    run, _ = cnn
    bad_hf = tmp_path / "hf"
    export_model(run, bad_hf, form="hf")
    (bad_hf / "model.safetensors").unlink()
    cases = [(run, "is a run directory"), (tmp_path, "not an `rsst export --form hf` folder"),
             (bad_hf, "not an `rsst export --form hf` folder")]
    for suffix, words in ((".onnx", "onnxruntime"), (".pt2", "torch.export.load")):
        (tmp_path / f"m{suffix}").write_bytes(b"not read")
        cases.append((tmp_path / f"m{suffix}", words))
    for path, words in cases:
        with pytest.raises(UserError, match=words.replace("(", r"\(")):
            rsst.load(path)


def test_rsst_load_refuses_an_hf_folder_with_nonfinite_weights(cnn, tmp_path):
    from safetensors.torch import load_file, save_file

    import rsst

    run, _ = cnn
    out = tmp_path / "hf"
    export_model(run, out, form="hf")
    tensors = load_file(str(out / "model.safetensors"))
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name][0] = float("nan")
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(UserError, match="NaN or infinity"):
        rsst.load(out)
