"""The one write-temp-then-rename helper: a file is either its old or its new self, never torn.

Every file rsst writes whole (config, JSON, safetensors, caches, bench results) goes through
`atomic_write`. It imports nothing from rsst, so any module can use it without a cycle.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a fresh temp file beside ``path``, then rename it over ``path``.

    The temp file lives in the destination folder (so the rename is atomic on one file
    system), has a unique name (two writers never share one) and gets the usual umask-based
    mode (``mkstemp`` makes 0600). On any failure it is removed and the error propagates.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """JSON, indented, with one trailing newline."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def append_line(path: str | Path, line: str) -> None:
    """Append one line and flush it to disk, so after a crash it is whole or absent (a torn
    last line can only come from the disk itself; readers skip lines that do not parse)."""
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
