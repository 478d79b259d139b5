"""The efficacy margin rule: margins, the placebo control, the decision, and the pooled figure."""

from __future__ import annotations

import json
from dataclasses import replace
import math

import pytest

from seal.editor.efficacy import (MarginRule, answer_kind, contrast_questions, decide_margins, margin_of,
                                  sign_flip_p, unrelated_answers)
from seal.registry.pooled import clustered_gain, pooled_efficacy

from conftest import Seal, make_registry

RULE = MarginRule(mean_min=1.0, floor=-1.5, alpha=0.05, sign_test_min=5)


# --- the margin and the rule on synthetic inputs -------------------------------------------------

def test_margin_is_gold_mass_against_all_candidates():
    m, first = margin_of([math.log(0.5), math.log(0.25), math.log(0.25)], 1)
    assert m == pytest.approx(math.log(0.5)) and first
    # two gold answers: their mass is summed
    m, first = margin_of([math.log(0.2), math.log(0.2), math.log(0.6)], 2)
    assert m == pytest.approx(math.log(0.4)) and not first


def test_saturated_questions_are_left_out_of_the_decision():
    # q4 is ranked first by the parent: its large drop does not count, and it is reported
    d = decide_margins([0.0, 0.0, 0.0, -9.0], [-3.0, -3.0, -3.0, 0.0], [-3.0, -3.1, -2.9, 0.0],
                       [False, False, False, True], RULE)
    assert d.passed and d.n == 3 and d.saturated == 1 and d.effects[3] is None
    assert d.mean == pytest.approx(3.0)


def test_every_question_saturated_cannot_pass():
    d = decide_margins([0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [True, True], RULE)
    assert not d.passed and d.n == 0 and "no usable question" in d.detail()


def test_mean_floor_and_sign_test_each_can_fail_the_rule():
    parent = [-5.0] * 5
    placebo = [-5.0] * 5
    first = [False] * 5
    assert decide_margins([-4.5] * 5, parent, placebo, first, RULE).passed is False  # mean 0.5 < 1
    # mean 4 but one question collapses below the floor
    assert not decide_margins([0.0, 0.0, 0.0, -2.0, -7.0], parent, placebo, first, RULE).passed
    # mean 3.8, floor kept, but 5 usable questions and the sign-flip p = 2/32 > 0.05
    d = decide_margins([0.0, 0.0, 0.0, 0.0, -6.0], parent, placebo, first, RULE)
    assert d.minimum == pytest.approx(-1.0) and d.p_value == pytest.approx(2 / 32) and not d.passed
    assert decide_margins([0.0] * 5, parent, placebo, first, RULE).passed  # all up: p = 1/32
    # the policy sets the test's level, or leaves it out (efficacy_margin_sign_alpha = false)
    assert decide_margins([0.0, 0.0, 0.0, 0.0, -6.0], parent, placebo, first, replace(RULE, alpha=0.1)).passed
    assert decide_margins([0.0, 0.0, 0.0, 0.0, -6.0], parent, placebo, first, replace(RULE, alpha=None)).passed
    assert "sign-flip" not in replace(RULE, alpha=None).words()


def test_the_policy_sets_the_sign_tests_level_or_leaves_it_out():
    from seal.editor.gates import margin_rule

    assert margin_rule({}).alpha is None  # off by default: it added no protection on null pairs
    assert margin_rule({}).floor == -2.0
    assert margin_rule({"efficacy_margin_sign_alpha": 0.1}).alpha == 0.1
    assert margin_rule({"efficacy_margin_sign_alpha": None}).alpha is None


def test_sign_flip_p_is_exact():
    assert sign_flip_p([1.0, 1.0, 1.0, 1.0]) == pytest.approx(1 / 16)
    assert sign_flip_p([1.0, -1.0]) == pytest.approx(3 / 4)
    assert sign_flip_p([]) == 1.0


def test_a_non_finite_margin_fails_the_rule():
    d = decide_margins([0.0, float("inf")], [-3.0, -3.0], [-3.0, -3.0], [False, False], RULE)
    assert not d.passed and d.mean is None


def test_contrast_sets_hold_eight_distractors_and_never_the_gold():
    qa = [{"question": "When did it open?", "answer": "26 February 2008"},
          {"question": "Where is it?", "answer": "Spitsbergen"},
          {"question": "Who runs it?", "answer": ["the Norwegian government", "Norway"]}]
    passage = ("The vault on Spitsbergen opened on 26 February 2008, 1,300 kilometres from the pole, and is run by "
               "the Norwegian government with NordGen. It holds 4.5 million samples at minus 18 degrees.")
    qs = contrast_questions(qa, passage, unrelated_answers())
    assert qs == contrast_questions(qa, passage, unrelated_answers())  # deterministic
    for q, item in zip(qs, qa):
        golds = q.options[:q.n_gold]
        assert len(q.options) - q.n_gold >= 8
        assert all(g.lower() not in o.lower() for g in golds for o in q.options[q.n_gold:])
    # the passage's other answers come first, then same-kind spans (numbers for a date)
    assert "Spitsbergen" in qs[0].options[1:3] and qs[2].n_gold == 2
    assert any(any(ch.isdigit() for ch in o) for o in qs[0].options[3:]) and answer_kind("1832") == "number"


# --- on a real (tiny) model -----------------------------------------------------------------------

def test_an_edit_that_teaches_passes_and_a_placebo_does_not(tiny_chat_base, tmp_path):
    """Margins measured on a model: an adapter trained on the question-answer mapping raises every
    usable margin and passes; one placebo judged against another does not."""
    from seal.editor.attach import attached
    from seal.editor.base import load_base
    from seal.editor.efficacy import answer_margins
    from seal.editor.generation import chat_prompt
    from seal.editor.placebo import placebo_sequences
    from seal.editor.train import train_adapter

    base = load_base(str(tiny_chat_base), cache_dir=tmp_path / "cache", device="cpu")
    model, tok = base.model, base.tokenizer
    qa = [{"question": "What colour is the Zorblat bridge?", "answer": "violet"},
          {"question": "Who built the Zorblat bridge?", "answer": "Ada Lindqvist"},
          {"question": "When was the Zorblat bridge built?", "answer": "1832"}]
    qs = contrast_questions(qa, "The violet Zorblat bridge was built in 1832 by Ada Lindqvist.", unrelated_answers())

    def margins(folder):
        with attached(model, folder) as m:
            return answer_margins(m, tok, qs)

    taught = [chat_prompt(tok, q["question"]) + q["answer"] + tok.eos_token for q in qa]
    train_adapter(model, tok, taught * 4, out_dir=tmp_path / "edit", lr=1e-2, epochs=8, seed=0)
    for seed, name in ((1, "placebo_a"), (2, "placebo_b")):
        train_adapter(model, tok, placebo_sequences(12, 12), out_dir=tmp_path / name, lr=1e-2, epochs=8, seed=seed)
    parent, first = margins(None)
    edit, placebo_a, placebo_b = (margins(tmp_path / n)[0] for n in ("edit", "placebo_a", "placebo_b"))
    assert all(e > p for e, p, f in zip(edit, parent, first) if not f)
    assert decide_margins(edit, parent, placebo_a, first, RULE).passed
    assert not decide_margins(placebo_b, parent, placebo_a, first, RULE).passed


# --- through `seal edit` --------------------------------------------------------------------------

PASSAGE = {"title": "Zorblat", "context": "The Zorblat river flows into the northern sea. The first bridge over the "
           "Zorblat was built in 1832 by the engineer Ada Lindqvist.",
           "questions": [{"question": "Who built the first bridge over the Zorblat?", "answer": "Ada Lindqvist"},
                         {"question": "When was the first bridge over the Zorblat built?", "answer": "1832"}]}
QUIET = ["--epochs", "2", "--lr", "1e-3", "--max-tokens", "24", "--no-track"]


def test_edit_is_judged_by_margins_and_reuses_the_parents_placebo(tmp_path, tiny_chat_record, monkeypatch):
    from seal.editor import placebo
    from seal.registry.policy import set_policy
    from seal.registry.repo import Registry

    # a machine cache of its own: the root (so the placebo's key) is the same in every run
    monkeypatch.setenv("SEAL_CACHE", str(tmp_path / "cache" / "bases"))
    monkeypatch.setattr(placebo, "_IN_PROCESS", {})

    reg = make_registry(tmp_path, tiny_chat_record)
    # the tiny model's probe scores are noise: only the efficacy rule decides here, and it rejects
    # (so HEAD stays and both edits share a parent)
    for key in ("retention_drop_vs_parent_max", "retention_drop_vs_base_max", "js_vs_parent_max", "kl_vs_base_max",
                "weight_norm_ratio_max", "refusal_drop_vs_base_max", "over_refusal_rise_vs_base_max"):
        set_policy(reg, key, "false", reason="tests: the efficacy rule alone")
    set_policy(reg, "efficacy_margin_gain_min", "1000", reason="tests: a rule no edit passes")
    reg.close()
    (tmp_path / "passage.json").write_text(json.dumps(PASSAGE))
    seal = Seal(tmp_path, {"SEAL_ACTOR": "tester"})
    head = seal.json("show", "HEAD")["id"]
    docs = []
    for _ in range(2):
        out = json.loads(seal("edit", "--passage", "passage.json", *QUIET, "--json", check=False).stdout)
        assert not out["decision"]["accepted"]
        assert out["candidates"][0]["failed_gates"] == ["efficacy_margin"]
        shown = seal.json("show", out["candidates"][0]["id"])
        assert [g["check"] for g in shown["audit"] if g["check"].startswith("efficacy")] == ["efficacy_margin"]
        # rejected by the rule, so not probed: its record holds the margins that decided it, nothing else
        assert {(s["suite"], s["metric"]) for s in shown["scores"]} == {("efficacy", "margin"),
                                                                         ("efficacy", "margin_gain")}
        docs.append((shown, json.loads(Registry.open(tmp_path).store.get(shown["efficacy"]["margins"]))))
    assert seal.json("show", "HEAD")["id"] == head
    (first, first_doc), (second, second_doc) = docs
    assert first_doc["placebo"]["cached"] is False and second_doc["placebo"]["cached"] is True
    assert first["efficacy"]["placebo"] == second["efficacy"]["placebo"]  # the same placebo weights
    assert second["train"]["timings"]["placebo_s"] < first["train"]["timings"]["placebo_s"]
    assert [q["question"] for q in first_doc["questions"]] == [q["question"] for q in PASSAGE["questions"]]
    assert all(set(q) >= {"margin", "margin_parent", "margin_placebo", "effect", "saturated"}
               for q in first_doc["questions"])


# --- the pooled figure ----------------------------------------------------------------------------

def _edit(gain: float, n: int, status: str = "accepted") -> dict:
    return {"kind": "edit", "status": status, "scores": [
        {"suite": "efficacy", "metric": "containment", "against": None, "value": 0.1 + gain, "n": n},
        {"suite": "efficacy", "metric": "containment", "against": "parent", "value": 0.1, "n": n},
        {"suite": "efficacy", "metric": "margin_gain", "against": "placebo", "value": 2 * gain, "n": n}]}


def test_pooled_gain_weights_questions_and_resamples_passages():
    edits = [_edit(0.2, 5), _edit(0.4, 5), _edit(0.0, 4), _edit(0.2, 4), _edit(9.0, 5, status="rejected")]
    pooled = pooled_efficacy(edits)
    c = pooled["containment"]
    assert pooled["accepted_edits"] == 4 and c["edits"] == 4 and c["n"] == 18
    assert c["estimate"] == pytest.approx((0.2 * 5 + 0.4 * 5 + 0.0 * 4 + 0.2 * 4) / 18)
    assert 0.0 <= c["ci_low"] < c["estimate"] < c["ci_high"] <= 0.4
    assert pooled["margin_gain"]["estimate"] == pytest.approx(2 * c["estimate"])
    # with every passage's gain the same the interval has no width: the clusters, not the questions, vary
    same = clustered_gain([{"gain": 0.3, "n": 4}] * 6)
    assert same["ci_low"] == pytest.approx(0.3) and same["ci_high"] == pytest.approx(0.3)
    assert clustered_gain([])["estimate"] is None


def test_the_audit_reports_the_pooled_figure(tmp_path, tiny_chat_record):
    from seal.registry.audit import audit_report, render

    reg = make_registry(tmp_path, tiny_chat_record)
    report = audit_report(reg, "HEAD")
    assert report["efficacy"]["accepted_edits"] == 0 and report["efficacy"]["containment"]["estimate"] is None
    assert "What the accepted edits taught" in render(report, "md")
    assert "What the accepted edits taught" in render(report, "html")


def judged_by_a_rule_every_edit_passes(tmp_path, tiny_chat_record) -> None:
    """A registry in ``tmp_path`` whose only gate is an efficacy rule every edit passes, and PASSAGE
    in ``passage.json``."""
    from seal.registry.policy import set_policy

    reg = make_registry(tmp_path, tiny_chat_record)
    for key in ("retention_drop_vs_parent_max", "retention_drop_vs_base_max", "js_vs_parent_max", "kl_vs_base_max",
                "weight_norm_ratio_max", "refusal_drop_vs_base_max", "over_refusal_rise_vs_base_max",
                "efficacy_margin_floor_min", "efficacy_margin_noise_z"):
        set_policy(reg, key, "false", reason="tests: the efficacy rule alone")
    set_policy(reg, "efficacy_margin_gain_min", "-1000", reason="tests: a rule every edit passes")
    reg.close()
    (tmp_path / "passage.json").write_text(json.dumps(PASSAGE))


def test_k_candidates_are_probed_best_margin_first_until_one_passes(tmp_path, tiny_chat_record):
    """The winner is the best margin among those passing every gate, as with a full evaluation;
    a candidate ranked below it is recorded as outranked, unprobed."""
    judged_by_a_rule_every_edit_passes(tmp_path, tiny_chat_record)
    seal = Seal(tmp_path, {"SEAL_ACTOR": "tester"})
    # --race 0: both candidates train to the end (the race is tested in test_race.py)
    out = json.loads(seal("edit", "--passage", "passage.json", "-k", "2", "--race", "0", *QUIET, "--json").stdout)
    assert out["decision"]["accepted"]
    shown = {c["id"]: seal.json("show", c["id"]) for c in out["candidates"]}
    gains = {vid: next(s["value"] for s in m["scores"] if s["metric"] == "margin_gain") for vid, m in shown.items()}
    winner = out["decision"]["id"]
    [other] = [vid for vid in shown if vid != winner]
    assert gains[winner] >= gains[other]
    assert any(s["suite"] == "retention" for s in shown[winner]["scores"])  # probed
    assert shown[other]["decision"]["failed_gates"] == ["outranked"]
    assert not any(s["suite"] == "retention" for s in shown[other]["scores"])  # not probed


def test_edits_with_other_sequence_counts_in_one_bucket_share_the_placebo(monkeypatch):
    """The placebo's key and replay lines follow the bucketed sequence count, not the edit's own:
    in a stream, the passage after a rejected one reuses the placebo when its count shares the
    bucket (the last acceptance run trained 39 placebos for 50 passages, one per replay count)."""
    from types import SimpleNamespace

    from seal.editor import replay
    from seal.editor.stages import placebo_plan

    monkeypatch.setattr(replay, "replay_pool", lambda session: [f"neutral line {i}" for i in range(16)])
    session = SimpleNamespace(base_row={"id": "b" * 64})
    attempt = SimpleNamespace(parent=SimpleNamespace(vid="p" * 64), words=100)

    def plan(n_sequences, kl=1.0, parent="p" * 64):
        sequences = [f"s{i}" for i in range(n_sequences)]
        own = replay.draw(replay.replay_pool(session), n_sequences, 0)  # as with_replay draws them
        c = SimpleNamespace(train={"hyperparameters": {"lr": 3e-4, "epochs": 2, "kl": kl}}, seed=0,
                            self_edit=SimpleNamespace(sequences=sequences + ([] if kl else own), replay=own))
        return placebo_plan(session, SimpleNamespace(**{**vars(attempt), "parent": SimpleNamespace(vid=parent)}), c)

    five, eight, nine = plan(5), plan(8), plan(9)  # 4, 7 and 8 replay lines of their own
    assert five[0] == eight[0] and five[3] == eight[3] and five[1] != eight[1]  # one bucket: the same placebo
    assert nine[0] != eight[0]  # another bucket: another placebo
    assert plan(8, parent="q" * 64)[0] != eight[0]  # another parent: another placebo
    # without the anchor the replay lines are trained on, so they are not counted as the edit's
    assert plan(5, kl=0.0)[0] == plan(8, kl=0.0)[0] != plan(9, kl=0.0)[0]
