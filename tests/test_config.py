"""config.toml: every field round-trips, presets and flags layer in order, bad files are errors."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from rsst.config import (
    PRESETS,
    RunConfig,
    build_config,
    load_config,
    save_config,
    settings,
    validate,
)
from rsst.errors import UserError


def test_round_trip_of_every_field(tmp_path):
    config = RunConfig(
        method="refill", arch="timm:vit_tiny_patch16_224", data_dir='C:\\data "cifar" ünï',
        milestones=[80, 120], weight_decay=5e-10, block_loss_grad=True, nesterov=True,
        reg_granularity=math.inf, img_size=32, train_subset=100, schedule="x^2",
    )
    path = tmp_path / "config.toml"
    save_config(config, path)
    loaded = load_config(path)
    assert dataclasses.asdict(loaded) == dataclasses.asdict(config)


def test_none_values_stay_default(tmp_path):
    path = tmp_path / "config.toml"
    save_config(RunConfig(), path)
    assert "data_dir" not in path.read_text()
    assert load_config(path) == RunConfig()


def test_layering_defaults_file_preset_flags(tmp_path):
    path = tmp_path / "config.toml"
    save_config(RunConfig(lr=0.3, states=7), path)
    config = build_config(config_file=path, preset="cifar10-resnet20",
                          overrides={"states": 2, "data_dir": "/d"})
    assert config.states == 2  # flag beats preset
    assert config.lr == PRESETS["cifar10-resnet20"]["lr"]  # preset beats file
    assert config.preset == "cifar10-resnet20"


def test_bad_files_are_user_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nlr = ")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[run]\nlearning_rate = 0.1\n")
    with pytest.raises(UserError, match="unknown key"):
        load_config(unknown)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


FLOAT_FIELDS = [f.name for f in dataclasses.fields(RunConfig) if f.type in ("float", float)]


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_field_must_be_finite(name, value):
    assert settings()[name].finite  # no field opts out today
    with pytest.raises(UserError, match=f"--{name.replace('_', '-')} .*finite"):
        validate(dataclasses.replace(RunConfig(), **{name: value}))


@pytest.mark.parametrize(("changes", "message"), [
    ({"gamma": -1.0}, "--gamma must be > 0"),
    ({"warmup_epochs": -5.0}, "--warmup-epochs must be ≥ 0"),
    ({"seed": 2**63}, r"--seed 9223372036854775808 is outside \[0, 2\^63\)"),
    ({"seed": -1}, "--seed -1 is outside"),
    ({"rate": 1.0}, r"--rate 1.0 is outside \(0, 1\): it is the fraction"),
    ({"fillback_rate": 1.5}, r"--fillback-rate 1.5 is outside \[0, 1\]"),
    ({"states": 0}, "--states must be ≥ 1"),
    ({"img_size": 4}, "--img-size must be ≥ 8"),
    ({"states": True}, "--states: states must be an integer, not true"),
    ({"lr": "fast"}, '--lr: lr must be a number, not "fast"'),
    ({"milestones": (80, 120)}, "milestones must be a list of integers"),
    ({"method": "lottery"}, "unknown method 'lottery': choose one of rsst, refill, imp"),
    ({"preset": "nope"}, "unknown preset 'nope'"),
])
def test_metadata_drives_validation(changes, message):
    with pytest.raises(UserError, match=message):
        validate(dataclasses.replace(RunConfig(), **changes))


def test_valid_edges_pass():
    validate(RunConfig(seed=2**63 - 1, fillback_rate=1.0, warmup_epochs=0.0, lr=1, momentum=0,
                       label_smoothing=0.0, val_split=0, img_size=8))


def test_seed_range_is_what_torch_accepts():
    import torch

    top = settings()["seed"].high
    torch.Generator().manual_seed(int(top) - 1)
    torch.Generator().manual_seed(int(top))  # the val loader seeds with seed + 1
    with pytest.raises((RuntimeError, ValueError, OverflowError)):
        torch.manual_seed(2**64)


def test_file_types_are_checked_and_ints_become_floats(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[run]\nlr = 1\nstates = 4\nmilestones = [80, 120]\n")
    config = load_config(path)
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.milestones == [80, 120]
    for line, message in (('lr = "fast"', 'lr must be a number, not "fast"'),
                          ("states = 2.5", "states must be an integer, not 2.5"),
                          ('milestones = "80,120"', "milestones must be a list of integers"),
                          ('amp = "yes"', 'amp must be true or false, not "yes"'),
                          ("epochs = false", "epochs must be an integer, not false"),
                          ("data_dir = 3", "data_dir must be a string, not 3")):
        path.write_text(f"[run]\n{line}\n")
        with pytest.raises(UserError, match=re.escape(f"config file {path}: {message}")):
            load_config(path)
    with pytest.raises(UserError, match="is a directory"):
        load_config(tmp_path)
