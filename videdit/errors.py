"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class VideditError(ValueError):
    """Bad input or an unmet precondition; the message says how to fix it."""
