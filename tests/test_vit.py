"""Vision Transformers end to end: heads and MLP neurons as groups across states, resume, and the
unstructured fallback for timm models rsst has no group definition for.

Runs use vit_tiny on the synthetic task shrunk to 8×8 pixels (patch 4: four tokens), so a state
takes a few CPU seconds; the pruning logic does not depend on the token count.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_run
from rich.console import Console
from safetensors.torch import load_file

import rsst.loop as loop
from rsst.arena import Arena
from rsst.config import RunConfig, validate
from rsst.models import create_model
from rsst.structure import build_structure

QUIET = Console(quiet=True)


def config(**kw) -> RunConfig:
    base = dict(arch="vit_tiny", patch_size=4, states=3, epochs=1, rate=0.3, train_subset=128,
                val_split=64, batch_size=64, eval_batch_size=256, device="cpu", backend="torch",
                structure="head+neuron", criteria="l1", lr=0.01)
    return validate(RunConfig(**{**base, **kw}))


def records(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "summary.json").read_text())["states"]


def delivered(record: dict, kind: str) -> float:
    return record.get("structured_sparsity_after_cut", record["structured_sparsity"])[kind]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["refill", "rsst", "imp"])
def test_head_and_neuron_sparsity_per_state(tmp_path, method):
    run_dir = tiny_run(config(method=method), out=tmp_path / "run", console=QUIET)
    states = records(run_dir)
    assert len(states) == 3
    for kind in ("head", "neuron"):
        series = [delivered(r, kind) for r in states]
        assert series == sorted(series), f"{kind} sparsity decreased: {series}"
        if method != "imp":
            assert series[-1] > 0, f"{method} removed no {kind}s: {series}"
    last = states[-1]
    blocks = [u for u, g in last["groups"].items() if g["kind"] == "head"]
    assert len(blocks) == 12
    # every block keeps at least one head and one neuron
    assert all(g["alive"] >= 1 for g in last["groups"].values())
    if method == "refill":
        # the kept count follows the layer's density, so blocks may keep different head counts
        # but the total matches the per-kind sparsity
        heads = [g for g in last["groups"].values() if g["kind"] == "head"]
        dead = sum(g["total"] - g["alive"] for g in heads) / sum(g["total"] for g in heads)
        assert dead == pytest.approx(last["structured_sparsity"]["head"])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"head", "neuron"} <= set(metrics[-1]["structured_sparsity"])


@pytest.mark.slow
def test_saved_heads_and_neurons_are_whole(tmp_path):
    run_dir = tiny_run(config(method="refill"), out=tmp_path / "run", console=QUIET)
    tensors = load_file(str(run_dir / "state_02" / "weights.safetensors"))
    model = create_model("vit_tiny", img_size=8, patch_size=4)
    attn = model.net.blocks[0].attn
    heads, d = attn.num_heads, attn.head_dim
    embed = heads * d
    pruned_heads = 0
    for b in range(12):
        qkv = tensors[f"net.blocks.{b}.attn.qkv.weight.mask"].view(3, heads, d, embed)
        proj = tensors[f"net.blocks.{b}.attn.proj.weight.mask"].view(embed, heads, d)
        for h in range(heads):
            alive = {int(qkv[:, h].min()), int(qkv[:, h].max()), int(proj[:, h].min()),
                     int(proj[:, h].max())}
            assert len(alive) == 1, f"block {b} head {h} is partly pruned"
            if alive == {0}:
                pruned_heads += 1
                bias = tensors[f"net.blocks.{b}.attn.qkv.bias"].view(3, heads, d)[:, h]
                assert torch.count_nonzero(bias) == 0
        fc1 = tensors[f"net.blocks.{b}.mlp.fc1.weight.mask"]
        fc2 = tensors[f"net.blocks.{b}.mlp.fc2.weight.mask"]
        rows = fc1.amax(1)
        assert torch.equal(rows, fc1.amin(1)), "an MLP neuron is partly pruned"
        assert torch.equal(fc2.amax(0), rows) and torch.equal(fc2.amin(0), rows)
        assert torch.count_nonzero(tensors[f"net.blocks.{b}.mlp.fc1.bias"][rows == 0]) == 0
    assert pruned_heads > 0


@pytest.mark.slow
def test_resume_a_vit_run(tmp_path, monkeypatch):
    cfg = config(method="rsst")
    straight = tiny_run(cfg, out=tmp_path / "straight", console=QUIET)

    original = loop.PruningRun.save_checkpoint

    def killing_save(self, position):
        original(self, position)
        if position["state"] == 2 and position["epoch"] == 0:
            raise KeyboardInterrupt  # killed right after the state-1 boundary checkpoint

    monkeypatch.setattr(loop.PruningRun, "save_checkpoint", killing_save)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(cfg, out=tmp_path / "killed", console=QUIET)
    monkeypatch.setattr(loop.PruningRun, "save_checkpoint", original)
    resumed = tiny_run(cfg, resume=tmp_path / "killed", console=QUIET)

    def strip(rs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rs]

    assert strip(records(resumed)) == strip(records(straight))
    a = load_file(str(straight / "state_02" / "weights.safetensors"))
    b = load_file(str(resumed / "state_02" / "weights.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_timm_model_without_groups_falls_back_to_unstructured(tmp_path):
    model = create_model("timm:mixer_s32_224", img_size=32)
    arena = Arena(model)
    structure = build_structure(model, arena)
    assert structure.units == []
    assert "unstructured" in structure.note
    layers = [n for n, m in model.named_modules()
              if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert structure.prunable_names == [f"{n}.weight" for n in layers[1:-1]]
    assert f"{layers[0]}.weight" not in structure.prunable_names  # the patch embedding
    assert f"{layers[-1]}.weight" not in structure.prunable_names  # the classifier


def test_structure_flags_for_transformers(tmp_path):
    model = create_model("vit_tiny", img_size=8, patch_size=4)
    arena = Arena(model)
    only_heads = build_structure(model, arena, "head")
    assert only_heads.kinds == ["head"]
    only_neurons = build_structure(model, arena, "neuron")
    assert only_neurons.kinds == ["neuron"]
    assert torch.equal(only_heads.prunable, only_neurons.prunable)
    assert build_structure(model, arena, "auto").kinds == ["head", "neuron"]
