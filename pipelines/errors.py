"""Errors that mark one raw input as bad without stopping the build."""

from __future__ import annotations


class BadInput(Exception):
    """A raw file that cannot be used: the build quarantines it and goes on.

    ``str(err)`` always names the file and the reason.
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
