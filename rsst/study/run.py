"""``rsst study``: lay out a study directory, then run every (identity, seed) to its end.

```
DIR/study.toml                          the resolved study (rerunnable as a study file)
DIR/runs/<method>-<hash>/identity.json  the settings the hash stands for
DIR/runs/<method>-<hash>/run.toml       the identity's config (seed and out unset)
DIR/runs/<method>-<hash>/seed-<N>/      an ordinary run directory
DIR/runs/<method>-<hash>/seed-<N>.log   the run's console output, every attempt appended
```
Starting a study again on the same DIR skips finished runs and resumes interrupted ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from rsst import rundir
from rsst.atomic import atomic_write_json, atomic_write_text
from rsst.config import save_config
from rsst.errors import UserError
from rsst.study.executors import (
    EXECUTORS,
    RunTask,
    TaskResult,
    is_finished,
    parse_minutes,
    parse_slurm_args,
    run_local,
    run_slurm,
    slurm_executor,
    visible_gpus,
)
from rsst.study.identity import NOT_IDENTITY, canonical_json
from rsst.study.progress import StudyProgress
from rsst.study.spec import Study, read_study, resolved_study_toml

STUDY_FILE = "study.toml"
RUNS = "runs"
CONTROLS = "controls"


@dataclass
class StudyRun:
    study: Study
    root: Path
    tasks: list[RunTask]
    results: list[TaskResult]

    @property
    def failed(self) -> list[TaskResult]:
        return [r for r in self.results if r.returncode != 0]

    def log_of(self, name: str) -> Path | None:
        return next((t.log for t in self.tasks if t.name == name), None)


def identity_dir(root: Path, name: str) -> Path:
    return Path(root) / RUNS / name


def plan_tasks(study: Study, root: Path) -> list[RunTask]:
    """One task per (identity, seed), identities in study order, seeds inside."""
    tasks = []
    for exp in study.experiments:
        folder = identity_dir(root, exp.name)
        for seed in study.seeds:
            run_dir = folder / f"seed-{seed}"
            tasks.append(RunTask(name=f"{exp.name}/seed-{seed}", run_dir=run_dir,
                                 start=("run", "--config", str(folder / "run.toml"), "--seed",
                                        str(seed), "--out", str(run_dir)),
                                 seed=seed, log=folder / f"seed-{seed}.log"))
    return tasks


def plan_controls(study: Study, root: Path) -> list[tuple[RunTask, RunTask]]:
    """(source run, control) pairs, in study order: a variant's ``controls`` for every ticket
    state of its runs, and the [controls] table's kinds at its state."""
    pairs = []
    spec = study.controls
    runs = {t.name: t for t in plan_tasks(study, root)}
    for exp in study.experiments:
        wanted = [(kind, state) for state in exp.ticket_states for kind in exp.controls]
        if spec and exp.config.method in spec["methods"]:
            wanted += [(kind, spec["state"]) for kind in spec["kinds"]]
        for seed in study.seeds:
            source = runs[f"{exp.name}/seed-{seed}"]
            folder = Path(root) / CONTROLS / exp.name / f"seed-{seed}"
            for label, (kind, state) in {f"{k}-state-{s}": (k, s) for k, s in wanted}.items():
                run_dir = folder / label
                pairs.append((source, RunTask(
                    name=f"{exp.name}/seed-{seed}/{label}", run_dir=run_dir,
                    start=("ticket", str(source.run_dir), "--state", str(state),
                           "--control", kind, "--out", str(run_dir)),
                    seed=seed, log=folder / f"{label}.log")))
    return pairs


def _check_root(root: Path) -> None:
    rundir.check_writable(root, "--out")
    if root.is_dir() and not (root / STUDY_FILE).is_file() and any(
            p.name != rundir.LOCK for p in root.iterdir()):
        raise UserError(f"--out {root} holds other files and no {STUDY_FILE}: pass a new or "
                        "empty folder, or the folder of a study to continue it")


def write_layout(study: Study, root: Path) -> None:
    """study.toml, and per identity its identity.json and run.toml (same content each time)."""
    atomic_write_text(root / STUDY_FILE, resolved_study_toml(study))
    for exp in study.experiments:
        folder = identity_dir(root, exp.name)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "identity.json", {
            "name": exp.name, "method": exp.config.method, "hash": exp.hash,
            "hash_of": canonical_json(exp.settings), "settings": exp.settings,
            "not_part_of_identity": list(NOT_IDENTITY),
            "note": "hash = first 10 hex digits of sha256(hash_of): the settings that differ "
                    "from rsst run's defaults, sorted, as compact JSON"})
        save_config(exp.config, folder / "run.toml")


def slurm_options(study: Study, *, partition: str | None = None, time: str | None = None,
                  gpus_per_run: int | None = None, account: str | None = None) -> dict[str, Any]:
    """The study file's [slurm] table with the command line's --slurm-* flags over it."""
    options = dict(study.slurm)
    if partition is not None:
        options["partition"] = partition
    if time is not None:
        options["time_min"] = parse_minutes(time)
    if account is not None:
        options["account"] = account
    if gpus_per_run is not None:
        if gpus_per_run < 1:
            raise UserError(f"--slurm-gpus-per-run {gpus_per_run}: give 1 or more")
        options["gpus_per_run"] = gpus_per_run
    gpus = options.get("gpus_per_run", 1)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise UserError(f"[slurm] gpus_per_run = {gpus!r}: give a whole number ≥ 1")
    return options


def orphans(study: Study, root: Path) -> list[Path]:
    """Identity folders under DIR/runs that the study file no longer names (kept, listed)."""
    names = {e.name for e in study.experiments}
    folder = Path(root) / RUNS
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in names) \
        if folder.is_dir() else []


def run_study(study_file: Path, root: Path, *, workers: int | None = None,
              executor: str = "local", console: Console | None = None,
              cluster: str | None = None, slurm: dict[str, Any] | None = None,
              slurm_args: list[str] | None = None, live: bool | None = None) -> StudyRun:
    """Run every unfinished (identity, seed) of the study file into ``root``.

    ``workers``: runs at a time (default: one per visible GPU, else 1); ``slurm``: --slurm-*
    flags (`slurm_options`); ``slurm_args``: --slurm-arg key=value items; ``live``: the live
    table (default: when the console is a terminal)."""
    console = console or Console()
    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: give 1 or more runs at a time")
    given = {k: v for k, v in (slurm or {}).items() if v is not None}
    if executor != "slurm" and (given or slurm_args):
        flag = f"--slurm-{next(iter(given)).replace('_', '-')}" if given else "--slurm-arg"
        raise UserError(f"{flag} applies to --executor slurm: add --executor slurm or drop "
                        f"{flag}")
    extra = parse_slurm_args(slurm_args or [])
    study = read_study(study_file)
    options = slurm_options(study, **given) if executor == "slurm" else {}
    gpus = visible_gpus() if executor == "local" else []
    workers = workers or (len(gpus) if gpus else 1)
    root = Path(root).absolute()  # runs started elsewhere (a SLURM node) find it too
    _check_root(root)
    # submitit and a cluster are checked before anything is written
    slurm_exec = (slurm_executor(root / "slurm", options, workers, cluster, extra)
                  if executor == "slurm" else None)
    root.mkdir(parents=True, exist_ok=True)
    lock = rundir.RunLock(root)
    lock.acquire("a second `rsst study`")
    results: list[TaskResult] = []
    try:
        write_layout(study, root)
        tasks = plan_tasks(study, root)
        done = sum(is_finished(t.run_dir) for t in tasks)
        where = (f"{len(gpus)} GPU(s), " if gpus else "") + f"{workers} at a time"
        console.print(f"study [bold]{study.name}[/]: {len(study.experiments)} experiments × "
                      f"{len(study.seeds)} seeds = {len(tasks)} runs in {root} ({done} finished "
                      f"already; executor {executor}, {where})", highlight=False)
        for folder in orphans(study, root):
            console.print(f"not in the study file any more (kept, not run): {folder}",
                          highlight=False)
        states = {f"{e.name}/seed-{s}": e.config.states
                  for e in study.experiments for s in study.seeds}
        pairs = plan_controls(study, root)
        states.update({c.name: 1 for _, c in pairs})

        def execute(todo: list[RunTask]) -> list[TaskResult]:
            with StudyProgress(todo, states, console, live) as progress:
                if executor == "local":
                    return run_local(todo, workers, progress, gpus)
                return run_slurm(todo, progress, slurm_exec,
                                 gpus_per_run=options.get("gpus_per_run", 1))

        results = execute(tasks)
        controls = [control for source, control in pairs if is_finished(source.run_dir)]
        if controls:
            console.print(f"controls: {len(controls)} "
                          f"({sum(is_finished(c.run_dir) for c in controls)} finished already)",
                          highlight=False)
            tasks = tasks + controls
            results += execute(controls)
    finally:
        lock.release()
    console.print(progress_table(study, root))
    return StudyRun(study, root, tasks, results)


def _status(task: RunTask) -> tuple[str, int]:
    finished = len(rundir.finished_states(task.run_dir)) if task.run_dir.is_dir() else 0
    if is_finished(task.run_dir):
        return "finished", finished
    if (task.run_dir / "config.toml").is_file():
        return "interrupted", finished
    return "to do", finished


def progress_table(study: Study, root: Path) -> Any:
    """Per identity: its varied settings, and per seed its status and states done."""
    from rich.table import Table

    table = Table(title=f"study {study.name}: runs")
    for header in ("experiment", "settings", *(f"seed {s}" for s in study.seeds)):
        table.add_column(header)
    tasks = {t.name: t for t in plan_tasks(study, root)}
    for exp in study.experiments:
        cells = []
        for seed in study.seeds:
            status, states = _status(tasks[f"{exp.name}/seed-{seed}"])
            cells.append(f"{status} {states}/{exp.config.states}")
        varied = " ".join(f"{k}={v}" for k, v in exp.varied.items() if k != "method")
        table.add_row(exp.name, varied, *cells)
    return table
