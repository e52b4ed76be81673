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
from helpers import assert_one_error_line as _assert_user_error
from helpers import invoke, pruned_model, write_run
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
