"""Optional experiment loggers for ``rsst run --logger tensorboard|wandb|csv`` (repeatable).

The run directory's own files (metrics.jsonl, summary.json) stay the record of a run; a logger
mirrors the same records elsewhere. Every epoch record (train loss/acc, val/test acc, lr, λ, ...)
goes under ``epoch/<field>`` at step ``state * epochs + epoch`` (``epochs`` counts a state's
--fade-epochs too, so extra fade epochs never share a step with the next state); every state
record under
``state/<field>`` at step ``state`` (nested fields as ``state/<field>/<key>``), and the structure
the state delivers as ``structure/<layer>`` (groups alive). A logger that is asked for but not
installed is a `UserError` naming its extra before any training; a logger that fails during the
run (disk, network) warns once and is dropped: logging never loses a run.

W&B runs carry ``--wandb-group`` (seeds of one setting side by side) and ``--wandb-tags``;
TensorBoard gets the run's settings and its last state's metrics in the HPARAMS tab.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsst.atomic import atomic_write_text
from rsst.choices import LOGGERS
from rsst.errors import UserError, install_hint
from rsst.rundir import read_metrics

_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}


WANDB_TAG_LIMIT = 64  # characters: W&B refuses longer tags
WANDB_GROUP_LIMIT = 128  # characters: W&B's limit on a group name


def wandb_tags(text: str | None) -> list[str] | None:
    """``--wandb-tags a,b``: the tags in order, deduplicated; an empty or over-long tag is a
    `UserError`."""
    if text is None:
        return None
    tags = [tag.strip() for tag in text.split(",")]
    for tag in tags:
        if not tag:
            raise UserError(f"--wandb-tags {text!r} has an empty tag: give comma-separated "
                            "names, e.g. --wandb-tags resnet20,baseline")
        if len(tag) > WANDB_TAG_LIMIT:
            raise UserError(f"--wandb-tags: {tag[:20]!r}... is {len(tag)} characters; W&B takes "
                            f"at most {WANDB_TAG_LIMIT} per tag")
    return list(dict.fromkeys(tags))


def check_logger_options(chosen: Sequence[str], options: dict[str, Any]) -> None:
    """W&B options need ``--logger wandb`` (an option without it would be silently ignored), and
    their values must be ones W&B accepts."""
    given = [key for key, value in options.items() if key.startswith("wandb_")
             and value is not None]
    if given and "wandb" not in chosen:
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        raise UserError(f"{flags} only apply to W&B: add --logger wandb, or drop "
                        f"{'them' if len(given) > 1 else 'it'}")
    group = options.get("wandb_group")
    if group is not None and not (0 < len(group.strip()) <= WANDB_GROUP_LIMIT):
        raise UserError(f"--wandb-group {group!r}: give a name of 1 to {WANDB_GROUP_LIMIT} "
                        "characters (runs of one group are shown together, e.g. the seeds of "
                        "one setting)")
    wandb_tags(options.get("wandb_tags"))


def check_loggers(names: Sequence[str], options: dict[str, Any] | None = None) -> list[str]:
    """The requested logger names, deduplicated; unknown or uninstalled ones, and logger
    options that do not fit them (`check_logger_options`), are a `UserError`."""
    chosen: list[str] = []
    for name in names:
        name = name.strip().lower()
        if name not in LOGGERS:
            raise UserError(f"unknown --logger {name!r}: choose tensorboard, wandb or csv "
                            "(repeat the flag for several)")
        package = _PACKAGE.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise UserError(f"--logger {name} needs the {package} package, which is not "
                            f"installed: {install_hint(name)}")
        if name not in chosen:
            chosen.append(name)
    check_logger_options(chosen, options or {})
    return chosen


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def flatten(prefix: str, record: dict[str, Any]) -> dict[str, float]:
    """Numeric fields of a record as ``prefix/field`` (dicts one level deeper); ``groups``
    becomes ``structure/<layer>`` (groups alive); strings and nulls are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "kind":
            continue
        if key == "groups" and isinstance(value, dict):
            for layer, info in value.items():
                if isinstance(info, dict) and _number(info.get("alive")) is not None:
                    out[f"structure/{layer}"] = float(info["alive"])
        elif isinstance(value, dict):
            for sub, v in value.items():
                if _number(v) is not None:
                    out[f"{prefix}/{key}/{sub}"] = _number(v)  # type: ignore[assignment]
        elif _number(value) is not None:
            out[f"{prefix}/{key}"] = _number(value)  # type: ignore[assignment]
    return out


def hparam_values(config: dict[str, Any]) -> dict[str, float | str | bool]:
    """The run's settings as TensorBoard hparams take them: numbers, strings and booleans as
    they are, lists as text, unset (None) settings left out."""
    out: dict[str, float | str | bool] = {}
    for key, value in config.items():
        if isinstance(value, bool | str):
            out[key] = value
        elif isinstance(value, int | float):
            out[key] = value if math.isfinite(value) else str(value)
        elif isinstance(value, list | tuple):
            out[key] = ",".join(str(v) for v in value)
    return out


HPARAM_METRICS = ("val_acc", "test_acc", "val_acc_before_cut", "test_acc_before_cut",
                  "remain_weight", "remain_weight_after_cut")


class TensorBoardLogger:
    """Scalars through ``torch.utils.tensorboard.SummaryWriter`` in ``RUN_DIR/tensorboard``;
    each state record also as JSON text; at the end, the settings and the last state's
    accuracies and remaining weights in the HPARAMS tab (as ``hparams/<field>``)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], epochs: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.epochs = epochs
        self.config = config
        self.last_state: dict[str, Any] | None = None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log_epoch(self, record: dict[str, Any]) -> None:
        step = record["state"] * self.epochs + record["epoch"]
        for tag, value in flatten("epoch", record).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def log_state(self, record: dict[str, Any]) -> None:
        for tag, value in flatten("state", record).items():
            self.writer.add_scalar(tag, value, record["state"])
        self.writer.add_text("state/record", "```\n" + json.dumps(record, indent=1) + "\n```",
                             record["state"])
        self.writer.flush()
        self.last_state = record

    def _write_hparams(self) -> None:
        """The hparams plugin's three summaries in this run's own event file (``add_hparams``
        would open a sub-run), and the metrics as scalars it reads back by tag."""
        from torch.utils.tensorboard.summary import hparams

        if self.last_state is None:
            return
        metrics = {f"hparams/{key}": float(self.last_state[key]) for key in HPARAM_METRICS
                   if _number(self.last_state.get(key)) is not None}
        experiment, session_start, session_end = hparams(hparam_values(self.config), metrics)
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, self.last_state["state"])

    def close(self) -> None:
        try:
            self._write_hparams()
        finally:
            self.writer.close()


class WandbLogger:
    """A W&B run (``WANDB_MODE=offline`` works without an account or network) with the run's
    config; epoch metrics stepped by ``epoch/step``, state metrics by ``state/state``."""

    def __init__(self, run_dir: Path, config: dict[str, Any], epochs: int, *,
                 project: str | None, entity: str | None, name: str | None,
                 group: str | None = None, tags: str | None = None) -> None:
        import wandb

        self.epochs = epochs
        self.run = wandb.init(project=project or "rsst", entity=entity,
                              name=name or run_dir.name, config=config, dir=str(run_dir),
                              group=group, tags=wandb_tags(tags), reinit="create_new")
        self.run.define_metric("epoch/step")
        self.run.define_metric("epoch/*", step_metric="epoch/step")
        self.run.define_metric("state/state")
        for prefix in ("state/*", "structure/*"):
            self.run.define_metric(prefix, step_metric="state/state")

    def log_epoch(self, record: dict[str, Any]) -> None:
        step = record["state"] * self.epochs + record["epoch"]
        self.run.log({**flatten("epoch", record), "epoch/step": step})

    def log_state(self, record: dict[str, Any]) -> None:
        self.run.log(flatten("state", record))

    def close(self) -> None:
        self.run.finish()


class CsvLogger:
    """``RUN_DIR/epochs.csv`` and ``RUN_DIR/states.csv``: one row per metrics.jsonl record, one
    column per flattened field. Each write rebuilds the file from metrics.jsonl (atomically), so
    a resumed run's CSVs hold the rows from before the resume too, and never a trimmed one."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def _write(self, kind: str) -> None:
        rows = [flatten(kind, r) for r in read_metrics(self.run_dir) if r.get("kind") == kind]
        columns = list(dict.fromkeys(key for r in rows for key in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.run_dir / f"{kind}s.csv", buffer.getvalue())

    def log_epoch(self, record: dict[str, Any]) -> None:
        self._write("epoch")

    def log_state(self, record: dict[str, Any]) -> None:
        self._write("state")

    def close(self) -> None:
        pass


class Loggers:
    """The requested loggers behind one call each; a failing logger warns once and is dropped."""

    def __init__(self, names: Sequence[str], run_dir: Path, config: dict[str, Any],
                 epochs: int, warn: Any, *, wandb_project: str | None = None,
                 wandb_entity: str | None = None, wandb_name: str | None = None,
                 wandb_group: str | None = None, wandb_tags: str | None = None) -> None:
        self.warn = warn
        self.active: list[tuple[str, Any]] = []
        options = {"wandb_project": wandb_project, "wandb_entity": wandb_entity,
                   "wandb_name": wandb_name, "wandb_group": wandb_group,
                   "wandb_tags": wandb_tags}
        for name in check_loggers(names, options):
            try:
                if name == "tensorboard":
                    logger: Any = TensorBoardLogger(run_dir, config, epochs)
                elif name == "wandb":
                    logger = WandbLogger(run_dir, config, epochs, project=wandb_project,
                                         entity=wandb_entity, name=wandb_name,
                                         group=wandb_group, tags=wandb_tags)
                else:
                    logger = CsvLogger(run_dir)
            except Exception as exc:  # noqa: BLE001 - logging never stops a run
                self._failed(name, exc)
                continue
            self.active.append((name, logger))

    def _failed(self, name: str, exc: BaseException) -> None:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.warn(f"the {name} logger failed ({detail[:200]}); the run goes on without it, "
                  "its metrics.jsonl is complete")

    def _each(self, method: str, *args: Any) -> None:
        for entry in list(self.active):
            name, logger = entry
            try:
                getattr(logger, method)(*args)
            except Exception as exc:  # noqa: BLE001 - logging never stops a run
                self.active.remove(entry)
                self._failed(name, exc)

    def log_epoch(self, record: dict[str, Any]) -> None:
        self._each("log_epoch", record)

    def log_state(self, record: dict[str, Any]) -> None:
        self._each("log_state", record)

    def close(self) -> None:
        self._each("close")
        self.active = []
