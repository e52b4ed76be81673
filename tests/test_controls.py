"""`rsst ticket`: the reinit control keeps the ticket's mask exactly, the shuffle control keeps
its counts (per unit's groups in a structured run, per tensor in an unstructured one) at other
places, and both train one state of the run's recipe from the documented weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_dataset
from rich.console import Console
from safetensors.torch import load_file

from rsst import loop
from rsst.config import RunConfig, load_config, validate
from rsst.controls import CONTROL_RECORD, run_control
from rsst.errors import UserError

pytestmark = pytest.mark.slow  # real runs and subprocesses

ROOT = Path(__file__).resolve().parent.parent
QUIET = Console(quiet=True)
TINY = dict(console=QUIET, load_data=tiny_dataset)  # in process, on 8×8 images


def config(**kw) -> RunConfig:
    base = dict(states=2, epochs=1, rate=0.5, train_subset=128, val_split=64, batch_size=64,
                eval_batch_size=256, device="cpu", backend="torch", arch="resnet20")
    return validate(RunConfig(**{**base, **kw}))


@pytest.fixture(scope="module")
def refill_run(tmp_path_factory) -> Path:
    return loop.run(config(method="refill"), out=tmp_path_factory.mktemp("r") / "refill",
                    **TINY)


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory) -> Path:
    return loop.run(config(method="imp"), out=tmp_path_factory.mktemp("r") / "imp",
                    **TINY)


def masks(run_dir: Path, state: int) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / f"state_{state:02d}" / "weights.safetensors"))
    return {k: v for k, v in tensors.items() if k.endswith(".mask")}


def groups(run_dir: Path, state: int) -> dict[str, int]:
    record = json.loads((run_dir / f"state_{state:02d}" / "state.json").read_text())
    return {name: g["alive"] for name, g in record["groups"].items()}


def test_reinit_trains_the_same_mask_from_another_initialization(refill_run, tmp_path):
    out = run_control(refill_run, 1, "reinit", out=tmp_path / "reinit", **TINY)
    assert {k: v.tolist() for k, v in masks(out, 0).items()} == \
        {k: v.tolist() for k, v in masks(refill_run, 1).items()}
    control = load_config(out / "config.toml")
    source = load_config(refill_run / "config.toml")
    assert (control.method, control.states, control.seed) == ("imp", 1, source.seed + 10_000)
    assert (control.epochs, control.lr, control.lr_schedule) == (source.epochs, source.lr,
                                                                 source.lr_schedule)
    record = json.loads((out / CONTROL_RECORD).read_text())
    assert (record["control"], record["state"], record["seed"]) == ("reinit", 1, 10_000)
    state1 = json.loads((refill_run / "state_01" / "state.json").read_text())
    assert record["ticket"]["val_acc"] == state1["val_acc"]
    # the members of pruned channels (BatchNorm γ and β) are dead too: zero in the ticket,
    # zero after the control's training
    ticket = load_file(str(refill_run / "state_01" / "weights.safetensors"))
    trained = load_file(str(out / "state_00" / "weights.safetensors"))
    checked = 0
    for key, value in ticket.items():
        if value.dim() == 1 and value.is_floating_point() and "running" not in key:
            zero = value == 0
            checked += int(zero.sum())
            assert trained[key][zero].abs().sum() == 0, key
    assert checked > 0


def test_shuffle_keeps_kept_groups_per_unit_and_moves_them(refill_run, tmp_path):
    out = run_control(refill_run, 1, "shuffle", out=tmp_path / "shuffle", **TINY)
    assert groups(out, 0) == groups(refill_run, 1)  # the same count of channels per conv
    ticket, control = masks(refill_run, 1), masks(out, 0)
    moved = 0
    for name, mask in control.items():
        rows = mask.flatten(1)
        # group-complete: a channel is all alive or all dead
        assert set(rows.sum(1).tolist()) <= {0, rows.shape[1]}, name
        moved += int((rows.sum(1) > 0).ne(ticket[name].flatten(1).sum(1) > 0).sum())
    assert moved > 0
    assert json.loads((out / CONTROL_RECORD).read_text())["seed"] == 0  # the run's own seed


def test_unstructured_shuffle_keeps_the_count_per_tensor(imp_run, tmp_path):
    out = run_control(imp_run, 1, "shuffle", out=tmp_path / "shuffle", **TINY)
    ticket, control = masks(imp_run, 1), masks(out, 0)
    assert any(int(ticket[k].sum()) < ticket[k].numel() for k in ticket)  # something pruned
    for name in ticket:
        assert int(control[name].sum()) == int(ticket[name].sum()), name
    assert any(not torch.equal(control[k], ticket[k]) for k in ticket)


def test_bad_inputs_are_one_line_errors(refill_run, tmp_path):
    with pytest.raises(UserError, match="no finished state 7"):
        run_control(refill_run, 7, "reinit", out=tmp_path / "x", **TINY)
    with pytest.raises(UserError, match="choose one of reinit, shuffle"):
        run_control(refill_run, 1, "other", out=tmp_path / "x", **TINY)
    with pytest.raises(UserError, match="not an rsst run directory"):
        run_control(tmp_path, 1, "reinit", out=tmp_path / "x", **TINY)
    assert not (tmp_path / "x").exists()


def test_a_killed_control_set_up_again_or_resumed_matches_an_uninterrupted_one(tmp_path):
    """Killed while writing its first checkpoint or its config.toml, `rsst ticket` sets the
    control up again; killed mid-epoch, `rsst run --resume` finishes it; the end equals an
    uninterrupted control."""
    from helpers import clean, finish, start, write_two_classes

    images = write_two_classes(tmp_path / "images", train=28, test=4)
    source = tmp_path / "source"
    code, err = finish(start(tmp_path, [
        "--dataset", "imagefolder", "--data-dir", str(images), "--method", "refill",
        "--states", "2", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
        "--backend", "torch", "--out", str(source)]))
    assert code == 0, err[-2000:]

    def ticket(out: Path, kill_at: str | None = None) -> tuple[int, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RSST_CACHE": str(tmp_path / "cache"),
               "OMP_NUM_THREADS": "1", "RSST_TEST_KILL_AT": kill_at or ""}
        return finish(subprocess.Popen(
            [sys.executable, "-m", "rsst", "ticket", str(source), "--state", "1", "--control",
             "shuffle", "--out", str(out)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))

    reference = tmp_path / "reference"
    assert ticket(reference)[0] == 0
    killed = tmp_path / "killed"
    assert ticket(killed, kill_at="write:checkpoint.safetensors")[0] == -9  # its first write
    assert ticket(killed, kill_at="write:config.toml")[0] == -9
    assert not (killed / "config.toml").exists()
    assert ticket(killed, kill_at="state0-epoch1-step2")[0] == -9
    assert (killed / "config.toml").is_file() and not (killed / "summary.json").exists()
    code, err = finish(start(tmp_path, ["--resume", str(killed)]))
    assert code == 0, err[-2000:]

    def result(run: Path) -> dict:
        return clean(json.loads((run / "summary.json").read_text()))

    assert result(killed) == result(reference)
    assert torch.equal(masks(killed, 0)["layers.0.0.conv1.weight.mask"],
                       masks(reference, 0)["layers.0.0.conv1.weight.mask"])


@pytest.mark.parametrize("args, words", [
    (["--state", "two", "--control", "reinit"], "--state 'two': give a state number or last"),
    (["--state", "-1", "--control", "reinit"], "--state -1"),
    (["--state", "9", "--control", "reinit"], "no finished state 9"),
    (["--state", "1", "--control", "scramble"], "--control 'scramble': choose one of reinit"),
    (["--state", "1", "--control", "reinit", "--seed", "-3"], "--seed -3: give a seed ≥ 0"),
    (["--state", "1", "--control", "reinit", "--seed", "x"], "--seed"),
    (["--state", "1", "--control", "shuffle", "--out", "{taken}"], "already exists"),
    (["--state", "1", "--control", "shuffle", "--out", "{file}"], "--out"),
    (["--control", "reinit"], "--state"),
])
def test_cli_ticket_refuses_bad_flags_in_one_line(refill_run, tmp_path, capsys, args, words):
    from rsst import cli

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("a file")
    args = [a.format(taken=taken, file=tmp_path / "file") for a in args]
    before = sorted(p.name for p in refill_run.parent.iterdir())
    with pytest.raises(SystemExit) as info:
        cli.main(["ticket", str(refill_run), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err, err
    assert sorted(p.name for p in refill_run.parent.iterdir()) == before  # nothing created
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
