"""Mistakes a user can fix: the command line prints each as one line and exits with code 2.

They subclass ``ValueError`` so that Python callers who already catch bad values keep working.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Something the user asked for cannot be done as asked; the message says what and why."""


class IncompatibleStore(UserInputError):
    """The store's classes or frame shape differ from the ones the checkpoint was trained on."""


class BadCheckpoint(UserInputError):
    """The file is not a checkpoint this package wrote (truncated, foreign, or of another kind)."""


class MissingCheckpoint(UserInputError):
    """``--resume`` asked for, but the run folder holds no checkpoint to resume from."""


class EmptySplit(UserInputError):
    """The split asked for holds no recording in this store."""


class MissingStatics(UserInputError):
    """A method that mixes static images was asked to train on a store without any."""


class BudgetTooSmall(UserInputError):
    """``max_resident_bytes`` cannot hold what must stay in memory (the static images)."""
