"""A test seam, not a feature: SIGKILL this process at a named point of a run.

``tests/test_resume_kill.py`` crashes a real ``rsst run`` at exact moments (mid-epoch, between a
metrics line and its checkpoint, halfway through an atomic write, …) to prove that ``--resume``
then reaches the same result, without relying on timing. The environment variable
``RSST_TEST_KILL_AT=NAME`` (or ``NAME#N``: the N-th time NAME is reached) arms it; the process
then kills itself with SIGKILL — no cleanup, no ``finally`` — when `kill_point` reaches NAME.
Unset (always, outside the tests) `kill_point` returns at once. The names are the calls'
arguments in `rsst.loop` and `rsst.atomic`; they are not a stable interface.

Imports nothing from rsst, so the lowest layers (`rsst.atomic`) can call it.
"""

from __future__ import annotations

import os
import signal

ENV = "RSST_TEST_KILL_AT"


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, nth = spec.partition("#")
    return name, int(nth) if nth else 1


#: (name, n) from the environment when the process started; None: disarmed
TARGET = _parse(os.environ.get(ENV))
_reached = 0


def armed() -> bool:
    """Whether a kill point is set (callers skip building per-step names otherwise)."""
    return TARGET is not None


def kill_point(name: str) -> None:
    """SIGKILL this process if ``name`` is the armed point (on its N-th visit)."""
    global _reached
    if TARGET is None or name != TARGET[0]:
        return
    _reached += 1
    if _reached == TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
