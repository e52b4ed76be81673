"""What a researcher watches: rich progress, the per-state table, and JSONL metrics."""

from __future__ import annotations

import math
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
    )


SHORT = {"channel": "ch.", "head": "heads", "neuron": "neur."}


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
