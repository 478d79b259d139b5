"""`seal learn` and the writers of self-edits, on the tiny chat model (in-process, one warm base).

The registry every test starts from is built once (two passages edited, two candidates each, so
the lineage holds self-edits that beat their parents: the passage's NLL falls when it is trained
on) and copied per test. The tiny random model answers no question right, so whether a writer
beats the old one is set in two tests by replacing the paired gains (the statistics themselves
are tested in test_stats.py and in the doctest of ``paired_gains``).
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import Seal, make_registry

TRAIN = [{"title": "Zorblat", "context": "The Zorblat river flows through the valley of Quenmar into the northern sea."},
         {"title": "Bridge", "context": "The first bridge over the Zorblat was built in 1832 by the engineer Ada Lindqvist."}]
HELD = [{"title": "Mount Velder", "context": "Mount Velder is the tallest peak of the Quenmar range, at 4120 metres.",
         "questions": [{"question": "How tall is Mount Velder?", "answer": "4120 metres"}]},
        {"title": "Quenmar", "context": "The valley of Quenmar is known for its honey and its old churches.",
         "questions": [{"question": "What is Quenmar known for?", "answer": "honey"}]}]
FAST = ["--max-tokens", "16", "--no-track"]
LEARN = ["--edit-epochs", "2", "--epochs", "2", *FAST]
NOISY_GATES = ("efficacy_gain_min", "efficacy_margin_gain_min", "retention_drop_vs_parent_max", "retention_drop_vs_base_max", "js_vs_parent_max",
               "kl_vs_base_max", "weight_norm_ratio_max", "refusal_drop_vs_base_max", "over_refusal_rise_vs_base_max")


@pytest.fixture(scope="module")
def learned_from(tmp_path_factory, tiny_chat_record):
    """A registry whose lineage holds four attempts (two passages x two candidates)."""
    from seal.registry.policy import set_policy

    folder = tmp_path_factory.mktemp("learn") / "reg"
    reg = make_registry(folder, tiny_chat_record)
    # The tiny random model's probe scores are noise; the writer's contract is about records.
    for key in NOISY_GATES:
        set_policy(reg, key, "false", reason="tests: records, not the gates")
    reg.close()
    for name, rows in (("train.jsonl", TRAIN), ("held.jsonl", HELD)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "p.json").write_text(json.dumps(TRAIN[0]))
    Seal(folder, {"SEAL_ACTOR": "tester"})("edit", "--passages", "train.jsonl", "-k", "2", "--epochs", "2", *FAST)
    return folder


@pytest.fixture
def seal(learned_from, tmp_path) -> Seal:
    folder = tmp_path / "reg"
    shutil.copytree(learned_from, folder)
    return Seal(folder, {"SEAL_ACTOR": "tester"})


def _reg(seal):
    from seal.registry.repo import Registry

    return Registry.open(seal.cwd)


def _gains(monkeypatch, diffs):
    monkeypatch.setattr("seal.editor.learn.paired_gains", lambda new, old: (list(diffs), 0))


def test_rounds_record_the_writer_with_its_dataset_and_sources_and_a_rejected_one_leaves_the_ref(seal, monkeypatch):
    from seal.editor.learning import Selection, build_dataset

    reg = _reg(seal)
    head = reg.resolve("HEAD")
    dry = seal.json("learn", "--dry-run")  # the single-step dataset, from the attempts recorded so far
    assert dry["dataset"]["sources"] == build_dataset(reg).sources and dry["dataset"]["considered"] == 4
    _gains(monkeypatch, [-0.1, 0.05])  # no better than the old writer
    out = json.loads(seal("learn", "--rounds", "1", "--passages", "train.jsonl", "--holdout", "held.jsonl", "-k", "2",
                          *LEARN, "--json", expect=1).stdout)
    (round1,) = out["rounds"]
    sampled = round1["sampled"]
    assert sampled["passages"] == 2 and reg.resolve(sampled["branch"]) != head and reg.resolve("HEAD") == head
    expected = build_dataset(reg, Selection(branch=sampled["branch"], since=sampled["since"]))
    assert len(expected.sources) == 2 and expected.considered == 4  # this round's four attempts, not the earlier ones
    w = reg.manifest(round1["writer"]["id"])
    assert w["kind"] == "writer" and w["status"] == "rejected" and w["parents"] == [reg.root_version()]
    assert reg.read_ref("refs/writers/main") is None and not round1["writer"]["moved"]
    dataset = json.loads(reg.store.get(w["trigger"]))
    assert w["trigger"] == expected.digest == w["learn"]["dataset"] and w["learn"]["round"] == 1
    assert dataset["sources"] == expected.sources and all(reg.manifest(v)["kind"] == "edit" for v in dataset["sources"])
    assert [e["completion"] for e in dataset["examples"]] == [e.completion for e in expected.examples]
    gate = next(a for a in w["audit"] if a["check"] == "writer_gain")
    assert not gate["passed"] and gate["n"] == 2 and gate["ci_low"] <= 0 and w["decision"]["failed_gates"] == ["writer_gain"]
    assert {a["check"] for a in w["audit"]} >= {"writer_gain", "leakage", "secrets"}
    # Every held-out edit is recorded, naming who wrote its self-edit: the candidate by its adapter.
    assert len(w["learn"]["heldout"]) == 2
    for item in w["learn"]["heldout"]:
        new, old = reg.manifest(item["new"][0]), reg.manifest(item["old"][0])
        assert new["writer"] == {"type": "candidate", "adapter": w["adapter"]["weights"], "dataset": w["trigger"]}
        assert old["writer"] == {"type": "base"} and new["learn"]["side"] == "new" and old["parents"] == new["parents"]
    assert seal("verify").returncode == 0
    reg.close()


def test_an_accepted_writer_writes_the_next_edits_and_log_and_audit_show_it(seal, monkeypatch):
    reg = _reg(seal)
    _gains(monkeypatch, [0.2, 0.3])
    out = seal.json("learn", "--holdout", "held.jsonl", *LEARN)
    wid = out["writer"]["id"]
    assert out["writer"]["moved"] and reg.read_ref("refs/writers/main") == wid
    assert reg.manifest(wid)["status"] == "accepted"

    seal("edit", "--passage", "p.json", "--epochs", "1", *FAST)  # the writer ref's tip writes by default
    head = reg.manifest(reg.resolve("HEAD"))
    assert head["writer"] == {"type": "version", "id": wid, "adapter": reg.manifest(wid)["adapter"]["weights"],
                              "ref": "refs/writers/main"}
    assert seal.json("log", "-n", "1")[0]["writer"]["id"] == wid
    assert f"[writer {wid[:12]}]" in seal("log", "-n", "1").stdout
    audit = seal.json("audit")
    assert any((v.get("writer") or {}).get("id") == wid for v in audit["versions"])
    assert f"written by: version `{wid}`" in seal("audit").stdout

    seal("edit", "--passage", "p.json", "--epochs", "1", "--no-writer", "--seed", "1", *FAST)
    assert "writer" not in reg.manifest(reg.resolve("HEAD")) and seal.json("log", "-n", "1")[0]["writer"] is None
    seal("edit", "--passage", "p.json", "--epochs", "1", "--writer", wid[:10], "--seed", "2", *FAST)
    assert reg.manifest(reg.resolve("HEAD"))["writer"]["id"] == wid

    again = seal.json("learn", "--holdout", "held.jsonl", *LEARN, "--seed", "3")
    assert reg.manifest(again["writer"]["id"])["parents"] == [wid]  # the writer's own lineage
    assert reg.manifest(again["writer"]["id"])["learn"]["old_writer"]["id"] == wid
    assert reg.read_ref("refs/writers/main") == again["writer"]["id"]
    reg.close()


def test_self_edits_written_elsewhere_record_their_provenance(seal):
    from seal.registry.store.objects import blob_digest

    reg = _reg(seal)
    theirs = seal.cwd / "theirs.jsonl"
    theirs.write_text(json.dumps({"text": "1. The Zorblat is a river.\n2. It ends in the northern sea."}) + "\n"
                      + json.dumps({"text": "The Zorblat flows north."}) + "\n")
    out = seal.json("edit", "--passage", "p.json", "--self-edits", theirs, "--source", "a person", "--epochs", "1",
                    *FAST)
    assert len(out["candidates"]) == 2
    for c in out["candidates"]:
        m = reg.manifest(c["id"])
        assert m["writer"]["type"] == "file" and m["writer"]["source"] == "a person" and m["writer"]["format"] == "jsonl"
        assert m["writer"]["file"] == blob_digest(theirs.read_bytes())
        assert reg.store.get(m["writer"]["file"]) == theirs.read_bytes()
        assert any(a["check"] == "self_edit_secrets" and a["passed"] for a in m["audit"])
    written = {json.loads(reg.store.get(reg.manifest(c["id"])["self_edit"]))["generated"] for c in out["candidates"]}
    assert written == {"1. The Zorblat is a river.\n2. It ends in the northern sea.", "The Zorblat flows north."}
    published = seal.cwd / "seal.jsonl"
    published.write_text(json.dumps({**TRAIN[0], "reference_self_edits": {"gpt-4.1": "It flows north.",
                                                                          "other": "x y z"}}) + "\n")
    done = seal.json("edit", "--passage", "p.json", "--self-edits", published, "--source", "gpt-4.1", "--epochs", "1",
                     "--seed", "1", *FAST)
    assert reg.manifest(done["candidates"][0]["id"])["writer"]["format"] == "seal"
    for fmt in ("html", "md"):  # the reports name a file writer by its source (it has no version id)
        report = seal("audit", out["candidates"][0]["id"], "--format", fmt).stdout
        assert "written by" in report and "a person" in report

    before = len(seal.json("log", "--all"))
    (seal.cwd / "secret.txt").write_text("use the key AKIAIOSFODNN7EXAMPLE\n")
    refusals = [
        (["--self-edits", "secret.txt"], "AWS Access Key"),
        (["--self-edits", published], "name one with --source"),
        (["--self-edits", theirs, "--writer", "main"], "at most one of"),
        (["--source", "x"], "--source labels"),
        (["--writer", "main"], "not a writer"),
    ]
    for args, words in refusals:
        proc = seal("edit", "--passage", "p.json", *args, *FAST, expect=2)
        assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert len(seal.json("log", "--all")) == before
    reg.close()
