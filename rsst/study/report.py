"""The study report: ``DIR/report.md``, ``DIR/compare.json`` and ``DIR/compare.png``.

Built from the run directories alone (through `rsst.compare`, which groups runs by identity and
pools only seeds), so it can be written at any time, also while runs are missing: every number
says how many seeds it stands on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rsst.atomic import atomic_write_text
from rsst.compare import WINNING_TICKET_POINTS, compare_runs, find_runs, to_json
from rsst.errors import UserError
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


def _eval_images(study: Study) -> str:
    sizes = {e.config.val_split for e in study.experiments}
    if sizes == {None}:
        return ("the default validation split of each run (5000 images of a training set of "
                "≥ 20k, 1000 for synthetic, else 10 %)")
    return ", ".join("default" if s is None else f"{s:,}" for s in sorted(
        sizes, key=lambda s: (s is None, s or 0))) + " validation images per run (carved from " \
        "the training set with the run's seed)"


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


def build_report(root: str | Path) -> tuple[str, dict[str, Any]]:
    """(markdown, comparison) of the study in ``root``."""
    root = Path(root)
    if not (root / "study.toml").is_file():
        raise UserError(f"{root} is not a study directory (no study.toml): pass the --out of "
                        "`rsst study`")
    study = read_study(root / "study.toml")
    result = compare_runs(find_runs([root], warn=lambda line: None), x="remain", metric="val")
    runs = [g for g in result["groups"] if g["control"] is None]
    controls = [g for g in result["groups"] if g["control"] is not None]
    chance = {g["chance"] for g in result["groups"]} - {None}
    lines = [
        f"# Study {study.name}", "",
        f"- {len(study.experiments)} experiments × seeds {study.seeds}; runs in `runs/`, "
        "controls in `controls/`.",
        f"- Accuracy: validation accuracy of the network each state delivers (RSST: after its "
        f"cut), on {_eval_images(study)}.",
        "- Chance level: " + (", ".join(f"{100 * c:g} % (1/{round(1 / c)} classes)"
                                      for c in sorted(chance)) if chance else "unknown "
                              "(no state weights read)") + ".",
        "- Over seeds: mean ± sample std, n, and the 95 % confidence interval of the mean "
        "(Student t with n − 1 degrees of freedom); with one seed there is no interval.",
        f"- Winning ticket: the sparsest delivered state whose mean accuracy is within "
        f"{WINNING_TICKET_POINTS:g} point of the dense network's (state 0).",
        "- A control matches its ticket unless the ticket's mean lies outside the control's "
        "95 % interval; a ticket that its controls match is not a winning ticket.", "",
        "## Experiments", "",
        "| experiment | seeds done | dense | winning ticket (remaining weights) | best |",
        "|---|---|---|---|---|",
    ]
    for g in runs:
        ticket, best = g["winning_ticket"], g["best"]
        lines.append(
            f"| {g['label']} | {g['n_runs']} | {_acc(_delivered(g, 0))} | "
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


def write_report(root: str | Path) -> list[Path]:
    """report.md and compare.json, and compare.png when matplotlib is installed."""
    from rsst.plots import plot_comparison, pyplot

    root = Path(root)
    text, result = build_report(root)
    atomic_write_text(root / REPORT, text)
    atomic_write_text(root / COMPARE_JSON, to_json(result) + "\n")
    written = [root / REPORT, root / COMPARE_JSON]
    try:
        pyplot()
    except UserError:
        return written
    written.append(plot_comparison(result, root / COMPARE_PLOT))
    return written
