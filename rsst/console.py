"""What a researcher watches: the live progress bar, one line per epoch and per state, the state
table, and quieting library noise that is not the user's business.

The same lines reach a terminal and a pipe or log file: the progress bar is transient (a
terminal only), so every epoch also prints one line that stays, and every state one row; the
full state table is printed once, at the end of a run.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rsst.atomic import append_line, atomic_write_json, json_text
from rsst.statefile import accuracy


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a line is either whole or absent)."""
    append_line(path, json_text(record))


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    atomic_write_json(path, data)


def training_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.fields[label]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.3f}  "
                   "λ {task.fields[lam]:.3g}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a pipe or log file gets the epoch lines alone
    )


SHORT = {"channel": "ch.", "head": "heads", "neuron": "neur.", "embed": "embed"}

__all__ = ["SHORT", "append_jsonl", "block_table", "epoch_line", "quiet_library_noise",
           "state_line", "state_table", "training_progress", "write_json"]

#: Library messages that say nothing a user can act on: (logger name, message start).
_NOISY_LOGS = (("torch.utils.cpp_extension", "No CUDA runtime is found"),)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_library_noise() -> None:
    """Drop torch's "No CUDA runtime is found, using CUDA_HOME=..." (logged when a CPU-only
    machine has a CUDA toolkit and torch.compile or triton load `torch.utils.cpp_extension`) and
    similar warnings about the libraries' own setup. Idempotent."""
    for name, prefix in _NOISY_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
    warnings.filterwarnings("ignore", message=r"No CUDA runtime is found")


def _num(value: Any, fmt: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, fmt)
    return "–"


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One epoch as one plain line: state, epoch (or fade epoch), train loss and accuracy, val
    accuracy, learning rate, λ and seconds."""
    epoch = record["epoch"]
    where = (f"fade epoch {epoch - epochs}" if record.get("fade")
             else f"epoch {epoch}/{epochs}")
    return (f"state {record['state']} · {where} · loss {_num(record.get('train_loss'), '.4f')}"
            f" · acc {_pct(record.get('train_acc'))}% · val {_pct(record.get('val_acc'))}%"
            f" · lr {_num(record.get('lr'), '.4g')} · λ {_num(record.get('reg_lambda'), '.3g')}"
            f" · {_num(record.get('seconds'), '.1f')} s")


def state_line(record: dict[str, Any], kinds: list[str]) -> str:
    """One finished state as one plain line (its row of `state_table`)."""
    sparsity = record.get("structured_sparsity_after_cut", record.get("structured_sparsity", {}))
    remain = record.get("remain_weight_after_cut", record.get("remain_weight"))
    before = accuracy(record, "val", before_cut=True)
    parts = [f"state {record['state']} done", f"val {_pct(accuracy(record, 'val'))}%",
             f"test {_pct(accuracy(record, 'test'))}%"]
    if before is not None:
        parts.append(f"val before cut {_pct(before)}%")
    parts.append(f"remain {_pct(remain)}%")
    parts += [f"{SHORT[k]} cut {_pct(sparsity.get(k))}%" for k in kinds]
    parts += [f"params {_pct(record.get('params_ratio'))}%",
              f"MACs {_pct(record.get('macs_ratio'))}%"]
    if record.get("latency_ratio") is not None:  # --latency: measured, compacted / dense
        parts.append(f"latency {_pct(record['latency_ratio'])}%")
    parts.append(f"{_num(record.get('seconds'), '.1f')} s")
    return " · ".join(parts)


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{100 * value:.2f}")


def state_table(records: list[dict[str, Any]], kinds: list[str]) -> Table:
    """One row per finished state: accuracies of the network the state saved (after the RSST
    cut), the trained network's before the cut, sparsity, λ and time."""
    table = Table(title="states · accuracy, remaining weights, pruned groups, compacted "
                  "params and MACs in %")
    headers = ["state", "val", "test", "val before cut", "remain",
               *[f"{SHORT[k]} cut" for k in kinds], "params", "MACs", "λ", "s"]
    for header in headers:
        table.add_column(header, justify="right")
    for r in records:
        # the network the state delivers: after the RSST cut when there was one
        sparsity = r.get("structured_sparsity_after_cut", r.get("structured_sparsity", {}))
        remain = r.get("remain_weight_after_cut", r.get("remain_weight"))
        table.add_row(
            str(r["state"]), _pct(accuracy(r, "val")), _pct(accuracy(r, "test")),
            _pct(accuracy(r, "val", before_cut=True)), _pct(remain),
            *[_pct(sparsity.get(k)) for k in kinds],
            _pct(r.get("params_ratio")), _pct(r.get("macs_ratio")),
            f"{r.get('reg_lambda', 0.0):.3g}", f"{r.get('seconds', 0.0):.1f}",
        )
    return table


def block_table(record: dict[str, Any]) -> Table:
    """Heads and MLP neurons kept per transformer block in one state's network."""
    blocks: dict[str, dict[str, str]] = {}
    for unit, info in record.get("groups", {}).items():
        if info["kind"] in ("head", "neuron"):
            block = unit.rsplit(".", 1)[0]
            blocks.setdefault(block, {})[info["kind"]] = f"{info['alive']}/{info['total']}"
    table = Table(title=f"state {record['state']}: kept per block")
    for header in ("block", "heads", "neurons"):
        table.add_column(header, justify="right")
    for block, kept in blocks.items():
        table.add_row(block, kept.get("head", "–"), kept.get("neuron", "–"))
    return table
