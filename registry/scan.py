"""Secrets and personal data in the text that users give seal.

Whatever text reaches a self-edit is stored as a blob forever and may be pushed to the Hub, so
the audit scans it first; so do the callers of every other user-given text (passages, questions
and answers, eval files, examples after JSON decoding, ``-m`` messages). A :class:`Finding` says
*what* was found and *where*, never the value itself, so that findings can be logged, stored in
an audit and shown without leaking again::

    >>> findings = scan_text("key: AKIAIOSFODNN7EXAMPLE\\nmail bob@example.com")
    >>> [(f.kind, f.line, f.column) for f in findings]
    [('AWS Access Key', 1, 5), ('email', 2, 5)]
    >>> redact("key: AKIAIOSFODNN7EXAMPLE\\nmail bob@example.com", findings)
    'key: [REDACTED:AWS Access Key]\\nmail [REDACTED:email]'

An AWS secret key is found by its name in any case and any of the usual forms (``key = value``,
``key: value``, ``KEY=value``, quoted or not), or as a bare 40-character value after an access
key id on the same line (a credentials CSV) or on the next one (a pasted pair)::

    >>> text = "AKIAIOSFODNN7EXAMPLE\\nwJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    >>> redact(text, scan_text(text))
    '[REDACTED:AWS Access Key]\\n[REDACTED:AWS Secret Access Key]'

Three sources of findings:

* Regular expressions of this module for the credentials that leak most (AWS key ids and
  secret keys, GitHub, Hugging Face, OpenAI and Stripe keys, PEM private-key blocks) and for
  ``name = value`` assignments whose name says secret (``password``, ``api_key``, ``*_token``,
  ...), quoted or not. Unquoted values in prose-like forms (``Secret: love``) need a digit or a
  symbol, an identifier-like name, or the line to end after them.
* ``detect-secrets`` (Yelp), run in-process through its ad-hoc API
  (:func:`detect_secrets.core.scan.scan_line` under
  :func:`detect_secrets.settings.transient_settings`), with every plugin it ships except three
  (:data:`SECRET_PLUGINS_EXCLUDED`): the long tail (Slack, GitLab, JWT, Twilio, Azure, ...). In
  ad-hoc mode the two high-entropy plugins search eagerly and flag ordinary words ("token",
  "here", "RSA") on any line. ``IPPublicDetector`` is left out because its hits never survive
  detect-secrets' own default filter ``is_not_alphanumeric_string`` (a secret must contain a
  letter), so it would only cost time. The default heuristic filters (sequential strings,
  UUIDs, templated values, ...) stay on.
* Personal data: e-mail addresses (a regular expression); phone numbers that ``phonenumbers``
  (Google's libphonenumber) reads as valid British, North-American or ``+``-prefixed
  international numbers, backed up by regular expressions for separated North-American and
  ``+CC`` numbers (so that fictional 555 numbers count too); payment card numbers written run
  together or grouped by spaces, dashes or dots, that pass the Luhn check.

None of them finds anything on the 200 SQuAD passages of the SEAL paper, their questions,
answers and reference self-edits, or the 450 XSTest prompts (``tests/test_scan.py`` checks it
where those files are present).

Scanning text that holds nothing costs well under a millisecond a line and imports neither
detect-secrets (0.15 to 0.3 s to import) nor phonenumbers (about 0.02 s), so the CLI can scan
every ``-m`` message with :func:`scan_text` itself. detect-secrets sees only the lines that hold
something one of its plugins needs (a token-like run of 20 characters, a secret-sounding name
next to a quote, ``BEGIN``, ``://...@``, ...: ``may_hold_secret``); phonenumbers sees only
lines with seven digits in a row::

    >>> scan_text("Import the adapter trained on passage 12 (3 epochs, lr 1e-4)")
    []

This module must not import torch, transformers, peft or mlflow.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["Finding", "scan_text", "redact", "luhn_valid", "SECRET_PLUGINS_EXCLUDED", "may_hold_secret",
           "secret_plugins", "secret_spans"]

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


# (line index, start, end, kind): a span inside one line of the scanned text.
LineSpan = tuple[int, int, int, str]

# ------------------------------------------------------------------------------ credentials

_AWS_KEY_ID = re.compile(
    r"(?<![A-Z0-9])(?:A3T[A-Z0-9]|ABIA|ACCA|AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"
)

# Token formats that announce themselves by a prefix. Each is matched whole, so that redaction
# removes all of it.
_TOKENS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("AWS Access Key", _AWS_KEY_ID),
    ("GitHub Token", re.compile(
        r"(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})(?![\w-])")),
    ("Hugging Face Token", re.compile(r"(?<![\w-])(?:hf_|api_org_)[A-Za-z0-9]{34,}(?![\w-])")),
    # Legacy (sk-<48>), project (sk-proj-...), service-account and admin keys. detect-secrets
    # only knows keys that carry the "T3BlbkFJ" marker.
    ("OpenAI Token", re.compile(r"(?<![\w-])sk-(?=[\w-]*\d)[A-Za-z0-9_-]{32,}(?![\w-])")),
    # Test-mode keys too: detect-secrets only knows live ones.
    ("Stripe Access Key", re.compile(r"(?<![\w-])[rs]k_(?:live|test)_[0-9A-Za-z]{24,}(?![\w-])")),
)

# The names AWS's own tools give the secret key: aws_secret_access_key (credentials file, boto),
# AWS_SECRET_ACCESS_KEY (environment), SecretAccessKey (JSON of `aws iam create-access-key`).
_AWS_SECRET_ASSIGNED = re.compile(
    r"(?i:aws[\w.-]{0,20}?secret[\w.-]{0,20}?|secret[_.-]?access[_.-]?key\w*)"
    r"['\"\]]{0,2}[ \t]*(?::=|=>|=|:)[ \t]*['\"]?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)
# Next to a key id a bare value is a secret key only if it looks random: 40 characters of
# base64 with a lower-case letter, a capital and a digit (a git sha, all lower-case, is not).
_AWS_SECRET_SHAPE = re.compile(
    r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*\d)"
    r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)

_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----.*?"
    r"(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|\Z)", re.S
)

# Secret-sounding names, after detect-secrets' keyword DENYLIST, plus tokens and credentials.
# A glued suffix is not allowed ("tokenizer", "max_tokens" are no secrets); a separated one is.
_SECRET_NAME = (
    r"(?:pass(?:word|wd|phrase)?|pwd|secret|api[_.-]?key|apikey|token|credentials?"
    r"|contrase(?:ñ|n)a"
    r"|(?:access|auth|private|priv|client|account|service|db|database|signing|encryption)[_.-]?key)"
)
_ASSIGNMENT = re.compile(
    rf"(?<![\w.-])(?P<name>[\w.-]*?{_SECRET_NAME}(?:[_.-][\w.-]*)?)['\"\]]{{0,2}}[ \t]*"
    r"(?P<op>:=|=>|==?|:)[ \t]*(?P<quote>['\"`]?)(?P<value>[^\s'\"`,;]+)(?P=quote)",
    re.I,
)
# Values that name or fetch a secret rather than hold one: None, ${VAR}, <your key>, getpass(),
# os.environ["X"], ****.
_PLACEHOLDER = re.compile(
    r"(?i)^(?:none|null|nil|true|false|undefined|required|optional|str|string|bytes|int)$"
    r"|^[$<{%@&*]|[()\[\]{}]|^(.)\1*$"
)
_NUMBER_IS_SECRET = re.compile(r"(?i)pass|pwd|contrase|secret")


def _identifier_like(name: str) -> bool:
    """``api_key``, ``DB.PASSWORD``, ``apiKey``, ``TOKEN``: written by a program, not in prose."""
    return bool(re.search(r"[_.-]|[a-z][A-Z]", name)) or (name.isupper() and len(name) > 2)


def _assigned_value(m: re.Match[str], line: str) -> bool:
    """Whether an assignment's value is a secret rather than prose or a reference to one."""
    value, name = m["value"], m["name"]
    if len(value) < 4 or _PLACEHOLDER.search(value) or value.lower() == name.lower():
        return False
    if value.isdigit() and not _NUMBER_IS_SECRET.search(name):
        return False  # token_count: 1000
    if m["quote"] or m["op"] != ":":
        return True
    return (not value.isalpha() or _identifier_like(name)
            or not line[m.end():].strip(" \t.!?"))


def _credentials(lines: Sequence[str]) -> Iterator[LineSpan]:
    """Prefixed tokens, AWS secret keys and secret-named assignments, line by line."""
    for index, line in enumerate(lines):
        for kind, regex in _TOKENS:
            for m in regex.finditer(line):
                yield index, m.start(), m.end(), kind
        for m in _AWS_SECRET_ASSIGNED.finditer(line):
            yield index, m.start(1), m.end(1), "AWS Secret Access Key"
        key_id = _AWS_KEY_ID.search(line)
        if key_id is not None:
            neighbours = [(index, key_id.end())]
            if index + 1 < len(lines):
                neighbours.append((index + 1, 0))
            for at, pos in neighbours:
                for m in _AWS_SECRET_SHAPE.finditer(lines[at], pos):
                    yield at, m.start(), m.end(), "AWS Secret Access Key"
        for m in _ASSIGNMENT.finditer(line):
            if _assigned_value(m, line):
                yield index, m.start("value"), m.end("value"), "Secret Keyword"


# ------------------------------------------------------------------------------ personal data

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-])"
)

# The data seal sees is English: national numbers are read as British or North-American ones;
# numbers starting with "+" are read in any country.
_PHONE_REGIONS = ("US", "GB")
# No phone number has fewer than seven digits; lines without such a run skip phonenumbers.
_DIGIT_RUN = re.compile(r"\d(?:[ ().-]{0,2}\d){6}")
# A run of digits alone is a phone only after a word that says so ("call 4155552671"); else
# 2147483647 would be a number in Dallas.
_PHONE_CUE = re.compile(r"(?i)\b(?:tel|phone|call|mobile|cell|fax|whatsapp|sms|text)\b\W{0,3}$")
# Backups for numbers phonenumbers finds invalid (fictional 555 numbers, new ranges).
# International numbers start with "+" and a country code; E.164 allows at most 15 digits and
# real numbers have at least 8, which the digit count below enforces. North-American numbers
# must use separators (the same one twice) or parentheses, so that a bare 10-digit number or
# years like "1939-1945" never look like a phone.
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,6}(?!\w)")
_PHONE_NANP = re.compile(
    r"(?<![\w+])(?:1[ .-])?(?:\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}([ .-])\d{3}\1\d{4})(?![\w-])"
)

# Card numbers: 13-19 digits, either run together or in the groupings printed on cards
# (4-4-4-4[-3], Amex 4-6-5, Diners 4-6-4) separated by spaces, dashes or dots, starting with an
# issuer digit 2-6 (Mastercard 2/5, Amex/Diners/JCB 3, Visa 4, Discover/UnionPay/Maestro 6).
# The Luhn check then removes 9 in 10 random digit strings.
_CARD = re.compile(
    r"(?<![\d-])(?<!\d\.)(?:"
    r"[2-6]\d{12,18}"
    r"|[2-6]\d{3}([ .-])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"
    r"|3\d{3}([ .-])\d{6}\2\d{4,5}"
    r")(?![\d-]|[ .-]\d)"
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


def _valid_phones(line: str) -> Iterator[tuple[int, int]]:
    """Spans of the numbers that libphonenumber finds valid; imported only for digit runs."""
    if not _DIGIT_RUN.search(line):
        return
    import phonenumbers

    valid = phonenumbers.Leniency.VALID
    for region in _PHONE_REGIONS:
        for m in phonenumbers.PhoneNumberMatcher(line, region, leniency=valid):
            if m.raw_string.isdigit() and not _PHONE_CUE.search(line, 0, m.start):
                continue
            yield m.start, m.end


def _phone_candidates(line: str) -> Iterator[tuple[int, int]]:
    yield from _valid_phones(line)
    for regex in (_PHONE_INTL, _PHONE_NANP):
        for m in regex.finditer(line):
            if regex is _PHONE_INTL and not 8 <= len(_digits(m.group())) <= 15:
                continue
            yield m.span()


def _personal_data(line: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, kind) of e-mails, phone numbers and card numbers in one line."""
    taken: list[tuple[int, int]] = []
    for m in _CARD.finditer(line):
        if 13 <= len(_digits(m.group())) <= 19 and luhn_valid(_digits(m.group())):
            taken.append(m.span())
            yield m.start(), m.end(), "card_number"
    for m in _EMAIL.finditer(line):
        yield m.start(), m.end(), "email"
    for start, end in _phone_candidates(line):
        # A number inside a card number or an already-found phone is not a second phone.
        if any(s < end and start < e for s, e in taken):
            continue
        taken.append((start, end))
        yield start, end, "phone"


# ------------------------------------------------------------------------------ detect-secrets

# detect-secrets keeps its settings in module globals, and transient_settings swaps them; two
# threads scanning at once would see each other's plugin sets.
_SETTINGS_LOCK = threading.Lock()
# Some detectors report only a regex group of their match: GitHubTokenDetector yields "ghp" for
# a whole "ghp_..." token. A hit is therefore widened to the token of word characters and
# dashes around it, so redaction never leaves the rest of a secret behind.
_TOKEN_CHARS = re.compile(r"[\w-]")
# What each plugin in use needs on a line before it can report anything: a token-like run of 20
# characters (AWS, GitHub, GitLab, Stripe, Twilio, Azure, Discord, Telegram, Mailchimp, IBM, ...),
# or the shorter shapes of Artifactory, Slack, JWT, basic auth in a URL, private keys and npm.
# The keyword plugin needs a quote (its ad-hoc regexes all require one) and one of its
# DENYLIST stems. tests/test_scan.py checks an example of every plugin against this.
_SECRET_SHAPES = re.compile(
    r"[\w+/=-]{20}|A(?:KC|P[\dA-F])[A-Za-z0-9]{8}|(?i:xox[abposr]-)|eyJ|://\S*@|BEGIN|PuTTY"
    r"|_authToken"
)
_KEYWORD_STEM = re.compile(r"(?i)key|pass|pwd|secret|contrase")
_QUOTE = re.compile(r"['\"`]")


def may_hold_secret(line: str) -> bool:
    """Whether detect-secrets could report anything on ``line``; if not, it is not asked."""
    if _SECRET_SHAPES.search(line):
        return True
    return bool(_QUOTE.search(line) and _KEYWORD_STEM.search(line))


def secret_plugins() -> list[dict[str, str]]:
    """The detect-secrets plugins seal runs: every one it ships but :data:`SECRET_PLUGINS_EXCLUDED`."""
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


def secret_spans(lines: Sequence[str]) -> Iterator[LineSpan]:
    """detect-secrets hits on the lines that may hold one; values are dropped right here."""
    candidates = [(i, line) for i, line in enumerate(lines) if may_hold_secret(line)]
    if not candidates:
        return
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import transient_settings

    with _SETTINGS_LOCK, transient_settings({"plugins_used": secret_plugins()}):
        for index, line in candidates:
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

# When findings overlap they become one, named after the most specific kind among them:
# detect-secrets calls an AWS secret key an "AWS Access Key", and its keyword plugin reports
# values that a specific detector has named already.
_SPECIFICITY = {"Secret Keyword": 0, "email": 1, "phone": 1, "card_number": 1,
                "AWS Secret Access Key": 3}


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts.extend(m.end() for m in re.finditer("\n", text))
    return starts


def _merge(spans: Iterable[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Sorted spans with overlaps joined; a tie in specificity keeps the first, longest one."""
    merged: list[list] = []
    for a, b, kind in sorted(spans, key=lambda s: (s[0], -s[1])):
        if merged and a < merged[-1][1]:
            last = merged[-1]
            last[1] = max(last[1], b)
            if _SPECIFICITY.get(kind, 2) > _SPECIFICITY.get(last[2], 2):
                last[2] = kind
        else:
            merged.append([a, b, kind])
    return [(a, b, kind) for a, b, kind in merged]


def _line_spans(lines: Sequence[str]) -> Iterator[LineSpan]:
    yield from _credentials(lines)
    yield from secret_spans(lines)
    for index, line in enumerate(lines):
        for start, end, kind in _personal_data(line):
            yield index, start, end, kind


def scan_text(text: str) -> list[Finding]:
    """Find secrets and personal data in ``text``; the findings never contain the values.

    Findings are sorted by position and never overlap. A private key is reported once,
    spanning its whole ``BEGIN ... END`` block. Cheap when there is nothing to find (see the
    module docstring), so short strings such as commit messages can go through it too.

        >>> scan_text("card 4111.1111.1111.1111, call +44 20 7946 0958")
        [Finding(kind='card_number', line=1, column=5, length=19), Finding(kind='phone', line=1, column=31, length=16)]
        >>> scan_text("The Normans took Sicily in 1091 with 300 knights.")
        []
    """
    starts = _line_starts(text)
    lines = text.split("\n")
    spans = [(starts[i] + a, starts[i] + b, kind) for i, a, b, kind in _line_spans(lines)]
    spans += [(m.start(), m.end(), "Private Key") for m in _PRIVATE_KEY_BLOCK.finditer(text)]
    findings = []
    for a, b, kind in _merge(spans):
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
    return spans


def redact(text: str, findings: Iterable[Finding]) -> str:
    """Replace each finding's span with ``[REDACTED:<kind>]``.

    Overlapping findings (a token reported by two detectors) become one placeholder, named after
    the most specific kind, else the finding that starts first (the longer one on a tie).

        >>> text = "mail bob@example.com"
        >>> redact(text, scan_text(text))
        'mail [REDACTED:email]'
    """
    out, pos = [], 0
    for a, b, kind in _merge(_absolute_spans(text, findings)):
        out.append(text[pos:a])
        out.append(f"[REDACTED:{kind}]")
        pos = b
    out.append(text[pos:])
    return "".join(out)
