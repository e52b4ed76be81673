"""The model card every export carries (metadata ``rsst.model_card``) and writes beside itself
(``FILE.md``): what the model is, how sparse, how accurate, how it was made, and how its MACs
are counted, so a file found later explains itself."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from pathlib import Path
from typing import Any

MAC_CONVENTION = (
    "MACs are multiply-accumulates for one input image: every convolution, every linear layer "
    "and the two attention matmuls (q·kᵀ and attention·v) are counted; BatchNorm, LayerNorm, "
    "activations, pooling, softmax, residual additions and the input normalization are not."
)


def run_command(config: dict[str, Any]) -> str:
    """The `rsst run` command line that reproduces a run: the flags whose values differ from
    the defaults (the full config is in the file's ``rsst.config``)."""
    from rsst.config import RunConfig

    defaults = dataclasses.asdict(RunConfig())
    parts = ["rsst", "run"]
    for key, value in config.items():
        if key not in defaults or value == defaults[key] or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{key.replace('_', '-')}")
        elif isinstance(value, list):
            parts += [flag, ",".join(str(v) for v in value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _pct(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{100 * value:.2f} %"
    return "–"


def front_matter(meta: dict[str, str], config: dict[str, Any], form: str) -> list[str]:
    """The YAML header model hubs read (Hugging Face: ``library_name``, ``tags``,
    ``pipeline_tag``); strings are JSON-quoted, which YAML reads as they are."""
    tags = ["image-classification", "pruning", "rsst", "lottery-ticket",
            str(meta.get("rsst.method", "unknown")), str(meta.get("rsst.arch", "unknown"))]
    lines = ["---", f"library_name: {'timm' if form == 'hf' else 'rsst'}",
             "pipeline_tag: image-classification",
             "tags:", *[f"- {json.dumps(t)}" for t in dict.fromkeys(tags)]]
    if config.get("dataset"):
        lines += ["datasets:", f"- {json.dumps(str(config['dataset']))}"]
    return [*lines, "---", ""]


def model_card(meta: dict[str, str], record: dict[str, Any] | None, *, form: str,
               export_command: str, units: list[dict[str, Any]], params: dict[str, int],
               macs: dict[str, Any]) -> str:
    """Markdown text of the card, from an export's metadata and its state's record."""
    from rsst import statefile as sf

    config = sf.json_metadata(meta, sf.CONFIG, {}) or {}
    sparsity = sf.json_metadata(meta, sf.SPARSITY, {}) or {}
    record = record or {}
    lines = [
        *front_matter(meta, config, form),
        f"# {meta.get(sf.ARCH, '?')} pruned by {meta.get(sf.METHOD, '?')} "
        f"(state {meta.get(sf.STATE, '?')})", "",
        "## Model",
        f"- architecture: `{meta.get(sf.ARCH)}`, {meta.get(sf.NUM_CLASSES)} classes, "
        f"input {meta.get(sf.INPUT_SIZE)} (C, H, W)"
        + (f", patch size {meta[sf.PATCH_SIZE]}" if meta.get(sf.PATCH_SIZE) not in
           (None, "null") else ""),
        f"- input normalization: mean {meta.get(sf.MEAN)}, std {meta.get(sf.STD)} "
        "(images in [0, 1])",
        f"- export form: {form}",
        f"- dataset: {config.get('dataset', '?')}", "",
        "## Sparsity",
        f"- weights alive (prunable layers): {_pct(sparsity.get('remain_weight'))}",
    ]
    for kind, value in sparsity.items():
        if kind != "remain_weight":
            lines.append(f"- {kind}s removed: {_pct(value)}")
    lines += [
        f"- parameters: {params.get('dense')} dense → {params.get('compact')} compacted",
        f"- MACs: {macs.get('dense')} dense → {macs.get('compact')} compacted", "",
        "## Accuracy (the run's own evaluation of the network in this file)",
    ]
    for split in ("val", "test"):
        value = sf.accuracy(record, split)
        if value is not None:
            lines.append(f"- {split}: {_pct(value)}")
    for split in ("val", "test"):
        value = sf.accuracy(record, split, before_cut=True)
        if value is not None:
            lines.append(f"- {split} before the RSST cut (not this file's network): "
                         f"{_pct(value)}")
    if not record:
        lines.append("- not recorded (no state.json beside the weights)")
    lines += ["", "## Structure per layer (groups kept / total)", "",
              "| layer | kind | kept | total |", "|---|---|---|---|"]
    for u in units:
        kept = u["kept"] if isinstance(u["kept"], int) else len(u["kept"])
        lines.append(f"| {u['layer']} | {u['kind']} | {kept} | {u['total']} |")
    lines += ["", "## How it was made", "", "```", run_command(config), export_command, "```",
              "", "## MAC convention", "", MAC_CONVENTION, ""]
    return "\n".join(lines)


def write_card_beside(out: Path, card: str) -> Path:
    """``FILE.md`` next to ``FILE.safetensors``, written atomically."""
    from rsst.atomic import atomic_write_text

    path = out.with_suffix(".md") if out.suffix else out.with_name(out.name + ".md")
    atomic_write_text(path, card)
    return path
