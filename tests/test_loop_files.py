"""What a run writes, and who writes it: the record's accuracies are the saved network's, and
rank 0 alone writes any line."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest
from helpers import tiny_pruning_run, tiny_run, write_two_classes
from rich.console import Console

import rsst.loop as loop
from rsst.config import RunConfig, validate
from rsst.console import quiet_library_noise
from rsst.distributed import World
from rsst.export import evaluate_file

QUIET = Console(quiet=True)


@pytest.mark.slow
def test_state_accuracies_are_what_rsst_eval_measures_on_the_saved_file(tmp_path):
    """``test_acc`` / ``val_acc`` of every state (after the RSST cut) are reproduced exactly by
    evaluating ``state_XX/weights.safetensors`` (`rsst eval`'s function) on the same split."""
    images = write_two_classes(tmp_path / "images", train=24, test=16)
    cfg = validate(RunConfig(
        method="rsst", dataset="imagefolder", data_dir=str(images), arch="resnet20", states=2,
        epochs=1, rate=0.6, reg_granularity=1e-4, val_split=16, batch_size=16,
        eval_batch_size=7, device="cpu", backend="torch", cache_dir=str(tmp_path / "cache")))
    run_dir = loop.run(cfg, out=tmp_path / "run", console=QUIET)
    records = json.loads((run_dir / "summary.json").read_text())["states"]
    # state 1 was cut, unfaded: the cut changed the test accuracy, so the check below tells
    # the saved network's figure from the trained one's
    assert records[1]["test_acc"] != records[1]["test_acc_before_cut"]
    for r in records:
        weights = run_dir / f"state_{r['state']:02d}" / "weights.safetensors"
        for split in ("test", "val"):
            got = evaluate_file(weights, split=split, batch_size=5, device="cpu")
            assert got["accuracy"] == r[f"{split}_acc"], (r["state"], split)
    assert records[1]["test_acc"] == json.loads(
        (run_dir / "state_01" / "state.json").read_text())["test_acc"]


RESEARCH_PENALTY = dict(method="rsst", schedule="exp_custom_exponents", reg_granularity=1.0,
                        states=2, epochs=1, rate=0.3, train_subset=256, val_split=64,
                        batch_size=32, eval_batch_size=256, device="cpu", backend="torch",
                        arch="resnet20", fade_epochs=2)


@pytest.mark.slow
def test_a_rank_other_than_0_writes_no_line_not_even_in_fade_epochs(tmp_path, monkeypatch):
    """Under torchrun every rank runs the loop; only rank 0 writes metrics lines (epoch, fade
    epoch and state lines alike), checkpoints and state files."""
    fades = []
    original = loop.PruningRun._end_epoch

    def spy(self, *args, **kw):
        fades.append(kw.get("fade"))
        return original(self, *args, **kw)

    monkeypatch.setattr(loop.PruningRun, "_end_epoch", spy)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = validate(RunConfig(**RESEARCH_PENALTY))
    # rank 1 of a world of one: not the main rank, and no process group needed
    tiny_pruning_run(cfg, run_dir, QUIET, world=World(rank=1, size=1)).run(resume=False)
    assert any(k is not None for k in fades)  # the run took fade epochs
    assert sorted(p.name for p in run_dir.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(("cfg", "absent"), [
    ({}, ()),
    ({"schedule": "x"}, ("--schedule x",)),
])
def test_the_fade_warning_names_only_fixes_not_in_effect(cfg, absent, tmp_path):
    console = Console(record=True, width=400)
    run = tiny_pruning_run(validate(RunConfig(**{**RESEARCH_PENALTY, "fade_epochs": 0, **cfg})),
                           Path(tmp_path), console)
    run._warn_unfaded(1, 0.9)
    text = console.export_text()
    assert "have not faded" in text
    for fix in absent:
        assert fix not in text
    if not absent:
        assert "--schedule x" in text


@pytest.mark.slow
def test_a_log_file_gets_a_line_per_epoch_a_row_per_state_and_the_table_once(tmp_path):
    """In a pipe (no terminal: the progress bar shows nothing) the log is readable: one line per
    epoch, one per state, the full state table once at the end."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=120)
    cfg = validate(RunConfig(method="imp", states=3, epochs=2, rate=0.3, train_subset=64,
                             val_split=32, batch_size=32, eval_batch_size=256, device="cpu",
                             backend="torch", arch="resnet20"))
    tiny_run(cfg, out=tmp_path / "run", console=console)
    lines = buf.getvalue().splitlines()
    epochs = [ln for ln in lines if re.match(r"state \d · epoch \d/2 · loss [\d.]+ · acc", ln)]
    assert [ln[:19] for ln in epochs] == [f"state {s} · epoch {e}/2" for s in range(3)
                                          for e in (1, 2)]
    assert all(re.search(r"· lr [\d.e-]+ · λ 0 · [\d.]+ s$", ln) for ln in epochs), epochs
    assert [ln.split(" · ")[0] for ln in lines if " done · val " in ln] == [
        f"state {s} done" for s in range(3)]
    assert buf.getvalue().count("states · accuracy") == 1
    assert len(lines) < 30, len(lines)


def test_torch_cuda_home_noise_is_dropped(caplog):
    quiet_library_noise()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torch.utils.cpp_extension").warning(
            "No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logging.getLogger("torch.utils.cpp_extension").warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_ramp_window_and_fade_lambda():
    from rsst.schedules import fade_lambda, ramp_offset, ramp_steps

    assert ramp_steps("state", 7, 3) == 21 and ramp_steps("epoch", 7, 3) == 7
    assert [ramp_offset("state", e, 7) for e in range(3)] == [0, 7, 14]
    assert [ramp_offset("epoch", e, 7) for e in range(3)] == [0, 0, 0]
    # GReg's doubling from 2·granularity, capped where one step's lr·λ reaches 1
    assert [fade_lambda(0.5, k, 0.1) for k in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 10.0]
