"""The trigger-data scanner finds secrets and personal data and never keeps their values."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from seal.registry.scan import Finding, luhn_valid, redact, scan_text
from seal.registry.scan import may_hold_secret, secret_plugins, secret_spans

# Built from pieces so that this file does not itself look like a leaked credential to
# push-protection scanners; AKIAIOSFODNN7EXAMPLE is AWS's documented example key.
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"
GITHUB_TOKEN = "ghp_" + "wWPw5k4aXcaT4fNP" + "0UcnZwJUVFk6LO0pINUx"
# AWS's documented example secret access key.
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9" + ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4g"
       "RG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
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
    assert scan_text("4111.1111.1111.1111")[0].kind == "card_number"
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


# ------------------------------------------------------------------ every kind the brief names

# (line around the value, value, kind): the value alone must be found, and only it.
KINDS = [
    ("export CREDENTIAL={}", AWS_KEY, "AWS Access Key"),
    ("aws_secret_access_key = {}", AWS_SECRET, "AWS Secret Access Key"),
    ("token: {}", GITHUB_TOKEN, "GitHub Token"),
    ("GH={}", "github_pat_" + "11ABCDEFG0abcdefghijkl_" + "abcdefghijABCDEFGHIJ0123456789"
     "abcdefghijABCDEFGHIJ012345678", "GitHub Token"),
    ("remote uses {} now", "glpat-" + "x1Y2z3W4v5U6t7S8r9Q0", "GitLab Token"),
    ("bot {} posts", "xoxb-" + "123456789012-1234567890123-" + "abcdefghijABCDEFGHIJabcd",
     "Slack Token"),
    ("charge with {}", "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "Stripe Access Key"),
    ("charge with {}", "sk_test_" + "4eC39HqLyjWDarjtT1zdp7dc", "Stripe Access Key"),
    ("OPENAI_API_KEY={}", "sk-" + "abcdefghij0123456789T3BlbkFJabcdefghij0123456789",
     "OpenAI Token"),
    ("client = OpenAI(api_key='{}')", "sk-proj-" + "Ab3dEf6hIj9lMn2pQr5tUv8xYz_1bC4eF7hI0kL3nO-6qR"
     "9tU2wX5zA8cD1fG4", "OpenAI Token"),
    ("Authorization: Bearer {}", JWT, "JSON Web Token"),
    ('db_password = "{}"', "hunter2!", "Secret Keyword"),
    ("password = {}", "hunter2", "Secret Keyword"),
    ("api_key: {}", "abcd1234efgh", "Secret Keyword"),
    ("HF_TOKEN={}", "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ01234567", "Hugging Face Token"),
    ("org token {} here", "api_org_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ01234567", "Hugging Face Token"),
    ("write to {} today", "jane.doe+seal@example.co.uk", "email"),
    ("call {} today", "+1 415 555 2671", "phone"),
    ("pay with {} now", "4111.1111.1111.1111", "card_number"),
]


@pytest.mark.parametrize("template,value,kind", KINDS, ids=[f"{k}-{i}" for i, (_, _, k) in
                                                             enumerate(KINDS)])
def test_each_kind_is_found_at_its_value_and_hidden(template, value, kind):
    line = template.format(value)
    text = f"first line\n{line}\nlast line"
    findings = scan_text(text)
    assert findings == [Finding(kind=kind, line=2, column=line.index(value), length=len(value))]
    _assert_hidden(value, text, findings)


@pytest.mark.parametrize("line", [
    "aws_secret_access_key = {}",
    "aws_secret_access_key={}",
    "aws_secret_access_key: {}",
    "AWS_SECRET_ACCESS_KEY={}",
    "export AWS_SECRET_ACCESS_KEY={}",
    "    Aws_Secret_Access_Key: '{}'",
    'aws_secret_access_key = "{}"',
    '{{"SecretAccessKey": "{}"}}',
    "aws_secret_key={}",
])
def test_aws_secret_key_in_env_ini_yaml_and_json_forms(line):
    line = line.format(AWS_SECRET)
    findings = scan_text(f"[default]\n{line}")
    # One finding, even where detect-secrets also reports the quoted forms (twice).
    assert findings == [Finding("AWS Secret Access Key", 2, line.index(AWS_SECRET), 40)]
    _assert_hidden(AWS_SECRET, line, scan_text(line))


@pytest.mark.parametrize("text", [
    f"{AWS_KEY}\n{AWS_SECRET}",
    f"id {AWS_KEY}\n  {AWS_SECRET}  \nregion eu-west-1",
    f"bob,,{AWS_KEY},{AWS_SECRET}",  # the credentials.csv the console hands out
], ids=["pair", "indented", "csv"])
def test_bare_aws_secret_next_to_a_key_id_is_found_and_redacted(text):
    findings = scan_text(text)
    assert [f.kind for f in findings] == ["AWS Access Key", "AWS Secret Access Key"]
    redacted = redact(text, findings)
    assert AWS_KEY not in redacted and AWS_SECRET not in redacted
    _assert_hidden(AWS_SECRET, text, findings)


@pytest.mark.parametrize("text", [
    AWS_SECRET,  # no key id near it, no name: just a string
    f"{AWS_KEY}\nfirst\n{AWS_SECRET}",  # two lines away
    f"{AWS_KEY}\n{'0123456789abcdef0123456789abcdef01234567'}",  # a git sha is not random base64
], ids=["alone", "far", "sha"])
def test_bare_40_character_values_away_from_key_ids_are_left(text):
    assert [f.kind for f in scan_text(text)] == ["AWS Access Key"] * (AWS_KEY in text)


@pytest.mark.parametrize("text", [
    "tokenizer: gpt2",
    "max_new_tokens=256",
    "token_count: 1000",
    "password = None",
    'api_key = os.environ["OPENAI_API_KEY"]',
    "password: ${DB_PASSWORD}",
    "api_key=<your key here>",
    "password = getpass()",
    "The secret: ingredients matter more than heat.",
    "What is the password of my neighbour's wifi?",
    "Khyber Pass: a mountain pass between Pakistan and Afghanistan",
])
def test_secret_names_without_a_secret_value_are_left(text):
    assert scan_text(text) == []


@pytest.mark.parametrize("text,kind", [
    ("call 020 7946 0958 today", "phone"),  # British national format, via phonenumbers
    ("call 4155552671 today", "phone"),  # digits alone, after a word that says phone
    ("call 415.555.2671 today", "phone"),
    ("Tel: +33 1 42 68 53 00", "phone"),
    ("card 4111-1111-1111-1111 exp", "card_number"),
    ("card 3782 822463 10005 exp", "card_number"),  # Amex test number, 4-6-5
])
def test_more_personal_data(text, kind):
    findings = scan_text(text)
    assert [f.kind for f in findings] == [kind]
    assert redact(text, findings).count("[REDACTED:") == 1


@pytest.mark.parametrize("text", [
    "max int 2147483647 bytes",  # a valid Dallas number, but nothing says phone
    "ISBN 0-306-40615-2 and 978-0-306-40615-7",
    "The war lasted 1939–1945 (pages 1939-1945).",
    "1,250,000 people; 13,418 places; 20,000 men",
    "pi is 3.14159265358979323846",
    "4111.1111.1111.1112",  # fails Luhn
    "version 4.1111.1111.1111",
])
def test_numbers_that_are_no_phone_or_card(text):
    assert scan_text(text) == []


def test_multiline_findings_are_sorted_and_all_redacted():
    text = (f"config:\n  user: bob@example.com\n  id: {AWS_KEY}\n  {AWS_SECRET}\n"
            f"{PRIVATE_KEY}\nhf_{'aBcDeFgHiJkLmNoPqRsTuVwXyZ01234567'}")
    findings = scan_text(text)
    assert [(f.kind, f.line) for f in findings] == [
        ("email", 2), ("AWS Access Key", 3), ("AWS Secret Access Key", 4), ("Private Key", 5),
        ("Hugging Face Token", 9)]
    redacted = redact(text, findings)
    assert redacted == (
        "config:\n  user: [REDACTED:email]\n  id: [REDACTED:AWS Access Key]\n"
        "  [REDACTED:AWS Secret Access Key]\n[REDACTED:Private Key]\n"
        "[REDACTED:Hugging Face Token]")


# ------------------------------------------------------------------ the cheap path

# The shortest line each detect-secrets plugin in use reports: every one must pass the gate
# that decides which lines detect-secrets sees. A plugin added by a later detect-secrets
# fails test_every_plugin_in_use_has_an_example until it gets one here.
PLUGIN_EXAMPLES = {
    "ArtifactoryDetector": ("artifactory: AKC" + "p8jQ3zR5tX", "Artifactory Credentials"),
    "AWSKeyDetector": (f"id {AWS_KEY}", "AWS Access Key"),
    "AzureStorageKeyDetector": (
        "AccountKey=" + "lJzRc1YdHaAA2KCNJJ1tkYwF/+mKK6Ygw0NGe170Xu592euJv2wYUtBlV8z+qnlcNQSnI"
        "YVTkLWntUO1F8j8rQ==", "Azure Storage Account access key"),
    "BasicAuthDetector": ("https://bob:" + "s3cr3tpw@db.example.com/x", "Basic Auth Credentials"),
    "CloudantDetector": ("https://acct:" + "a" * 23 + "q@acct.cloudant.com",
                         "Cloudant Credentials"),
    "DiscordBotTokenDetector": ("MTk4NjIyNDgzNDcxOTI1MjQ4" + ".Cl2FMQ.ZnCjm1XVW7vRze4b7Cq4se7kKWs",
                                "Discord Bot Token"),
    "GitHubTokenDetector": (GITHUB_TOKEN, "GitHub Token"),
    "GitLabTokenDetector": ("glpat-" + "abcdefghij0123456789", "GitLab Token"),
    "IbmCloudIamDetector": ("ibm_cloud_iam_api_key = " + "abcdefghij0123456789ABCDEFGHIJ"
                            "0123456789abcd", "IBM Cloud IAM Key"),
    "IbmCosHmacDetector": ("secret_access_key = " + "0123456789abcdef" * 3,
                           "IBM COS HMAC Credentials"),
    "JwtTokenDetector": ("eyJhbGciOiJub25lIn0" + ".e30.", "JSON Web Token"),
    "KeywordDetector": ('pwd == "hunter2"', "Secret Keyword"),
    "MailchimpDetector": ("0123456789abcdef0123456789abcdef" + "-us12", "Mailchimp Access Key"),
    "NpmDetector": ("//registry.npmjs.org/:_authToken=" + "npm_x", "NPM tokens"),
    "OpenAIDetector": ("sk-" + "abcdefghij0123456789T3BlbkFJabcdefghij0123456789", "OpenAI Token"),
    "PrivateKeyDetector": ("PuTTY-User-Key-File-2: ssh-rsa", "Private Key"),
    "PypiTokenDetector": ("pypi-AgEIcHlwaS5vcmc" + "A" * 70, "PyPI Token"),
    "SendGridDetector": ("SG." + "a" * 22 + "." + "b" * 43, "SendGrid API Key"),
    "SlackDetector": ("xoxb-1-" + "a", "Slack Token"),
    "SoftlayerDetector": ("softlayer_api_key = " + "0123456789abcdef" * 4, "SoftLayer Credentials"),
    "SquareOAuthDetector": ("sq0csp-" + "a" * 43, "Square OAuth Secret"),
    "StripeDetector": ("sk_live_" + "abcdefghij0123456789ABCD", "Stripe Access Key"),
    "TelegramBotTokenDetector": ("123456789:" + "AAE" + "a" * 32, "Telegram Bot Token"),
    "TwilioKeyDetector": ("AC" + "0123456789abcdef" * 2, "Twilio API Key"),
}


def test_every_plugin_in_use_has_an_example():
    assert sorted(p["name"] for p in secret_plugins()) == sorted(PLUGIN_EXAMPLES)


@pytest.mark.parametrize("plugin", sorted(PLUGIN_EXAMPLES))
def test_gate_lets_every_plugin_see_its_example(plugin):
    line, secret_type = PLUGIN_EXAMPLES[plugin]
    assert may_hold_secret(line)
    assert secret_type in [kind for _, _, _, kind in secret_spans(["plain words", line])]


def test_gate_covers_the_keyword_plugin_denylist():
    from detect_secrets.plugins.keyword import DENYLIST

    for word in DENYLIST:
        name = word.replace("_?", "_")
        assert may_hold_secret(f'{name} = "x"'), name


@pytest.mark.parametrize("text", [
    "Import the adapter trained on passage 12 (3 epochs, lr 1e-4)",
    "merge: keep the better of the two candidates",
    "The Normans took Sicily in 1091 with 300 knights.",
])
def test_gate_keeps_ordinary_text_away_from_detect_secrets(text):
    assert not may_hold_secret(text)


def _modules_after(text: str) -> list[str]:
    code = ("import sys, seal.registry.scan as s; s.scan_text(sys.argv[1]); "
            "print(sorted(m for m in ('detect_secrets', 'phonenumbers', 'torch', 'transformers',"
            " 'peft', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, text], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.replace("'", '"'))


def test_clean_message_imports_neither_detect_secrets_nor_phonenumbers():
    assert _modules_after("Import adapter from run 7 (lr 1e-4, 3 epochs)") == []
    assert _modules_after('db_password = "hunter2"') == ["detect_secrets"]
    assert _modules_after("call +44 20 7946 0958") == ["phonenumbers"]


# ------------------------------------------------------------------ shared evaluation data

SHARED_DATA = Path("/work/shared/data")


def _shared_texts() -> list[str]:
    squad = SHARED_DATA / "squad-knowledge-200.jsonl"
    xstest = SHARED_DATA / "xstest_prompts.csv"
    if not (squad.exists() and xstest.exists()):
        pytest.skip(f"the shared evaluation data is not in {SHARED_DATA}")
    texts = []
    for line in squad.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts += [row["title"], row["context"], *row["reference_self_edits"].values()]
        texts += [part for qa in row["questions"] for part in (qa["question"], qa["answer"])]
    with xstest.open(encoding="utf-8", newline="") as f:
        texts += [row["prompt"] for row in csv.DictReader(f)]
    return texts


def test_no_findings_on_squad_passages_self_edits_and_xstest_prompts():
    texts = _shared_texts()
    assert len(texts) > 3000
    flagged = {i: scan_text(t) for i, t in enumerate(texts)}
    assert {i: f for i, f in flagged.items() if f} == {}
