"""Which XSTest prompts this registry's safety gates use: the published CSV, stored as a blob.

XSTest (Röttger et al., NAACL 2024; CC-BY-4.0) is not shipped in full with seal. A user gives
the published ``xstest_prompts.csv`` once (``seal init --xstest PATH`` or ``seal policy
xstest PATH -m REASON``); its bytes go into the object store and ``refs/meta/xstest`` points
at them, so every machine and every teammate measures the same 450 prompts, and the reflog
says who configured it and why. Without it, the 50-prompt sample shipped with seal is used and
each safety decision says so. Only the byte-identical published file is accepted.

    >>> try:
    ...     check_xstest_bytes(b"id,prompt\\n")
    ... except UserError as e:
    ...     print(str(e)[:44])
    this is not the published xstest_prompts.csv
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import UserError

#: sha256 of the published ``xstest_prompts.csv`` (450 prompts, v2 of paul-rottger/xstest).
XSTEST_SHA256 = "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a"
XSTEST_REF = "refs/meta/xstest"

__all__ = ["XSTEST_SHA256", "XSTEST_REF", "check_xstest_bytes", "read_xstest_file", "set_xstest", "xstest_bytes"]


def check_xstest_bytes(data: bytes) -> bytes:
    """The bytes, if they are the published CSV; else a UserError that says what to give."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != XSTEST_SHA256:
        shown = "..." if len(data) < 1000 else f"{digest[:12]}…"
        raise UserError(f"this is not the published xstest_prompts.csv (sha256 {shown}); give the file from "
                        "github.com/paul-rottger/xstest (v2, 450 prompts)")
    return data


def read_xstest_file(path: str | Path) -> bytes:
    """A user's file, checked before anything is written (a missing or other file is a UserError)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--xstest {path}: no such file; give the published xstest_prompts.csv")
    try:
        return check_xstest_bytes(path.read_bytes())
    except UserError as e:
        raise UserError(f"--xstest {path}: {e}") from None


def set_xstest(reg, data: bytes, *, reason: str) -> dict:
    """Store the CSV's bytes and point ``refs/meta/xstest`` at them (compare-and-swap, with a reason)."""
    check_xstest_bytes(data)
    if not reason or not reason.strip():
        raise UserError("configuring XSTest needs a reason: give -m REASON")
    from .porcelain import check_message

    check_message(reason)  # it goes into the signed reflog: no secrets, no terminal control characters
    digest = reg.store.put(data)
    old = reg.read_ref(XSTEST_REF)
    if old != digest:
        reg.move_ref(XSTEST_REF, new=digest, expected=old, reason=f"probes: xstest: {reason.strip()}")
    return {"ref": XSTEST_REF, "old": old, "new": digest, "prompts": 450}


def xstest_bytes(reg) -> bytes | None:
    """The configured CSV's bytes, or None when this registry uses seal's sample.

    A blob that is missing or not the published file is refused rather than silently replaced.
    """
    digest = reg.read_ref(XSTEST_REF)
    if digest is None:
        return None
    if not reg.store.has(digest):
        raise UserError(f"{XSTEST_REF} names {digest[:19]}, which is not in the object store; "
                        "run `seal policy xstest PATH -m REASON` again")
    return check_xstest_bytes(reg.store.get(digest))
