"""Where a result came from: rsst's version and git commit, the library versions, the device,
the command line, the host and the time.

`collect` gathers it (`rsst env` prints it); a run directory keeps it in ``provenance.json`` as
one entry per session — the first run and each ``--resume`` — each with its start time, and its
end time once it finishes (`start_session`, `end_session`). Missing pieces (no git, no CUDA) are
``null``, never guessed.
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from rsst import __version__

__all__ = ["collect", "end_session", "git_state", "start_session"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get(package)
        return getattr(module, "__version__", None)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_PACKAGE_DIR), *args], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` when rsst runs from a git checkout of itself (the repository's top
    holds the ``rsst`` package), None otherwise (an installed rsst, no git). ``dirty``: tracked
    files differ from the commit."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != _PACKAGE_DIR.parent:
        return None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    if commit is None:
        return None
    return {"commit": commit, "dirty": None if status is None else status != ""}


def _device_name(device: torch.device | None) -> str:
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    try:  # Linux names the CPU model here; platform.processor() is often empty
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def collect(device: torch.device | str | None = None) -> dict[str, Any]:
    """This process's environment: versions, git state, device, host (no times, no argv)."""
    if isinstance(device, str):
        device = torch.device(device)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "rsst_version": __version__,
        "git": git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device) if device is not None else None,
        "device_name": _device_name(device),
        # the vector ISA torch's CPU kernels use: conv widths that are multiples of its float
        # lanes (16 for AVX512, 8 for AVX2) time best on the CPU (docs/performance.md)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
    }


def start_session(path: Path, *, device: torch.device | None, resumed: bool,
                  argv: list[str] | None = None) -> None:
    """Append this session (environment, argv, start time) to ``path`` (provenance.json),
    atomically; a fresh run starts the file."""
    from rsst.atomic import atomic_write_json

    sessions = _read(path) if resumed else []
    sessions.append({**collect(device), "argv": list(sys.argv if argv is None else argv),
                     "resumed": resumed, "started": _now(), "ended": None})
    atomic_write_json(path, {"sessions": sessions})


def end_session(path: Path) -> None:
    """Set the end time of the last session in ``path`` (the run finished)."""
    from rsst.atomic import atomic_write_json

    sessions = _read(path)
    if sessions:
        sessions[-1]["ended"] = _now()
        atomic_write_json(path, {"sessions": sessions})


def _read(path: Path) -> list[dict[str, Any]]:
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    sessions = data.get("sessions") if isinstance(data, dict) else None
    return [s for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []
