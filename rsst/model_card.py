"""The model card every export carries (metadata ``rsst.model_card``) and writes beside itself
(``FILE.md``): what the model is, how sparse, how accurate, how it was made, and how its MACs
are counted, so a file found later explains itself."""

from __future__ import annotations

import dataclasses
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


#: the Hugging Face dataset id of each rsst dataset that has one on the Hub
HUB_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100",
                "tiny-imagenet": "zh-plus/tiny-imagenet"}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tiny-imagenet": "Tiny ImageNet",
                 "imagefolder": "image folder", "synthetic": "synthetic images"}
#: the license the card declares: rsst's own (MIT) for weights trained from scratch; "other"
#: for weights fine-tuned from pretrained ones, whose terms rsst cannot know
OWN_LICENSE = "mit"


def card_license(config: dict[str, Any]) -> str:
    """``mit`` (rsst's license) for a run trained from its own initialization; ``other`` when it
    started from pretrained weights (--pretrained), whose license then applies."""
    return "other" if config.get("pretrained") else OWN_LICENSE


def card_metadata(meta: dict[str, str], config: dict[str, Any], form: str,
                  record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model-card metadata model hubs read (Hugging Face: ``license``, ``library_name``,
    ``tags``, ``datasets``, ``metrics``, ``model-index`` with the accuracy of the network the
    file holds, in %)."""
    from rsst import statefile as sf

    method, arch = str(meta.get(sf.METHOD, "unknown")), str(meta.get(sf.ARCH, "unknown"))
    tags = ["image-classification", "pruning", "structured-sparsity", "lottery-ticket", "rsst",
            method, arch]
    data: dict[str, Any] = {"license": card_license(config),
                            "library_name": "timm" if form == "hf" else "rsst",
                            "pipeline_tag": "image-classification",
                            "tags": list(dict.fromkeys(tags))}
    dataset = str(config.get("dataset") or "")
    if dataset in HUB_DATASETS:
        data["datasets"] = [HUB_DATASETS[dataset]]
    data["metrics"] = ["accuracy"]
    results = []
    for split, split_name in (("val", "validation"), ("test", "test")):
        value = sf.accuracy(record or {}, split)
        if value is None:
            continue
        results.append({
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"type": HUB_DATASETS.get(dataset, dataset or "unknown"),
                        "name": DATASET_NAMES.get(dataset, dataset or "unknown"),
                        "split": split_name},
            "metrics": [{"type": "accuracy", "value": round(100 * value, 2),
                         "name": f"{split} accuracy (%)"}],
        })
    if results:
        data["model-index"] = [{"name": f"{arch}-{method}-state{meta.get(sf.STATE, '?')}",
                                "results": results}]
    return data


def front_matter(meta: dict[str, str], config: dict[str, Any], form: str,
                 record: dict[str, Any] | None = None) -> list[str]:
    """The card's YAML header (`card_metadata`), written by a YAML library."""
    import yaml  # PyYAML: a timm and huggingface_hub dependency

    text = yaml.safe_dump(card_metadata(meta, config, form, record), sort_keys=False,
                          allow_unicode=True, default_flow_style=False)
    return ["---", *text.rstrip("\n").splitlines(), "---", ""]


def model_card(meta: dict[str, str], record: dict[str, Any] | None, *, form: str,
               export_command: str, units: list[dict[str, Any]], params: dict[str, int],
               macs: dict[str, Any]) -> str:
    """Markdown text of the card, from an export's metadata and its state's record."""
    from rsst import statefile as sf

    config = sf.json_metadata(meta, sf.CONFIG, {}) or {}
    sparsity = sf.json_metadata(meta, sf.SPARSITY, {}) or {}
    record = record or {}
    lines = [
        *front_matter(meta, config, form, record),
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
        f"- dataset: {config.get('dataset', '?')}",
        f"- license: {card_license(config)}"
        + (" (the run started from pretrained weights: their license applies)"
           if card_license(config) == "other" else " (the license of rsst, which trained it)"),
        "",
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
