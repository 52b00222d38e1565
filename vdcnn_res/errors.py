"""The one exception type for problems a user causes and can fix.

It subclasses ValueError so callers may catch either; the CLI prints its message on one line
(no traceback) and exits with status 2. Messages name the problem and the fix.
"""


class UserError(ValueError):
    """Bad input, path, column, label or setting; the message says what to change."""


class MissingFileError(UserError, FileNotFoundError):
    """A path the user gave does not exist."""
