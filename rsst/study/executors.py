"""Executors: each run of a study is its own ``python -m rsst run`` process.

A run is *finished* when its process exited 0; the study then writes `FINISHED` into the run
directory atomically. A run directory without it is started (no ``config.toml`` yet) or
continued with ``--resume``, which reaches exactly the result of an uninterrupted run; so a study
killed at any moment and started again ends with one finished run per (identity, seed), equal to
an uninterrupted study's. `run_task` is the whole job: the local executor calls it from a pool of
threads, the SLURM executor (submitit) calls it inside each job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsst.atomic import atomic_write_json
from rsst.errors import UserError, install_hint
from rsst.killpoint import kill_point

#: written into a run directory by the study once its process has exited 0
FINISHED = "study-finished.json"
EXECUTORS = ("local", "slurm")
#: the [slurm] keys a study file may set, passed to submitit's executor
SLURM_KEYS = {"partition": "slurm_partition", "time_min": "timeout_min",
              "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task",
              "mem_gb": "mem_gb", "account": "slurm_account", "qos": "slurm_qos",
              "constraint": "slurm_constraint"}


@dataclass(frozen=True)
class RunTask:
    """One run directory of a study (a run, or a control of one): how to start it."""

    name: str  # "<method>-<hash>/seed-<N>" (a control: ".../<control>-state-<S>")
    run_dir: Path
    #: the ``rsst`` command that starts it afresh, e.g. ("run", "--config", ...)
    start: tuple[str, ...]
    seed: int
    log: Path

    def argv(self) -> list[str]:
        """``rsst`` arguments: a fresh start, or ``run --resume`` once the run has a config."""
        if (self.run_dir / "config.toml").is_file():
            return ["run", "--resume", str(self.run_dir)]
        return list(self.start)


@dataclass(frozen=True)
class TaskResult:
    name: str
    returncode: int
    skipped: bool = False
    resumed: bool = False
    seconds: float = 0.0
    last_line: str = ""


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / FINISHED).is_file()


def _child_env(threads: int | None) -> dict[str, str]:
    """The study's environment, with rsst importable however the study itself found it."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths and "site-packages" not in root:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    if threads is not None and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1].strip()


def run_task(task: RunTask, threads: int | None = None) -> TaskResult:
    """Run (or resume) one run to its end in a child process; mark it finished on exit 0."""
    if is_finished(task.run_dir):
        return TaskResult(task.name, 0, skipped=True)
    argv = task.argv()
    resumed = argv[:2] == ["run", "--resume"]
    start = time.monotonic()
    task.log.parent.mkdir(parents=True, exist_ok=True)
    with open(task.log, "a") as log:
        log.write(f"\n$ rsst {' '.join(argv)}\n")
        log.flush()
        code = subprocess.run([sys.executable, "-m", "rsst", *argv], stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=_child_env(threads)).returncode
    seconds = time.monotonic() - start
    if code == 0:
        kill_point("study-before-marker")  # test seam: the run is done, its marker not written
        atomic_write_json(task.run_dir / FINISHED, {"seed": task.seed, "exit_code": 0,
                                                    "last_seconds": seconds})
    return TaskResult(task.name, code, resumed=resumed, seconds=seconds,
                      last_line="" if code == 0 else _last_line(task.log))


def run_local(tasks: Iterable[RunTask], workers: int, on_done: Callable[[TaskResult], None]
              ) -> list[TaskResult]:
    """``workers`` runs at a time, each its own process; CPU threads split between them."""
    tasks = list(tasks)
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    results: list[TaskResult] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_task, t, threads) for t in tasks]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            on_done(result)
    return results


def slurm_executor(folder: Path, options: dict[str, Any], workers: int,
                   cluster: str | None = None) -> Any:
    """A submitit executor for SLURM (``cluster`` "debug" or "local" runs the same code path
    without a cluster, for tests); one job per run, ``workers`` jobs at a time."""
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit, which is not installed: "
                        f"{install_hint('slurm')}") from None
    for key in options:
        if key not in SLURM_KEYS:
            raise UserError(f"[slurm] has unknown key {key!r}: valid keys are "
                            f"{', '.join(SLURM_KEYS)}")
    if cluster is None and submitit.SlurmExecutor.affinity() < 0:  # before any folder is made
        raise UserError("--executor slurm: no SLURM cluster here (srun not found); run on a "
                        "SLURM login node, or use --executor local")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster or "slurm")
    params = {SLURM_KEYS[k]: v for k, v in options.items()}
    params.setdefault("timeout_min", 24 * 60)
    params.setdefault("name", "rsst-study")
    if executor.cluster == "slurm":
        params["slurm_array_parallelism"] = workers
    executor.update_parameters(**params)
    return executor


def run_slurm(tasks: Iterable[RunTask], on_done: Callable[[TaskResult], None], executor: Any
              ) -> list[TaskResult]:
    """Submit every unfinished run as one job of a SLURM array (``executor``: from
    `slurm_executor`) and wait for them all."""
    tasks = list(tasks)
    results = [TaskResult(t.name, 0, skipped=True) for t in tasks if is_finished(t.run_dir)]
    for result in results:
        on_done(result)
    todo = [t for t in tasks if not is_finished(t.run_dir)]
    if not todo:
        return results
    jobs = executor.map_array(run_task, todo)
    for task, job in zip(todo, jobs, strict=True):
        try:
            result = job.result()
        except Exception as exc:  # the job itself failed (cancelled, out of time, node lost)
            result = TaskResult(task.name, 1, last_line=f"SLURM job {job.job_id}: "
                                f"{str(exc).splitlines()[-1] if str(exc) else type(exc).__name__}")
        results.append(result)
        on_done(result)
    return results
