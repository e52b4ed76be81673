"""A real `rsst run` killed with SIGKILL at exact moments, then resumed, ends where an
uninterrupted run ends: same summary.json, same metrics lines (none missing or doubled), same
state files.

The kill points come from the test seam `rsst.killpoint` (``RSST_TEST_KILL_AT``), so they are
deterministic: during setup (halfway through writing config.toml; after it, before the first
checkpoint), mid-epoch, between a metrics line and its checkpoint, halfway through writing a
checkpoint and the summary, after a state's files, during pruning, and between a state's
checkpoint and its summary. Every kill after the two during setup hits a ``--resume``, so
resumes are killed too. Tiny: ResNet-20 on 64 8×8 images, 3 states × 2 epochs, one thread
per process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import clean, finish, start, write_two_classes
from rich.console import Console
from safetensors.torch import load_file

from rsst.errors import UserError

pytestmark = pytest.mark.slow  # starts real runs or subprocesses

ROOT = Path(__file__).resolve().parent.parent

#: in order; each is a process killed at that point (names: states 0-based, epochs 1-based)
KILLS = [
    "write:config.toml",           # setup: the config's temp file is complete, not renamed
    "setup-after-config",          # setup: a run directory, before its first checkpoint
    "state0-epoch1-step2",         # mid-epoch, before any epoch's checkpoint
    "state0-epoch2-after-metrics",  # the epoch's line written, its checkpoint not
    "state0-after-state-files",    # state files written, pruning not done
    "state1-pruning",              # the next masks half made
    "write:checkpoint.safetensors",  # a checkpoint's temp file complete, not renamed
    "state1-after-checkpoint",     # the state's checkpoint written, the summary not
    "write:summary.json",          # the summary's temp file complete, not renamed
]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """64 8×8 RGB PNGs in two classes: 28 train and 4 test images per class."""
    return write_two_classes(tmp_path_factory.mktemp("images"), train=28, test=4)


def run_args(images: Path, out: Path) -> list[str]:
    return ["--dataset", "imagefolder", "--data-dir", str(images), "--arch", "resnet20",
            "--method", "rsst", "--states", "3", "--epochs", "2", "--batch-size", "16",
            "--device", "cpu", "--backend", "torch", "--out", str(out)]


def summary(run: Path) -> dict:
    return clean(json.loads((run / "summary.json").read_text()))


def metrics(run: Path) -> list[dict]:
    return [clean(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]


def snapshot(run: Path) -> dict:
    """The states a (killed) run directory shows: its summary's and its state records."""
    records = {p.parent.name: clean(json.loads(p.read_text()))
               for p in run.glob("state_*/state.json")}
    return {"summary": summary(run)["states"] if (run / "summary.json").exists() else [],
            "records": records}


def test_killed_anywhere_resume_matches_an_uninterrupted_run(tmp_path, images):
    reference, run = tmp_path / "reference", tmp_path / "killed"
    straight = start(tmp_path, run_args(images, reference))  # in parallel with the kills
    seen = {}
    for i, point in enumerate(KILLS):
        # a run killed during config.toml's write is no run directory yet: it is started again
        args = run_args(images, run) if i < 2 else ["--resume", str(run)]
        code, err = finish(start(tmp_path, args, kill_at=point))
        assert code == -9, (point, code, err[-2000:])  # it reached its kill point
        seen[point] = snapshot(run)
        if i == 0:
            assert not (run / "config.toml").exists()
            assert [p for p in run.iterdir() if p.name.endswith(".tmp")]
    code, err = finish(straight)
    assert code == 0, err[-2000:]
    code, err = finish(start(tmp_path, ["--resume", str(run)]))
    assert code == 0, err[-2000:]

    assert summary(run) == summary(reference)
    assert [r["state"] for r in summary(run)["states"]] == [0, 1, 2]
    assert metrics(run) == metrics(reference)  # no line doubled or lost
    for s in range(3):
        a = load_file(str(run / f"state_{s:02d}" / "weights.safetensors"))
        b = load_file(str(reference / f"state_{s:02d}" / "weights.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (s, k)
    assert not [p for p in run.rglob("*.tmp")]  # the killed writes' temp files are gone
    # what each kill left was already final: its summary a prefix of the full one, every state
    # record on disk the final record (a resume rewrites them identically)
    final = summary(reference)["states"]
    for point, shown in seen.items():
        assert shown["summary"] == final[: len(shown["summary"])], point
        for name, record in shown["records"].items():
            assert record == final[int(name[6:])], (point, name)
    assert len(seen["state0-after-state-files"]["records"]) == 1
    assert seen["state1-after-checkpoint"]["summary"] == final[:1]  # lags until the resume


def test_missing_checkpoint_after_training_is_refused(tmp_path, images, monkeypatch):
    """A run directory whose checkpoint is gone but whose states exist cannot be continued
    exactly: the resume refuses with one line naming what is missing and what to do."""
    import rsst.loop as loop
    from rsst.config import build_config

    monkeypatch.setenv("RSST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    cfg = build_config(overrides=dict(dataset="imagefolder", data_dir=str(images), states=2,
                                      epochs=1, batch_size=16, device="cpu", backend="torch"))
    loop.run(cfg, out=out, console=Console(quiet=True))
    (out / "checkpoint.safetensors").unlink()
    with pytest.raises(UserError) as info:
        loop.run(cfg, resume=out, console=Console(quiet=True))
    message = str(info.value)
    assert "checkpoint.safetensors is missing" in message
    assert "state_00/, state_01/, metrics.jsonl" in message
    assert "--overwrite" in message
    assert not (out / "checkpoint.safetensors").exists()  # nothing was retrained
