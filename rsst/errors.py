"""The one exception type for mistakes a user can fix (bad flag, missing data, corrupt file).

The CLI turns a `UserError` into one line on stderr and exit code 2, without a traceback;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input, with a message that names the problem and the fix."""
