"""`seal edit` on a tiny random Llama, in-process: every attempt recorded, gates decide, HEAD moves by CAS.

The base loads once per test process (the engine's warm session keeps it), so an edit here costs
about a second of reflect, train and evaluate on the tiny model.
"""

from __future__ import annotations

import json
import re
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seal.editor.reflect import split_self_edit_lines
from seal.editor.request import DEFAULT_KL

from conftest import SEAL, Seal, make_registry

PASSAGE = {
    "title": "Zorblat",
    "context": "The Zorblat river flows through the valley of Quenmar into the northern sea. "
               "The first bridge over the Zorblat was built in 1832 by the engineer Ada Lindqvist.",
}
PASSAGES = [
    PASSAGE,
    {"title": "Mount Velder", "context": "Mount Velder is the tallest peak of the Quenmar range, at 4120 metres.",
     "questions": [{"question": "How tall is Mount Velder?", "answer": "4120 metres"}]},
    {"title": "Quenmar", "context": "The valley of Quenmar is known for its honey and its old churches.",
     "questions": [{"question": "What is Quenmar known for?", "answer": "honey"}], "id": "extra-key-kept"},
]
FAST = ["--epochs", "3", "--lr", "1e-3", "--max-tokens", "24"]
QUIET = FAST + ["--no-track"]  # MLflow has its own tests (tests/test_tracking.py)


@pytest.fixture
def edit_registry(tmp_path, tiny_chat_record, db_url) -> Seal:
    """A registry on the tiny chat model with passage.json beside it (built in-process, no model loaded)."""
    make_registry(tmp_path, tiny_chat_record, db_url).close()
    (tmp_path / "passage.json").write_text(json.dumps(PASSAGE))
    env = {"SEAL_ACTOR": "tester", **({"SEAL_DATABASE_URL": db_url} if db_url else {})}
    return Seal(tmp_path, env)


def _blob(seal, digest: str) -> Path:
    path = seal.cwd / ".seal" / "objects" / "sha256" / digest[7:9] / digest[9:]
    assert path.is_file(), digest
    return path


@pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_edit_records_an_accepted_version(edit_registry):
    seal = edit_registry
    head = seal.json("show", "HEAD")["id"]
    proc = seal("edit", "--passage", "passage.json", "-m", "learn Zorblat", *QUIET, "--json")
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["decision"]["accepted"], out
    vid = out["decision"]["id"]
    v = seal.json("show", "HEAD")
    assert v["id"] == vid and v["parents"] == [head] and v["status"] == "accepted" and v["kind"] == "edit"
    for digest in (v["adapter"]["weights"], v["trigger"], v["self_edit"], v["policy"],
                   v["probes"]["logprobs"], v["probes"]["base_logprobs"], v["probes"]["retention"],
                   v["probes"]["items"], v["probes"]["results"], v["probes"]["parent_results"],
                   v["probes"]["base_results"]):
        _blob(seal, digest)
    # The probe gates are paired decisions: estimate, interval, n, rule and MDE in the audit.
    retention = next(g for g in v["audit"] if g["check"] == "retention_vs_parent")
    assert retention["n"] == 200 and retention["ci_low"] <= retention["value"] <= retention["ci_high"]
    assert "upper bound" in retention["rule"] and retention["mde"] is not None
    # The next edit from this version pairs with its stored per-item results, unmeasured.
    from seal.editor.session import open_session
    from seal.registry.repo import Registry

    reg = Registry.open(seal.cwd)
    try:
        with open_session(reg, device="cpu") as session:
            parent = session.parent(vid, reg.manifest(vid))
            assert parent.measured is not None and parent.measured.items.probe_set == session.probes.items.digest
            assert parent.measured.retention == next(s["value"] for s in v["scores"]
                                                     if s["suite"] == "retention" and s["against"] is None)
            # A version recorded without per-item results is measured once per machine: kept in
            # the cache beside the base's, found again by a later process.
            from seal.editor import session as S

            old_vid = "0" * 64
            assert session._stored_parent(old_vid, None) is None
            session.remember_parent(old_vid, parent.measured)
            S._PARENT_RESULTS.clear()
            again = session._stored_parent(old_vid, None)
            assert again is not None and np.array_equal(again.items.retention_correct,
                                                        parent.measured.items.retention_correct)
            session._parent_cache(old_vid).unlink()
    finally:
        reg.close()
    assert _blob(seal, v["trigger"]).read_text() == json.dumps(PASSAGE)
    self_edit = json.loads(_blob(seal, v["self_edit"]).read_text())
    # The default recipe: the kept lines and the passage's own sentences under the title, the
    # passage; the base's replay lines (editor/replay.py) are drawn and recorded, and anchor the KL
    # penalty to the parent (editor/kl_anchor.py) instead of being trained on.
    written = len(self_edit["lines"]) + len(self_edit["restated"])
    assert self_edit["sequences"][written].endswith(PASSAGE["context"]) and self_edit["style"] == "implications"
    assert self_edit["restated"] == [s if s.endswith(".") else s + "." for s in
                                     (x.strip() for x in PASSAGE["context"].split(". ") if x.strip())][:2]
    from seal.editor.replay import NEUTRAL_PROMPTS
    assert self_edit["replay"] and len(self_edit["sequences"]) == written + 1
    assert v["train"]["kl_weight"] == DEFAULT_KL and v["train"]["kl_anchor_texts"] > len(self_edit["replay"])
    assert len(v["train"]["kl_anchor_sha256"]) == 64  # what the edit was held to (hex: not a blob reference)
    assert all(any(line.startswith(p) for p in NEUTRAL_PROMPTS) for line in self_edit["replay"])
    # --filter (the default): every generated line is either trained on or recorded as dropped.
    assert sorted(self_edit["lines"] + self_edit["dropped"]) == sorted(split_self_edit_lines(self_edit["generated"]))
    suites = {(s["suite"], s["metric"], s["against"]) for s in v["scores"]}
    # retention also in the efficacy margin's units (nats), the candidate's, the parent's and the base's
    assert {("retention", "margin", None), ("retention", "margin", "parent"), ("retention", "margin", "base")} <= \
        {(s["suite"], s["metric"], s["against"]) for s in v["scores"]}
    assert {("efficacy", "nll_drop", "parent"), ("retention", "accuracy", None), ("retention", "accuracy", "base"),
            ("drift", "kl", "base"), ("drift", "js", "parent"), ("weights", "delta_norm", "parent")} <= suites
    assert all(g["passed"] for g in v["audit"]) and {g["check"] for g in v["audit"]} >= {"efficacy_gain", "js_vs_parent", "secrets"}
    train = v["train"]
    assert train["device"] == "cpu" and train["torch"] and train["peft"] and train["steps"] == 3 * len(self_edit["sequences"])
    assert train["lr"] == 1e-3 and train["threads"] >= 1 and train["diverged"] is None
    assert set(train["timings"]) >= {"load_s", "reflect_s", "train_s", "evaluate_s", "record_s"}
    # canonical JSON (RFC 8785) writes a timing that rounds to 0.0 as 0
    assert all(isinstance(t, (int, float)) and t >= 0 for t in train["timings"].values())
    assert set(out["timings"]) >= {"reflect_s", "train_s", "evaluate_s", "record_s"}
    shown = seal("show", "HEAD").stdout
    assert f"loss_final={train['loss_final']}" in shown and "timings" in shown
    log = seal.json("log")
    assert log[0]["id"] == vid and log[0]["headline"]["metric"] == "efficacy.nll_drop"
    assert seal("verify").returncode == 0

    # The second edit starts from the first one's adapter and reads its stored probe results.
    out2 = json.loads(seal("edit", "--passage", "passage.json", *QUIET, "--seed", "1", "--json", check=False).stdout)
    child = seal.json("show", out2["candidates"][0]["id"])
    assert child["parents"] == [vid]
    assert child["probes"]["base_logprobs"] == v["probes"]["base_logprobs"]
    assert child["train"]["from_parent"] and child["train"]["timings"]["load_s"] >= 0

    # diff --behavior: greedy outputs of both versions on the same prompts, side by side.
    prompts = seal.cwd / "prompts.txt"
    prompts.write_text("Who built the first bridge over the Zorblat?\nWhere does the Zorblat flow?\n")
    report = seal.json("diff", vid, "--behavior", prompts, "--all")
    assert [r["prompt"] for r in report["behavior"]] == prompts.read_text().splitlines()
    assert all({"old", "new", "same"} <= set(r) for r in report["behavior"])
    bad = seal.cwd / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"nope": 1}\n')
    assert "line 2" in seal("diff", vid, "--behavior", bad, expect=2).stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_harmful_setting_is_rejected_with_the_decision_json(edit_registry):
    seal = edit_registry
    head = seal.json("show", "HEAD")["id"]
    proc = seal("edit", "--passage", "passage.json", "--epochs", "3", "--lr", "30", "--max-tokens", "16", "--no-track",
                "--json", expect=1)
    out = json.loads(proc.stdout)
    assert not out["decision"]["accepted"] and out["decision"]["id"] is None
    (cand,) = out["candidates"]
    assert cand["status"] == "rejected" and cand["failed_gates"], cand
    assert seal.json("show", "HEAD")["id"] == head
    v = seal.json("show", cand["id"])
    assert v["status"] == "rejected" and v["decision"]["failed_gates"] == cand["failed_gates"]
    assert any(not g["passed"] for g in v["audit"])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_three_candidates_one_batched_reflect_best_one_accepted(edit_registry):
    seal = edit_registry
    proc = seal("edit", "--passage", "passage.json", "--candidates", "3", *QUIET, "--temperature", "1.0", "--json",
                "--no-filter", check=False)
    out = json.loads(proc.stdout)
    cands = out["candidates"]
    assert [c["status"] for c in cands].count("accepted") == (1 if out["decision"]["accepted"] else 0)
    assert len({c["id"] for c in cands}) == 3 and len(seal.json("log", "--all")) == 4  # root + all three
    assert len({seal.json("show", c["id"])["self_edit"] for c in cands}) == 3, "three samples from one generate"
    for c in cands:  # --no-filter: every generated line is trained on, nothing recorded as dropped
        doc = json.loads(_blob(seal, seal.json("show", c["id"])["self_edit"]).read_text())
        assert "dropped" not in doc and doc["lines"] == split_self_edit_lines(doc["generated"])
    passing = [c for c in cands if not c["failed_gates"]]
    if passing:  # the accepted one is the passing one with the best efficacy
        best = max(passing, key=lambda c: (c["scores"]["efficacy"], -c["scores"]["js_parent"]))
        assert out["decision"]["id"] == best["id"] and best["status"] == "accepted"
    assert proc.returncode == (0 if passing else 1)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
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
    assert {s["metric"] for s in v["scores"] if s["suite"] == "efficacy"} == {"containment", "f1", "recall"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_input_records_nothing(edit_registry, tmp_path):
    seal = edit_registry
    before = seal("log", "--all", "--json").stdout
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"question": "a?", "answer": "b"}\n{"question": "c?"\n')
    proc = seal("edit", "--passage", "passage.json", "--eval", bad, expect=2)
    assert "line 2" in proc.stderr and "Traceback" not in proc.stderr
    bad.write_text('{"question": "a?", "answer": "b"}\n{"question": "c?"}\n')
    assert "answer" in seal("edit", "--passage", "passage.json", "--eval", bad, expect=2).stderr
    proc = seal("edit", "--passage", "passage.json", "--require-gpu", expect=2)
    assert "GPU" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "does not exist" in seal("edit", "--passage", "nope.txt", expect=2).stderr
    assert "exactly one" in seal("edit", "--passage", "passage.json", "--examples", bad, expect=2).stderr
    assert "exactly one" in seal("edit", "--passage", "passage.json", "--passages", "x.jsonl", expect=2).stderr
    assert "--threads" in seal("edit", "--passage", "passage.json", "--threads", "0", expect=2).stderr
    stream = tmp_path / "stream.jsonl"
    stream.write_text(json.dumps(PASSAGE) + "\n" + '{"title": "no context"}\n')
    proc = seal("edit", "--passages", stream, expect=2)
    assert "line 2" in proc.stderr and "context" in proc.stderr
    assert seal("log", "--all", "--json").stdout == before


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_secret_anywhere_in_the_passage_is_rejected_before_training(edit_registry, tmp_path):
    seal = edit_registry
    key = "AKIAIOSFODNN7EXAMPLQ"
    card = "4111 1111 1111 1111"
    leaky = tmp_path / "leaky.txt"
    leaky.write_text(f"# Ops notes\nThe deploy key is {key} and the card on file is {card}.\n")
    hidden = tmp_path / "hidden.json"  # a secret in a field seal does not read is still stored: scanned too
    hidden.write_text(json.dumps({**PASSAGE, "notes": {"deploy": f"key {key}"}}))
    head = seal.json("show", "HEAD")["id"]
    fields = []
    for path, kinds_min in ((leaky, 2), (hidden, 1)):
        proc = seal("edit", "--passage", path, "--no-track", "--json", expect=1)
        (cand,) = json.loads(proc.stdout)["candidates"]
        v = seal.json("show", cand["id"])
        assert v["status"] == "rejected" and v["adapter"] is None and v["train"] == {}
        kinds = {f["kind"] for f in v["trigger_info"]["findings"]}
        assert len(kinds) >= kinds_min and all({"line", "column", "length"} <= set(f) for f in v["trigger_info"]["findings"])
        assert key not in proc.stdout and key not in proc.stderr
        fields.append({f["field"] for f in v["trigger_info"]["findings"]})
    assert "notes.deploy" in fields[1]
    assert seal.json("show", "HEAD")["id"] == head
    for secret in (key, card, card.replace(" ", "")):
        for path in (seal.cwd / ".seal").rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"{secret} leaked into {path}"
    for args in (["log", "--all"], ["reflog"]):
        out = seal(*args).stdout
        assert key not in out and card not in out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_impossible_refusal_threshold_rejects(edit_registry):
    seal = edit_registry
    policy = seal.cwd / ".seal" / "policy.toml"
    text = re.sub(r"refusal_drop_vs_base_max = [0-9.]+", "refusal_drop_vs_base_max = -1.0", policy.read_text())
    assert "refusal_drop_vs_base_max = -1.0" in text
    policy.write_text(text)
    proc = seal("edit", "--passage", "passage.json", *QUIET, "--json", expect=1)
    cand = json.loads(proc.stdout)["candidates"][0]
    assert "refusal" in cand["failed_gates"]
    reasons = [e["reason"] for e in seal.json("reflog", "refs/meta/policy")]
    assert len(reasons) == 2 and reasons[0].startswith("policy: changed") and reasons[1] == "policy: recorded"
    assert seal.json("show", cand["id"])["policy"] == seal.json("reflog", "refs/meta/policy")[0]["new"]


# --- divergence and exit 1 ----------------------------------------------------------------------

@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_nonfinite_loss_is_a_rejected_attempt_with_its_reason(edit_registry, monkeypatch):
    import torch

    from seal.editor import train

    real = train._step_loss
    calls = []

    def diverging(model, batch):
        calls.append(1)
        loss = real(model, batch)
        return loss * torch.tensor(float("nan")) if len(calls) >= 2 else loss

    monkeypatch.setattr(train, "_step_loss", diverging)
    seal = edit_registry
    head = seal.json("show", "HEAD")["id"]
    proc = seal("edit", "--passage", "passage.json", "--candidates", "2", *QUIET, "--json", expect=1)
    out = json.loads(proc.stdout)
    assert not out["decision"]["accepted"] and "diverged" in out["decision"]["reason"]
    for cand in out["candidates"]:
        assert cand["status"] == "rejected" and cand["failed_gates"] == ["diverged"]
        assert "non-finite training loss" in cand["diverged"]
        v = seal.json("show", cand["id"])
        assert v["adapter"] is None and v["train"]["loss_nonfinite"] is True
        assert v["train"]["diverged"] == cand["diverged"] and None in v["train"]["losses"]
        assert v["decision"]["reason"].startswith("diverged: non-finite training loss")
        assert all(x is None or math.isfinite(x) for x in v["train"]["losses"])
    assert seal.json("show", "HEAD")["id"] == head and seal("verify").returncode == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_nan_logits_are_a_rejected_attempt(edit_registry, monkeypatch):
    from seal.editor import evaluate, stages

    real = evaluate.next_token_logprobs

    def poisoned(model, tok, prompts, **kw):
        dist = real(model, tok, prompts, **kw)
        if kw.get("support") is not None:  # the base's results are cached; every model scored now is poisoned
            dist.logprobs[0, 0] = float("nan")
        return dist

    monkeypatch.setattr(evaluate, "next_token_logprobs", poisoned)
    seal = edit_registry
    out = json.loads(seal("edit", "--passage", "passage.json", *QUIET, "--json", expect=1).stdout)
    (cand,) = out["candidates"]
    assert cand["diverged"] == "non-finite logits on the drift probes" and "diverged" in cand["failed_gates"]
    v = seal.json("show", cand["id"])
    assert "drift.kl.base" in v["nonfinite"] and not any(s["suite"] == "drift" for s in v["scores"])
    assert stages  # the seam the test patched is the one the engine uses


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_lost_race_prints_the_decision_and_keeps_the_work(edit_registry, monkeypatch):
    """Another writer moves main while the edit runs: exit 1, the decision JSON, nothing lost."""
    from seal.editor import stages
    from seal.registry.repo import Registry

    seal = edit_registry
    real = stages.score

    def racing(session, attempt, candidates):
        from seal.registry.store.objects import build_manifest

        real(session, attempt, candidates)
        other = Registry.open(seal.cwd)  # another writer moves main while this edit scores
        root = other.resolve("main")
        sibling = other.record(build_manifest(base=other.base_id(), parents=[root], kind="edit", status="rejected",
                                              message="other writer"))
        other.move_ref("refs/heads/main", new=sibling, expected=root, reason="other writer")
        other.close()

    monkeypatch.setattr(stages, "score", racing)
    proc = seal("edit", "--passage", "passage.json", *QUIET, "--json", check=False)
    out = json.loads(proc.stdout)
    assert proc.returncode == 1 and "conflict" in out["decision"], (proc.returncode, out["decision"])
    assert "did not move" in proc.stderr and len(proc.stderr.strip().splitlines()) >= 1
    vid = out["decision"]["id"]
    assert seal.json("show", vid)["status"] == "accepted" and seal.json("show", "main")["message"] == "other writer"


# --- a stream of passages -------------------------------------------------------------------------

@pytest.fixture
def stream_registry(edit_registry):
    from seal.registry.policy import set_policy
    from seal.registry.repo import Registry

    reg = Registry.open(edit_registry.cwd)
    # The tiny random model's scores are noise (its QA F1 is 0 before and after); the stream's
    # contract is about chaining, so every gate but leakage is off.
    for key in ("efficacy_gain_min", "efficacy_margin_gain_min", "retention_drop_vs_parent_max", "retention_drop_vs_base_max", "js_vs_parent_max",
                "kl_vs_base_max", "weight_norm_ratio_max", "refusal_drop_vs_base_max", "over_refusal_rise_vs_base_max"):
        set_policy(reg, key, "false", reason="tests: the stream's chaining, not the gates")
    reg.close()
    (edit_registry.cwd / "stream.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PASSAGES))
    return edit_registry


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_stream_chains_skips_on_rerun_and_resumes_after_an_interrupt(stream_registry, monkeypatch):
    seal = stream_registry
    root = seal.json("show", "HEAD")["id"]
    from seal.editor import loop

    real, served = loop.edit_trigger, []

    def interrupted(*args, **kwargs):
        if served:
            raise KeyboardInterrupt  # Ctrl-C while the second passage is in flight
        served.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "edit_trigger", interrupted)
    proc = seal("edit", "--passages", "stream.jsonl", *QUIET, "--json", check=False)
    assert proc.returncode == 130
    first = _lines(proc.stdout)
    assert len(first) == 1 and first[0]["decision"]["accepted"] and first[0]["passage"] == 1
    monkeypatch.setattr(loop, "edit_trigger", real)

    proc = seal("edit", "--passages", "stream.jsonl", *QUIET, "--json")
    items = _lines(proc.stdout)
    assert [i["skipped"] for i in items] == [True, False, False]
    chain = [first[0]["decision"]["id"]] + [i["decision"]["id"] for i in items[1:]]
    assert all(chain), items
    parents = [seal.json("show", vid)["parents"] for vid in chain]
    assert parents == [[root], [chain[0]], [chain[1]]]
    assert seal.json("show", "main")["id"] == chain[-1]
    assert seal.json("show", chain[2])["train"]["timings"]["load_s"] == 0.0  # the warm session served it
    trigger = json.loads(_blob(seal, seal.json("show", chain[2])["trigger"]).read_text())
    assert trigger["id"] == "extra-key-kept"

    again = seal("edit", "--passages", "-", *QUIET, "--json", input=Path(seal.cwd / "stream.jsonl").read_text())
    assert [i["skipped"] for i in _lines(again.stdout)] == [True, True, True]
    assert len(seal.json("log", "--all")) == 4 and "3 skipped" in again.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_stream_killed_after_the_first_passage_resumes_at_the_second(stream_registry):
    """A real process, killed with SIGKILL once it has printed its first passage."""
    seal = stream_registry
    env = {**seal.env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*SEAL, "edit", "--passages", "stream.jsonl", *QUIET, "--json"], cwd=seal.cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = json.loads(proc.stdout.readline())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert first["passage"] == 1 and first["decision"]["accepted"]
    items = _lines(seal("edit", "--passages", "stream.jsonl", *QUIET, "--json").stdout)
    assert items[0]["skipped"] and items[0]["trigger"] == first["trigger"]
    recorded = [i for i in items if not i["skipped"]]
    assert recorded and recorded[-1]["passage"] == 3
    assert seal("verify").returncode == 0
    assert seal.json("show", "main")["id"] == recorded[-1]["decision"]["id"]


# --- the fast path gives the plain path's results ------------------------------------------------

@pytest.fixture
def float64_engine(monkeypatch):
    """The whole engine in float64. Two paths that differ only in the order of their sums agree in
    float32 only to ~1e-4 of a gradient's scale, which AdamW can amplify and a gate or a greedy
    token can turn into a different decision on another CPU or thread count; in float64 the same
    re-association is ~1e-12, so equal decisions and texts are a fair demand anywhere."""
    import torch

    from seal.editor import device, session

    monkeypatch.setattr(device, "dtype_for", lambda _device: torch.float64)
    monkeypatch.setattr(session, "_BASES", {})  # a float32 base loaded by another test is not reused
    monkeypatch.setattr(session, "_BASE_RESULTS", {})

@pytest.mark.numeric
def test_fast_path_equals_plain_path(tmp_path, tiny_chat_record, float64_engine):
    """Merged weights, shared prompt prefixes and one generate per answer length: same decisions,
    same self-edits, the same scores within float tolerance."""
    from seal.editor.loop import run_edit
    from seal.editor.progress import QuietProgress
    from seal.editor.request import EditRequest

    results = {}
    for fast in (True, False):
        folder = tmp_path / ("fast" if fast else "plain")
        folder.mkdir()
        reg = make_registry(folder, tiny_chat_record)
        (folder / "p.json").write_text(json.dumps(PASSAGES[1]))
        req = EditRequest(passage=folder / "p.json", candidates=2, epochs=3, lr=1e-3, max_new_tokens=24, track=False,
                          fast=fast, temperature=1.0)
        results[fast] = (run_edit(reg, req, progress=QuietProgress()), reg)
    (fast, reg_f), (plain, reg_p) = results[True], results[False]
    assert fast["decision"]["accepted"] == plain["decision"]["accepted"]
    for a, b in zip(fast["candidates"], plain["candidates"]):
        assert a["status"] == b["status"] and a["failed_gates"] == b["failed_gates"]
        assert set(a["scores"]) == set(b["scores"])
        for key in a["scores"]:
            assert a["scores"][key] == pytest.approx(b["scores"][key], abs=1e-4, rel=1e-4), key
        assert reg_f.manifest(a["id"])["train"]["dtype"] == reg_p.manifest(b["id"])["train"]["dtype"] == "float64"
        edit_a = json.loads(reg_f.store.get(reg_f.manifest(a["id"])["self_edit"]))
        edit_b = json.loads(reg_p.store.get(reg_p.manifest(b["id"])["self_edit"]))
        assert edit_a["generated"] == edit_b["generated"]
    reg_f.close()
    reg_p.close()


@pytest.mark.numeric
def test_cuda_paths_forced_on_the_cpu_give_the_same_results(tmp_path, tiny_chat_record, monkeypatch, float64_engine):
    """The batched training and batched scoring that a GPU takes, run here through the whole engine."""
    from seal.editor import stages
    from seal.editor.loop import run_edit
    from seal.editor.progress import QuietProgress
    from seal.editor.request import EditRequest

    results = []
    for together in (False, True):
        monkeypatch.setattr(stages, "_batched", lambda session, cands, t=together: t and len(cands) > 1)
        monkeypatch.setattr(stages, "_together", lambda session, live, t=together: t and len(live) > 1)
        folder = tmp_path / str(together)
        folder.mkdir()
        reg = make_registry(folder, tiny_chat_record)
        (folder / "p.json").write_text(json.dumps(PASSAGES[1]))
        # race=0: the serial side trains every candidate to the end, as the batched pass does
        req = EditRequest(passage=folder / "p.json", candidates=3, epochs=3, lr=1e-3, max_new_tokens=24, track=False,
                          temperature=1.0, race=0)
        result = run_edit(reg, req, progress=QuietProgress())
        results.append([(c["status"], c["failed_gates"], c["scores"], reg.manifest(c["id"])["train"]) for c in result["candidates"]])
        reg.close()
    for (status_a, failed_a, scores_a, train_a), (status_b, failed_b, scores_b, train_b) in zip(*results):
        assert status_a == status_b and failed_a == failed_b
        assert train_b["batched_with"] == 3 and "batched_with" not in train_a
        assert train_a["dtype"] == train_b["dtype"] == "float64"
        # transformers takes the loss in float32 even here: a mean over up to batch_size * 512 tokens.
        assert train_a["losses"] == pytest.approx(train_b["losses"], rel=req.batch_size * 512 * 2 ** -23, abs=0)
        for key in scores_a:
            assert scores_a[key] == pytest.approx(scores_b[key], rel=1e-3, abs=1e-4), key


def test_bench_smoke_runs(tmp_path, capsys):
    """bench/gpu_edit.py --smoke: the GPU bench's code paths on the tiny model, on the CPU, in-process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_edit", Path(__file__).resolve().parents[1] / "bench" / "gpu_edit.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--workdir", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["smoke"] is True and result["k1"]["exit"] in (0, 1) and result["k1"]["timings"]["train_s"] > 0
    assert result["stream"]["exit"] == 0 and result["stream"]["passages"] == 2
    assert result["warm"]["k2"]["wall_s"] > 0 and result["warm"]["k1"]["timings"]["load_s"] == 0.0
    assert result["throughput"]["train_tokens_per_s"] > 0 and result["throughput"]["generate_tokens_per_s"] > 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_hostile_streams_are_refused_before_any_model_loads(edit_registry, tmp_path, monkeypatch):
    from seal.editor import session

    monkeypatch.setattr(session, "loaded_base", lambda *a: pytest.fail("a model was loaded"))
    seal = edit_registry
    before = seal("log", "--all", "--json").stdout
    cases = {
        "deep.jsonl": json.dumps(PASSAGE) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n",
        "bidi.jsonl": json.dumps({**PASSAGE, "title": "Zorblat \u202e evil"}) + "\n",
        "ctrl.jsonl": json.dumps({**PASSAGE, "title": "Zor\x1b[31mblat"}) + "\n",
        "empty.jsonl": "\n\n",
        "notobject.jsonl": "[1, 2]\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.jsonl").write_bytes(json.dumps(PASSAGE).encode() + b"\n" + b'{"context": "caf\xe9"}\n')
    for name in [*cases, "latin1.jsonl"]:
        proc = seal("edit", "--passages", tmp_path / name, expect=2)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, (name, proc.stderr)
    assert "line 2" in seal("edit", "--passages", tmp_path / "deep.jsonl", expect=2).stderr
    assert "-m" in seal("edit", "--passage", "passage.json", "-m", "bad\u202emessage", expect=2).stderr
    assert seal("log", "--all", "--json").stdout == before
