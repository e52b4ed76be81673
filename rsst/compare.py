"""``rsst compare`` / ``rsst report``: accuracy against sparsity across run directories.

A run directory is read through its files only (``summary.json``, ``metrics.jsonl``,
``state_XX/state.json``), so runs that are still going (finished states only), runs from older
format versions and runs of any method compare alike. Each finished state gives one point: the
network it delivers. An RSST state gives two, labelled: *before cut* (trained, pending weights
still present) and *after cut* (the pending weights removed, the network it delivers).

Runs are grouped by their identity (`rsst.study.identity`: every setting but the seed, the run
directory and the cache), so only seeds are pooled: mean ± std, n and the 95 % interval of the
mean (Student t, n − 1 degrees of freedom). Groups of one method are labelled by the settings in
which they differ (``refill rate=0.5``). Controls (`rsst ticket`) form groups of their own, named
after the ticket they control. The *winning ticket* of a group is its sparsest delivered state
whose accuracy is within `WINNING_TICKET_POINTS` accuracy points of the dense network (state 0,
every weight alive) and whose 95 % interval overlaps the dense network's.
"""

from __future__ import annotations

import glob
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsst import statefile
from rsst.errors import UserError
from rsst.rundir import CONFIG, STATE_RECORD, SUMMARY
from rsst.rundir import METRICS as METRICS_FILE
from rsst.study.identity import hash_settings, settings_of_saved
from rsst.study.stats import summarize

#: a control's record in its run directory (`rsst.controls`)
CONTROL_RECORD = "control.json"

X_AXES = ("remain", "sparsity", "macs", "params", "latency")
METRICS = ("val", "test", "val_after_cut")
WINNING_TICKET_POINTS = 0.5  # accuracy points (percent) below dense
X_LABELS = {
    "remain": "remaining weights (%)",
    "sparsity": "channels / heads / neurons removed (%)",
    "macs": "remaining MACs (%)",
    "params": "remaining parameters (%)",
    "latency": "measured latency, compacted / dense (%)",
}
PHASE_LABELS = {"trained": "", "before_cut": "before cut", "after_cut": "after cut"}


# ---------------------------------------------------------------------------------------------
# reading runs
# ---------------------------------------------------------------------------------------------


@dataclass
class RunData:
    """What one run directory says about itself: identity and its finished state records."""

    path: Path
    method: str
    arch: str
    dataset: str
    seed: int | None
    records: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    #: identity settings (those differing from the defaults), None without a readable config
    settings: dict[str, Any] | None = None
    #: control.json of a `rsst ticket` control, else None
    control: dict[str, Any] | None = None
    #: classes of the task (chance accuracy is 1 / num_classes), from a state's weights file
    num_classes: int | None = None

    @property
    def identity(self) -> str:
        """The identity hash; without a config, method · arch · dataset stands in for it."""
        if self.settings is None:
            return f"{self.method}/{self.arch}/{self.dataset}"
        return hash_settings(self.settings)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return dict(data.get("run", data))


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / SUMMARY).is_file() or (path / CONFIG).is_file()
        or any(path.glob(f"state_*/{STATE_RECORD}")))


def _state_records(path: Path, summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Finished-state records from summary.json, then metrics.jsonl, then state_XX/state.json
    (a state the summary does not hold yet: the run was killed or is still going)."""
    by_state: dict[int, dict[str, Any]] = {}

    def add(record: Any) -> None:
        if isinstance(record, dict) and isinstance(record.get("state"), int):
            by_state.setdefault(record["state"], record)

    for record in (summary or {}).get("states", []) or []:
        add(record)
    metrics = path / METRICS_FILE
    if metrics.is_file():
        try:
            lines = metrics.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            lines = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
            if isinstance(record, dict) and record.get("kind", "state") == "state":
                add(record)
    for record in statefile.state_records(path):
        add(record)
    return [by_state[s] for s in sorted(by_state)]


def load_run(path: Path) -> RunData:
    summary = _read_json(path / SUMMARY)
    summary = summary if isinstance(summary, dict) else None
    config = _read_toml(path / CONFIG) if (path / CONFIG).is_file() else {}
    records = _state_records(path, summary)
    first = records[0] if records else {}

    def pick(key: str, default: Any) -> Any:
        for source in (summary or {}, config, first):
            if source.get(key) is not None:
                return source[key]
        return default

    seed = config.get("seed")
    control = _read_json(path / CONTROL_RECORD)
    classes = _num_classes(path)
    return RunData(path=path, method=str(pick("method", "unknown")),
                   arch=str(pick("arch", "unknown")), dataset=str(pick("dataset", "unknown")),
                   seed=seed if isinstance(seed, int) else None, records=records, config=config,
                   settings=settings_of_saved(config) if config else None,
                   control=control if isinstance(control, dict) else None,
                   num_classes=classes)


def _num_classes(path: Path) -> int | None:
    """The class count a state's weights file records (its metadata; no tensor is read)."""
    from safetensors import safe_open

    for weights in sorted(path.glob("state_*/weights.safetensors"))[:1]:
        try:
            with safe_open(str(weights), "pt") as f:
                value = (f.metadata() or {}).get("rsst.num_classes", "")
        except Exception:  # a torn or foreign file: no chance line, nothing else changes
            return None
        return int(value) if value.isdigit() and int(value) > 0 else None
    return None


def find_runs(args: list[str | Path], warn: Any = None) -> list[RunData]:
    """Run directories named by ``args``: paths, globs, or parents holding runs. Anything else is
    one line through ``warn`` and is skipped; nothing left is a `UserError`."""
    warn = warn or (lambda line: print(line, file=sys.stderr))
    seen: set[Path] = set()
    runs: list[RunData] = []

    def take(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            runs.append(load_run(path))

    for arg in args:
        text = str(arg)
        matches = [Path(text)] if Path(text).exists() else [
            Path(p) for p in sorted(glob.glob(text))]
        if not matches:
            warn(f"skipped {text}: no such file or directory")
            continue
        for path in matches:
            if is_run_dir(path):
                take(path)
                continue
            if (path / "study.toml").is_file():  # a study directory: its runs and controls
                for child in sorted([*path.glob("runs/*/seed-*"),
                                     *path.glob("controls/*/seed-*/*")]):
                    if is_run_dir(child):
                        take(child)
                continue
            children = sorted(c for c in path.iterdir() if is_run_dir(c)) if path.is_dir() else []
            if not children and path.is_dir():  # a study's runs/: <method>-<hash>/seed-<N>/
                children = sorted(c for c in path.glob("*/seed-*") if is_run_dir(c))
            if children:
                for child in children:
                    take(child)
            else:
                warn(f"skipped {path}: not an rsst run directory (no summary.json, config.toml "
                     "or state_XX/state.json)")
    if not runs:
        raise UserError("no run directories to compare: pass directories `rsst run` wrote (or a "
                        "folder holding them)")
    return runs


# ---------------------------------------------------------------------------------------------
# points
# ---------------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _structured(record: dict[str, Any], key: str) -> float | None:
    """Fraction of groups removed, over every kind, weighted by each kind's group count."""
    sparsity = record.get(key)
    if not isinstance(sparsity, dict) or not sparsity:
        return None
    totals: dict[str, int] = {}
    for info in (record.get("groups") or {}).values():
        if isinstance(info, dict) and isinstance(info.get("total"), int):
            totals[info.get("kind", "")] = totals.get(info.get("kind", ""), 0) + info["total"]
    values = {k: _num(v) for k, v in sparsity.items()}
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return None
    weights = {k: totals.get(k, 0) for k in values}
    if sum(weights.values()) == 0:
        return sum(values.values()) / len(values)
    return sum(values[k] * weights[k] for k in values) / sum(weights.values())


def _x_values(record: dict[str, Any], previous: dict[str, Any] | None, phase: str
              ) -> dict[str, float | None]:
    """Every x of one point. Before the RSST cut the network is the previous state's (the
    pending weights are still alive), so its MACs, params and latency are the previous
    state's. ``latency`` is None for a run measured with --no-latency (or older)."""
    if phase == "after_cut":
        return {"remain": _num(record.get("remain_weight_after_cut")),
                "sparsity": _structured(record, "structured_sparsity_after_cut"),
                "macs": _num(record.get("macs_ratio")),
                "params": _num(record.get("params_ratio")),
                "latency": _num(record.get("latency_ratio"))}
    if phase == "before_cut":
        prev = previous or {}
        return {"remain": _num(record.get("remain_weight")),
                "sparsity": _structured(record, "structured_sparsity"),
                "macs": _num(prev.get("macs_ratio")) if previous else 1.0,
                "params": _num(prev.get("params_ratio")) if previous else 1.0,
                "latency": _num(prev.get("latency_ratio")) if previous else 1.0}
    return {"remain": _num(record.get("remain_weight")),
            "sparsity": _structured(record, "structured_sparsity"),
            "macs": _num(record.get("macs_ratio")), "params": _num(record.get("params_ratio")),
            "latency": _num(record.get("latency_ratio"))}


def run_points(run: RunData, metric: str) -> list[dict[str, Any]]:
    """One point per finished state (two for an RSST state with a cut, unless the metric asks
    for the delivered network only). ``delivered`` marks the network the state hands on."""
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    points = []
    previous: dict[str, Any] | None = None
    for record in run.records:
        cut = "remain_weight_after_cut" in record or "val_acc_before_cut" in record \
            or "val_acc_after_cut" in record
        split = "test" if metric == "test" else "val"
        after = statefile.accuracy(record, split)  # the network the state saved
        if cut:
            before = statefile.accuracy(record, split, before_cut=True)
            phases = [("after_cut", after)] if metric == "val_after_cut" else [
                ("before_cut", before), ("after_cut", after)]
        else:
            phases = [("trained", after)]
        for phase, acc in phases:
            points.append({"state": record["state"], "phase": phase, "acc": acc,
                           "delivered": phase != "before_cut", **_x_values(record, previous,
                                                                            phase)})
        previous = record
    return points


# ---------------------------------------------------------------------------------------------
# groups
# ---------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def compare_runs(runs: list[RunData], *, x: str = "remain", metric: str = "val",
                 force: bool = False) -> dict[str, Any]:
    """The comparison as one JSON-ready dict (see `rsst compare --json`)."""
    if x not in X_AXES:
        raise UserError(f"--x {x!r}: choose one of {', '.join(X_AXES)}")
    datasets: dict[str, int] = {}
    for run in runs:
        datasets[run.dataset] = datasets.get(run.dataset, 0) + 1
    if len(datasets) > 1 and not force:
        have = ", ".join(f"{d}: {n} run{'s' * (n > 1)}" for d, n in sorted(datasets.items()))
        raise UserError(f"the runs are on different datasets ({have}): accuracies are not "
                        "comparable; pass runs of one dataset, or --force to plot them anyway")
    grouped: dict[tuple[str, ...], list[RunData]] = {}
    for run in runs:
        grouped.setdefault(_group_key(run), []).append(run)
    groups = []
    for members in grouped.values():
        first = members[0]
        per_run = [{"dir": str(r.path), "seed": r.seed, "points": run_points(r, metric)}
                   for r in sorted(members, key=lambda r: (r.seed is None, r.seed or 0))]
        group = _group(first.method, first.arch, first.dataset, per_run, x)
        classes = next((r.num_classes for r in members if r.num_classes), None)
        group.update(identity=first.identity, settings=first.settings, control=_control(first),
                     num_classes=classes, chance=1 / classes if classes else None)
        groups.append(group)
    _label_groups(groups)
    groups.sort(key=lambda g: (g["control"] is not None, g["method"], g["label"]))
    return _finite({"x": x, "metric": metric, "x_label": X_LABELS[x],
                    "winning_ticket_points": WINNING_TICKET_POINTS, "groups": groups})


def _group_key(run: RunData) -> tuple[str, ...]:
    """Runs pool (as seeds) only when everything but the seed is the same: their identity and,
    for controls, the kind, the ticket's identity and its state."""
    if run.control is None:
        return ("run", run.identity)
    c = run.control
    return ("control", str(c.get("control")), str(c.get("source_identity")),
            str(c.get("state")), run.identity)


def _control(run: RunData) -> dict[str, Any] | None:
    if run.control is None:
        return None
    return {k: run.control.get(k) for k in ("control", "state", "source_method",
                                            "source_identity")}


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "[]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _label_groups(groups: list[dict[str, Any]]) -> None:
    """``method · arch`` when a method has one group; otherwise the method and the settings in
    which its groups differ (``refill rate=0.5``). A control: ``shuffle of <its ticket's label>
    state N``. Each group also gets ``varied``: those settings."""
    from rsst.config import RunConfig

    defaults = RunConfig().to_dict()
    runs = [g for g in groups if g["control"] is None]
    by_method: dict[str, list[dict[str, Any]]] = {}
    for g in runs:
        by_method.setdefault(g["method"], []).append(g)
    for members in by_method.values():
        keys = sorted({k for g in members for k in (g["settings"] or {})} - {"method"})

        def value(g: dict[str, Any], k: str) -> Any:
            return (g["settings"] or {}).get(k, defaults.get(k))

        varied = [k for k in keys if len({json.dumps(value(g, k)) for g in members}) > 1]
        for g in members:
            g["varied"] = {k: value(g, k) for k in varied}
            g["label"] = (f"{g['method']} " + " ".join(f"{k}={_shown(v)}" for k, v in
                                                       g["varied"].items())
                          if varied else f"{g['method']} · {g['arch']}")
    labels = {g["identity"]: g["label"] for g in runs}
    for g in groups:
        c = g["control"]
        if c is not None:
            source = labels.get(c["source_identity"], str(c["source_method"]))
            g["varied"] = {}
            g["label"] = f"{c['control']} of {source} state {c['state']}"


def _group(method: str, arch: str, dataset: str, per_run: list[dict[str, Any]], x: str
           ) -> dict[str, Any]:
    by_key: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for run in per_run:
        for p in run["points"]:
            by_key.setdefault((p["state"], p["phase"]), []).append(p)
    order = {"before_cut": 0, "trained": 1, "after_cut": 2}
    points = []
    for (state, phase), ps in sorted(by_key.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        accs = summarize([p["acc"] for p in ps if p["acc"] is not None])
        xm, x_std = _mean_std([p[x] for p in ps if p[x] is not None])
        points.append({"state": state, "phase": phase, "label": PHASE_LABELS[phase],
                       "delivered": phase != "before_cut", "x": xm, "x_std": x_std,
                       "acc": accs.mean, "acc_std": accs.std, "n": accs.n,
                       "ci95": list(accs.interval) if accs.interval else None})
    dense = next((p for p in points if p["state"] == 0 and p["delivered"]), None)
    dense_acc = dense["acc"] if dense else None
    usable = [p for p in points if p["delivered"] and p["acc"] is not None and p["x"] is not None]
    best = max(usable, key=lambda p: (p["acc"], -p["state"]), default=None)
    ticket = None
    if dense_acc is not None:
        within = [p for p in usable if p["acc"] >= dense_acc - WINNING_TICKET_POINTS / 100
                  and intervals_overlap(p, dense)]
        sparser = (lambda p: p["x"]) if x == "sparsity" else (lambda p: -p["x"])
        ticket = max(within, key=lambda p: (sparser(p), p["state"]), default=None)
    brief = ("state", "phase", "x", "acc", "acc_std", "n", "ci95")
    return {"method": method, "arch": arch, "dataset": dataset,
            "label": f"{method} · {arch}", "runs": per_run, "n_runs": len(per_run),
            "dense_acc": dense_acc, "points": points,
            "best": {k: best[k] for k in brief} if best else None,
            "winning_ticket": {k: ticket[k] for k in brief} if ticket else None}


def intervals_overlap(point: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two points' 95 % intervals overlap; a single seed counts as its value alone,
    and with a single seed on both sides there is nothing to compare (True)."""
    a, b = point.get("ci95"), other.get("ci95")
    if a is None and b is None:
        return True
    a = a or [point["acc"], point["acc"]]
    b = b or [other["acc"], other["acc"]]
    return a[0] <= b[1] and b[0] <= a[1]


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json(data: Any) -> str:
    return json.dumps(_finite(data), indent=2, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


def _pct(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "–"
    text = f"{100 * value:.2f}"
    return f"{text} ± {100 * std:.2f}" if std else text


def comparison_tables(result: dict[str, Any]) -> list[Any]:
    """Rich tables: a summary per group, then every point of every group."""
    from rich.table import Table

    x = result["x"]
    summary = Table(title=f"rsst compare · {result['metric']} accuracy (%) · x = "
                    f"{result['x_label']}")
    summary.caption = (f"winning ticket: the sparsest state within {WINNING_TICKET_POINTS:g} "
                       "point of dense (state 0) whose 95 % interval meets dense's")
    summary.caption += "; ± is the std over seeds, \\[a, b] the 95 % interval of the mean " \
        "(Student t; none for one seed)"
    for header in ("group", "arch", "dataset", "runs", "dense", "best (x)", "winning ticket"):
        summary.add_column(header, justify="left" if header in ("group", "arch", "dataset")
                           else "right")
    for g in result["groups"]:
        best, ticket = g["best"], g["winning_ticket"]
        summary.add_row(
            g["label"], g["arch"], g["dataset"], str(g["n_runs"]), _pct(g["dense_acc"]),
            f"{_pct(best['acc'])} ({_pct(best['x'])})" if best else "–",
            f"state {ticket['state']}: {_pct(ticket['acc'])} ({_pct(ticket['x'])})"
            if ticket else "none")
    points = Table(title="per state (mean ± std over seeds, n, 95 % interval)")
    for header in ("group", "state", "point", X_LABELS[x], "accuracy", "n", "95 % interval"):
        points.add_column(header, justify="left" if header in ("group", "point") else "right")
    for g in result["groups"]:
        for p in g["points"]:
            points.add_row(g["label"], str(p["state"]), p["label"] or "trained",
                           _pct(p["x"], p["x_std"]), _pct(p["acc"], p["acc_std"]), str(p["n"]),
                           _interval(p["ci95"]))
    return [summary, points]


def _interval(ci: list[float] | None) -> str:
    return f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "–"


def run_kinds(run: RunData) -> list[str]:
    """The structural kinds of a run (channel / head / neuron), from its records."""
    kinds: list[str] = []
    for record in run.records:
        for kind in (record.get("structured_sparsity") or {}):
            if kind not in kinds:
                kinds.append(kind)
    return kinds


def report_json(run: RunData) -> dict[str, Any]:
    """`rsst report --json`: the run's identity and its finished state records as saved."""
    return {"run_dir": str(run.path), "method": run.method, "arch": run.arch,
            "dataset": run.dataset, "seed": run.seed, "kinds": run_kinds(run),
            "states": run.records}


def load_single_run(path: str | Path) -> RunData:
    """The one run `rsst report` reads; a `UserError` when it is not a run or has no state."""
    path = Path(path)
    if not is_run_dir(path):
        raise UserError(f"{path} is not an rsst run directory (no summary.json, config.toml or "
                        "state_XX/state.json): pass the directory `rsst run` printed")
    run = load_run(path)
    if not run.records:
        raise UserError(f"{path} has no finished state yet: let the run finish its first state")
    return run
