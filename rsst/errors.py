"""The exception types for what a user can fix (bad flag, missing data, corrupt file, a run that
diverged).

The CLI turns a `UserError` into one line on stderr and its ``exit_code`` (2; 3 for
`TrainingDiverged`), without a traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

#: The name rsst is published under on PyPI ("rsst" there is an unrelated project); the import
#: package and the command are both ``rsst``.
DISTRIBUTION = "rsst-prune"


def install_hint(extra: str) -> str:
    """How to install one of rsst's optional extras (plot, tensorboard, wandb), from PyPI and
    from a source checkout."""
    return (f"pip install '{DISTRIBUTION}[{extra}]' (in a source checkout: "
            f"pip install -e '.[{extra}]')")


class UserError(Exception):
    """A problem in the user's input, with a message that names the problem and the fix."""

    #: the process's exit status when the CLI reports it
    exit_code: int = 2


class TrainingDiverged(UserError):
    """Training produced a non-finite loss or weights: the run stopped before saving them.

    Exit code 3, so scripts can tell "the settings diverge" from "the command was wrong" (2).
    """

    exit_code = 3


def is_shown(exc: BaseException) -> bool:
    """Whether this process prints ``exc``.

    Under torchrun every rank runs the same checks on the same inputs, so only rank 0 prints a
    `UserError`, unless the error is this rank's own (``every_rank = True``: its device, a
    collective that timed out). ``quiet = True`` silences a rank that stops because another
    rank failed (see `rsst.distributed.World.settle`).
    """
    import os

    if getattr(exc, "quiet", False):
        return False
    return os.environ.get("RANK", "0") == "0" or bool(getattr(exc, "every_rank", False))
