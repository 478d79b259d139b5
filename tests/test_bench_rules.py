"""The benches that choose the efficacy rule: the sweep's null pairs (disjoint and every pair) and
the re-judging of a finished acceptance run, on synthetic margins (no model)."""

import json
import sys
from dataclasses import replace
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(name):
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCH))


def _sweep(tmp_path: Path) -> Path:
    """Six passages of three questions; adapter j lifts only its own passage's margins (by 3
    nats), and shifts every other passage's by a small, adapter-specific amount."""
    n, base = 6, [[-5.0, -6.0, -7.0] for _ in range(6)]
    lines = [{"base": True, "model": "synthetic", "passages": n, "window": 5, "null_window": 4, "margins": base,
              "first": [[False] * 3 for _ in range(n)], "retention": 0.9}]
    for j in range(n):
        margins = {str(i): [m + (3.0 if i == j else 0.1 * ((i + j) % 3)) for m in base[i]] for i in range(n)}
        lines.append({"condition": "kl", "passage": j, "margins": margins, "retention": 0.9, "kl_generic": 0.01,
                      "train_s": 1.0})
    path = tmp_path / "sweep.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_the_sweep_counts_disjoint_and_every_null_pair(tmp_path):
    sweep = _bench("recipe_sweep")
    summary = sweep.summarize([_sweep(tmp_path)], reference="kl")
    kl = summary["results"]["kl"]
    # disjoint: the 4 adapters before each passage, paired off: 2 a passage; every pair: 5 x 4 ordered
    assert kl["null_false_pass"]["the default"] == "0/12"
    assert kl["null_false_pass_every_pair"]["the default"] == "0/120"
    assert kl["pass_rate"]["the default"] == 1.0  # every edit lifts its own questions by 3 nats
    table = sweep.table(summary)
    assert "disjoint · every pair" in table and "0/120 (0.0%)" in table


def test_rejudge_counts_what_each_rule_would_pass():
    rejudge = _bench("rejudge")
    from seal.editor.efficacy import MarginRule

    def q(effect, parent=-5.0):
        return {"margin": parent + effect, "margin_parent": parent, "margin_placebo": parent, "saturated": False}

    docs = [({"passage": 1, "failed": ["efficacy_margin"]}, {"questions": [q(3.0), q(3.0), q(3.0), q(-1.8)]}),
            ({"passage": 2, "failed": []}, {"questions": [q(2.0)] * 4}),
            ({"passage": 3, "failed": ["efficacy_margin", "refusal"]}, {"questions": [q(4.0)] * 3 + [q(-1.7)]}),
            ({"passage": 4, "failed": ["efficacy_margin"]}, {"questions": [q(0.2)] * 4})]
    now = rejudge.judge(docs, MarginRule())
    assert now == {"efficacy_passed": 3, "accepted_if_other_gates_hold": 2, "newly_passed": [1, 3]}
    before = rejudge.judge(docs, replace(MarginRule(), floor=-1.5, alpha=0.10))
    assert before == {"efficacy_passed": 1, "accepted_if_other_gates_hold": 1, "newly_passed": []}
