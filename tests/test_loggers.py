"""``rsst run --logger``: TensorBoard events, the W&B offline run and the CSV files hold exactly
the metrics.jsonl values; a missing extra stops the run before training; a failing logger warns
once and the run goes on."""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path

import pytest
from helpers import tiny_run
from rich.console import Console

from rsst.config import RunConfig, validate

EPOCHS = 2


def config(**kw) -> RunConfig:
    base = dict(method="rsst", states=2, epochs=EPOCHS, rate=0.3, train_subset=128, val_split=64,
                batch_size=64, eval_batch_size=256, device="cpu", backend="torch")
    return validate(RunConfig(**{**base, **kw}))


def jsonl(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        out = tmp_path_factory.mktemp("logged") / "run"
        return tiny_run(config(), out=out, console=Console(quiet=True),
                        loggers=["tensorboard", "wandb", "csv"],
                        logger_options={"wandb_project": "rsst-test", "wandb_name": "tiny",
                                        "wandb_group": "resnet20-seeds",
                                        "wandb_tags": "pruning, rsst,pruning"})


@pytest.mark.slow
def test_tensorboard_events_equal_metrics(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged_run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    epochs = jsonl(logged_run, "epoch")
    for field in ("train_loss", "train_acc", "val_acc", "lr", "reg_lambda"):
        scalars = events.Scalars(f"epoch/{field}")
        assert [s.step for s in scalars] == [r["state"] * EPOCHS + r["epoch"] for r in epochs]
        assert [s.value for s in scalars] == pytest.approx([r[field] for r in epochs],
                                                           rel=1e-6)
    states = jsonl(logged_run, "state")
    assert [s.value for s in events.Scalars("state/val_acc_before_cut")] == pytest.approx(
        [r["val_acc_before_cut"] for r in states if "val_acc_before_cut" in r], rel=1e-6)
    assert [s.value for s in events.Scalars("state/structured_sparsity_after_cut/channel")] \
        == pytest.approx([states[1]["structured_sparsity_after_cut"]["channel"]], rel=1e-6)
    layer, info = next(iter(states[1]["groups"].items()))
    assert events.Scalars(f"structure/{layer}")[-1].value == info["alive"]


@pytest.mark.slow  # a real tiny run (module fixture)
def test_tensorboard_hparams_hold_the_settings_and_last_state(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(logged_run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    hparams = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
               for k, v in start.hparams.items()}
    assert hparams["method"] == "rsst" and hparams["epochs"] == EPOCHS
    assert hparams["rate"] == pytest.approx(0.3)
    last = jsonl(logged_run, "state")[-1]
    for field in ("val_acc", "test_acc", "remain_weight"):
        (scalar,) = events.Scalars(f"hparams/{field}")
        assert scalar.value == pytest.approx(last[field], rel=1e-6)
        assert scalar.step == last["state"]


@pytest.mark.parametrize(("options", "message"), [
    ({"wandb_group": "g"}, "--wandb-group only apply to W&B: add --logger wandb"),
    ({"wandb_tags": "a,,b"}, "has an empty tag"),
    ({"wandb_tags": "x" * 65}, "at most 64"),
    ({"wandb_group": " "}, "give a name of 1 to 128"),
])
def test_bad_wandb_options_are_refused(options, message):
    from rsst.errors import UserError
    from rsst.trackers import check_loggers

    names = [] if "wandb_group" in options and options["wandb_group"] == "g" else ["wandb"]
    with pytest.raises(UserError, match=message):
        check_loggers(names, options)


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B transaction log (a LevelDB-style log: 32 KiB blocks,
    7-byte chunk headers crc32 / length / type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, records, pending = path.read_bytes(), 7, 32768, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    parsed = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed


@pytest.mark.slow
def test_wandb_offline_run_equals_metrics(logged_run):
    (log,) = logged_run.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(log)
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    epoch_rows = [h for h in history if "epoch/train_loss" in h]
    epochs = jsonl(logged_run, "epoch")
    assert [h["epoch/train_loss"] for h in epoch_rows] == [r["train_loss"] for r in epochs]
    assert [h["epoch/val_acc"] for h in epoch_rows] == [r["val_acc"] for r in epochs]
    assert [h["epoch/step"] for h in epoch_rows] == [r["state"] * EPOCHS + r["epoch"]
                                                     for r in epochs]
    state_rows = [h for h in history if "state/remain_weight" in h]
    states = jsonl(logged_run, "state")
    assert [h["state/remain_weight"] for h in state_rows] == [r["remain_weight"] for r in states]
    assert state_rows[1]["state/val_acc_before_cut"] == states[1]["val_acc_before_cut"]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == "tiny" and run.project == "rsst-test"
    assert run.run_group == "resnet20-seeds"
    assert list(run.tags) == ["pruning", "rsst"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    config.update({item.key: json.loads(item.value_json) for r in records
                   if r.WhichOneof("record_type") == "config" for item in r.config.update})
    assert config["method"] == "rsst" and config["epochs"] == EPOCHS


@pytest.mark.slow
def test_csv_rows_equal_metrics(logged_run):
    with open(logged_run / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = jsonl(logged_run, "epoch")
    assert [float(r["epoch/train_acc"]) for r in rows] == [r["train_acc"] for r in epochs]
    with open(logged_run / "states.csv") as f:
        rows = list(csv.DictReader(f))
    states = jsonl(logged_run, "state")
    assert [float(r["state/remain_weight"]) for r in rows] == [r["remain_weight"]
                                                                for r in states]
    assert rows[0]["state/val_acc_before_cut"] == ""  # state 0 has no cut
    assert float(rows[1]["state/val_acc_before_cut"]) == states[1]["val_acc_before_cut"]


def test_missing_extra_fails_before_training(tmp_path, monkeypatch, capsys):
    import importlib.util

    from rsst.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["rsst", "run", "--logger", "csv", "--logger", "wandb",
                                      "--out", str(out), "--device", "cpu"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["error: --logger wandb needs the wandb package, which is not installed: "
                     "pip install 'rsst-prune[wandb]' (in a source checkout: pip install -e "
                     "'.[wandb]')"]
    assert not out.exists()


@pytest.mark.slow
def test_failing_logger_warns_once_and_the_run_goes_on(tmp_path, monkeypatch):
    from rsst.loggers import CsvLogger

    calls = []

    def broken(self, record):
        calls.append(record)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CsvLogger, "log_epoch", broken)
    console = Console(record=True, width=200)
    run_dir = tiny_run(config(states=2, epochs=1), out=tmp_path / "run", console=console,
                       loggers=["csv"])
    text = console.export_text()
    assert text.count("the csv logger failed") == 1
    assert "No space left on device" in text and "the run goes on" in text
    assert len(calls) == 1  # dropped after its first failure
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["state"] for r in summary["states"]] == [0, 1]
    assert not (run_dir / "states.csv").exists()


@pytest.mark.slow
def test_csv_after_a_resume_keeps_the_rows_written_before_it(tmp_path):
    """A resumed run's CsvLogger is new, but its CSVs hold every metrics.jsonl record."""
    from rsst.loggers import CsvLogger
    from rsst.rundir import append_metrics

    epochs = [{"kind": "epoch", "state": 0, "epoch": e, "train_loss": 2.0 - e / 10,
               "val_acc": 0.1 * e} for e in (1, 2, 3)]
    for record in epochs[:2]:  # written before the kill
        append_metrics(tmp_path, record)
    logger = CsvLogger(tmp_path)  # the resumed process
    append_metrics(tmp_path, epochs[2])
    logger.log_epoch(epochs[2])
    with open(tmp_path / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["epoch/train_loss"]) for r in rows] == [r["train_loss"] for r in epochs]
    assert [float(r["epoch/val_acc"]) for r in rows] == [r["val_acc"] for r in epochs]
