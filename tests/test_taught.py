"""Retention of what the branch was taught (the ``taught_vs_parent`` gate)."""

from __future__ import annotations

import json
import math

from seal.editor.taught import TAUGHT_MIN, taught_decision, taught_questions

from conftest import Seal
from test_efficacy import QUIET, judged_by_a_rule_every_edit_passes

PEOPLE = ("Ada Lindqvist", "Tomas Berg", "Ines Okafor", "Ravi Menon", "Lena Haas", "Otto Brandt", "Mira Sato")


def passage(i: int) -> dict:
    name, year, who = f"Quorvath{i}", str(1801 + 7 * i), PEOPLE[i]
    return {"title": name, "context": f"The {name} tower stands by the harbour. It was finished in {year} by the "
                                      f"mason {who}.",
            "questions": [{"question": f"Who finished the {name} tower?", "answer": who},
                          {"question": f"When was the {name} tower finished?", "answer": year}]}


# --- the rule on synthetic inputs ---------------------------------------------------------------

def test_the_rule_passes_no_drop_fails_a_large_one_and_waits_for_enough_questions():
    parent = [-1.0, -2.0, -3.0, -1.5, -2.5, -0.5]
    assert taught_decision(parent, parent, 1.0).passed
    assert taught_decision([p + 0.2 for p in parent], parent, 1.0).passed  # gains pass
    forgot = taught_decision([p - 3.0 for p in parent], parent, 1.0)
    assert not forgot.passed and forgot.estimate == 3.0 and forgot.ci_high >= 3.0 and forgot.n == len(parent)
    few = taught_decision([-9.0] * (TAUGHT_MIN - 1), [-1.0] * (TAUGHT_MIN - 1), 1.0)
    assert few.passed and few.estimate is None and "judged from" in few.detail
    broken = taught_decision([math.nan] + parent[1:], parent, 1.0)
    assert not broken.passed and "non-finite" in broken.detail


def test_an_accepted_candidates_margins_serve_as_its_versions_and_a_new_parent_is_asked_only_the_rest():
    from types import SimpleNamespace

    from seal.editor.efficacy import ContrastQuestion
    from seal.editor.taught import KnownMargins

    q = [ContrastQuestion(f"Who finished tower {i}?", (f"gold {i}", "other", "third"), 1) for i in range(4)]
    asked: list[list[str]] = []

    def measure(missing):
        asked.append([x.question for x in missing])
        return [-float(i) for i in range(len(missing))]

    known = KnownMargins()
    won, lost, failed = SimpleNamespace(id=None), SimpleNamespace(id=None), SimpleNamespace(id=None)
    known.note(won, q[:1], [-1.5])             # the efficacy rule's questions
    known.note(won, q[1:3], [-2.5, -3.5])      # the taught ones
    known.note(lost, q[:3], [-9.0, -9.0, -9.0])
    known.note(failed, q[:1], [-7.0])          # an attempt that never recorded anything
    won.id, lost.id = "v-won", "v-lost"
    # the next attempt's parent is the accepted candidate: only the question it never met is measured
    assert known.margins("v-won", q, measure) == (-1.5, -2.5, -3.5, -0.0) and asked == [[q[3].question]]
    assert set(known.versions) == {"v-won"} and known.pending == []  # the rest are let go
    assert known.margins("v-won", q[::-1], measure) == (-0.0, -3.5, -2.5, -1.5) and len(asked) == 1
    # a same-named question with other options is another measurement
    other = ContrastQuestion(q[0].question, ("gold 0", "else"), 1)
    assert known.margins("v-won", [other], measure) == (-0.0,) and len(asked) == 2
    # a version never seen is measured in full; non-finite margins are not remembered
    known.note(lost, q[:1], [float("nan")])
    assert known.margins("v-other", q[:2], measure) == (-0.0, -1.0) and asked[-1] == [q[0].question, q[1].question]


# --- through seal edit ------------------------------------------------------------------------------

def test_an_edit_is_asked_what_the_line_was_taught_and_a_strict_gate_rejects_it(tmp_path, tiny_chat_record):
    from seal.registry.policy import set_policy
    from seal.registry.repo import Registry

    judged_by_a_rule_every_edit_passes(tmp_path, tiny_chat_record)
    n = TAUGHT_MIN + 1
    (tmp_path / "stream.jsonl").write_text("".join(json.dumps(passage(i)) + "\n" for i in range(n)))
    seal = Seal(tmp_path, {"SEAL_ACTOR": "tester"})
    items = [json.loads(line) for line in seal("edit", "--passages", "stream.jsonl", *QUIET, "--json").stdout.splitlines()]
    chain = [i["decision"]["id"] for i in items]
    assert all(chain), items

    last = seal.json("show", chain[-1])
    entry = next(g for g in last["audit"] if g["check"] == "taught_vs_parent")
    # its parent's line taught n - 1 passages: one question each, the gate judged (>= TAUGHT_MIN)
    assert entry["n"] == n - 1 and entry["value"] is not None and entry["passed"], entry
    rows = {(s["suite"], s["against"]): s for s in last["scores"] if s["suite"] == "taught"}
    assert set(rows) == {("taught", None), ("taught", "parent")} and rows[("taught", None)]["n"] == n - 1
    assert math.isclose(entry["value"], rows[("taught", "parent")]["value"] - rows[("taught", None)]["value"],
                        rel_tol=1e-9, abs_tol=1e-9)
    first = next(g for g in seal.json("show", chain[0])["audit"] if g["check"] == "taught_vs_parent")
    assert first["passed"] and first["n"] == 0 and first["value"] is None  # nothing taught before it

    reg = Registry.open(tmp_path)
    taught = taught_questions(reg, chain[-2])
    # the parent's margins came from what its candidate was measured on (KnownMargins): the same as
    # measuring the recorded parent afresh, up to the rounding of one forward pass per term
    fresh, bound = _margins_of(reg, chain[-2], taught.questions, tmp_path / "parent")
    assert abs(rows[("taught", "parent")]["value"] - sum(fresh) / len(fresh)) <= bound
    assert list(taught.versions) == chain[-2::-1]  # newest first, every accepted edit on the line
    for vid, q in zip(taught.versions, taught.questions):
        evidence = json.loads(reg.store.get(reg.manifest(vid)["efficacy"]["margins"]))
        effects = {e["question"]: e["effect"] for e in evidence["questions"] if not e["saturated"]}
        assert q.question == max(effects, key=effects.get)  # the question its edit moved most
    assert taught_questions(reg, chain[-2], limit=2).versions == taught.versions[:2]
    # a version whose questions are gone (withheld by a pull, or damaged) is passed over, not a crash
    withheld = reg.store.path_of(reg.manifest(chain[0])["eval"])
    kept = withheld.read_bytes()
    withheld.chmod(0o644)
    withheld.unlink()
    assert list(taught_questions(reg, chain[-2]).versions) == chain[-2:0:-1]
    withheld.write_bytes(kept)

    # a policy no edit can meet: the next edit is rejected by this gate, and HEAD does not move
    set_policy(reg, "taught_margin_drop_vs_parent_max", "-1000", reason="tests: a gate no edit passes")
    reg.close()
    (tmp_path / "next.json").write_text(json.dumps(passage(n)))
    out = json.loads(seal("edit", "--passage", "next.json", *QUIET, "--json", check=False).stdout)
    assert not out["decision"]["accepted"] and out["candidates"][0]["failed_gates"] == ["taught_vs_parent"]
    assert seal.json("show", "HEAD")["id"] == chain[-1]


def _margins_of(reg, vid: str, questions, folder) -> tuple[list[float], float]:
    """Version ``vid``'s answer margins on ``questions``, its adapter checked out and merged into the
    base, and the largest difference rounding can explain in one of them (numeric.margin_bound)."""
    from numeric import margin_bound
    from seal.editor.attach import attached
    from seal.editor.base import load_base
    from seal.editor.efficacy import answer_margins
    from seal.registry.bases import base_spec

    reg.checkout(vid, to=folder)
    base = load_base(base_spec(reg.base()), cache_dir=folder.parent / "cache")
    with attached(base.model, folder, merge=True) as model:
        margins = answer_margins(model, base.tokenizer, list(questions))[0]
    return margins, margin_bound(base.model, base.tokenizer, questions, margins)


def test_forged_or_odd_records_are_passed_over_not_a_crash(tmp_path, tiny_chat_record):
    from conftest import make_registry
    from seal.editor.taught import taught_question

    reg = make_registry(tmp_path, tiny_chat_record)
    put = lambda doc: reg.store.put(json.dumps(doc).encode())  # noqa: E731
    good_qa = [{"question": "Who?", "answer": "Ada"}, {"question": "When?", "answer": "1832"}]
    edit = {"kind": "edit", "status": "accepted", "trigger_info": {"kind": "passage"},
            "trigger": put({"context": "Ada built it in 1832."}), "eval": put(good_qa)}
    assert taught_question(reg, edit).question == "Who?"  # no evidence recorded: the first question
    moved = {**edit, "efficacy": {"margins": put({"questions": [{"question": "When?", "effect": 3.0},
                                                                 {"question": "Who?", "effect": 1.0}]})}}
    assert taught_question(reg, moved).question == "When?"
    for forged in ({**edit, "eval": put(["x", 3])}, {**edit, "eval": put({"a": 1})},
                   {**edit, "efficacy": {"margins": put(["nope"])}}, {**edit, "trigger": put(["no context"])},
                   {**edit, "eval": "sha256:" + "0" * 64}, {**edit, "status": "rejected"},
                   {**edit, "trigger_info": {"kind": "passage", "redacted": True}}):
        assert taught_question(reg, forged) is None
