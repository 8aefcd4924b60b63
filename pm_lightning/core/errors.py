"""The user-error type: a file, flag or value a user gave that cannot be used (commands print it as one line)."""

from __future__ import annotations


class BadInput(ValueError):
    """A user-supplied file or value that cannot be used; the message names it and the fix."""
