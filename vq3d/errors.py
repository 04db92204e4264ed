"""Errors that the CLI reports as one line and exit code 2 (bad input, not a bug)."""


class UserError(Exception):
    """Something the user gave is wrong; the message says what and how to fix it."""
