"""The baselines through the loop (omp, random, snip, grasp, synflow): the target reached, the
one-shot state counts, pruning at init after the rewind point, bad input, and the model options
that came with them (vit_tiny_research, --prune-scope, --refill-scope global, --pretrained)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import one_shot_methods, tiny_pruning_run, tiny_run
from rich.console import Console
from safetensors.torch import load_file, save_file

import rsst.loop as loop
from rsst import cli
from rsst.arena import Arena
from rsst.config import PRUNE_SCOPES, RunConfig, build_config, validate
from rsst.errors import UserError
from rsst.methods import get_method
from rsst.models import create_model, load_pretrained
from rsst.pruning import kept_groups, refill
from rsst.structure import SCOPES, build_structure

QUIET = Console(quiet=True)
BASELINES = ("omp", "random", "snip", "grasp", "synflow")


def tiny(**kw) -> RunConfig:
    base = dict(epochs=1, train_subset=64, val_split=32, batch_size=64, eval_batch_size=256,
                device="cpu", backend="torch", arch="resnet20", synflow_iterations=3)
    if kw.get("target_remain") is not None and "states" not in kw:
        kw["states"] = 2 if kw.get("method") == "omp" else 1
    return validate(RunConfig(**{**base, **kw}))


def states(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "summary.json").read_text())["states"]


def masks_of(run_dir: Path, state: int) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / f"state_{state:02d}" / "weights.safetensors"))
    return {k[: -len(".mask")]: v.bool() for k, v in tensors.items() if k.endswith(".mask")}


def test_registry_and_one_shot_forms():
    assert one_shot_methods() == BASELINES
    assert {m: get_method(m).one_shot_states for m in BASELINES} == {
        "omp": 2, "random": 1, "snip": 1, "grasp": 1, "synflow": 1}
    assert all(get_method(m).refill and not get_method(m).soft for m in BASELINES)
    assert get_method("rsst").one_shot_states is None
    assert PRUNE_SCOPES == SCOPES


@pytest.mark.parametrize("method", BASELINES)
def test_when_and_how_much_each_form_prunes(method):
    """One-shot (--target-remain R): one prune — at init, or after the dense state 0 for omp —
    removing alive − round(R·total); iterative (no --target-remain): after every state but the
    last, round(rate · alive). Numbers written out, so a flag read wrongly fails."""
    m = get_method(method)
    one_shot = tiny(method=method, target_remain=0.3)
    assert m.prunes_at_init(one_shot) == (method != "omp")
    assert [m.prunes_after_state(s, one_shot) for s in range(one_shot.states)] == (
        [True, False] if method == "omp" else [False])
    assert m.removal_count(1000, 1000, one_shot) == 700
    assert m.removal_count(500, 1000, one_shot) == 200
    assert m.removal_count(250, 1000, one_shot) == 0
    assert m.removal_count(1000, 1000, tiny(method=method, target_remain=0.25)) == 750

    iterative = tiny(method=method, states=4, rate=0.3)
    assert not m.prunes_at_init(iterative)
    assert [m.prunes_after_state(s, iterative) for s in range(4)] == [True, True, True, False]
    assert m.removal_count(1000, 1000, iterative) == 300
    assert m.removal_count(500, 1000, iterative) == 150
    assert m.removal_count(500, 1000, tiny(method=method, states=4, rate=0.5)) == 250


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet20", "vit_tiny"])
@pytest.mark.parametrize("method", BASELINES)
def test_every_method_reaches_the_target(method, arch, tmp_path):
    """Unstructured: exactly round(R·total) prunable weights left (global ranking over all
    layers), the last state's mask the one the loop trained with."""
    extra = {"patch_size": 4} if arch.startswith("vit") else {}
    config = tiny(method=method, arch=arch, target_remain=0.2, structure="none", **extra)
    run_dir = tiny_run(config, out=tmp_path / "run", console=QUIET)
    records = states(run_dir)
    assert len(records) == config.states == (2 if method == "omp" else 1)
    masks = masks_of(run_dir, config.states - 1)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * total)
    assert records[-1]["remain_weight"] == pytest.approx(round(0.2 * total) / total)
    assert all(int(m.sum()) > 0 for m in masks.values())  # no layer emptied at 80 %
    if method == "omp":  # state 0 trains the dense network, then its smallest |θ| go
        assert records[0]["remain_weight"] == 1.0
        trained = load_file(str(run_dir / "state_00" / "weights.safetensors"))
        kept = torch.cat([trained[n][m].abs() for n, m in masks.items()])
        dead = torch.cat([trained[n][~m].abs() for n, m in masks.items()])
        assert float(kept.min()) >= float(dead.max())


@pytest.mark.slow
@pytest.mark.parametrize("method", BASELINES)
def test_refilled_variants_keep_whole_channels(method, tmp_path):
    """With channel groups U is refilled (SNIP-Refill etc.): whole channels, and the remaining
    fraction within one channel per conv of the target."""
    config = tiny(method=method, target_remain=0.3, structure="channel", criteria="magnitude")
    run_dir = tiny_run(config, out=tmp_path / "run", console=QUIET)
    record = states(run_dir)[-1]
    masks = masks_of(run_dir, config.states - 1)
    total = sum(m.numel() for m in masks.values())
    slack = sum(m[0].numel() for m in masks.values())  # one output channel per conv
    alive = sum(int(m.sum()) for m in masks.values())
    assert abs(alive - round(0.3 * total)) <= slack
    assert record["structured_sparsity"]["channel"] > 0.3
    for name, m in masks.items():  # each output channel all alive or all dead
        rows = m.reshape(m.shape[0], -1)
        assert torch.all(rows.all(1) | ~rows.any(1)), name


@pytest.mark.slow
def test_iterative_form_prunes_rate_per_state(tmp_path):
    config = tiny(method="snip", states=3, rate=0.5, structure="none")
    records = states(tiny_run(config, out=tmp_path / "run", console=QUIET))
    assert [r["remain_weight"] for r in records] == pytest.approx([1.0, 0.5, 0.25], abs=1e-5)


class RecordingRun(loop.PruningRun):
    """Records the weights each state starts training from, and the rewind point."""

    starts: list[dict[str, torch.Tensor]] = []
    rewind: dict[str, torch.Tensor] = {}

    def train_state(self, state, start_epoch, partial):
        RecordingRun.starts.append({k: v.clone() for k, v in self.model.state_dict().items()})
        RecordingRun.rewind = {k: v.clone() for k, v in self.rewind_point.items()}
        return super().train_state(state, start_epoch, partial)


@pytest.mark.slow
def test_prune_at_init_comes_after_the_rewind_point(tmp_path, monkeypatch):
    """A method pruning at init with two states: the rewind point is the dense initialization
    (taken before the prune), state 0 starts from it masked, and state 1 rewinds to it with the
    pruned weights zero again."""
    monkeypatch.setattr(loop, "PruningRun", RecordingRun)
    RecordingRun.starts = []
    monkeypatch.setattr(type(get_method("random")), "one_shot_states", 2)
    config = tiny(method="random", target_remain=0.5, states=2, structure="none")
    run_dir = tiny_run(config, out=tmp_path / "run", console=QUIET)
    masks = masks_of(run_dir, 1)
    init = RecordingRun.rewind
    assert len(RecordingRun.starts) == 2
    for name, mask in masks.items():
        assert torch.equal(masks_of(run_dir, 0)[name], mask)  # one prune, at init
        assert 0.3 < float(mask.float().mean()) < 0.7
        assert float(init[name][~mask].abs().min()) > 0  # the rewind point is dense
        for start in RecordingRun.starts:
            assert torch.equal(start[name], init[name] * mask)
    # state 1 really rewound: its start differs from where state 0 ended
    trained = load_file(str(run_dir / "state_00" / "weights.safetensors"))
    assert not torch.equal(trained["fc.weight"], RecordingRun.starts[1]["fc.weight"])


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "words"), [
    (["--method", "snip", "--target-remain", "0"], ["--target-remain 0.0 is outside (0, 1]"]),
    (["--method", "snip", "--target-remain", "1.5"], ["--target-remain 1.5 is outside (0, 1]"]),
    (["--method", "snip", "--target-remain", "-0.2"], ["outside (0, 1]"]),
    (["--method", "synflow", "--synflow-iterations", "0"],
     ["--synflow-iterations must be ≥ 1 (got 0)"]),
    (["--method", "rsst", "--target-remain", "0.2"], ["one-shot methods", "drop --target-remain"]),
    (["--method", "omp", "--target-remain", "0.2", "--states", "5"],
     ["runs 2 state(s)", "drop --states"]),
    (["--pretrained", "/nonexistent/w.safetensors"], ["--pretrained", "no such file"]),
    (["--pretrained", "/"], ["--pretrained", "is a folder"]),
    (["--prune-scope", "everything"], ["--prune-scope"]),
    (["--method", "snip", "--score-bn", "batch"],
     ["--score-bn", "'batch' is not one of 'eval', 'train'"]),
    (["--method", "admm", "--admm-projection", "unit"],
     ["--admm-projection", "'unit' is not one of 'layer', 'global'"]),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", *argv, "--epochs", "1", "--train-subset", "64"])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in " ".join(err.split()), err
    assert not list(tmp_path.iterdir())  # nothing written


def test_target_remain_fills_in_the_one_shot_state_count():
    assert build_config(overrides={"method": "snip", "target_remain": 0.1}).states == 1
    assert build_config(overrides={"method": "omp", "target_remain": 0.1}).states == 2
    config = build_config(preset="cifar10-resnet20", overrides={
        "method": "grasp", "target_remain": 0.1, "data_dir": "/data"})
    assert config.states == 1 and config.epochs == 160
    assert build_config(overrides={"method": "snip"}).states == 3  # iterative: as given


# -- model options ---------------------------------------------------------------------------
def test_vit_tiny_research_shape():
    model = create_model("vit_tiny_research", num_classes=10, img_size=32)
    net = model.net
    assert (net.embed_dim, len(net.blocks), net.blocks[0].attn.num_heads) == (192, 9, 3)
    assert net.blocks[0].mlp.fc1.out_features == 384  # MLP ratio 2
    assert net.patch_embed.proj.kernel_size == (4, 4) and net.patch_embed.num_patches == 64
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    timm_tiny = create_model("vit_tiny", num_classes=10, img_size=32).net
    assert len(timm_tiny.blocks) == 12  # timm's vit_tiny is kept as it is


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "stem", "classifier"), [
    ("resnet20", "conv1.weight", "fc.weight"),
    ("vit_tiny", "net.patch_embed.proj.weight", "net.head.weight"),
])
def test_prune_scope_widens(arch, stem, classifier):
    model = create_model(arch, img_size=8, **({"patch_size": 4} if "vit" in arch else {}))
    arena = Arena(model)
    default = build_structure(model, arena, "auto")
    names = {s: set(build_structure(model, arena, "auto", scope=s).prunable_names)
             for s in SCOPES}
    assert names["default"] == set(default.prunable_names)
    assert stem not in names["default"] and classifier not in names["default"]
    assert names["+stem"] == names["default"] | {stem}
    assert names["+classifier"] == names["default"] | {classifier}
    assert names["all"] == names["default"] | {stem, classifier}
    wide = build_structure(model, arena, "auto", scope="all")
    assert int(wide.prunable.sum()) == int(default.prunable.sum()) + \
        arena.slots[stem].numel + arena.slots[classifier].numel
    assert [u.name for u in wide.units] == [u.name for u in default.units]  # no new groups


def test_global_refill_ranks_across_units():
    """Two units of 4 groups; global keeps the top k of all 8 by score (at least one each)."""
    model = create_model("vit_tiny", img_size=8, patch_size=4)
    arena = Arena(model)
    structure = build_structure(model, arena, "neuron")
    units = structure.units[:2]
    structure.units = units
    hard = arena.hard_mask
    unstructured = hard.clone()
    # U keeps 25 % of the two units' weights: d = 0.25 pooled
    for unit in units:
        unstructured[unit.weight_index] = unit.weight_group % 4 == 0
    c = units[0].num_groups
    scores = {units[0].name: torch.arange(c, dtype=torch.float64) + 10 * c,
              units[1].name: torch.arange(c, dtype=torch.float64)}
    result = refill(structure, unstructured, hard, scores, 0.0, scope="global")
    kept = [structure.group_alive(u, result) for u in units]
    k = kept_groups(0.25, 2 * c, 2 * c, 0.0)
    assert int(kept[0].sum()) + int(kept[1].sum()) == k
    # unit 0 outscores unit 1 everywhere: it keeps its top k−1, unit 1 only its best one
    assert torch.equal(kept[0].nonzero().flatten(), torch.arange(c - (k - 1), c))
    assert kept[1].nonzero().flatten().tolist() == [c - 1]
    per_unit = refill(structure, unstructured, hard, scores, 0.0, scope="unit")
    assert [int(structure.group_alive(u, per_unit).sum()) for u in units] == [c // 4] * 2


# -- --pretrained ----------------------------------------------------------------------------
def test_pretrained_loads_safetensors_and_torch_files(tmp_path):
    source = create_model("resnet20", img_size=8)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    weights = {k: v.contiguous() for k, v in source.state_dict().items()
               if not k.startswith("normalize.")}
    save_file(weights, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}},
               tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        model = create_model("resnet20", img_size=8)
        load_pretrained(model, tmp_path / name)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())

    vit = create_model("vit_tiny", img_size=8, patch_size=4)
    bare = {k[len("net."):]: v.clone() + 1 for k, v in vit.state_dict().items()
            if k.startswith("net.")}  # a timm checkpoint of the bare network
    save_file(bare, str(tmp_path / "timm.safetensors"))
    load_pretrained(vit, tmp_path / "timm.safetensors")
    assert torch.equal(vit.state_dict()["net.head.weight"], bare["head.weight"])


def test_pretrained_mismatch_is_one_clear_error(tmp_path):
    save_file({k: v.contiguous() for k, v in create_model("resnet20", num_classes=100,
                                                          img_size=8).state_dict().items()},
              str(tmp_path / "c100.safetensors"))
    with pytest.raises(UserError, match=r"does not fit.*another shape \(e\.g\. fc\.(weight|bias)"):
        load_pretrained(create_model("resnet20", img_size=8), tmp_path / "c100.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read as weights"):
        load_pretrained(create_model("resnet20", img_size=8), tmp_path / "junk.pt")
    with pytest.raises(UserError, match="missing"):
        save_file({"fc.weight": torch.zeros(10, 64)}, str(tmp_path / "part.safetensors"))
        load_pretrained(create_model("resnet20", img_size=8), tmp_path / "part.safetensors")


@pytest.mark.slow
def test_pretrained_run_starts_from_the_file(tmp_path):
    torch.manual_seed(123)
    source = create_model("resnet20", img_size=8)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    config = tiny(method="omp", target_remain=0.5, structure="none",
                  pretrained=str(tmp_path / "w.safetensors"))
    run = tiny_pruning_run(config, tmp_path / "run", QUIET)
    for k, v in source.state_dict().items():
        assert torch.equal(run.model.state_dict()[k], v), k


@pytest.mark.slow
def test_resume_does_not_need_the_pretrained_file_again(tmp_path):
    """The first checkpoint holds the --pretrained weights: a resume works after the file moved,
    and continues from the checkpoint, not from the file."""
    source = create_model("resnet20", img_size=8)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    config = tiny(method="imp", states=1, structure="none", pretrained=str(weights))
    run_dir = tiny_run(config, out=tmp_path / "run", console=QUIET)
    weights.unlink()
    tiny_run(RunConfig(), resume=run_dir, console=QUIET)  # finished: nothing left to train
    assert json.loads((run_dir / "summary.json").read_text())["states"][0]["state"] == 0
