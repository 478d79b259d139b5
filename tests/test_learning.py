"""The ReST-EM dataset picks exactly the candidates that beat their parents by the margin."""

from __future__ import annotations

import json

from seal.registry.store import refs as R
from seal.editor.learning import Selection, build_dataset
from seal.registry.store.objects import build_manifest, canonical_json


def _attempt(reg, parent: str, trigger: bytes, f1: float, parent_f1: float, text: str, accepted: bool = False) -> str:
    edit = {"style": "implications", "prompt": f"Passage: {trigger.decode()}", "generated": text, "lines": [text]}
    manifest = build_manifest(
        base=reg.base_id(), parents=[parent], kind="edit", status="accepted" if accepted else "rejected",
        trigger=reg.store.put(trigger), self_edit=reg.store.put(canonical_json(edit)),
        scores=[{"suite": "efficacy", "metric": "f1", "against": None, "value": f1, "n": 4},
                {"suite": "efficacy", "metric": "f1", "against": "parent", "value": parent_f1, "n": 4}],
        message=text,
    )
    return reg.record(manifest)


def test_dataset_keeps_the_best_candidates_above_the_margin(reg):
    root = reg.resolve("main")
    t1, t2, t3 = b"passage one", b"passage two", b"passage three"
    a = _attempt(reg, root, t1, 0.50, 0.20, "best of one")      # gain 0.30
    b = _attempt(reg, root, t1, 0.40, 0.20, "second of one")    # gain 0.20
    _attempt(reg, root, t1, 0.22, 0.20, "barely")               # gain 0.02, under the margin
    c = _attempt(reg, root, t2, 0.30, 0.10, "only good one")    # gain 0.20
    _attempt(reg, root, t2, 0.05, 0.10, "worse than parent")    # gain -0.05
    _attempt(reg, root, t3, 0.10, 0.10, "no gain")              # gain 0
    ds = build_dataset(reg, Selection(margin=0.05))
    assert [e.version for e in ds.examples] == sorted([a, c], key=lambda v: reg.manifest(v)["trigger"])
    assert ds.considered == 6
    two = build_dataset(reg, Selection(margin=0.05, per_trigger=2))
    assert {e.version for e in two.examples} == {a, b, c}
    only = build_dataset(reg, Selection(margin=0.05, triggers=[reg.manifest(c)["trigger"]]))
    assert [e.version for e in only.examples] == [c]
    blob = json.loads(ds.to_blob())
    assert blob["sources"] == [e.version for e in ds.examples] and blob["examples"][0]["completion"]


def test_dataset_follows_one_branch(reg):
    root = reg.resolve("main")
    on_main = _attempt(reg, root, b"p", 0.6, 0.1, "on main", accepted=True)
    reg.move_ref(R.HEADS + "main", new=on_main, expected=root, reason="test")
    reg.move_ref(R.HEADS + "side", new=on_main, expected=None, reason="test")
    side_tip = _attempt(reg, on_main, b"q", 0.5, 0.1, "side edit", accepted=True)
    reg.move_ref(R.HEADS + "side", new=side_tip, expected=on_main, reason="test")
    mains = build_dataset(reg, Selection(branch="main")).examples
    assert [e.version for e in mains] == [on_main]
    sides = build_dataset(reg, Selection(branch="side")).examples
    assert {e.version for e in sides} == {on_main, side_tip}
