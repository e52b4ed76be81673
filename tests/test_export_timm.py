"""Exports a user without rsst can load (``--form timm``), and the model card of every export.

The stock-timm check runs the recipe stored in the file (``timm.usage``) verbatim, with timm and
safetensors only, and compares its logits with `rsst.load` of the masked export of the same state.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import rsst
from rsst import statefile
from rsst.compact import random_prune
from rsst.errors import UserError
from rsst.export import export_model
from rsst.model_card import MAC_CONVENTION, run_command
from rsst.models import create_model
from rsst.statefile import ModelSpec

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def write_run(folder: Path, arch: str, **kw) -> tuple[Path, nn.Module]:
    """A run directory with one randomly group-pruned state, written by `rsst.statefile`."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=5, mean=MEAN, std=STD, **kw).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    masks = random_prune(model, 0.4, seed=0)
    config = {"method": "rsst", "arch": arch, "states": 4, "epochs": 1, "seed": 7}
    meta = statefile.state_metadata(
        ModelSpec.of(model), method="rsst", state=2,
        sparsity={"remain_weight": 0.55, "head": 0.4}, structure={}, config=config)
    folder.mkdir(parents=True)
    statefile.write_state(folder, 2, model.state_dict(), masks, meta, {
        "state": 2, "val_acc": 0.5, "val_acc_before_cut": 0.625, "test_acc": 0.6,
        "test_acc_before_cut": 0.7})
    return folder, model


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("vit") / "run", "vit_tiny", img_size=16,
                     patch_size=8)[0]


@pytest.mark.slow
def test_timm_form_loads_with_timm_alone(vit_run, tmp_path):
    out = tmp_path / "stock.safetensors"
    export_model(vit_run, out, state="last", form="timm")
    export_model(vit_run, tmp_path / "masked.safetensors", form="masked")
    tensors = load_file(str(out))
    assert not any(k.startswith("net.") or k.endswith(".mask") or k.startswith("normalize")
                   for k in tensors)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    args = json.loads(meta["timm.create_model"])
    assert args["model_name"] == "vit_tiny_patch16_224"
    stock_dense = timm.create_model(**args).state_dict()
    assert set(tensors) == set(stock_dense)
    # compacted: stock timm blocks with their own head counts / MLP widths, fewer parameters
    assert meta["timm.compacted"] == "true"
    blocks = json.loads(meta["timm.blocks"])
    assert [b["num_heads"] for b in blocks] != [3] * len(blocks)
    assert sum(t.numel() for t in tensors.values()) < sum(t.numel() for t in stock_dense.values())

    # the documented recipe, verbatim, with timm + safetensors + torch only
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    scope = {"FILE": str(out), "x": x}
    exec(meta["timm.usage"], scope)  # noqa: S102 - the recipe users copy
    stock_logits = scope["logits"]
    assert scope["model"].__class__.__module__.startswith("timm.")

    with torch.no_grad():
        reference = rsst.load(tmp_path / "masked.safetensors")(x)
        via_rsst = rsst.load(out)(x)
        unnormalized = scope["model"](x)
    assert torch.allclose(stock_logits, reference, atol=1e-5), float(
        (stock_logits - reference).abs().max())
    assert torch.allclose(via_rsst, reference, atol=1e-5)
    assert (unnormalized - reference).abs().max() > 1e-2  # the normalization matters
    # timm's own data config reports rsst's normalization
    data_cfg = timm.data.resolve_data_config({}, model=scope["model"])
    assert data_cfg["mean"] == pytest.approx(MEAN) and data_cfg["std"] == pytest.approx(STD)


def test_timm_form_refuses_rsst_cnns(tmp_path):
    run, _ = write_run(tmp_path / "run", "resnet20")
    with pytest.raises(UserError, match="needs a timm architecture"):
        export_model(run, tmp_path / "x.safetensors", form="timm")
    assert not (tmp_path / "x.safetensors").exists()


def test_every_export_carries_a_model_card(tmp_path):
    run, _ = write_run(tmp_path / "run", "resnet20")
    for form in ("compact", "masked"):
        out = tmp_path / f"{form}.safetensors"
        result = export_model(run, out, form=form)
        with safe_open(str(out), "pt") as f:
            card = f.metadata()["rsst.model_card"]
        assert (tmp_path / f"{form}.md").read_text() == card
        assert "# resnet20 pruned by rsst (state 2)" in card
        assert MAC_CONVENTION in card and "BatchNorm" in card and "softmax" in card
        # the card leads with the network the file holds (after the cut)
        accuracy = card[card.index("## Accuracy"):card.index("## Structure")].splitlines()
        assert accuracy[1:5] == ["- val: 50.00 %", "- test: 60.00 %",
                                 "- val before the RSST cut (not this file's network): 62.50 %",
                                 "- test before the RSST cut (not this file's network): 70.00 %"]
        assert "- weights alive (prunable layers): 55.00 %" in card
        assert "rsst run --states 4 --epochs 1 --seed 7" in card
        assert f"--form {form} -o {form}.safetensors" in card
        assert f"{result.params['dense']} dense → {result.params['compact']} compacted" in card
        layer_rows = [line for line in card.splitlines()
                      if line.startswith("| ") and not line.startswith("| layer |")]
        kept_rows = [r for r in result.rows if r["total"] is not None]
        assert len(layer_rows) == len(kept_rows) > 0
        for line, row in zip(layer_rows, kept_rows, strict=True):
            assert line == f"| {row['layer']} | {row['kind']} | {row['kept']} | {row['total']} |"


def test_run_command_names_the_non_default_flags():
    from rsst.config import RunConfig

    cmd = run_command({**RunConfig().to_dict(), "method": "refill", "milestones": [3, 5],
                       "nesterov": True, "lr": 0.2})
    assert cmd == "rsst run --method refill --lr 0.2 --nesterov --milestones 3,5"


@pytest.mark.slow
def test_cli_form_timm(vit_run, tmp_path, monkeypatch, capsys):
    from rsst.cli import main

    out = tmp_path / "cli.safetensors"
    monkeypatch.setattr(sys, "argv", ["rsst", "export", str(vit_run), "--form", "timm", "-o",
                                      str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert (exit_info.value.code or 0) == 0, capsys.readouterr().err
    assert out.exists() and (tmp_path / "cli.md").exists()


def test_model_card_starts_with_hub_front_matter(tmp_path):
    yaml = pytest.importorskip("yaml")  # pyyaml: a timm / huggingface_hub dependency
    run, _ = write_run(tmp_path / "run", "resnet20")
    export_model(run, tmp_path / "m.safetensors", form="compact")
    card = (tmp_path / "m.md").read_text()
    data = yaml.safe_load(card.split("---\n")[1])
    assert data["library_name"] == "rsst" and data["pipeline_tag"] == "image-classification"
    assert {"rsst", "resnet20", "pruning", "structured-sparsity"} <= set(data["tags"])
    assert [r["metrics"][0]["value"] for r in data["model-index"][0]["results"]] == [50.0, 60.0]
    assert card.split("---\n", 2)[2].lstrip().startswith("# resnet20 pruned by rsst (state 2)")


def _front_matter(card: str) -> dict:
    yaml = pytest.importorskip("yaml")  # pyyaml: a timm / huggingface_hub dependency
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_hf_card_and_config_describe_this_model(vit_run, tmp_path):
    out = tmp_path / "hf"
    export_model(vit_run, out, form="hf")
    data = _front_matter((out / "README.md").read_text())
    assert data["license"] == "mit" and data["library_name"] == "timm"
    assert {"pruning", "structured-sparsity", "lottery-ticket", "rsst", "vit_tiny"} <= set(
        data["tags"])
    assert data["metrics"] == ["accuracy"]
    (entry,) = data["model-index"]
    accuracy = {r["dataset"]["split"]: r["metrics"][0]["value"] for r in entry["results"]}
    assert accuracy == {"validation": 50.0, "test": 60.0}  # the state's after-cut record
    assert all(r["task"]["type"] == "image-classification" for r in entry["results"])
    config = json.loads((out / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    # timm's vit_tiny was published as augreg_in21k_ft_in1k under apache-2.0: not this model
    assert cfg["tag"] == "rsst-rsst-state2" and cfg["license"] == "mit"
    assert not {"hf_hub_id", "url", "origin_url", "paper_ids"} & set(cfg)
    assert config["rsst"]["state"] == 2 and config["rsst"]["sparsity"]["head"] == 0.4
    assert timm.create_model(f"local-dir:{out}", pretrained=True).pretrained_cfg["tag"] \
        == "rsst-rsst-state2"


def test_card_metadata_names_the_hub_dataset_and_the_license_of_pretrained_runs():
    from rsst.model_card import card_metadata

    meta = {"rsst.method": "imp", "rsst.arch": "resnet20", "rsst.state": "3"}
    record = {"val_acc": 0.91234, "val_acc_before_cut": 0.95}
    data = card_metadata(meta, {"dataset": "cifar10"}, "hf", record)
    assert data["datasets"] == ["cifar10"] and data["license"] == "mit"
    (entry,) = data["model-index"]
    (result,) = entry["results"]  # no test accuracy recorded: no test entry
    assert result["dataset"] == {"type": "cifar10", "name": "CIFAR-10", "split": "validation"}
    assert result["metrics"][0]["value"] == 91.23  # after the cut, not 95
    pretrained = card_metadata(meta, {"dataset": "synthetic", "pretrained": "x.safetensors"},
                               "compact", record)
    assert pretrained["license"] == "other" and "datasets" not in pretrained
