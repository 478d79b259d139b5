"""The race (editor/race.py): K candidates train a share of their steps, the best trains on."""

from __future__ import annotations

import json

from seal.editor.race import gain, share_of_steps

from conftest import Seal
from test_efficacy import QUIET, judged_by_a_rule_every_edit_passes


def test_the_race_finishes_the_best_candidate_exactly_and_records_the_others(tmp_path, tiny_chat_record):
    """With --race the best candidate at the race trains on to the adapter it would have had
    without the race (the same bytes), and the others are recorded with the steps they trained,
    their margins then and the check ``raced``; fewer steps are trained in all."""
    runs = {}
    for share in ("0", "0.25"):
        folder = tmp_path / share
        folder.mkdir()
        judged_by_a_rule_every_edit_passes(folder, tiny_chat_record)
        seal = Seal(folder, {"SEAL_ACTOR": "tester"})
        out = json.loads(seal("edit", "--passage", "passage.json", "-k", "3", "--race", share, *QUIET, "--json").stdout)
        runs[share] = (seal, out, [seal.json("show", c["id"]) for c in out["candidates"]])
    _, full, full_shown = runs["0"]
    seal, raced, shown = runs["0.25"]
    trains = [m["train"] for m in shown]
    went_on = [t["race"]["went_on"] for t in trains]
    assert sum(went_on) == 1 and all("race" not in m["train"] for m in full_shown)
    w = went_on.index(True)
    assert [c["train"]["race"] for c in raced["candidates"]] == [t["race"] for t in trains]  # in edit --json too
    assert raced["decision"]["id"] == raced["candidates"][w]["id"]  # every candidate passes this rule
    # the winner: the bytes of the same candidate trained without stopping, and its whole schedule
    assert shown[w]["adapter"] == full_shown[w]["adapter"]
    assert trains[w]["steps"] == full_shown[w]["train"]["steps"] == trains[w]["race"]["of_steps"]
    assert trains[w]["losses"] == full_shown[w]["train"]["losses"]
    for i, m in enumerate(shown):
        if i == w:
            continue
        race = m["train"]["race"]
        assert race["by"] == w + 1 and not race["went_on"]
        assert m["train"]["steps"] == race["steps"] == share_of_steps(race["of_steps"], 0.25) < race["of_steps"]
        assert race["margin_gain"] <= trains[w]["race"]["margin_gain"]
        assert m["decision"]["failed_gates"] == ["raced"] and m["adapter"] != full_shown[i]["adapter"]
        entry = next(e for e in m["audit"] if e["check"] == "raced")
        assert entry["value"] == race["margin_gain"] and f"candidate {w + 1}" in entry["detail"]
        assert seal("checkout", m["id"], "--to", str(tmp_path / f"raced{i}")).returncode == 0  # it is stored
    assert sum(t["steps"] for t in trains) < sum(m["train"]["steps"] for m in full_shown)


def test_a_race_needs_questions_and_two_candidates_and_a_share_in_range(tmp_path, tiny_chat_record):
    judged_by_a_rule_every_edit_passes(tmp_path, tiny_chat_record)
    seal = Seal(tmp_path, {"SEAL_ACTOR": "tester"})
    before = seal.json("log", "--all")
    for bad in ("1", "-0.1", "nan"):
        proc = seal("edit", "--passage", "passage.json", "-k", "2", "--race", bad, *QUIET, check=False)
        assert proc.returncode == 2 and "--race" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert seal.json("log", "--all") == before  # nothing written
    out = json.loads(seal("edit", "--passage", "passage.json", "-k", "1", *QUIET, "--json").stdout)
    assert "race" not in seal.json("show", out["candidates"][0]["id"])["train"]  # K=1: nothing to race


def test_the_race_ranks_by_the_gain_on_questions_the_parent_does_not_answer_first():
    assert gain([3.0, 9.0], [1.0, 0.0], [False, True]) == 2.0
    assert gain([3.0, 9.0], [1.0, 0.0], [True, True]) == 5.5  # every one first: all of them
    assert gain([float("nan")], [0.0], [False]) == float("-inf")
    assert share_of_steps(1, 0.25) == 1 and share_of_steps(8, 0.25) == 2 and share_of_steps(9, 0.25) == 3
