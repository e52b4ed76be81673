"""`rsst run` on bad input: exit code 2, one line on stderr that names the fix, no traceback,
and no run directory left behind when the failure comes before training.

Most cases run the real entry point (``python -m rsst``) in a subprocess; flag validation runs
in process through `rsst.cli.main`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import rsst_subprocess, write_two_classes

pytestmark = pytest.mark.slow  # starts real runs or subprocesses


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """A tiny class-folder dataset: 24 train and 4 test images per class."""
    return write_two_classes(tmp_path_factory.mktemp("images"), train=24, test=4)


def rsst(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``rsst run *args`` in a child process."""
    return rsst_subprocess(cwd, "run", *args)


def tiny_run_args(image_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset", "imagefolder", "--data-dir", str(image_dir), "--arch", "resnet20",
            "--states", "2", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
            "--backend", "torch", "--out", str(out), *extra]


def assert_user_error(result: subprocess.CompletedProcess, *phrases: str, code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: ")
    for phrase in phrases:
        assert phrase in line, (phrase, line)
    return line


@pytest.mark.parametrize(("args", "phrases"), [
    (["--arch", "resnet999"], ["unknown model 'resnet999'", "--arch"]),
    (["--method", "lottery"], ["'--method'", "'lottery' is not one of 'rsst', 'refill', 'imp'",
                               "rsst run --help"]),
    (["--schedule", "x^9"], ["'--schedule'", "'x^9' is not one of", "'exp_custom_exponents'"]),
    (["--criteria", "l3"], ["'--criteria'", "'l3' is not one of", "'saliency'"]),
    (["--rate", "1.5"], ["--rate 1.5", "(0, 1)"]),
    (["--rate", "0"], ["--rate 0.0"]),
    (["--dataset", "mnist"], ["--data-dir"]),
    (["--structure", "head"], ["--structure head", "CNN"]),
    (["--rewind", "epoch:x"], ["--rewind 'epoch:x'"]),
    (["--memory-format", "nhwc"], ["'--memory-format'", "'nhwc' is not one of", "channels_last"]),
    (["--lr", "nan"], ["--lr nan", "finite", "> 0"]),
    (["--lr", "inf"], ["--lr inf", "finite"]),
    (["--lr", "-inf"], ["--lr -inf", "finite"]),
    (["--weight-decay", "nan"], ["--weight-decay nan", "finite"]),
    (["--momentum", "nan"], ["--momentum nan", "finite"]),
    (["--reg-granularity", "inf"], ["--reg-granularity inf", "finite"]),
    (["--exponents", "nan"], ["--exponents nan", "finite"]),
    (["--label-smoothing", "nan"], ["--label-smoothing nan", "finite"]),
    (["--warmup-epochs", "-5"], ["--warmup-epochs must be ≥ 0", "-5"]),
    (["--gamma", "-1"], ["--gamma must be > 0", "-1"]),
    (["--gamma", "0"], ["--gamma must be > 0"]),
    (["--seed", str(2**63)], [f"--seed {2**63} is outside [0, 2^63)"]),
    (["--seed", "-1"], ["--seed -1 is outside [0, 2^63)"]),
    (["--label-smoothing", "1"], ["--label-smoothing 1.0 is outside [0, 1)"]),
    (["--milestones", "80,x"], ["--milestones '80,x'", "80,120"]),
    (["--milestones", "-3"], ["--milestones [-3]", "≥ 0"]),
    (["--epochs", "abc"], ["Invalid value for '--epochs'", "integer", "rsst run --help"]),
    (["--epoch", "3"], ["No such option: --epoch", "--epochs"]),
    (["--preset", "nope"], ["'--preset'", "'nope' is not one of", "'cifar10-resnet20'"]),
], ids=["arch", "method", "schedule", "criteria", "rate-1.5", "rate-0", "dataset", "structure",
        "rewind", "memory-format", "lr-nan", "lr-inf", "lr-minus-inf", "wd-nan", "momentum-nan",
        "reg-inf", "exponents-nan", "smoothing-nan", "warmup-negative", "gamma-negative",
        "gamma-zero", "seed-huge", "seed-negative", "smoothing-1", "milestones-text",
        "milestones-negative", "epochs-text", "unknown-flag", "preset"])
def test_bad_flags(tmp_path, monkeypatch, capsys, args, phrases):
    """In process through `rsst.cli.main` (what the console script calls), to save start-ups."""
    from rsst.cli import main

    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rsst", "run", "--out", str(out), "--train-subset", "64",
                                      "--states", "1", "--epochs", "1", "--device", "cpu", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    result = subprocess.CompletedProcess([], exit_info.value.code, captured.out, captured.err)
    assert_user_error(result, *phrases)
    assert not out.exists()
    assert not (tmp_path / "runs").exists()


def test_unknown_dataset_with_data_dir(tmp_path, image_dir):
    out = tmp_path / "run"
    result = rsst(tmp_path, "--dataset", "mnist", "--data-dir", str(image_dir), "--out", str(out))
    assert_user_error(result, "unknown dataset 'mnist'", "--dataset")
    assert not out.exists()


def test_missing_data_dir(tmp_path):
    out = tmp_path / "run"
    missing = tmp_path / "nowhere"
    result = rsst(tmp_path, "--dataset", "imagefolder", "--data-dir", str(missing),
                  "--out", str(out))
    assert_user_error(result, str(missing), "does not exist")
    assert not out.exists()


def test_data_dir_with_wrong_layout(tmp_path):
    data = tmp_path / "data"
    (data / "stuff").mkdir(parents=True)
    (data / "stuff" / "notes.txt").write_text("not images")
    out = tmp_path / "run"
    result = rsst(tmp_path, "--dataset", "imagefolder", "--data-dir", str(data), "--out", str(out))
    assert_user_error(result, "no train/ folder", "class folders")
    assert not out.exists()
    (data / "train" / "a").mkdir(parents=True)  # class folders without images
    result = rsst(tmp_path, "--dataset", "cifar10", "--data-dir", str(data), "--out", str(out))
    assert_user_error(result, "no class folders with .png/.jpg/.jpeg images")
    assert not out.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, image_dir) -> Path:
    cwd = tmp_path_factory.mktemp("finished")
    out = cwd / "run"
    result = rsst(cwd, *tiny_run_args(image_dir, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_existing_run_dir_needs_resume_or_overwrite(tmp_path, image_dir, finished_run):
    before = sorted(p.name for p in finished_run.iterdir())
    summary = (finished_run / "summary.json").read_text()
    result = rsst(tmp_path, *tiny_run_args(image_dir, finished_run))
    assert_user_error(result, "already exists", "--resume", "--overwrite")
    assert sorted(p.name for p in finished_run.iterdir()) == before
    assert (finished_run / "summary.json").read_text() == summary
    # --overwrite refuses a folder that is not a run directory
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    result = rsst(tmp_path, *tiny_run_args(image_dir, other), "--overwrite")
    assert_user_error(result, "not an rsst run directory")
    assert (other / "precious.txt").read_text() == "keep me"


def test_resume_rejects_extra_flags_and_non_run_dirs(tmp_path, finished_run):
    result = rsst(tmp_path, "--resume", str(finished_run), "--lr", "0.1")
    assert_user_error(result, "--resume", "drop the other flags")
    result = rsst(tmp_path, "--resume", str(tmp_path))
    assert_user_error(result, "not an rsst run directory")


def test_corrupt_checkpoint_on_resume(tmp_path, finished_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    checkpoint = run / "checkpoint.safetensors"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    result = rsst(tmp_path, "--resume", str(run))
    assert_user_error(result, "checkpoint", "corrupt", "--overwrite")
    assert checkpoint.stat().st_size == len(data) // 2  # left for the user to inspect


def test_divergence_names_lambda_and_state_and_keeps_finished_states(tmp_path, image_dir):
    out = tmp_path / "run"
    result = rsst(tmp_path, *tiny_run_args(image_dir, out, "--method", "rsst",
                                           "--reg-granularity", "1e30"))
    line = assert_user_error(result, "diverged", "state 1", "λ", "--reg-granularity", code=3)
    assert "λ = 1e+30" in line or "λ = 1e30" in line
    assert (out / "state_00" / "weights.safetensors").is_file()
    assert (out / "state_00" / "state.json").is_file()
    states = json.loads((out / "summary.json").read_text())["states"]
    assert [s["state"] for s in states] == [0]
    assert not (out / "state_01").exists()


def test_divergence_from_a_huge_learning_rate(tmp_path, image_dir):
    out = tmp_path / "run"
    result = rsst(tmp_path, *tiny_run_args(image_dir, out, "--lr", "1e30"))
    assert_user_error(result, "diverged", "state 0", "--lr", code=3)
    assert not (out / "state_00").exists()
