"""The one exception type for bad input.

Anything a user can cause (a wrong file, a bad flag, a missing path) raises `UserError` with a one-line
message; the CLI prints it as `error: ...` and exits non-zero, with no traceback. Any other exception is a bug.
"""


class UserError(Exception):
    """Bad input, explained in one line."""
