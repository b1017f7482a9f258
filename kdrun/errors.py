"""The one exception type that reaches the user as a sentence instead of a traceback."""


class KdrunError(Exception):
    """A mistake the user can fix. The message names the problem and the fix, on one line."""
