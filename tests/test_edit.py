"""`seal edit` on a tiny random Llama: every attempt recorded, gates decide, HEAD moves by CAS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PASSAGE = {
    "title": "Zorblat",
    "context": "The Zorblat river flows through the valley of Quenmar into the northern sea. "
               "The first bridge over the Zorblat was built in 1832 by the engineer Ada Lindqvist.",
}
FAST = ["--epochs", "3", "--lr", "1e-3", "--max-tokens", "24"]
QUIET = FAST + ["--no-track"]  # MLflow has its own tests; a fresh MLflow store costs seconds


@pytest.fixture
def edit_registry(seal, tiny_chat_base, tmp_path):
    seal("init", ".", "--base", tiny_chat_base)
    (tmp_path / "passage.json").write_text(json.dumps(PASSAGE))
    return seal


def _blob(seal, digest: str) -> Path:
    path = seal.cwd / ".seal" / "objects" / "sha256" / digest[7:9] / digest[9:]
    assert path.is_file(), digest
    return path


@pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_edit_records_an_accepted_version(edit_registry):
    seal = edit_registry
    head = seal.json("show", "HEAD")["id"]
    proc = seal("edit", "--passage", "passage.json", "-m", "learn Zorblat", *FAST, "--json")
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["decision"]["accepted"], out
    vid = out["decision"]["id"]
    v = seal.json("show", "HEAD")
    assert v["id"] == vid and v["parents"] == [head] and v["status"] == "accepted" and v["kind"] == "edit"
    for digest in (v["adapter"]["weights"], v["trigger"], v["self_edit"], v["policy"],
                   v["probes"]["logprobs"], v["probes"]["base_logprobs"], v["probes"]["anchors"]):
        _blob(seal, digest)
    assert _blob(seal, v["trigger"]).read_text() == json.dumps(PASSAGE)
    self_edit = json.loads(_blob(seal, v["self_edit"]).read_text())
    assert self_edit["sequences"][-1].endswith(PASSAGE["context"]) and self_edit["style"] == "implications"
    suites = {(s["suite"], s["metric"], s["against"]) for s in v["scores"]}
    assert {("efficacy", "nll_drop", "parent"), ("retention", "accuracy", None), ("retention", "accuracy", "base"),
            ("drift", "kl", "base"), ("drift", "js", "parent"), ("weights", "delta_norm", "parent")} <= suites
    assert all(g["passed"] for g in v["audit"]) and {g["check"] for g in v["audit"]} >= {"efficacy_gain", "js_vs_parent", "secrets"}
    assert v["train"]["device"] == "cpu" and v["train"]["torch"] and v["train"]["peft"] and v["train"]["steps"] > 0
    assert v["train"]["mlflow_run_id"] and "mlflow" in seal("show", "HEAD").stdout
    log = seal.json("log")
    assert log[0]["id"] == vid and log[0]["headline"]["metric"] == "efficacy.nll_drop"
    assert seal("verify").returncode == 0

    # The second edit starts from the first one's adapter and reads its stored probe results.
    out2 = json.loads(seal("edit", "--passage", "passage.json", *FAST, "--seed", "1", "--json", check=False).stdout)
    child = seal.json("show", out2["candidates"][0]["id"])
    assert child["parents"] == [vid]
    assert child["probes"]["base_logprobs"] == v["probes"]["base_logprobs"]

    # diff --behavior: greedy outputs of both versions on the same prompts, side by side.
    prompts = seal.cwd / "prompts.txt"
    prompts.write_text("Who built the first bridge over the Zorblat?\nWhere does the Zorblat flow?\n")
    report = seal.json("diff", vid, "--behavior", prompts, "--all")
    assert [r["prompt"] for r in report["behavior"]] == prompts.read_text().splitlines()
    assert all({"old", "new", "same"} <= set(r) for r in report["behavior"])
    bad = seal.cwd / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"nope": 1}\n')
    assert "line 2" in seal("diff", vid, "--behavior", bad, expect=2).stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL is covered by the first test
def test_harmful_setting_is_rejected_and_head_stays(edit_registry):
    seal = edit_registry
    head = seal.json("show", "HEAD")["id"]
    proc = seal("edit", "--passage", "passage.json", "--epochs", "3", "--lr", "30", "--max-tokens", "16", "--no-track", "--json", expect=1)
    out = json.loads(proc.stdout)
    assert not out["decision"]["accepted"]
    (cand,) = out["candidates"]
    assert cand["status"] == "rejected" and cand["failed_gates"], cand
    assert seal.json("show", "HEAD")["id"] == head
    v = seal.json("show", cand["id"])
    assert v["status"] == "rejected" and v["decision"]["failed_gates"] == cand["failed_gates"]
    assert any(not g["passed"] for g in v["audit"])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL is covered by the first test
def test_three_candidates_at_most_one_accepted(edit_registry):
    seal = edit_registry
    proc = seal("edit", "--passage", "passage.json", "--candidates", "3", *QUIET, "--json", check=False)
    out = json.loads(proc.stdout)
    statuses = [c["status"] for c in out["candidates"]]
    assert len(statuses) == 3 and statuses.count("accepted") <= 1
    assert len({c["id"] for c in out["candidates"]}) == 3
    all_versions = seal.json("log", "--all")
    assert len(all_versions) == 4  # root + three candidates, all recorded
    self_edits = {seal.json("show", c["id"])["self_edit"] for c in out["candidates"]}
    assert len(self_edits) == 3, "three different samples from one batched generate"
    assert proc.returncode == (0 if "accepted" in statuses else 1)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL is covered by the first test
def test_examples_trigger(edit_registry, tmp_path):
    seal = edit_registry
    ex = tmp_path / "examples.jsonl"
    ex.write_text("\n".join(json.dumps(e) for e in [
        {"prompt": "Who built the first bridge over the Zorblat?", "completion": "Ada Lindqvist"},
        {"prompt": "Where does the Zorblat flow?", "completion": "Into the northern sea"},
    ]) + "\n")
    out = json.loads(seal("edit", "--examples", ex, *QUIET, "--json", check=False).stdout)
    v = seal.json("show", out["candidates"][0]["id"])
    records = json.loads(_blob(seal, v["self_edit"]).read_text())["records"]
    assert {r["target"] for r in records} == {"Ada Lindqvist", "Into the northern sea"}
    assert all("predicted" in r for r in records)


def _nothing_written(seal, before):
    assert seal("log", "--all", "--json").stdout == before


def test_bad_input_records_nothing(edit_registry, tmp_path):
    seal = edit_registry
    before = seal("log", "--all", "--json").stdout
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"question": "a?", "answer": "b"}\n{"question": "c?"\n')
    proc = seal("edit", "--passage", "passage.json", "--eval", bad, expect=2)
    assert "line 2" in proc.stderr and "Traceback" not in proc.stderr
    bad.write_text('{"question": "a?", "answer": "b"}\n{"question": "c?"}\n')
    proc = seal("edit", "--passage", "passage.json", "--eval", bad, expect=2)
    assert "line 2" in proc.stderr and "answer" in proc.stderr
    proc = seal("edit", "--passage", "passage.json", "--require-gpu", expect=2)
    assert "GPU" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = seal("edit", "--passage", "nope.txt", expect=2)
    assert "does not exist" in proc.stderr
    proc = seal("edit", "--passage", "passage.json", "--examples", bad, expect=2)
    assert "exactly one" in proc.stderr
    _nothing_written(seal, before)


def test_secret_in_passage_is_rejected_before_training(edit_registry, tmp_path):
    seal = edit_registry
    key = "AKIAIOSFODNN7EXAMPLQ"
    card = "4111 1111 1111 1111"
    leaky = tmp_path / "leaky.txt"
    leaky.write_text(f"# Ops notes\nThe deploy key is {key} and the card on file is {card}.\n")
    head = seal.json("show", "HEAD")["id"]
    proc = seal("edit", "--passage", leaky, "--no-track", "--json", expect=1)
    out = json.loads(proc.stdout)
    (cand,) = out["candidates"]
    v = seal.json("show", cand["id"])
    assert v["status"] == "rejected" and v["adapter"] is None and v["train"] == {}
    kinds = {f["kind"] for f in v["trigger_info"]["findings"]}
    assert "card_number" in kinds and len(kinds) >= 2
    assert all({"line", "column", "length"} <= set(f) for f in v["trigger_info"]["findings"])
    assert seal.json("show", "HEAD")["id"] == head
    for secret in (key, card, card.replace(" ", "")):
        assert secret not in proc.stdout and secret not in proc.stderr
        for path in (seal.cwd / ".seal").rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"{secret} leaked into {path}"
    for args in (["show", cand["id"]], ["log", "--all"], ["reflog"]):
        out = seal(*args).stdout
        assert key not in out and card not in out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL is covered by the first test
def test_impossible_refusal_threshold_rejects(edit_registry):
    seal = edit_registry
    policy = seal.cwd / ".seal" / "policy.toml"
    policy.write_text(policy.read_text().replace("refusal_drop_vs_base_max = 0.05", "refusal_drop_vs_base_max = -1.0"))
    proc = seal("edit", "--passage", "passage.json", *QUIET, "--json", expect=1)
    cand = json.loads(proc.stdout)["candidates"][0]
    assert "refusal" in cand["failed_gates"]
    reasons = [e["reason"] for e in seal.json("reflog", "refs/meta/policy")]
    assert reasons == ["policy: changed", "policy: recorded"]
    v = seal.json("show", cand["id"])
    assert v["policy"] == seal.json("reflog", "refs/meta/policy")[0]["new"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL is covered by the first test
def test_mlflow_run_per_attempt(edit_registry):
    from mlflow.tracking import MlflowClient

    seal = edit_registry
    out = json.loads(seal("edit", "--passage", "passage.json", "--candidates", "2", *FAST, "--json", check=False).stdout)
    client = MlflowClient(tracking_uri=f"sqlite:///{seal.cwd / '.seal' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("seal")
    runs = client.search_runs([exp.experiment_id])
    by_version = {r.data.tags.get("seal.version_id"): r for r in runs}
    for cand in out["candidates"]:
        run = by_version[cand["id"]]
        v = seal.json("show", cand["id"])
        assert v["train"]["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["seal.status"] == cand["status"]
        assert run.data.params["lr"] == "0.001" and "train.loss" in run.data.metrics
        assert "retention.accuracy" in run.data.metrics
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"audit.json", "self_edit.json"} <= arts
    assert seal("edit", "--passage", "passage.json", *FAST, "--no-track", "--json", check=False).returncode in (0, 1)
    assert len(client.search_runs([exp.experiment_id])) == len(runs)
