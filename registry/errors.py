"""Errors that reach the user.

Every error a user can cause is a :class:`UserError`: the CLI prints its one-line message and
exits with code 2, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SealError(Exception):
    """Base class of seal's own errors."""

    exit_code = 1


class UserError(SealError):
    """Bad input: a one-line message that says what was wrong and what to do."""

    exit_code = 2


class NotARegistry(UserError):
    """No `.seal/` folder where one was expected."""


class RevisionError(UserError):
    """A revision that is unknown or ambiguous."""


class RefConflict(SealError):
    """A compare-and-swap on a ref lost the race: the ref no longer points where we thought."""

    exit_code = 1


class SchemaError(UserError):
    """The lineage database has a schema this version of seal cannot use as it is."""
