"""The run directory: its file names, format version, and every read and write of its files.

```
RUN_DIR/
  config.toml              the resolved config (`rsst run --config` reruns it)
  metrics.jsonl            one JSON line per epoch and per state
  state_XX/
    weights.safetensors    the state's masked weights + ``<param>.mask`` (a masked export)
    state.json             the state's record
  summary.json             {"states": [records], ...}
  checkpoint.safetensors   model, momentum, masks, rewind point and position (for --resume)
  provenance.json          rsst version and git commit, library versions, device, argv, host,
                           start and end time of every session (`rsst.provenance`)
  .lock                    held (flock) by the process running in the directory
```

Whole files are written atomically (`rsst.atomic`); metric lines are appended and flushed, and
`trim_metrics` drops the lines a killed run wrote after its last checkpoint. A state's own files
(``state_XX/``) and the model contract in them belong to `rsst.statefile`; their names are
re-exported here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from rsst.atomic import (
    append_line,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    json_text,
)
from rsst.errors import UserError
from rsst.statefile import (
    FORMAT_VERSION,
    STATE_RECORD,
    STATE_WEIGHTS,
    finished_states,
    read_state_record,
    save_tensors,
    state_dir,
    state_weights,
)

__all__ = [
    "CHECKPOINT", "CONFIG", "FORMAT_VERSION", "LOCK", "METRICS", "PROVENANCE", "STATE_RECORD",
    "STATE_WEIGHTS",
    "SUMMARY", "RunLock", "append_line", "append_metrics", "atomic_write", "atomic_write_json",
    "atomic_write_text", "check_fresh_target", "check_resume_target", "check_writable", "claim",
    "default_run_dir", "exists_error", "finished_states", "has_metrics", "in_use",
    "is_stale_temp", "prepare_fresh",
    "load_checkpoint", "read_state_record", "remove_stale_temps", "save_checkpoint",
    "save_tensors", "state_dir", "state_weights", "trim_metrics", "write_summary",
]

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.safetensors"
PROVENANCE = "provenance.json"
LOCK = ".lock"


# -- names ----------------------------------------------------------------------------------------
def remove_stale_temps(run_dir: Path) -> None:
    """Delete the temp files of atomic writes a killed process left (call under the lock)."""
    run_dir = Path(run_dir)
    for tmp in [*run_dir.glob(".*.tmp"), *run_dir.glob("state_*/.*.tmp")]:
        tmp.unlink(missing_ok=True)


def is_stale_temp(path: Path) -> bool:
    """A leftover temp file of `rsst.atomic.atomic_write` (``.NAME.XXXX.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file()


# -- the directory itself -------------------------------------------------------------------------
def check_writable(run_dir: Path, flag: str) -> None:
    """``run_dir`` is, or can be created as, a directory this process can write in; otherwise
    one line and nothing created. Probed by making (and removing) a temp folder in the nearest
    existing ancestor, which tells the truth for root and read-only file systems too."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{flag} {run_dir} is a file, not a directory; choose another {flag}")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {run_dir} lies under {existing}, which is a file; choose a "
                        "path inside a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rsst-probe-", dir=existing))
    except OSError as exc:
        where = "" if existing == run_dir else f" (in {existing})"
        raise UserError(f"{flag} {run_dir}: cannot write there{where}: {exc.strerror}; choose "
                        "a writable directory or change its permissions") from None


# -- the lifecycle: create, lock, resume ----------------------------------------------------------
def default_run_dir(method: str, arch: str, dataset: str) -> Path:
    """``runs/METHOD-ARCH-DATASET-YYYYmmdd-HHMMSS`` (``:`` and ``/`` of an arch become ``-``)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    arch = arch.replace(":", "-").replace("/", "-")
    return Path("runs") / f"{method}-{arch}-{dataset}-{stamp}"


def in_use(run_dir: Path) -> bool:
    """The directory exists and holds something besides a lock file and the temp files of a
    run killed during its setup."""
    return run_dir.is_dir() and any(p.name != LOCK and not is_stale_temp(p)
                                    for p in run_dir.iterdir())


def exists_error(run_dir: Path) -> UserError:
    return UserError(f"run directory {run_dir} already exists: pass --resume {run_dir} to "
                     "continue it, --overwrite to replace it, or another --out")


def _not_a_run(run_dir: Path) -> UserError:
    return UserError(f"--overwrite refuses to delete {run_dir}: it is not an rsst run "
                     "directory (no config.toml); choose another --out")


def check_resume_target(run_dir: Path) -> None:
    """``--resume DIR`` names a run directory this process can write in."""
    if not (run_dir / CONFIG).is_file():
        raise UserError(f"{run_dir} is not an rsst run directory (no config.toml); pass the "
                        "directory `rsst run` printed")
    check_writable(run_dir, "--resume")


def check_fresh_target(run_dir: Path, overwrite: bool) -> None:
    """``--out DIR`` can hold a new run (``--overwrite`` deletes only a run directory)."""
    check_writable(run_dir, "--out")
    if overwrite and in_use(run_dir) and not (run_dir / CONFIG).is_file():
        raise _not_a_run(run_dir)


def claim(run_dir: Path, lock: RunLock, action: str, *, fresh: bool, overwrite: bool) -> None:
    """Before any write: take the lock of an existing run directory (refused, naming the
    holder, while another run is live) and refuse a fresh run into a used one."""
    if (run_dir / CONFIG).is_file() or (run_dir / LOCK).exists():
        lock.acquire(action)
    if fresh and in_use(run_dir) and not overwrite:
        raise exists_error(run_dir)


def prepare_fresh(run_dir: Path, lock: RunLock, action: str, overwrite: bool,
                  write_config: Callable[[Path], None]) -> None:
    """Create or (``--overwrite``) empty the run directory under the lock, then
    ``write_config(run_dir / CONFIG)``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not lock.held:
        lock.acquire(action)
    if in_use(run_dir):
        if not overwrite:  # another run filled it between our first look and our lock
            raise exists_error(run_dir)
        if not (run_dir / CONFIG).is_file():
            raise _not_a_run(run_dir)
        # everything but the lock we hold; the checkpoint first and config.toml last, so that a
        # kill halfway leaves a directory --overwrite accepts again and --resume refuses
        order = {CHECKPOINT: 0, CONFIG: 2}
        for child in sorted(run_dir.iterdir(), key=lambda p: order.get(p.name, 1)):
            if child.name == LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    remove_stale_temps(run_dir)
    write_config(run_dir / CONFIG)


# -- checkpoint -----------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor],
                    metadata: dict[str, str]) -> None:
    save_tensors(Path(run_dir) / CHECKPOINT, tensors, metadata)


def load_checkpoint(run_dir: Path, device: str | torch.device
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """(tensors, metadata) of the checkpoint, None when there is none; unreadable → UserError."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        tensors = load_file(str(path), device=str(device))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise checkpoint_error(run_dir, exc) from None
    return tensors, meta


def checkpoint_error(run_dir: Path, exc: BaseException) -> UserError:
    return UserError(f"checkpoint {Path(run_dir) / CHECKPOINT} is corrupt or from another model "
                     f"({type(exc).__name__}); start over with "
                     f"`rsst run --config {Path(run_dir) / CONFIG} --overwrite`")


# -- metrics and summary --------------------------------------------------------------------------
def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a line is either whole or absent)."""
    append_line(Path(run_dir) / METRICS, json_text(record))


def has_metrics(run_dir: Path) -> bool:
    """Whether metrics.jsonl holds any line (a run that trained at least one epoch)."""
    path = Path(run_dir) / METRICS
    return path.is_file() and path.read_text().strip() != ""


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every whole line of metrics.jsonl, in order (a torn last line is skipped)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def trim_metrics(run_dir: Path, state: int, epoch: int) -> None:
    """Keep only the lines up to checkpoint position (state, epoch): a run killed between a line
    and its checkpoint wrote lines that its resume writes again. Torn lines are dropped."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r["kind"] == "state" and r["state"] < state or (
                r["kind"] == "epoch" and (r["state"], r["epoch"]) <= (state, epoch)):
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / SUMMARY, summary)


# -- the lock -------------------------------------------------------------------------------------
class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock`` for the lifetime of the process's run.

    The kernel drops the lock when its process dies, so a lock file left by a killed run
    blocks nothing; the file holds the holder's pid only to name it in the refusal.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self, what: str) -> None:
        """Take the lock or raise a UserError naming the holding process (``what`` is the
        refused action, e.g. "--resume")."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = self._holder()
            raise UserError(f"{self.path.parent} is in use by a running rsst (pid {holder}): "
                            f"{what} refused; wait for it to finish, stop it, or pass another "
                            "--out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
