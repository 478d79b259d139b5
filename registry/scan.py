"""Secrets and personal data in the data that triggers an edit.

Whatever text reaches a self-edit is stored as a blob forever and may be pushed to the Hub, so
the audit scans it first. A :class:`Finding` says *what* was found and *where*, never the value
itself, so that findings can be logged, stored in an audit and shown without leaking again::

    >>> findings = scan_text("key: AKIAIOSFODNN7EXAMPLE\\nmail bob@example.com")
    >>> [(f.kind, f.line, f.column) for f in findings]
    [('AWS Access Key', 1, 5), ('email', 2, 5)]
    >>> redact("key: AKIAIOSFODNN7EXAMPLE\\nmail bob@example.com", findings)
    'key: [REDACTED:AWS Access Key]\\nmail [REDACTED:email]'

Two sources of findings:

* ``detect-secrets`` (Yelp), run in-process line by line through its ad-hoc API
  (:func:`detect_secrets.core.scan.scan_line` under
  :func:`detect_secrets.settings.transient_settings`), with every plugin it ships except three
  (:data:`SECRET_PLUGINS_EXCLUDED`). In ad-hoc mode the two high-entropy plugins search eagerly
  and flag ordinary words ("token", "here", "RSA") on any line. ``IPPublicDetector`` is left out
  because its hits never survive detect-secrets' own default filter ``is_not_alphanumeric_string``
  (a secret must contain a letter), so it would only cost time. The credential-shaped plugins
  (AWS, GitHub, GitLab, Slack, Stripe, OpenAI, JWT, private keys, ``password = "..."`` keywords,
  ...) found nothing on the 200 SQuAD passages, their questions and reference self-edits, and
  the 450 XSTest prompts. The default heuristic filters (sequential strings, UUIDs, templated
  values, ...) stay on.
* Regular expressions for personal data that detect-secrets does not cover: e-mail addresses,
  phone numbers (international ``+CC`` numbers and separated North-American numbers) and payment
  card numbers that pass the Luhn check.

This module must not import torch.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["Finding", "scan_text", "redact", "luhn_valid", "SECRET_PLUGINS_EXCLUDED"]

#: detect-secrets plugins left out, by class name (see the module docstring for why).
SECRET_PLUGINS_EXCLUDED: frozenset[str] = frozenset(
    {"Base64HighEntropyString", "HexHighEntropyString", "IPPublicDetector"}
)


@dataclass(frozen=True)
class Finding:
    """Where a secret or a piece of personal data is, and what kind it is; never its value.

    ``line`` counts from 1 and ``column`` from 0 (a Python index into that line, lines split on
    ``"\\n"``). ``length`` counts characters from there; only a private-key block runs over
    several lines (its newlines count as one character each).
    """

    kind: str
    line: int
    column: int
    length: int


# ------------------------------------------------------------------------------ personal data

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-])"
)

# International numbers start with "+" and a country code; E.164 allows at most 15 digits and
# real numbers have at least 8, which the digit count below enforces. North-American numbers
# must use separators (the same one twice) or parentheses, so that a bare 10-digit number or
# years like "1939-1945" never look like a phone.
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,6}(?!\w)")
_PHONE_NANP = re.compile(
    r"(?<![\w+])(?:1[ .-])?(?:\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}([ .-])\d{3}\1\d{4})(?![\w-])"
)

# Card numbers: 13-19 digits, either run together or in the groupings printed on cards
# (4-4-4-4[-3], Amex 4-6-5, Diners 4-6-4), starting with an issuer digit 2-6 (Mastercard 2/5,
# Amex/Diners/JCB 3, Visa 4, Discover/UnionPay/Maestro 6). The Luhn check then removes 9 in 10
# random digit strings.
_CARD = re.compile(
    r"(?<![\d-])(?:"
    r"[2-6]\d{12,18}"
    r"|[2-6]\d{3}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"
    r"|3\d{3}([ -])\d{6}\2\d{4,5}"
    r")(?![\d-]|[ -]\d)"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies.

        >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
        (True, False)
    """
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _personal_data(line: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, kind) of e-mails, phone numbers and card numbers in one line."""
    cards: list[tuple[int, int]] = []
    for m in _CARD.finditer(line):
        if 13 <= len(_digits(m.group())) <= 19 and luhn_valid(_digits(m.group())):
            cards.append(m.span())
            yield m.start(), m.end(), "card_number"
    for m in _EMAIL.finditer(line):
        yield m.start(), m.end(), "email"
    phones: list[tuple[int, int]] = []
    for regex in (_PHONE_INTL, _PHONE_NANP):
        for m in regex.finditer(line):
            span = m.span()
            if regex is _PHONE_INTL and not 8 <= len(_digits(m.group())) <= 15:
                continue
            # A number inside a card number or an already-found phone is not a second phone.
            if any(s < span[1] and span[0] < e for s, e in cards + phones):
                continue
            phones.append(span)
            yield span[0], span[1], "phone"


# ------------------------------------------------------------------------------ detect-secrets

# detect-secrets keeps its settings in module globals, and transient_settings swaps them; two
# threads scanning at once would see each other's plugin sets.
_SETTINGS_LOCK = threading.Lock()
# Some detectors report only a regex group of their match: GitHubTokenDetector yields "ghp" for
# a whole "ghp_..." token. A hit is therefore widened to the token of word characters and
# dashes around it, so redaction never leaves the rest of a secret behind.
_TOKEN_CHARS = re.compile(r"[\w-]")
_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY-----.*?(?:-----END[ A-Z0-9]*PRIVATE KEY-----|\Z)", re.S
)


def _plugin_config() -> list[dict[str, str]]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    return [{"name": cls.__name__}
            for cls in get_mapping_from_secret_type_to_class().values()
            if cls.__name__ not in SECRET_PLUGINS_EXCLUDED]


def _widen(line: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and _TOKEN_CHARS.match(line[start - 1]):
        start -= 1
    while end < len(line) and _TOKEN_CHARS.match(line[end]):
        end += 1
    return start, end


def _secrets(lines: Sequence[str]) -> Iterator[tuple[int, int, int, str]]:
    """(line index, start, end, kind) of detect-secrets hits; values are dropped right here."""
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import transient_settings

    with _SETTINGS_LOCK, transient_settings({"plugins_used": _plugin_config()}):
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            seen: set[tuple[int, int, str]] = set()
            for hit in scan_line(line):
                value = hit.secret_value or ""
                if not value:
                    continue
                # Every occurrence of the value on the line is a finding (the same key may be
                # pasted twice); detect-secrets reports a value once per line.
                pos = line.find(value)
                while pos != -1:
                    start, end = _widen(line, pos, pos + len(value))
                    if (start, end, hit.type) not in seen:
                        seen.add((start, end, hit.type))
                        yield index, start, end, hit.type
                    pos = line.find(value, pos + len(value))
                del value  # the value goes no further than this loop


# ------------------------------------------------------------------------------ public API


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts.extend(m.end() for m in re.finditer("\n", text))
    return starts


def scan_text(text: str) -> list[Finding]:
    """Find secrets and personal data in ``text``; the findings never contain the values.

    Findings are sorted by position. A private key is reported once, spanning its whole
    ``BEGIN ... END`` block.

        >>> scan_text("card 4111 1111 1111 1111, call +44 20 7946 0958")
        [Finding(kind='card_number', line=1, column=5, length=19), Finding(kind='phone', line=1, column=31, length=16)]
        >>> scan_text("The Normans took Sicily in 1091 with 300 knights.")
        []
    """
    lines = text.split("\n")
    starts = _line_starts(text)
    spans: set[tuple[int, int, str]] = set()  # absolute (start, end, kind)
    for index, start, end, kind in _secrets(lines):
        a, b = starts[index] + start, starts[index] + end
        if kind == "Private Key":
            block = _PRIVATE_KEY_BLOCK.search(text, starts[index])
            if block is not None and block.start() <= a:
                a, b = block.start(), max(b, block.end())
        spans.add((a, b, kind))
    for index, line in enumerate(lines):
        for start, end, kind in _personal_data(line):
            spans.add((starts[index] + start, starts[index] + end, kind))
    findings = []
    for a, b, kind in sorted(spans):
        index = bisect.bisect_right(starts, a) - 1
        findings.append(Finding(kind=kind, line=index + 1, column=a - starts[index], length=b - a))
    return findings


def _absolute_spans(text: str, findings: Iterable[Finding]) -> list[tuple[int, int, str]]:
    starts = _line_starts(text)
    spans = []
    for f in findings:
        if not 1 <= f.line <= len(starts):
            raise ValueError(f"{f!r} points past the end of the text; scan this text again.")
        a = starts[f.line - 1] + f.column
        spans.append((a, min(a + f.length, len(text)), f.kind))
    return sorted(spans)


def redact(text: str, findings: Iterable[Finding]) -> str:
    """Replace each finding's span with ``[REDACTED:<kind>]``.

    Overlapping findings (a token reported by two detectors) become one placeholder, named after
    the finding that starts first (the longer one on a tie).

        >>> text = "mail bob@example.com"
        >>> redact(text, scan_text(text))
        'mail [REDACTED:email]'
    """
    merged: list[list] = []
    for a, b, kind in sorted(_absolute_spans(text, findings), key=lambda s: (s[0], -s[1])):
        if merged and a < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b, kind])
    out, pos = [], 0
    for a, b, kind in merged:
        out.append(text[pos:a])
        out.append(f"[REDACTED:{kind}]")
        pos = b
    out.append(text[pos:])
    return "".join(out)
