"""config.toml: every field round-trips, presets and flags layer in order, bad files are errors."""

from __future__ import annotations

import dataclasses
import math

import pytest

from rsst.config import PRESETS, RunConfig, build_config, load_config, save_config
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
