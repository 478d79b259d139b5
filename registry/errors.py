"""Errors that reach the user, typed, with the fields a caller may need.

Every error a user can cause is a :class:`UserError`: the CLI prints its one-line message and
exits with code 2, having changed nothing. :class:`RefConflict` (a compare-and-swap lost the
race) exits 1. The mapping to exit codes lives on the classes (``exit_code``) and is applied in
one place, ``seal.cli.app.main``. Anything else is a bug.

Like huggingface_hub's errors, each class is also the builtin it means (a missing blob is a
``FileNotFoundError``, a HEAD on nothing a ``LookupError``, an invalid manifest or a missing
device a ``ValueError``) and carries the fields a caller needs instead of a sentence to parse.

>>> e = RefConflict("refs/heads/main", expected="a" * 64, actual="b" * 64)
>>> e.exit_code, e.ref
(1, 'refs/heads/main')
>>> isinstance(NoHead(), LookupError), NoHead().ref
(True, 'HEAD')
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
    """A compare-and-swap on a ref lost the race: the ref no longer points where we thought.

    ``expected`` and ``actual`` are where the ref was expected and where it was found (None: no ref).
    """

    exit_code = 1

    def __init__(self, ref: str, *, expected: str | None, actual: str | None, message: str | None = None):
        self.ref, self.expected, self.actual = ref, expected, actual
        super().__init__(message or f"{ref} moved from {expected} to {actual} while this command ran; "
                                    f"nothing was changed")


class NoHead(UserError, LookupError):
    """HEAD (or the branch ``ref``, as the user names it) points at no version, so there is
    nothing to build on."""

    def __init__(self, ref: str = "HEAD"):
        self.ref = ref
        super().__init__(f"{ref} points at nothing; run `seal checkout main` first")


class DeviceUnavailable(UserError, ValueError):
    """The device asked for (``device``; ``require_gpu``: a CUDA GPU was required) is unknown or
    not on this machine; the message says what to do."""

    def __init__(self, message: str, *, device: str, require_gpu: bool = False):
        self.device, self.require_gpu = device, require_gpu
        super().__init__(message)


class BlobMissing(SealError, FileNotFoundError):
    """The object store (``store``) does not hold the blob ``digest``."""

    def __init__(self, digest: str, store: str):
        self.digest, self.store = digest, store
        super().__init__(f"blob {digest} is missing from {store}")


class ManifestInvalid(ValueError):
    """A manifest that breaks the schema; the message names the field."""
