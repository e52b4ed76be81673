"""The run never hands back a wrong result quietly: divergence stops it (exit 3) before a
non-finite number is saved, no JSON it writes holds NaN/Infinity, a bad ``--out`` is one line,
file modes follow the umask, and an RSST cut of weights that have not faded is measured
(``fade_ratio``), warned about, and — with ``--fade-epochs`` — waited for.

Runs use ResNet-20 on the synthetic task shrunk to 8×8 pixels (`tiny_data`), in process.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_config, tiny_dataset, tiny_run
from rich.console import Console
from safetensors.torch import load_file

import rsst.loop as loop
from rsst import rundir
from rsst.atomic import atomic_write_json, finite_json, json_text
from rsst.config import RunConfig
from rsst.engine import Engine
from rsst.errors import TrainingDiverged, UserError
from rsst.loop import PruningRun
from rsst.pruning import FADE_THRESHOLD

QUIET = Console(quiet=True)


def config(**kw) -> RunConfig:
    return tiny_config(**{"batch_size": 32, **kw})


def strict_load(path: Path):
    """json.loads that refuses NaN / Infinity (which Python's own parser accepts)."""
    def refuse(name: str):
        raise ValueError(f"{path}: non-standard JSON constant {name}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def clean(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


# -- JSON ------------------------------------------------------------------------------------------
def test_json_has_null_and_a_reason_instead_of_nan(tmp_path):
    data = {"loss": math.nan, "acc": 0.5, "curve": [1.0, math.inf], "inner": {"x": -math.inf}}
    assert finite_json(data) == {"loss": None, "acc": 0.5, "curve": [1.0, None],
                                 "inner": {"x": None, "non_finite": {"x": "-inf"}},
                                 "non_finite": {"loss": "nan"}}
    text = json_text(data)
    assert "NaN" not in text and "Infinity" not in text
    atomic_write_json(tmp_path / "a.json", data)
    assert strict_load(tmp_path / "a.json")["loss"] is None
    rundir.append_metrics(tmp_path, {"kind": "epoch", "val_loss": math.nan})
    line = (tmp_path / rundir.METRICS).read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(c)) == {
        "kind": "epoch", "val_loss": None, "non_finite": {"val_loss": "nan"}}


# -- divergence ------------------------------------------------------------------------------------
def _poison_epoch(monkeypatch, at: tuple[int, int], what: str) -> list:
    """Make training epoch number ``at`` = (nth call of train_epoch) end with an inf weight (its
    mean loss stays finite: the bad last step the old guard missed) or a NaN val loss."""
    calls = []
    train, evaluate = Engine.train_epoch, Engine.evaluate

    def train_epoch(self, *args, **kw):
        result = train(self, *args, **kw)
        calls.append(len(calls))
        if what == "weights" and len(calls) == at[0]:
            self.arena.weight[self.arena.hard_mask.nonzero()[5]] = math.inf
        return result

    def evaluate_(self, batches):
        acc, loss = evaluate(self, batches)
        return (acc, math.nan) if what == "val loss" and len(calls) == at[0] else (acc, loss)

    monkeypatch.setattr(Engine, "train_epoch", train_epoch)
    monkeypatch.setattr(Engine, "evaluate", evaluate_)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("what", ["weights", "val loss"])
def test_divergence_stops_before_saving_and_the_run_stays_resumable(tmp_path, monkeypatch,
                                                                    what):
    cfg = config(method="rsst")
    straight = tiny_run(cfg, out=tmp_path / "straight", console=QUIET)
    out = tmp_path / "run"
    _poison_epoch(monkeypatch, (2, 1), what)  # state 1's only epoch
    with pytest.raises(TrainingDiverged) as info:
        tiny_run(cfg, out=out, console=QUIET)
    message = str(info.value)
    assert info.value.exit_code == 3
    assert "(non-finite " in message and what in message
    for phrase in ("state 1, epoch 1", "λ = 2", "lr ", "--reg-granularity or --lr"):
        assert phrase in message, phrase
    # nothing of the bad epoch was kept: no line, no checkpoint, no state files
    assert (out / "state_00" / "weights.safetensors").is_file()
    assert not (out / "state_01").exists()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["state"]) for r in lines] == [("epoch", 0), ("state", 0)]
    assert [r["state"] for r in strict_load(out / "summary.json")["states"]] == [0]
    for tensor in load_file(str(out / "checkpoint.safetensors")).values():
        assert bool(torch.isfinite(tensor.float()).all())
    # the finished state is kept and the run resumes (here to the clean result)
    monkeypatch.undo()
    tiny_run(cfg, resume=out, console=QUIET)
    assert clean(strict_load(out / "summary.json")["states"]) == clean(
        strict_load(straight / "summary.json")["states"])


def test_divergence_from_the_cli_exits_3_with_one_line(tmp_path, monkeypatch, capsys):
    from rsst.cli import main

    out = tmp_path / "run"
    monkeypatch.setattr(loop, "load_run_data", tiny_dataset)  # the CLI path has no data seam
    monkeypatch.setattr(sys, "argv", ["rsst", "run", "--out", str(out), "--train-subset", "64",
                                      "--val-split", "32", "--states", "2", "--epochs", "1",
                                      "--batch-size", "32", "--device", "cpu", "--backend",
                                      "torch", "--reg-granularity", "1e30"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: training diverged in state 1"), err
    for path in [out / "summary.json", *out.glob("state_*/state.json")]:
        strict_load(path)
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(c))


# -- --out -----------------------------------------------------------------------------------------
def _cli_error(monkeypatch, capsys, *args: str) -> str:
    from rsst.cli import main

    small = [] if "--resume" in args else ["--train-subset", "64", "--states", "1", "--epochs",
                                           "1", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", ["rsst", "run", *small, *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_out_that_is_a_file_or_under_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "notes.txt"
    file.write_text("keep")
    line = _cli_error(monkeypatch, capsys, "--out", str(file))
    assert f"--out {file} is a file" in line and "another --out" in line
    line = _cli_error(monkeypatch, capsys, "--out", str(file / "deeper" / "run"))
    assert f"lies under {file}, which is a file" in line
    line = _cli_error(monkeypatch, capsys, "--resume", str(file))
    assert "not an rsst run directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert file.read_text() == "keep"


def test_out_that_is_not_writable(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if os.geteuid() == 0:  # root writes through 0555; a file system root cannot write to
        target = Path("/sys/rsst-test-run")
        try:
            os.mkdir(target)
        except OSError:
            pass
        else:
            os.rmdir(target)
            pytest.skip("root can write everywhere here")
        line = _cli_error(monkeypatch, capsys, "--out", str(target / "run"))
        assert f"--out {target / 'run'}: cannot write there (in /sys)" in line
        assert not target.exists()
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = _cli_error(monkeypatch, capsys, "--out", str(locked / "a" / "run"))
        assert "cannot write there" in line and "permissions" in line
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


# -- file modes ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_of_a_run_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        run = tiny_run(config(method="rsst"), out=tmp_path / "run", console=QUIET)
    finally:
        os.umask(old)
    seen = set()
    for path in [run, *run.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == want, (path.name, oct(mode), oct(want))
        seen.add(path.name)
    assert {"checkpoint.safetensors", "weights.safetensors", "state.json", "summary.json",
            "config.toml", "metrics.jsonl", ".lock", "state_01"} <= seen


# -- the fade guard --------------------------------------------------------------------------------
RESEARCH_PENALTY = dict(method="rsst", schedule="exp_custom_exponents", reg_granularity=1.0,
                        epochs=1, train_subset=256)


def _run_capturing_the_cut(cfg: RunConfig, out: Path) -> tuple[Path, dict, str]:
    """Run ``cfg``; return the run dir, the model weights just before state 1's cut, and the
    console text."""
    console = Console(record=True, width=400)
    before_cut: dict = {}
    finish = PruningRun.finish_state

    def capture(self, state, best):
        if state == 1:
            before_cut.update({k: v.clone() for k, v in self.model.state_dict().items()})
        return finish(self, state, best)

    PruningRun.finish_state = capture
    try:
        run = tiny_run(cfg, out=out, console=console)
    finally:
        PruningRun.finish_state = finish
    return run, before_cut, console.export_text()


def _independent_fade_ratio(run: Path, weights: dict) -> float:
    """From the saved masks: pending = alive after state 0, dead after state 1's cut; live =
    alive after the cut; over the prunable weights (those saved with a ``.mask``)."""
    s0 = load_file(str(run / "state_00" / "weights.safetensors"))
    s1 = load_file(str(run / "state_01" / "weights.safetensors"))
    pending, live = [], []
    for key in s1:
        if not key.endswith(".mask"):
            continue
        name = key[: -len(".mask")]
        was, now = s0[key].bool(), s1[key].bool()
        pending.append(weights[name][was & ~now].double())
        live.append(weights[name][now].double())
    p, q = torch.cat(pending), torch.cat(live)
    assert p.numel() > 0 and q.numel() > 0
    return float(p.pow(2).mean().sqrt() / q.pow(2).mean().sqrt())


@pytest.mark.slow
def test_an_unfaded_cut_is_recorded_and_warned(tmp_path):
    run, weights, text = _run_capturing_the_cut(config(**RESEARCH_PENALTY), tmp_path / "r")
    record = strict_load(run / "summary.json")["states"][1]
    assert record["fade_ratio"] > FADE_THRESHOLD
    assert record["fade_ratio"] == pytest.approx(_independent_fade_ratio(run, weights),
                                                 rel=1e-6)
    assert "fade_epochs" not in record
    assert "warning: state 1: the cut removes weights that have not faded" in text
    for fix in ("--epochs", "--reg-granularity", "--schedule x", "--fade-epochs"):
        assert fix in text
    assert "fade_ratio" not in strict_load(run / "summary.json")["states"][0]


@pytest.mark.slow
def test_fade_epochs_wait_until_the_pending_weights_have_faded(tmp_path):
    cfg = config(**RESEARCH_PENALTY, fade_epochs=6)
    run, weights, text = _run_capturing_the_cut(cfg, tmp_path / "r")
    record = strict_load(run / "summary.json")["states"][1]
    assert record["fade_ratio"] < FADE_THRESHOLD
    assert record["fade_ratio"] == pytest.approx(_independent_fade_ratio(run, weights),
                                                 rel=1e-6)
    assert 1 <= record["fade_epochs"] <= 6
    assert "warning" not in text
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    fades = [r for r in lines if r.get("fade")]
    assert [r["epoch"] for r in fades] == [1 + k for k in range(1, record["fade_epochs"] + 1)]
    assert all(r["state"] == 1 for r in fades)
    # λ doubles each fade epoch from 2·λ_max, capped at 1/lr (the epoch's peak lr: cfg.lr, as
    # a 1-epoch state's cosine starts there)
    assert [r["reg_lambda"] for r in fades] == pytest.approx(
        [min(cfg.reg_granularity * 2.0 ** k, 1 / cfg.lr) for k in range(1, len(fades) + 1)])


@pytest.mark.slow
def test_a_resume_in_the_middle_of_the_fade_epochs(tmp_path, monkeypatch):
    cfg = config(**{**RESEARCH_PENALTY, "reg_granularity": 0.1}, fade_epochs=6)
    straight = tiny_run(cfg, out=tmp_path / "straight", console=QUIET)
    assert strict_load(straight / "summary.json")["states"][1]["fade_epochs"] >= 3
    original = PruningRun.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(self, position):
        original(self, position)
        if (position["state"], position["epoch"]) == (1, 2):  # after fade epoch 1
            raise Killed

    monkeypatch.setattr(PruningRun, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        tiny_run(cfg, out=tmp_path / "killed", console=QUIET)
    monkeypatch.undo()
    tiny_run(cfg, resume=tmp_path / "killed", console=QUIET)
    a = strict_load(tmp_path / "killed" / "summary.json")["states"]
    b = strict_load(straight / "summary.json")["states"]
    assert clean(a) == clean(b)
    def lines(run: Path) -> list[dict]:
        return clean([json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()])

    assert lines(tmp_path / "killed") == lines(straight)
    assert sum(1 for r in lines(straight) if r.get("fade")) == a[1]["fade_epochs"]


def test_fade_epochs_is_validated():
    with pytest.raises(UserError, match="--fade-epochs must be ≥ 0"):
        config(fade_epochs=-1)
