"""provenance.json and `rsst env`: where a result came from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_run
from rich.console import Console

from rsst import __version__, provenance
from rsst.config import RunConfig, validate

ROOT = Path(__file__).resolve().parent.parent


def _strict(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


@pytest.mark.slow
def test_collect_names_versions_commit_and_device():
    info = provenance.collect("cpu")
    assert info["rsst_version"] == __version__ and info["torch"] == torch.__version__
    assert info["device"] == "cpu" and info["device_name"] and info["host"]
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # recorded
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode == 0:  # run from a checkout: the commit is the checkout's
        assert info["git"]["commit"] == head.stdout.strip()
        assert isinstance(info["git"]["dirty"], bool)
    _strict(json.dumps(info))


@pytest.mark.slow
def test_a_run_records_one_session_per_start_with_start_and_end(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["rsst", "run", "--states", "1"])
    cfg = validate(RunConfig(method="imp", states=1, epochs=1, train_subset=64, val_split=32,
                             batch_size=32, device="cpu", backend="torch", arch="resnet20"))
    run_dir = tiny_run(cfg, out=tmp_path / "run", console=Console(quiet=True))
    (first,) = _strict((run_dir / "provenance.json").read_text())["sessions"]
    assert first["argv"] == ["rsst", "run", "--states", "1"] and first["resumed"] is False
    assert first["started"] <= first["ended"] and first["torch"] == torch.__version__
    monkeypatch.setattr(sys, "argv", ["rsst", "run", "--resume", str(run_dir)])
    tiny_run(RunConfig(), resume=run_dir, console=Console(quiet=True))  # nothing left to train
    sessions = _strict((run_dir / "provenance.json").read_text())["sessions"]
    assert sessions[0] == first and len(sessions) == 2
    assert sessions[1]["resumed"] is True and sessions[1]["ended"] is not None
    assert sessions[1]["argv"][-2:] == ["--resume", str(run_dir)]


def test_rsst_env_prints_a_table_or_json(capsys):
    from rsst.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["env", "--json"])
    assert exit_info.value.code == 0
    info = _strict(capsys.readouterr().out)
    assert set(info) == set(provenance.collect("cpu"))
    assert info["rsst_version"] == __version__
    with pytest.raises(SystemExit):
        main(["env"])
    out = capsys.readouterr().out
    assert "torch" in out and torch.__version__ in out
