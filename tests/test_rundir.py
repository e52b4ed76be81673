"""The run-directory module: atomic writes, metric trimming, and the lock between processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_config, tiny_run
from rich.console import Console

import rsst.loop as loop
from rsst import rundir
from rsst.atomic import atomic_write, atomic_write_json
from rsst.config import RunConfig
from rsst.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


# -- atomic writes -----------------------------------------------------------------------------
def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}

    def torn(tmp: Path) -> None:
        tmp.write_text('{"x": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, torn)
    assert json.loads(path.read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temp file left


def test_atomic_write_respects_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "m.json", [])
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o640


def test_trim_metrics_keeps_lines_up_to_the_checkpoint(tmp_path):
    lines = [{"kind": "epoch", "state": 0, "epoch": 1}, {"kind": "epoch", "state": 0, "epoch": 2},
             {"kind": "state", "state": 0}, {"kind": "epoch", "state": 1, "epoch": 1},
             {"kind": "epoch", "state": 1, "epoch": 2}]
    for record in lines:
        rundir.append_metrics(tmp_path, record)
    with open(tmp_path / rundir.METRICS, "a") as f:
        f.write('{"kind": "ep')  # a torn last line
    rundir.trim_metrics(tmp_path, state=1, epoch=1)
    kept = [json.loads(x) for x in (tmp_path / rundir.METRICS).read_text().splitlines()]
    assert kept == lines[:4]


# -- the lock ------------------------------------------------------------------------------------
HOLD = """
import sys, time
from pathlib import Path
from rsst.rundir import RunLock
RunLock(Path(sys.argv[1])).acquire("test")
print("locked", flush=True)
time.sleep(120)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}


def _tiny(**kw) -> RunConfig:
    return tiny_config(**{"states": 1, "train_subset": 64, "val_split": 32, "batch_size": 32,
                          "eval_batch_size": 64, **kw})


@pytest.fixture
def finished(tmp_path) -> Path:
    return tiny_run(_tiny(), out=tmp_path / "run", console=Console(quiet=True))


@pytest.mark.slow
def test_a_live_run_directory_is_refused_and_a_dead_holder_is_not(finished, tmp_path):
    """Another process holds the directory: a second run, --overwrite and --resume are refused
    naming its pid; once it is killed (its lock file stays behind) all of them work again."""
    summary = (finished / rundir.SUMMARY).read_text()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(finished)], env=_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for kw in ({}, {"overwrite": True}):
            with pytest.raises(UserError, match=f"in use by a running rsst \\(pid {holder.pid}\\)"):
                tiny_run(_tiny(), out=finished, console=Console(quiet=True), **kw)
        with pytest.raises(UserError, match=f"pid {holder.pid}.*--resume refused"):
            tiny_run(_tiny(), resume=finished, console=Console(quiet=True))
        assert (finished / rundir.SUMMARY).read_text() == summary
        # the command line: one line on stderr, exit 2
        result = subprocess.run([sys.executable, "-m", "rsst", "run", "--resume", str(finished)],
                                env=_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = [x for x in result.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and f"(pid {holder.pid})" in lines[0], result.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (finished / rundir.LOCK).exists()  # stale: left by the killed process
    tiny_run(_tiny(), resume=finished, console=Console(quiet=True))
    tiny_run(_tiny(states=2), out=finished, overwrite=True, console=Console(quiet=True))
    assert len(json.loads((finished / rundir.SUMMARY).read_text())["states"]) == 2


@pytest.mark.slow
def test_the_run_holds_its_lock_while_it_runs(tmp_path, monkeypatch):
    """While `loop.run` works, another process cannot take the lock; afterwards it can."""
    probe = ("import sys, fcntl, os\n"
             "fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except OSError:\n    print('held')\n")
    seen = []
    original = loop.PruningRun.write_summary

    def write_and_probe(self):
        original(self)
        out = subprocess.run([sys.executable, "-c", probe, str(self.run_dir / rundir.LOCK)],
                             capture_output=True, text=True, timeout=60)
        seen.append((out.stdout.strip(), (self.run_dir / rundir.LOCK).read_text().strip()))

    monkeypatch.setattr(loop.PruningRun, "write_summary", write_and_probe)
    run_dir = tiny_run(_tiny(), out=tmp_path / "r", console=Console(quiet=True))
    assert seen == [("held", str(os.getpid()))]
    out = subprocess.run([sys.executable, "-c", probe, str(run_dir / rundir.LOCK)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "free"


@pytest.mark.slow
def test_a_concurrent_fresh_run_cannot_slip_in(tmp_path):
    """Two runs raced to a new --out and the other one finished first: ours refuses."""
    out = tmp_path / "r"
    lock = rundir.RunLock(out)
    out.mkdir()
    tiny_run(_tiny(), out=out, console=Console(quiet=True))
    with pytest.raises(UserError, match="already exists"):
        loop._prepare_fresh(out, lock, _tiny(), "a second run in it", overwrite=False)
    assert lock.held  # refused under our own lock, which `run` releases in its finally
    lock.release()
