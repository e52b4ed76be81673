"""The one exception type for mistakes a user can fix (bad flag, missing data, corrupt file).

The CLI turns a `UserError` into one line on stderr and exit code 2, without a traceback;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input, with a message that names the problem and the fix."""


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
