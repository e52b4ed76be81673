"""A study's progress: in a terminal a live table of its runs, in a pipe or log one line per
run event (started, state finished, done, failed).

Executors report ``started`` and ``finished`` from any thread; the states a running run has
finished are read from its run directory by ``poll``, which the executor calls about once a
second from the study's own thread. Everything shown is printed from that thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from rsst import rundir
from rsst.study.executors import RunTask, TaskResult, is_finished

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


def states_done(run_dir: Path) -> int:
    return len(rundir.finished_states(run_dir)) if Path(run_dir).is_dir() else 0


class StudyProgress:
    """Status of every run of a study (``states``: each run's number of states)."""

    def __init__(self, tasks: Iterable[RunTask], states: dict[str, int], console: Console,
                 live: bool | None = None) -> None:
        self.tasks = {t.name: t for t in tasks}
        self.states = states
        self.console = console
        self.live_table = console.is_terminal if live is None else live
        self.status = {name: DONE if is_finished(t.run_dir) else QUEUED
                       for name, t in self.tasks.items()}
        self.done_states = {name: states_done(t.run_dir) for name, t in self.tasks.items()}
        self.note: dict[str, str] = {}
        self._events: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._live: Live | None = None

    # -- from the executors (any thread) ---------------------------------------------------
    def started(self, name: str) -> None:
        with self._lock:
            self._events.append(("started", name))

    def finished(self, result: TaskResult) -> None:
        with self._lock:
            self._events.append(("finished", result))

    # -- the study's thread ----------------------------------------------------------------
    def poll(self) -> None:
        with self._lock:
            events, self._events = self._events, []
        for kind, item in events:
            if kind == "started":
                self._on_started(item)
            else:
                self._on_finished(item)
        for name, status in self.status.items():
            if status == RUNNING:
                self._check_states(name)
        if self._live is not None:
            self._live.update(self.table())

    def _say(self, text: str) -> None:
        if self._live is None:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def _of(self, name: str) -> str:
        return f"{self.done_states[name]} of {self.states.get(name, '?')}"

    def _on_started(self, name: str) -> None:
        self.status[name] = RUNNING
        self._started[name] = time.monotonic()
        self._check_states(name, quiet=True)
        self._say(f"started {name} ({self._of(name)} states finished before)")

    def _check_states(self, name: str, quiet: bool = False) -> None:
        now = states_done(self.tasks[name].run_dir)
        if now > self.done_states[name] and not quiet:
            self._say(f"{name}: state {now - 1} finished ({now} of "
                      f"{self.states.get(name, '?')})")
        self.done_states[name] = max(now, self.done_states[name])

    def _on_finished(self, result: TaskResult) -> None:
        name = result.name
        if result.skipped:
            self.status[name] = DONE
            return
        self._check_states(name, quiet=self.status[name] != RUNNING)
        minutes = f"{result.seconds / 60:.1f} min"
        if result.returncode == 0:
            self.status[name] = DONE
            self._say(f"done {name} in {minutes}" + (" (resumed)" if result.resumed else ""))
        else:
            self.status[name] = FAILED
            self.note[name] = f"exit {result.returncode}: {result.last_line}".strip(": ")
            self._say(f"failed {name} (exit {result.returncode}) after {minutes}"
                      + (f": {result.last_line}" if result.last_line else ""))

    def table(self) -> Table:
        counts = {s: list(self.status.values()).count(s) for s in (QUEUED, RUNNING, DONE,
                                                                     FAILED)}
        table = Table(title="runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        for header in ("run", "status", "states"):
            table.add_column(header)
        style = {QUEUED: "dim", RUNNING: "cyan", DONE: "green", FAILED: "bold red"}
        for name, status in self.status.items():
            text = status
            if status == RUNNING:  # the state being trained, counted from 1
                total = self.states.get(name, 0)
                text = f"running state {min(self.done_states[name] + 1, total)} of {total}"
            if status == FAILED:
                text += f" ({self.note.get(name, '')})"
            table.add_row(name, f"[{style[status]}]{text}[/]", self._of(name))
        return table

    def __enter__(self) -> StudyProgress:
        if self.live_table:
            self._live = Live(self.table(), console=self.console, refresh_per_second=2,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.poll()
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None
