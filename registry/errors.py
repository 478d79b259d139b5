"""Errors that reach the user, typed, with the fields a caller may need.

Every error a user can cause is a :class:`UserError`: the CLI prints its one-line message and
exits with code 2, having changed nothing. :class:`RefConflict` (a compare-and-swap lost the
race) exits 1. The mapping to exit codes lives on the classes (``exit_code``) and is applied in
one place, ``seal.cli.app.main``. Anything else is a bug.

>>> e = RefConflict("refs/heads/main", expected="a" * 64, actual="b" * 64)
>>> e.exit_code, e.ref
(1, 'refs/heads/main')
"""

from __future__ import annotations


class SealError(Exception):
    """Base class of seal's own errors."""

    exit_code = 1


class UserError(SealError):
    """Bad input, or a state that refuses the command: one line that says what to do. Nothing was written."""

    exit_code = 2


class NotARegistry(UserError):
    """No `.seal/` folder where one was expected."""


class RevisionError(UserError):
    """A revision that is unknown or ambiguous."""


class SchemaError(UserError):
    """The lineage database has a schema this version of seal cannot use as it is."""


class DatabaseLocked(UserError):
    """Another process held the database's write lock for longer than seal waits."""


class DatabaseDamaged(UserError):
    """The lineage database cannot be read as a seal database."""


class ObjectDamaged(UserError):
    """A blob a command needs is missing or no longer matches its digest: `seal verify` says more."""


class DatabaseUnavailable(UserError):
    """The database cannot be reached or written (server down, read-only file, full disk)."""


class SigningKeyMissing(UserError):
    """The registry's signing key is gone; seal never silently makes a new one."""


class PolicyError(UserError):
    """The policy file is invalid; the message names the key."""


class PullRefused(UserError):
    """A pulled lineage failed a check; nothing was imported."""


class UntrustedSigner(SealError):
    """A pulled lineage is signed by a key outside the trust file; nothing was imported (exit 1)."""

    exit_code = 1

    def __init__(self, message: str, signers: list[str] | None = None):
        super().__init__(message)
        self.signers = list(signers or [])


class RefConflict(SealError):
    """A compare-and-swap on a ref lost the race: the ref no longer points where we thought."""

    exit_code = 1

    def __init__(self, ref: str, *, expected: str | None, actual: str | None, message: str | None = None):
        self.ref, self.expected, self.actual = ref, expected, actual
        super().__init__(message or _conflict_message(ref, expected, actual))


def _conflict_message(ref: str, expected: str | None, actual: str | None) -> str:
    from .refs import short_name, short_target

    if expected is None:
        return f"{short_name(ref)} already exists (at {short_target(actual)}); someone else created it first"
    return (
        f"{short_name(ref)} moved from {short_target(expected)} to {short_target(actual)} while this "
        f"command ran; nothing was changed"
    )
