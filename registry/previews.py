"""The first lines of a stored blob, as text that is safe to print, for diff and audit.

A trigger or self-edit blob may be large, binary, or written by someone hostile, and its lines
end up on a terminal, in Markdown and in HTML. Only the head of the blob is read, and control
characters (terminal escapes, bidirectional overrides) are replaced before anyone sees them.

>>> printable("ok\\x1b[2Jdone\\u202e")
'ok�[2Jdone�'
>>> shorten("x" * 10, 5)
'xxxx…'
"""

from __future__ import annotations

from .store.objects import UNSAFE_CHARS

#: How much of a blob a preview reads: enough for a few lines, never the whole file.
HEAD_BYTES = 8192


def printable(text: str) -> str:
    """``text`` with every control or bidirectional-override character shown as U+FFFD."""
    return UNSAFE_CHARS.sub("\ufffd", text)


def shorten(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def blob_head(reg, digest: str | None, limit: int = HEAD_BYTES) -> bytes | None:
    """The first ``limit`` bytes of a blob, or None when it is not a digest or not in the store."""
    from .errors import SealError
    from .store.objects import is_digest

    if not is_digest(digest):
        return None
    try:
        if not reg.store.has(digest):
            return None
        with open(reg.store.path_of(digest), "rb") as f:
            return f.read(limit)
    except (OSError, SealError):
        return None


def head_text(reg, digest: str | None, limit: int = HEAD_BYTES) -> str | None:
    """The head of a blob decoded as UTF-8 (bad bytes replaced), printable; None when absent."""
    head = blob_head(reg, digest, limit)
    return None if head is None else printable(head.decode("utf-8", errors="replace"))


def first_lines(text: str, n: int, width: int) -> list[str]:
    """The first ``n`` non-blank lines of ``text``, each cut to ``width`` characters."""
    return [shorten(line, width) for line in printable(text).splitlines() if line.strip()][:n]
