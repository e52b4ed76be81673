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
    run_local,
    run_slurm,
    slurm_executor,
)
from rsst.study.identity import NOT_IDENTITY, canonical_json
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


def run_study(study_file: Path, root: Path, *, workers: int = 1, executor: str = "local",
              console: Console | None = None, cluster: str | None = None) -> StudyRun:
    """Run every unfinished (identity, seed) of the study file into ``root``."""
    console = console or Console()
    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise UserError(f"--workers {workers}: give 1 or more runs at a time")
    study = read_study(study_file)
    root = Path(root).absolute()  # runs started elsewhere (a SLURM node) find it too
    _check_root(root)
    # submitit and a cluster are checked before anything is written
    slurm = (slurm_executor(root / "slurm", study.slurm, workers, cluster)
             if executor == "slurm" else None)
    root.mkdir(parents=True, exist_ok=True)
    lock = rundir.RunLock(root)
    lock.acquire("a second `rsst study`")
    try:
        write_layout(study, root)
        tasks = plan_tasks(study, root)
        done = sum(is_finished(t.run_dir) for t in tasks)
        console.print(f"study [bold]{study.name}[/]: {len(study.experiments)} experiments × "
                      f"{len(study.seeds)} seeds = {len(tasks)} runs in {root} ({done} finished "
                      f"already; executor {executor}, {workers} at a time)", highlight=False)
        console.print(progress_table(study, root))
        count = {"n": done, "of": len(tasks)}

        def on_done(result: TaskResult) -> None:
            if result.skipped:
                return
            count["n"] += result.returncode == 0
            word = ("resumed and finished" if result.resumed else "finished") \
                if result.returncode == 0 else f"FAILED (exit {result.returncode})"
            console.print(f"[{count['n']}/{count['of']}] {result.name} {word} in "
                          f"{result.seconds / 60:.1f} min"
                          + (f": {result.last_line}" if result.last_line else ""),
                          highlight=False)

        def execute(todo: list[RunTask]) -> list[TaskResult]:
            if executor == "local":
                return run_local(todo, workers, on_done)
            return run_slurm(todo, on_done, slurm)

        results = execute(tasks)
        controls = [control for source, control in plan_controls(study, root)
                    if is_finished(source.run_dir)]
        if controls:
            count.update(n=sum(is_finished(c.run_dir) for c in controls), of=len(controls))
            console.print(f"controls: {len(controls)} ({count['n']} finished already)",
                          highlight=False)
            tasks = tasks + controls
            results += execute(controls)
    finally:
        lock.release()
    outcome = StudyRun(study, root, tasks, results)
    console.print(progress_table(study, root))
    return outcome


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
