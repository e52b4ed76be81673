"""The `rsst run` flags are generated from `RunConfig`'s field metadata: help panels, defaults and
choice lists shown, every field settable, flags layered over file and preset as given; usage
errors of every command are one line; output to a pipe is not cut at 80 columns."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.console import Console
from rich.table import Table

import rsst.loop
from rsst import cli
from rsst.config import (
    BACKENDS,
    LR_SCHEDULES,
    MEMORY_FORMATS,
    METHODS,
    PANELS,
    PRESETS,
    RunConfig,
    save_config,
    settings,
)
from rsst.schedules import SCHEDULES


def run_command():
    return typer.main.get_command(cli.app).commands["run"]


def call_main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["rsst", *argv])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def captured_configs(monkeypatch) -> list[RunConfig]:
    """`rsst run` stops at the training loop and hands back the config it would run."""
    configs: list[RunConfig] = []
    monkeypatch.setattr(rsst.loop, "run", lambda config, **kw: configs.append(config))
    return configs


def help_text(monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = call_main(monkeypatch, capsys, "run", "--help")
    assert code == 0
    return out


def test_every_field_has_a_flag():
    options = {p.name: p for p in run_command().params}
    for f in dataclasses.fields(RunConfig):
        assert f.name in options, f.name
        assert "--" + f.name.replace("_", "-") in options[f.name].opts
    assert {"config", "resume", "overwrite"} <= set(options)
    # the three that had no flag before the CLI was generated
    assert {"amp", "optimizer", "eval_batch_size"} <= set(options)


def test_help_shows_panels_defaults_and_choices(monkeypatch, capsys):
    text = help_text(monkeypatch, capsys)
    titles = re.findall(r"╭─ (.+?) ─", text)
    assert [t for t in titles if t in PANELS] == list(PANELS)
    for choices in (METHODS, SCHEDULES, BACKENDS, MEMORY_FORMATS, LR_SCHEDULES, ("auto", "cpu",
                                                                                  "cuda")):
        if len("|".join(choices)) > cli._LONGEST_CHOICE_COLUMN:  # listed in the help text
            assert all(c in text for c in choices), choices
        else:
            assert "<" + "|".join(choices) + ">" in text, choices
    for name in PRESETS:
        assert name in text
    assert "<bool>" not in text
    # on/off flags show --x alone and their default as on/off (--no-x named where it is on)
    for default in ("[default: 0.05]", "[default: rsst]", "[default: (on; --no-amp turns it "
                    "off)]", "[default: (off)]", "[default: 512]", "[default: cosine]"):
        assert default in text, default
    assert "--no-amp" in text and "--optimizer" in text and "--eval-batch-size" in text
    assert "--no-compile" not in text and "--no-x" in text  # the docstring names the form
    # every option shows a default
    options = [line for line in text.splitlines() if re.match(r"│ --(?!help)", line)]
    assert len(options) >= len(dataclasses.fields(RunConfig))
    assert text.count("[default:") >= len(dataclasses.fields(RunConfig)) + 3


def test_metadata_is_the_one_source_of_choices():
    assert settings()["method"].choice_list() == METHODS
    assert settings()["preset"].choice_list() == tuple(PRESETS)



@pytest.mark.slow
@pytest.mark.parametrize(("words", "expected"), [
    ("rsst run --method ", list(METHODS)),
    ("rsst run --schedule exp", ["exp", "exp_custom_exponents"]),
    ("rsst run --preset cifar10-vit", ["cifar10-vit_tiny", "cifar10-vit_small",
                                      "cifar10-vit_tiny-adamw", "cifar10-vit_small-adamw"]),
])
def test_choices_complete_on_tab(words, expected):
    """What bash's completion script asks `rsst` for (`--install-completion` installs it)."""
    env = {**os.environ, "_RSST_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-c", "from rsst.cli import main; main()"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected


def test_flags_given_override_file_and_preset(tmp_path, monkeypatch, capsys, captured_configs):
    path = tmp_path / "config.toml"
    save_config(RunConfig(lr=0.3, states=7, momentum=0.5, amp=False), path)
    code, _, err = call_main(monkeypatch, capsys, "run", "--config", str(path), "--lr", "0.05",
                             "--milestones", "80,120", "--eval-batch-size", "64",
                             "--optimizer", "sgd", "--no-amp")
    assert code == 0, err
    config = captured_configs[-1]
    assert config.lr == 0.05  # a flag equal to the default still beats the file
    assert config.states == 7 and config.momentum == 0.5  # not given: the file's value stays
    assert config.milestones == [80, 120] and config.eval_batch_size == 64
    assert config.amp is False
    code, _, err = call_main(monkeypatch, capsys, "run", "--config", str(path), "--preset",
                             "cifar10-resnet20", "--data-dir", "/d", "--states", "3", "--amp")
    assert code == 0, err
    config = captured_configs[-1]
    assert config.states == 3 and config.amp is True  # flags beat the preset
    assert config.lr == PRESETS["cifar10-resnet20"]["lr"]  # preset beats file
    assert config.momentum == 0.9 and config.preset == "cifar10-resnet20"
    code, _, err = call_main(monkeypatch, capsys, "run")
    assert code == 0, err
    assert captured_configs[-1] == RunConfig()  # no flag: the dataclass defaults exactly


@pytest.mark.parametrize(("line", "phrases"), [
    ('lr = "fast"', ["lr must be a number", '"fast"']),
    ("states = 2.5", ["states must be an integer", "2.5"]),
    ('milestones = "80,120"', ["milestones must be a list of integers", '"80,120"']),
    ('amp = "yes"', ["amp must be true or false", '"yes"']),
    ("states = true", ["states must be an integer", "true"]),
    ("milestones = [80, true]", ["milestones must be a list of integers"]),
    ('seed = "0"', ["seed must be an integer"]),
    ("lr = nan", ["--lr nan", "finite"]),
])
def test_config_file_values_are_type_checked(tmp_path, monkeypatch, capsys, line, phrases):
    path = tmp_path / "config.toml"
    path.write_text(f"[run]\n{line}\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code, _, err = call_main(monkeypatch, capsys, "run", "--config", str(path), "--out", str(out))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_ints_are_floats_in_a_config_file(tmp_path, monkeypatch, capsys, captured_configs):
    path = tmp_path / "config.toml"
    path.write_text("[run]\nlr = 1\nweight_decay = 0\n")
    code, _, err = call_main(monkeypatch, capsys, "run", "--config", str(path))
    assert code == 0, err
    assert captured_configs[-1].lr == 1.0 and isinstance(captured_configs[-1].lr, float)


def test_config_directory_is_one_line(tmp_path, monkeypatch, capsys):
    code, _, err = call_main(monkeypatch, capsys, "run", "--config", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "directory" in err
    from rsst.config import load_config
    from rsst.errors import UserError

    with pytest.raises(UserError, match="is a directory"):
        load_config(tmp_path)


@pytest.mark.parametrize(("argv", "phrases"), [
    (["run", "--epochs", "abc"], ["Invalid value for '--epochs'"]),
    (["run", "--epoch", "3"], ["No such option: --epoch", "--epochs"]),
    (["bench", "--suite", "nope"], ["'--suite'", "'nope'", "rsst bench --help"]),
    (["export"], ["Missing argument", "rsst export --help"]),
    (["eval", "x.safetensors", "--batch-size", "x"], ["'--batch-size'"]),
    (["evaluate"], ["No such command 'evaluate'"]),
    (["--verbose"], ["No such option: --verbose"]),
])
def test_usage_errors_are_one_line(monkeypatch, capsys, argv, phrases):
    code, out, err = call_main(monkeypatch, capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err and "╭" not in err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def test_install_completion_is_offered(monkeypatch, capsys):
    code, out, _ = call_main(monkeypatch, capsys, "--help")
    assert code == 0 and "--install-completion" in out


def wide_table() -> Table:
    table = Table(title="states")
    for name in ("state", "val acc", "test acc", "remaining", "params", "channels", "lambda",
                 "time", "model", "epochs", "lr", "notes"):
        table.add_column(name)
    table.add_row("0", "100.00", "99.87", "100.00", "1,234,567", "100.00", "2.0", "18.8",
                  "resnet20_wide", "160", "0.05", "rewind epoch:8")
    return table


def test_console_off_a_terminal_keeps_numbers_whole(monkeypatch, capsys):
    monkeypatch.delenv("COLUMNS", raising=False)
    narrow = io.StringIO()
    Console(file=narrow, width=80).print(wide_table())
    assert "1,234,567" not in narrow.getvalue()  # what rich does at 80 columns
    console = cli.make_console()
    assert not console.is_terminal
    console.print(wide_table())
    text = capsys.readouterr().out
    for cell in ("1,234,567", "resnet20_wide", "rewind epoch:8", "99.87", "100.00"):
        assert cell in text, cell
    monkeypatch.setenv("COLUMNS", "90")  # an explicit width is the user's choice
    assert cli.make_console().width == 90


def test_bench_json_goes_to_stdout_and_json_out_to_a_file(tmp_path, monkeypatch, capsys):
    import rsst_bench

    doc = {"env": {"device": "cpu"}, "results": [{"suite": "update", "median_ms": float("nan"),
                                                   "model": "resnet20"}]}

    def fake_run_suites(suites, device, *, json_path=None, console=None, **kw):
        console.print("a table")
        if json_path is not None:
            from rsst_bench.common import write_json

            write_json(json_path, doc["env"], doc["results"])
        return doc

    monkeypatch.setattr(rsst_bench, "run_suites", fake_run_suites)
    target = tmp_path / "out" / "bench.json"
    code, out, err = call_main(monkeypatch, capsys, "bench", "--device", "cpu", "--json",
                               "--json-out", str(target))
    assert code == 0, err
    printed = json.loads(out)  # stdout holds only the JSON; the table went to stderr
    assert "a table" in err
    assert printed == json.loads(target.read_text())
    assert printed["results"][0]["median_ms"] is None  # NaN is not JSON: null
    code, out, err = call_main(monkeypatch, capsys, "bench", "--device", "cpu")
    assert code == 0 and "a table" in out
    assert Path(target).exists()
