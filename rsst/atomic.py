"""The one write-temp-then-rename helper: a file is either its old or its new self, never torn.

Every file rsst writes whole (config, JSON, safetensors, caches, bench results) goes through
`atomic_write`, and every JSON text rsst writes or prints goes through `json_text`, which never
emits ``NaN``/``Infinity`` (invalid JSON): a non-finite float becomes ``null`` and its dict gains
a ``"non_finite"`` entry saying what it was. It imports nothing from rsst but the kill-point test
seam (`rsst.killpoint`, itself import-free), so any module can use it without a cycle.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rsst.killpoint import kill_point


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None], *,
                 suffix: str = ".tmp") -> None:
    """Call ``write(tmp)`` on a fresh temp file beside ``path``, then rename it over ``path``.

    The temp file lives in the destination folder (so the rename is atomic on one file
    system), has a unique name (two writers never share one) and gets the usual umask-based
    mode (``mkstemp`` makes 0600). On any failure it is removed and the error propagates.
    ``suffix`` ends the temp name, for writers that insist on an extension (``.pt2``).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        kill_point(f"write:{path.name}")  # test seam: killed with the temp file complete
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def finite_json(data: Any) -> Any:
    """``data`` with every non-finite float replaced by None; a dict holding one also gets
    ``"non_finite": {key: "nan" | "inf" | "-inf"}`` so the null says why (lists just get null)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        out = {k: finite_json(v) for k, v in data.items()}
        why = {str(k): str(v) for k, v in data.items()
               if isinstance(v, float) and not math.isfinite(v)}
        if why:
            out["non_finite"] = why
        return out
    if isinstance(data, list | tuple):
        return [finite_json(v) for v in data]
    return data


def json_text(data: Any, indent: int | None = None) -> str:
    """Strict JSON (`finite_json` first, then ``allow_nan=False``): what every JSON file, line
    and ``--json`` output of rsst is made with."""
    return json.dumps(finite_json(data), indent=indent, allow_nan=False)


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Strict JSON (`json_text`), indented, with one trailing newline."""
    atomic_write_text(path, json_text(data, indent=2) + "\n")


def append_line(path: str | Path, line: str) -> None:
    """Append one line and flush it to disk, so after a crash it is whole or absent (a torn
    last line can only come from the disk itself; readers skip lines that do not parse)."""
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
