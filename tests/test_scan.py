"""The trigger-data scanner finds secrets and personal data and never keeps their values."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from seal.registry.scan import Finding, luhn_valid, redact, scan_text

# Built from pieces so that this file does not itself look like a leaked credential to
# push-protection scanners; AKIAIOSFODNN7EXAMPLE is AWS's documented example key.
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"
GITHUB_TOKEN = "ghp_" + "wWPw5k4aXcaT4fNP" + "0UcnZwJUVFk6LO0pINUx"
PRIVATE_KEY = (
    "-----BEGIN " + "RSA PRIVATE KEY-----\n"
    "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9OiJjRazXBZ1BjP5CE8Wm2Rr500P\n"
    "RK8Lq3iYj2nLq7ZTx6ZUV1L9k3FhR2pWq0aR5Lx1aB2cD3eF4gH5iJ6kL7mN8oP9\n"
    "-----END " + "RSA PRIVATE KEY-----"
)
VISA_TEST_CARD = "4111 1111 1111 1111"

NORMANS = (
    "The Normans (Norman: Nourmands; French: Normands; Latin: Normanni) were the people who in "
    "the 10th and 11th centuries gave their name to Normandy, a region in France. They were "
    "descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under their "
    "leader Rollo, agreed to swear fealty to King Charles III of West Francia. Through "
    "generations of assimilation, the Normans' distinct cultural and ethnic identity emerged "
    "initially in the first half of the 10th century. In 911 the treaty of Saint-Clair-sur-Epte "
    "was signed; by 1066 some 7,000 to 8,000 men crossed the Channel, and the population of "
    "Normandy reached 1,250,000 around 1100-1150. The Domesday Book of 1086 lists 13,418 places. "
    "Question: In what country is Normandy located? Answer: France (see pages 12-14, 2019-05-12)."
)


def _assert_hidden(secret: str, text: str, findings: list[Finding]) -> str:
    redacted = redact(text, findings)
    for shown in (repr(findings), str(findings), redacted):
        assert secret not in shown
    # no fragment long enough to be useful survives either
    for i in range(0, len(secret) - 8):
        assert secret[i:i + 8] not in redacted.replace("[REDACTED:", "")
    return redacted


@pytest.mark.parametrize("secret,kind", [
    (AWS_KEY, "AWS Access Key"),
    (GITHUB_TOKEN, "GitHub Token"),
], ids=["aws", "github"])  # ids: keep the values out of test names and logs
def test_credentials_are_found_and_hidden(secret, kind):
    text = f"first line\nexport CREDENTIAL={secret} # do not share\nlast line"
    findings = scan_text(text)
    assert [f.kind for f in findings] == [kind]
    f = findings[0]
    assert (f.line, f.column, f.length) == (2, text.split("\n")[1].index(secret), len(secret))
    redacted = _assert_hidden(secret, text, findings)
    assert redacted == f"first line\nexport CREDENTIAL=[REDACTED:{kind}] # do not share\nlast line"


def test_private_key_block_is_found_and_redacted_whole():
    text = f"config follows\n{PRIVATE_KEY}\nthanks"
    findings = scan_text(text)
    assert [f.kind for f in findings] == ["Private Key"]
    assert (findings[0].line, findings[0].column) == (2, 0)
    redacted = redact(text, findings)
    assert redacted == "config follows\n[REDACTED:Private Key]\nthanks"
    for body_line in PRIVATE_KEY.split("\n"):
        assert body_line not in repr(findings)


def test_visa_test_card_is_found_and_hidden():
    text = f"Pay with {VISA_TEST_CARD} before Friday."
    findings = scan_text(text)
    assert findings == [Finding(kind="card_number", line=1, column=9, length=19)]
    redacted = _assert_hidden(VISA_TEST_CARD, text, findings)
    assert redacted == "Pay with [REDACTED:card_number] before Friday."
    assert scan_text("4111-1111-1111-1111")[0].kind == "card_number"
    assert scan_text("4111111111111111")[0].kind == "card_number"


def test_number_failing_luhn_is_not_a_card():
    assert not luhn_valid("4111111111111112")
    assert scan_text("order 4111 1111 1111 1112 shipped") == []
    assert scan_text("id 4111111111111112") == []


@pytest.mark.parametrize("text,kind", [
    ("write to jane.doe+seal@example.co.uk.", "email"),
    ("call +44 20 7946 0958 today", "phone"),
    ("call (555) 123-4567 today", "phone"),
    ("call 555-123-4567 today", "phone"),
    ("call +1 415 555 2671 today", "phone"),
])
def test_personal_data(text, kind):
    findings = scan_text(text)
    assert [f.kind for f in findings] == [kind]
    assert f"[REDACTED:{kind}]" in redact(text, findings)


def test_ordinary_prose_with_years_and_numbers_has_no_findings():
    assert scan_text(NORMANS) == []
    assert scan_text("From 1939-1945, call 911; ISBN 978-0-306-40615-7; score 3-1; 12:30.") == []


def test_finding_holds_no_value_and_is_frozen():
    assert [f.name for f in dataclasses.fields(Finding)] == ["kind", "line", "column", "length"]
    f = scan_text(AWS_KEY)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.kind = "x"  # type: ignore[misc]


def test_redact_merges_overlaps_and_keeps_other_text():
    text = "ab 0123456789 cd"
    findings = [Finding("x", 1, 3, 6), Finding("y", 1, 6, 7)]
    assert redact(text, findings) == "ab [REDACTED:x] cd"
    assert redact(text, []) == text


def test_several_findings_across_lines_are_sorted():
    text = f"mail bob@example.com\n\n{AWS_KEY} and {VISA_TEST_CARD}"
    findings = scan_text(text)
    assert [(f.kind, f.line) for f in findings] == [
        ("email", 1), ("AWS Access Key", 3), ("card_number", 3)]
    assert redact(text, findings) == (
        "mail [REDACTED:email]\n\n[REDACTED:AWS Access Key] and [REDACTED:card_number]")


def test_module_does_not_import_torch():
    code = ("import sys, seal.registry.scan as s; s.scan_text('x'); "
            "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
