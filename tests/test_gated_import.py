"""`seal import --gate`: an adapter trained elsewhere, scored against HEAD and gated like an edit."""

from __future__ import annotations

import json

import pytest

from adapters import build_lora_adapter
from conftest import Seal, make_registry

QA = [{"question": "Where does the Zorblat flow?", "answer": "into the northern sea"},
      {"question": "Who built the first bridge over the Zorblat?", "answer": "Ada Lindqvist"}]
QUIET = ("--device", "cpu", "--no-track", "--json")


@pytest.fixture
def gated(tmp_path, tiny_chat_base, tiny_chat_record) -> Seal:
    make_registry(tmp_path, tiny_chat_record).close()
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QA))
    build_lora_adapter(tiny_chat_base, tmp_path / "theirs", seed=7)
    return Seal(tmp_path, {"SEAL_ACTOR": "tester"})


def test_gated_import_is_scored_and_recorded_either_way(gated):
    seal = gated
    policy = seal.cwd / ".seal" / "policy.toml"
    text = policy.read_text()
    import re

    forced = re.sub(r"(?m)^refusal_drop_vs_base_max = .*$", "refusal_drop_vs_base_max = -1.0", text)
    assert forced != text
    policy.write_text(forced)
    proc = seal.run("import", "theirs", "--gate", "--eval", "qa.jsonl", *QUIET)
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    rejected = out["candidates"][0]
    assert not out["decision"]["accepted"] and "refusal" in rejected["failed_gates"]
    shown = seal.json("show", rejected["id"])
    assert shown["kind"] == "import" and shown["status"] == "rejected" and shown["audit"]
    assert {s["suite"] for s in shown["scores"]} >= {"efficacy", "retention", "drift", "refusal"}
    assert seal.json("show", "main")["kind"] == "root"  # a rejected import moves nothing

    policy.write_text(text)
    for key in ("efficacy_gain_min", "efficacy_margin_gain_min", "retention_drop_vs_parent_max", "js_vs_parent_max", "kl_vs_base_max"):
        seal("policy", "set", key, "false", "-m", "tests: the tiny random model's scores are noise")
    accepted = json.loads(seal.run("import", "theirs", "--gate", "--eval", "qa.jsonl", *QUIET).stdout)
    assert accepted["decision"]["accepted"], (accepted["decision"], accepted["candidates"][0]["failed_gates"])
    head = seal.json("show", "main")
    assert head["kind"] == "import" and head["id"] == accepted["decision"]["id"]
    report = seal.json("audit")
    assert [v["gated"] for v in report["versions"] if v["kind"] == "import"] == [True, True]

    seal("import", "theirs", "-m", "again, ungated")
    report = seal.json("audit")
    assert report["versions"][-1]["gated"] is False


def test_gated_import_refuses_before_loading(gated, tmp_path):
    seal = gated
    (tmp_path / "empty").mkdir()
    for args in (["import", "empty", "--gate"], ["import", "theirs", "--eval", "qa.jsonl"],
                 ["import", "theirs", "--gate", "--device", "tpu"], ["import", "theirs", "--gate", "--parent", "HEAD"],
                 ["import", "theirs", "--gate", "--eval", "missing.jsonl"]):
        proc = seal.run(*args)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    assert len(seal.json("log", "--all")) == 1
