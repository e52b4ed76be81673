"""The study report: ``DIR/report.md``, ``DIR/compare.json`` and ``DIR/compare.png``.

Built from the run directories alone (through `rsst.compare`, which groups runs by identity and
pools only seeds), so it can be written at any time, also while runs are missing: every number
says how many seeds it stands on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rsst import rundir
from rsst.atomic import atomic_write_text
from rsst.compare import WINNING_TICKET_POINTS, compare_runs, find_runs, to_json
from rsst.config import load_config
from rsst.data.synthetic import SYNTHETIC_VAL
from rsst.errors import UserError
from rsst.study.executors import is_finished
from rsst.study.spec import Study, read_study

REPORT = "report.md"
COMPARE_JSON = "compare.json"
COMPARE_PLOT = "compare.png"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _acc(point: dict[str, Any] | None) -> str:
    """``mean ± std (n = k) [lo, hi]``; one seed: no interval, said so."""
    if point is None or point.get("acc") is None:
        return "–"
    text = f"{_pct(point['acc'])}"
    if point["n"] > 1:
        text += f" ± {_pct(point['acc_std'])}"
    text += f" (n = {point['n']}"
    ci = point.get("ci95")
    text += f", 95 % CI [{_pct(ci[0])}, {_pct(ci[1])}])" if ci else ", no interval)"
    return text


def eval_images(run_dir: str | Path) -> int | None:
    """The number of validation images a run was evaluated on: its summary's ``val_images``;
    for runs written before that was recorded, the count the data loader carves from the
    run's settings (--val-split, else 1000 for synthetic and 5000 for CIFAR's 50,000 training
    images); None when it cannot be known."""
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / rundir.SUMMARY).read_text())
        if isinstance(summary.get("val_images"), int):
            return summary["val_images"]
    except (OSError, ValueError, AttributeError):
        pass
    try:
        config = load_config(run_dir / rundir.CONFIG)
    except UserError:
        return None
    if config.val_split is not None:
        return config.val_split
    return {"synthetic": SYNTHETIC_VAL, "cifar10": 5000, "cifar100": 5000}.get(config.dataset)


def _images(group: dict[str, Any]) -> str:
    counts = sorted({c for c in (eval_images(r["dir"]) for r in group["runs"])} - {None})
    return " / ".join(f"{c:,}" for c in counts) or "unknown"


def _finished(group: dict[str, Any]) -> int:
    return sum(is_finished(Path(r["dir"])) for r in group["runs"])


def _chance(group: dict[str, Any]) -> str:
    c = group.get("chance")
    return f"{100 * c:.3g} (1/{group['num_classes']})" if c else "unknown"


def _delivered(group: dict[str, Any], state: int) -> dict[str, Any] | None:
    return next((p for p in group["points"] if p["state"] == state and p["delivered"]), None)


def _verdict(ticket: dict[str, Any] | None, control: dict[str, Any] | None) -> str:
    """Winning over a control: the ticket's mean lies above the control's 95 % interval."""
    if ticket is None or control is None or ticket.get("acc") is None \
            or control.get("acc") is None:
        return "–"
    ci = control.get("ci95")
    if ci is None:
        return "n = 1: no interval to judge"
    if ticket["acc"] > ci[1]:
        return "ticket better"
    if ticket["acc"] < ci[0]:
        return "control better"
    return "not distinguishable"


def build_report(root: str | Path, study: Study | None = None) -> tuple[str, dict[str, Any]]:
    """(markdown, comparison) of the study in ``root`` (``study``: its file as read now;
    default the study.toml the last `rsst study` wrote there)."""
    root = Path(root)
    if not (root / "study.toml").is_file():
        raise UserError(f"--out {root} is not a study directory (no study.toml): pass the "
                        "--out of an `rsst study` run")
    study = study or read_study(root / "study.toml")
    # force: a study may span datasets; each row names its own evaluation images and chance
    result = compare_runs(find_runs([root], warn=lambda line: None), x="remain", metric="val",
                          force=True)
    runs = [g for g in result["groups"] if g["control"] is None]
    controls = [g for g in result["groups"] if g["control"] is not None]
    chance = {g["chance"] for g in result["groups"]} - {None}
    named = {e.hash for e in study.experiments}
    gone = [g["label"] for g in runs if g["identity"] not in named]
    lines = [
        f"# Study {study.name}", "",
        f"- {len(study.experiments)} experiments × seeds {study.seeds}; runs in `runs/`, "
        "controls in `controls/`.",
        "- Accuracy: validation accuracy of the network each state delivers (RSST: after its "
        "cut), on the images each experiment's row names (carved from the training set with "
        "the run's seed).",
        "- Chance level: " + (", ".join(f"{100 * c:g} % (1/{round(1 / c)} classes)"
                                      for c in sorted(chance)) if chance else "unknown "
                              "(no state weights read)") + ".",
        "- Over seeds: mean ± sample std, n, and the 95 % confidence interval of the mean "
        "(Student t with n − 1 degrees of freedom); with one seed there is no interval.",
        f"- Winning ticket: the sparsest delivered state whose mean accuracy is within "
        f"{WINNING_TICKET_POINTS:g} point of the dense network's (state 0) and whose 95 % "
        "interval overlaps the dense network's (with one seed on both sides only the first "
        "test applies).",
        "- A control matches its ticket unless the ticket's mean lies outside the control's "
        "95 % interval; a ticket that its controls match is not a winning ticket.",
        *(f"- {label}: not in the study file any more (its runs are kept and reported)."
          for label in gone), "",
        "## Experiments", "",
        "| experiment | runs finished / started | eval images | chance % | dense | winning ticket "
        "(remaining weights) | best |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in runs:
        ticket, best = g["winning_ticket"], g["best"]
        lines.append(
            f"| {g['label']} | {_finished(g)} / {g['n_runs']} | {_images(g)} | {_chance(g)} | "
            f"{_acc(_delivered(g, 0))} | "
            + (f"state {ticket['state']}: {_acc(ticket)} ({_pct(ticket['x'])} %)"
               if ticket else "none") + " | "
            + (f"state {best['state']}: {_acc(best)} ({_pct(best['x'])} %)" if best else "–")
            + " |")
    lines += ["", "## Per state", "",
              "| experiment | state | remaining weights % | accuracy % |", "|---|---|---|---|"]
    for g in runs:
        for p in g["points"]:
            if p["delivered"]:
                lines.append(f"| {g['label']} | {p['state']} | {_pct(p['x'])} | {_acc(p)} |")
    if controls:
        lines += ["", "## Controls beside their tickets", "",
                  "| ticket | state | ticket accuracy % | control | control accuracy % | "
                  "verdict |", "|---|---|---|---|---|---|"]
        sources = {g["identity"]: g for g in runs}
        for c in controls:
            info = c["control"]
            source = sources.get(info["source_identity"])
            state = info["state"]
            ticket = _delivered(source, state) if source and isinstance(state, int) else None
            trained = _delivered(c, 0)
            lines.append(f"| {source['label'] if source else info['source_method']} | {state} | "
                         f"{_acc(ticket)} | {info['control']} | {_acc(trained)} | "
                         f"{_verdict(ticket, trained)} |")
    return "\n".join(lines) + "\n", result


def write_report(root: str | Path, study: Study | None = None) -> list[Path]:
    """report.md and compare.json, and compare.png when matplotlib is installed."""
    from rsst.plots import plot_comparison, pyplot

    root = Path(root)
    text, result = build_report(root, study)
    atomic_write_text(root / REPORT, text)
    atomic_write_text(root / COMPARE_JSON, to_json(result) + "\n")
    written = [root / REPORT, root / COMPARE_JSON]
    try:
        pyplot()
    except UserError:
        return written
    written.append(plot_comparison(result, root / COMPARE_PLOT))
    return written
