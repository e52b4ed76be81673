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
import queue
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rsst.atomic import atomic_write_json
from rsst.errors import UserError, install_hint
from rsst.killpoint import kill_point

#: written into a run directory by the study once its process has exited 0
FINISHED = "study-finished.json"
EXECUTORS = ("local", "slurm")
#: the [slurm] keys a study file may set, passed to submitit's executor
SLURM_KEYS = {"partition": "slurm_partition", "time_min": "timeout_min",
              "gpus_per_node": "gpus_per_node", "gpus_per_run": "gpus_per_node",
              "cpus_per_task": "cpus_per_task",
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


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them (none on a
    machine without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
              if d.strip()]
    return listed or [str(i) for i in range(torch.cuda.device_count())]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_env(slot: int, workers: int, *, gpus: list[str], cpus: int) -> dict[str, str]:
    """The environment of local worker ``slot`` of ``workers``: with GPUs its own one
    (CUDA_VISIBLE_DEVICES, round robin when workers outnumber them); on CPU an even share of
    the cores as OMP_NUM_THREADS (a value the user set is kept)."""
    env = _child_env(max(1, cpus // workers))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


def task_command(task: RunTask, gpus_per_run: int = 1) -> list[str]:
    """The child's command line: ``python -m rsst ...``, or for a run with several GPUs
    ``python -m torch.distributed.run --standalone --nproc-per-node G -m rsst run ...``."""
    argv = task.argv()
    if gpus_per_run > 1 and argv[0] == "run":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={gpus_per_run}", "-m", "rsst", *argv]
    return [sys.executable, "-m", "rsst", *argv]


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1].strip()


def run_task(task: RunTask, env: dict[str, str] | None = None, gpus_per_run: int = 1
             ) -> TaskResult:
    """Run (or resume) one run to its end in a child process; mark it finished on exit 0."""
    if is_finished(task.run_dir):
        return TaskResult(task.name, 0, skipped=True)
    command = task_command(task, gpus_per_run)
    resumed = "--resume" in command
    start = time.monotonic()
    task.log.parent.mkdir(parents=True, exist_ok=True)
    with open(task.log, "a") as log:
        log.write(f"\n$ {' '.join(command[1:])}\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL,
                              env=env if env is not None else _child_env(None)).returncode
    seconds = time.monotonic() - start
    if code == 0:
        kill_point("study-before-marker")  # test seam: the run is done, its marker not written
        atomic_write_json(task.run_dir / FINISHED, {"seed": task.seed, "exit_code": 0,
                                                    "last_seconds": seconds})
    return TaskResult(task.name, code, resumed=resumed, seconds=seconds,
                      last_line="" if code == 0 else _last_line(task.log))


class Events(Protocol):
    """What an executor tells the progress display (`rsst.study.progress`)."""

    def started(self, name: str) -> None: ...
    def finished(self, result: TaskResult) -> None: ...
    def poll(self) -> None: ...


def run_local(tasks: Iterable[RunTask], workers: int, events: Events,
              gpus: list[str] | None = None) -> list[TaskResult]:
    """``workers`` runs at a time, each its own process with its worker's environment
    (`worker_env`: a GPU each, or an even share of the CPU threads)."""
    tasks = list(tasks)
    gpus = visible_gpus() if gpus is None else gpus
    envs = [worker_env(i, workers, gpus=gpus, cpus=cpu_count()) for i in range(workers)]
    slots: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(workers):
        slots.put(i)

    def job(task: RunTask) -> TaskResult:
        if is_finished(task.run_dir):
            return TaskResult(task.name, 0, skipped=True)
        slot = slots.get()
        try:
            events.started(task.name)
            return run_task(task, envs[slot])
        finally:
            slots.put(slot)

    results: list[TaskResult] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = {pool.submit(job, t) for t in tasks}
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                results.append(result)
                events.finished(result)
            events.poll()
    return results


def parse_minutes(text: str) -> int:
    """``--slurm-time``: minutes (``90``) or SLURM's ``[D-]HH:MM[:SS]``."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?", text.strip())
    if text.strip().isdigit() and int(text) > 0:
        return int(text)
    if match:
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        total = days * 1440 + hours * 60 + minutes + (1 if seconds else 0)
        if total > 0:
            return total
    raise UserError(f"--slurm-time {text!r}: give minutes (e.g. 600) or D-HH:MM:SS "
                    "(e.g. 1-00:00:00)")


def parse_slurm_args(items: Iterable[str]) -> dict[str, str]:
    """``--slurm-arg key=value`` (repeatable): sbatch options submitit passes through."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key) or not value.strip():
            raise UserError(f"--slurm-arg {item!r}: give key=value, an sbatch option without "
                            "its dashes, e.g. --slurm-arg qos=high")
        out[key.replace("-", "_")] = value.strip()
    return out


def slurm_executor(folder: Path, options: dict[str, Any], workers: int,
                   cluster: str | None = None, extra: dict[str, str] | None = None) -> Any:
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
    if options.get("gpus_per_run", 1) > 1:  # one task; torchrun starts a process per GPU
        params["tasks_per_node"] = 1
    if extra:
        params["slurm_additional_parameters"] = dict(extra)
    params.setdefault("timeout_min", 24 * 60)
    params.setdefault("name", "rsst-study")
    if executor.cluster == "slurm":
        params["slurm_array_parallelism"] = workers
    executor.update_parameters(**params)
    return executor


def run_slurm(tasks: Iterable[RunTask], events: Events, executor: Any, gpus_per_run: int = 1
              ) -> list[TaskResult]:
    """Submit every unfinished run as one job of a SLURM array (``executor``: from
    `slurm_executor`) and wait for them all."""
    tasks = list(tasks)
    results = [TaskResult(t.name, 0, skipped=True) for t in tasks if is_finished(t.run_dir)]
    for result in results:
        events.finished(result)
    todo = [t for t in tasks if not is_finished(t.run_dir)]
    if not todo:
        return results
    jobs = executor.map_array(run_task, todo, [None] * len(todo), [gpus_per_run] * len(todo))
    for task, job in zip(todo, jobs, strict=True):
        try:
            result = job.result()
        except Exception as exc:  # the job itself failed (cancelled, out of time, node lost)
            result = TaskResult(task.name, 1, last_line=f"SLURM job {job.job_id}: "
                                f"{str(exc).splitlines()[-1] if str(exc) else type(exc).__name__}")
        results.append(result)
        events.finished(result)
        events.poll()
    return results
