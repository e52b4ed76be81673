"""The exception types for what a user can fix (bad flag, missing data, corrupt file, a run that
diverged).

The CLI turns a `UserError` into one line on stderr and its ``exit_code`` (2; 3 for
`TrainingDiverged`), without a traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input, with a message that names the problem and the fix."""

    #: the process's exit status when the CLI reports it
    exit_code: int = 2


class TrainingDiverged(UserError):
    """Training produced a non-finite loss or weights: the run stopped before saving them.

    Exit code 3, so scripts can tell "the settings diverge" from "the command was wrong" (2).
    """

    exit_code = 3
