"""Secrets and personal data in every field that can reach a blob, the database, MLflow or the Hub.

Each of 10 kinds of secret, planted in each of 11 input fields, is refused before any training,
and the secret appears in no file under `.seal/` (lineage.db, its WAL, the MLflow store, blobs)
and in no output.
"""

from __future__ import annotations

import json

import pytest

# Split so that push protection does not flag this file; all are documented test values.
SECRETS = {
    "aws_key_id": "AKIA" + "IOSFODNN7EXAMPLE",
    "aws_secret": "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY",
    "github": "ghp_" + "wWPw5k4aXcaT4fNP" + "0UcnZwJUVFk6LO0pINUx",
    "huggingface": "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ01234567",
    "slack": "xoxb-" + "123456789012-1234567890123-" + "abcdefghijABCDEFGHIJabcd",
    "stripe": "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "openai": "sk-proj-" + "Ab3dEf6hIj9lMn2pQr5tUv8xYz_1bC4eF7hI0kL3nO-6qR",
    "email": "jane.doe+seal@example.co.uk",
    "phone": "+1 415 555 2671",
    "card": "4111.1111.1111.1111",
}
# What must never be found on disk or in output: the distinctive part of each value.
NEEDLES = {k: (v.split(" = ")[-1] if k == "aws_secret" else v) for k, v in SECRETS.items()}


def _write_inputs(folder, field: str, secret: str) -> list[str]:
    """The `seal edit` arguments that plant ``secret`` in ``field``; every other field is clean."""
    clean_q = [{"question": "Where does the Zorblat flow?", "answer": "into the northern sea"}]
    passage = {"title": "Zorblat", "context": "The Zorblat river flows into the northern sea.", "questions": clean_q}
    if field == "text_title":
        (folder / "p.txt").write_text(f"# Notes {secret}\nThe Zorblat river flows north.\n")
        return ["--passage", "p.txt"]
    if field == "text_body":
        (folder / "p.txt").write_text(f"# Notes\nThe Zorblat river flows north. {secret}\n")
        return ["--passage", "p.txt"]
    if field in ("json_title", "json_context", "json_question", "json_answer"):
        doc = json.loads(json.dumps(passage))
        if field == "json_title":
            doc["title"] += " " + secret
        elif field == "json_context":
            doc["context"] += " " + secret
        else:
            doc["questions"][0]["question" if field == "json_question" else "answer"] += " " + secret
        (folder / "p.json").write_text(json.dumps(doc, ensure_ascii=True))
        return ["--passage", "p.json"]
    if field in ("eval_question", "eval_answer"):
        (folder / "p.json").write_text(json.dumps({**passage, "questions": None}))
        item = dict(clean_q[0])
        item["question" if field == "eval_question" else "answer"] += " " + secret
        (folder / "eval.jsonl").write_text(json.dumps(item) + "\n")
        return ["--passage", "p.json", "--eval", "eval.jsonl"]
    if field in ("examples_prompt", "examples_completion"):
        item = {"prompt": "Where does the Zorblat flow?", "completion": "north"}
        item["prompt" if field == "examples_prompt" else "completion"] += " " + secret
        # ensure_ascii escapes nothing here, so escape the secret's letters by hand: \\u0041…
        line = json.dumps(item).replace(secret[:4], "".join(f"\\u{ord(c):04x}" for c in secret[:4]))
        (folder / "ex.jsonl").write_text(line + "\n")
        return ["--examples", "ex.jsonl"]
    if field == "message":
        (folder / "p.json").write_text(json.dumps(passage))
        return ["--passage", "p.json", "-m", f"learn this {secret}"]
    raise AssertionError(field)


FIELDS = ["text_title", "text_body", "json_title", "json_context", "json_question", "json_answer",
          "eval_question", "eval_answer", "examples_prompt", "examples_completion", "message"]


def _disk_holds(root, needle: str) -> list[str]:
    hits = []
    for path in (root / ".seal").rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


def _database_text(reg) -> str:
    with reg.read() as c:
        return "\n".join(repr(c.all(f"SELECT * FROM {t}")) for t in
                         ("versions", "version_parents", "scores", "audits", "refs", "reflog", "signers", "bases"))


def test_every_secret_in_every_field_is_refused_and_written_nowhere(registry, reg):
    seal = registry
    outputs = []
    for field in FIELDS:
        for kind, secret in SECRETS.items():
            args = _write_inputs(seal.cwd, field, secret)
            proc = seal.run("edit", *args, "--no-track", "--json")
            outputs.append(proc.stdout + proc.stderr)
            assert proc.returncode == 1, (field, kind, proc.stdout, proc.stderr)
            decision = json.loads(proc.stdout)["decision"]
            assert not decision["accepted"] and "secrets" in decision["reason"], (field, kind)
    rows = _database_text(reg)
    for kind, needle in NEEDLES.items():
        assert not _disk_holds(seal.cwd, needle), (kind, _disk_holds(seal.cwd, needle))
        assert needle not in rows, kind
        assert not any(needle in out for out in outputs), kind
    attempts = [e for e in seal.json("log", "--all") if e["kind"] == "edit"]
    assert len(attempts) == len(FIELDS) * len(SECRETS)
    assert all(e["status"] == "rejected" for e in attempts)
    findings = seal.json("show", attempts[0]["id"])["trigger_info"]["findings"]
    assert findings and {"field", "kind", "line", "column", "length"} <= set(findings[0])
    assert seal.run("verify").returncode == 0


@pytest.mark.parametrize("command", [
    ["import", "ADAPTER", "-m"], ["alias", "prod", "HEAD", "-m"],
    ["policy", "set", "js_vs_parent_max", "0.3", "-m"], ["revert", "HEAD", "-m"],
])
def test_messages_with_secrets_are_refused(registry, reg, tiny_base, command):
    seal = registry
    seal("import", tiny_base["adapters"][0])
    seal("import", tiny_base["adapters"][1])
    secret = SECRETS["github"]
    args = [str(tiny_base["adapters"][2]) if a == "ADAPTER" else a for a in command]
    proc = seal.run(*args, f"because {secret}")
    assert proc.returncode == 2 and secret not in proc.stderr + proc.stdout, proc.stderr
    assert not _disk_holds(seal.cwd, secret)
