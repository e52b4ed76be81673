"""Settings as the user meets them: a method's own settings, flags that would have no effect,
presets built from base recipes, ``--print-config``, reruns from a run's config.toml, and the
export form asked twice. In process through `rsst.cli.main`; the training loop is stubbed
except in the one rerun test that needs real run directories."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from rich.console import Console

import rsst.loop
from rsst import cli
from rsst.config import (
    PRESETS,
    RunConfig,
    _with_method_settings,
    build_config,
    load_config,
    not_in_effect,
    save_config,
    settings,
    tomllib,  # tomli before Python 3.11
)
from rsst.methods.catalog import CATALOG, declared_settings
from rsst.settings import Declared, Setting


def call_main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["rsst", *argv])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def captured(monkeypatch, tmp_path) -> list[RunConfig]:
    """`rsst run` stops at the training loop and hands back the config; cwd is an empty dir."""
    configs: list[RunConfig] = []
    monkeypatch.setattr(rsst.loop, "run", lambda config, **kw: configs.append(config))
    monkeypatch.chdir(tmp_path)
    return configs


def one_error_line(err: str, *phrases: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


# -- a method declares its own settings --------------------------------------------------------
def test_method_settings_are_declared_by_their_method():
    owners = {name: methods for name, (_, methods) in declared_settings().items()}
    assert owners["admm_rho"] == owners["admm_interval"] == ("admm",)
    assert owners["grasp_temperature"] == ("grasp",)
    assert owners["synflow_iterations"] == ("synflow",)
    assert owners["score_batches"] == ("snip", "grasp")
    assert owners["schedule"] == owners["fade_epochs"] == ("rsst",)
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for name, (declared, _) in declared_settings().items():
        assert fields[name].default == declared.default
        assert settings()[name] is declared.setting
    assert settings()["admm_rho"].panel == "Schedule/penalty"
    assert settings()["grasp_temperature"].panel == "Method"


def test_a_declared_setting_becomes_field_flag_and_toml_key(monkeypatch, tmp_path):
    """What a new method's `Declared` gives, on a throwaway class: a field with its default and
    metadata after the common ones."""
    extra = Declared("toy_beta", float, 0.5, Setting(help="β.", panel="Method", low=0.0))
    monkeypatch.setattr("rsst.config.declared_settings",
                        lambda: {"toy_beta": (extra, ("toy",))})

    @dataclasses.dataclass
    @_with_method_settings
    class Toy:
        a: int = 1

    toy = Toy()
    assert [f.name for f in dataclasses.fields(Toy)] == ["a", "toy_beta"]
    assert toy.toy_beta == 0.5
    assert dataclasses.fields(Toy)[1].metadata["setting"] is extra.setting


def test_method_settings_in_help_panels_and_config_file(monkeypatch, capsys, tmp_path):
    code, out, _ = call_main(monkeypatch, capsys, "run", "--help")
    assert code == 0
    penalty = out.split("Schedule/penalty")[1].split("╰")[0]
    assert "--admm-rho" in penalty and "--admm-interval" in penalty
    method = out.split("╭─ Method")[1].split("╰")[0]
    assert "--grasp-temperature" in method and "--synflow-iterations" in method
    config = RunConfig(method="admm", admm_rho=0.25, grasp_temperature=50.0)
    save_config(config, tmp_path / "config.toml")
    run = tomllib.loads((tmp_path / "config.toml").read_text())["run"]
    assert run["admm_rho"] == 0.25 and run["grasp_temperature"] == 50.0
    assert load_config(tmp_path / "config.toml") == config


def test_declared_ranges_are_checked(monkeypatch, capsys, captured):
    code, _, err = call_main(monkeypatch, capsys, "run", "--method", "admm", "--admm-rho", "0")
    assert code == 2
    one_error_line(err, "--admm-rho", "> 0")
    assert not list(Path.cwd().iterdir())


# -- no input silently ignored -----------------------------------------------------------------
@pytest.mark.parametrize(("args", "flag", "when"), [
    (["--method", "imp", "--score-batches", "2"], "--score-batches", "--method snip, grasp"),
    (["--admm-rho", "0.1"], "--admm-rho", "--method admm"),
    (["--method", "refill", "--fade-epochs", "2"], "--fade-epochs", "--method rsst"),
    (["--exponents", "3"], "--exponents", "--schedule exp_custom_exponents"),
    (["--optimizer", "adamw", "--momentum", "0.5", "--lr", "0.001"], "--momentum",
     "--optimizer sgd"),
    (["--beta2", "0.99"], "--beta2", "--optimizer adamw"),
    (["--milestones", "1"], "--milestones", "--lr-schedule multistep"),
    (["--method", "imp", "--criteria", "l2"], "--criteria", "refills whole groups"),
    (["--structure", "none", "--fillback-rate", "0.1"], "--fillback-rate", "--structure"),
    (["--patch-size", "2"], "--patch-size", "ViT"),
    (["--method", "random", "--target-remain", "0.5", "--rate", "0.1"], "--rate",
     "without --target-remain"),
])
def test_a_flag_without_effect_is_named_in_one_warning(monkeypatch, capsys, captured, args,
                                                       flag, when):
    code, _, err = call_main(monkeypatch, capsys, "run", *args)
    assert code == 0 and len(captured) == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"warning: {flag} has no effect") and when in lines[0], lines[0]


@pytest.mark.parametrize("args", [
    ["--method", "snip", "--target-remain", "0.5", "--score-batches", "2"],
    ["--method", "grasp", "--target-remain", "0.5", "--score-batches", "2"],
    ["--method", "admm", "--admm-rho", "0.1"],
    ["--schedule", "exp_custom_exponents", "--exponents", "3"],
    ["--lr-schedule", "multistep", "--milestones", "1", "--gamma", "0.5"],
    ["--preset", "cifar10-vit_tiny-adamw", "--data-dir", "d", "--epochs", "1"],
])
def test_flags_in_effect_get_no_warning(monkeypatch, capsys, captured, args):
    code, _, err = call_main(monkeypatch, capsys, "run", *args)
    assert code == 0 and len(captured) == 1 and err.strip() == "", err


def test_data_dir_with_the_synthetic_dataset_is_refused(monkeypatch, capsys, captured):
    code, out, err = call_main(monkeypatch, capsys, "run", "--data-dir", "data")
    assert code == 2 and captured == [] and out == ""
    one_error_line(err, "--data-dir data", "--dataset", "synthetic")
    assert not list(Path.cwd().iterdir())


def test_in_effect_is_decided_on_the_resolved_config():
    config = RunConfig(method="snip")
    assert not_in_effect("score_batches", config) is None
    assert not_in_effect("grasp_temperature", config) == "for --method grasp"
    assert not_in_effect("exponents", RunConfig(schedule="exp_custom_exponents")) is None


# -- presets -----------------------------------------------------------------------------------
#: The eight presets as they were written out before they were built from base recipes.
WRITTEN_OUT = {
    "cifar10-resnet20": dict(
        dataset="cifar10", arch="resnet20", states=20, rate=0.2, criteria="l1", epochs=160,
        batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_schedule="multistep",
        milestones=[80, 120], gamma=0.1, warmup_epochs=0.0, rewind="epoch:8"),
    "cifar100-resnet20": dict(
        dataset="cifar100", arch="resnet20", states=20, rate=0.2, criteria="l1", epochs=160,
        batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_schedule="multistep",
        milestones=[80, 120], gamma=0.1, warmup_epochs=0.0, rewind="epoch:8"),
    "cifar10-resnet18": dict(
        dataset="cifar10", arch="resnet18", states=20, rate=0.2, criteria="l1", epochs=160,
        batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_schedule="multistep",
        milestones=[80, 120], gamma=0.1, warmup_epochs=0.0, rewind="epoch:8"),
    "cifar10-vit_tiny": dict(
        dataset="cifar10", arch="vit_tiny", patch_size=4, structure="head+neuron", states=10,
        rate=0.2, criteria="l1", epochs=100, batch_size=128, lr=0.05, momentum=0.9,
        nesterov=True, weight_decay=1e-4, lr_schedule="cosine", warmup_epochs=5.0,
        label_smoothing=0.1, rewind="init"),
    "cifar10-vit_small": dict(
        dataset="cifar10", arch="vit_small", patch_size=4, structure="head+neuron", states=10,
        rate=0.2, criteria="l1", epochs=100, batch_size=128, lr=0.05, momentum=0.9,
        nesterov=True, weight_decay=1e-4, lr_schedule="cosine", warmup_epochs=5.0,
        label_smoothing=0.1, rewind="init"),
    "cifar10-vit_tiny-adamw": dict(
        dataset="cifar10", arch="vit_tiny", patch_size=4, structure="head+neuron", states=10,
        rate=0.2, criteria="l1", epochs=100, batch_size=128, optimizer="adamw",
        lr=1e-3 * 128 / 512, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05,
        lr_schedule="cosine", warmup_epochs=5.0, label_smoothing=0.1, rewind="init"),
    "cifar10-vit_small-adamw": dict(
        dataset="cifar10", arch="vit_small", patch_size=4, structure="head+neuron", states=10,
        rate=0.2, criteria="l1", epochs=100, batch_size=128, optimizer="adamw",
        lr=1e-3 * 128 / 512, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05,
        lr_schedule="cosine", warmup_epochs=5.0, label_smoothing=0.1, rewind="init"),
    "cifar10-resnet20-research": dict(
        dataset="cifar10", arch="resnet20", states=20, rate=0.2, criteria="l1", epochs=182,
        batch_size=128, lr=0.01, momentum=0.9, weight_decay=1e-4, lr_schedule="multistep",
        milestones=[91, 136], gamma=0.1, warmup_epochs=20.0, rewind="init",
        schedule="exp_custom_exponents", reg_granularity=1.0, exponents=4.0),
}


def test_presets_resolve_to_the_written_out_values(tmp_path):
    assert PRESETS == WRITTEN_OUT  # the same keys (a preset leaves the others alone) and values
    for name, values in WRITTEN_OUT.items():
        config = build_config(preset=name, overrides={"data_dir": str(tmp_path)})
        assert config == RunConfig(**values, preset=name, data_dir=str(tmp_path)), name


def test_presets_are_not_shared_mutable_state(tmp_path):
    config = build_config(preset="cifar10-resnet20", overrides={"data_dir": str(tmp_path)})
    config.milestones.append(999)
    assert PRESETS["cifar10-resnet20"]["milestones"] == [80, 120]
    assert PRESETS["cifar100-resnet20"]["milestones"] == [80, 120]


def test_a_bad_preset_value_names_the_preset_and_the_fixing_flag(monkeypatch, capsys, captured):
    code, _, err = call_main(monkeypatch, capsys, "run", "--preset", "cifar10-resnet20",
                             "--epochs", "1", "--data-dir", "data")
    assert code == 2 and captured == []
    one_error_line(err, "--rewind", "epoch:8", "--preset cifar10-resnet20", "give --rewind")
    assert not list(Path.cwd().iterdir())
    # the same value typed by the user names no preset
    code, _, err = call_main(monkeypatch, capsys, "run", "--rewind", "epoch:8", "--epochs", "1")
    assert code == 2 and "--preset" not in one_error_line(err, "--rewind 'epoch:8'")


def test_a_bad_value_from_a_config_file_names_the_file(monkeypatch, capsys, captured, tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[run]\nrewind = "epoch:5"\nepochs = 5\n')
    code, _, err = call_main(monkeypatch, capsys, "run", "--config", str(path), "--epochs", "2")
    assert code == 2
    one_error_line(err, "--rewind", f"--config {path}", "give --rewind")


def test_preset_help_cites_nothing_outside_the_project(monkeypatch, capsys):
    _, out, _ = call_main(monkeypatch, capsys, "run", "--help")
    assert "SPEC" not in out and "§" not in out


# -- --print-config ----------------------------------------------------------------------------
def test_print_config_prints_toml_and_run_dir_and_creates_nothing(monkeypatch, capsys,
                                                                   captured, tmp_path):
    out_dir = tmp_path / "sub" / "run ü"
    code, out, err = call_main(monkeypatch, capsys, "run", "--preset", "cifar10-resnet20",
                               "--data-dir", "d", "--lr", "0.01", "--out", str(out_dir),
                               "--print-config")
    assert code == 0 and err == "" and captured == []
    assert out.startswith("# rsst run config")
    assert out.rstrip().splitlines()[-1] == f"# run directory: {out_dir}"
    run = tomllib.loads(out)["run"]
    assert run["lr"] == 0.01 and run["epochs"] == 160 and run["preset"] == "cifar10-resnet20"
    assert not out_dir.exists() and not (tmp_path / "sub").exists()
    # the printed text is a config file that gives the same settings
    (tmp_path / "printed.toml").write_text(out)
    assert load_config(tmp_path / "printed.toml") == build_config(
        preset="cifar10-resnet20", overrides={"data_dir": "d", "lr": 0.01, "out": str(out_dir)})


def test_print_config_default_run_dir(monkeypatch, capsys, captured):
    code, out, _ = call_main(monkeypatch, capsys, "run", "--method", "imp", "--print-config")
    assert code == 0
    assert out.rstrip().splitlines()[-1].startswith("# run directory: runs/imp-resnet20-synthetic-")
    assert not list(Path.cwd().iterdir())


def test_print_config_refuses_bad_values(monkeypatch, capsys, captured):
    code, out, err = call_main(monkeypatch, capsys, "run", "--lr", "-1", "--print-config")
    assert code == 2 and out == ""
    one_error_line(err, "--lr")
    assert not list(Path.cwd().iterdir())


# -- export: one answer to one question --------------------------------------------------------
@pytest.mark.parametrize("flags", [["--masked", "--form", "compact"],
                                   ["--compact", "--form", "timm"],
                                   ["--masked", "--form", "masked"]])
def test_export_form_given_twice_is_refused(monkeypatch, capsys, tmp_path, flags):
    target = tmp_path / "model.safetensors"
    code, out, err = call_main(monkeypatch, capsys, "export", str(tmp_path), "-o", str(target),
                               *flags)
    assert code == 2
    one_error_line(err, flags[0], f"--form {flags[2]}", "give one")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_catalog_lists_every_builtin_method_once():
    names = [spec.name for spec in CATALOG]
    assert len(names) == len(set(names))
    assert names[:3] == ["rsst", "refill", "imp"]


# -- a rerun from a run's config.toml ----------------------------------------------------------
QUIET = Console(quiet=True)


@pytest.mark.slow
def test_rerun_from_config_starts_a_new_run_and_emoji_paths_round_trip(monkeypatch, tmp_path,
                                                                       tiny_data):
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "runs ✨" / "first 😀"
    config = build_config(overrides=dict(
        method="refill", states=1, epochs=1, train_subset=64, val_split=32, batch_size=32,
        eval_batch_size=64, device="cpu", backend="torch", out=str(first)))
    rsst.loop.run(config, out=first, console=QUIET, load_data=tiny_data)
    saved = (first / "config.toml").read_text(encoding="utf-8")
    assert saved.startswith("# rsst run config: rerun with `rsst run --config FILE`\n")
    assert load_config(first / "config.toml").out == str(first)  # the emoji path reads back
    before = {p.name: p.stat().st_mtime_ns for p in first.rglob("*")}

    rerun = build_config(config_file=first / "config.toml", overrides={})
    assert rerun.out is None and dataclasses.replace(rerun, out=str(first)) == load_config(
        first / "config.toml")
    second = rsst.loop.run(rerun, console=QUIET, load_data=tiny_data)
    assert second != first and second.parent == Path("runs")
    assert {p.name: p.stat().st_mtime_ns for p in first.rglob("*")} == before
    assert build_config(config_file=first / "config.toml",
                        overrides={"out": str(tmp_path / "x")}).out == str(tmp_path / "x")
    rsst.loop.run(build_config(overrides={}), resume=first, console=QUIET,  # resumes in place
                  load_data=tiny_data)


# -- the distribution's name -------------------------------------------------------------------
def test_install_hints_name_the_distribution_and_the_checkout_form():
    from rsst.errors import DISTRIBUTION, install_hint

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml")
                            .read_text())["project"]
    assert project["name"] == DISTRIBUTION == "rsst-prune"
    assert "rsst" in project["scripts"] and "plot" in project["optional-dependencies"]
    assert any(dep.startswith("tomli-w") for dep in project["dependencies"])
    assert install_hint("plot") == ("pip install 'rsst-prune[plot]' (in a source checkout: "
                                    "pip install -e '.[plot]')")


def test_old_module_name_of_the_scored_baselines_still_imports():
    from rsst.methods import oneshot, scored

    assert oneshot.ScoredMethod is scored.ScoredMethod
    assert oneshot.arena_scores is scored.arena_scores


def test_print_config_of_a_run_to_resume(monkeypatch, capsys, captured, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(RunConfig(method="imp", out=str(run_dir)), run_dir / "config.toml")
    code, out, err = call_main(monkeypatch, capsys, "run", "--resume", str(run_dir),
                               "--print-config")
    assert code == 0 and captured == [] and err == ""
    assert tomllib.loads(out)["run"]["method"] == "imp"
    assert out.rstrip().endswith(f"# run directory: {run_dir}")
    code, out, err = call_main(monkeypatch, capsys, "run", "--resume", str(tmp_path / "no"),
                               "--print-config")
    assert code == 2 and out == ""
    one_error_line(err, "not an rsst run directory")
