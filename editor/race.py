"""K candidates for about the training of two, on a CPU: a race.

On a GPU the K candidates share every training step (:mod:`seal.editor.multi_lora`), so K cost
about one. On a CPU the arithmetic itself is the cost, and K candidates trained to the end cost K
times one. The race (successive halving, with one round) trains every candidate for a share of its
steps (``--race``, default 0.25), measures each one's answer margins on the passage's questions
(:func:`seal.editor.efficacy.answer_margins`, a forward pass), and trains only the one whose
margins rose most above the parent's on to the end, from exactly where it stopped
(:class:`seal.editor.train.Leg`: the same bytes as a run that never stopped). With K=4 and 0.25
that is 4 x 0.25 + 0.75 = 1.75 trainings instead of 4.

The others are recorded as what they are: adapters trained for that share of their steps, their
margins measured, rejected with the check ``raced`` naming the candidate that went on. The
winner is then judged as any candidate is, by every gate; if it fails, the attempt is rejected
(with every candidate trained to the end, the next best would have been probed). The race ranks
by the parent-relative margin gain; the placebo is the same for every candidate, so the ranking
is the one the efficacy rule's gain would give. At a quarter of the steps candidates are often
within the placebo's swing of each other, so the choice is coarser than after full training
(README, "K candidates on a CPU: the race"); ``--race 0`` trains every candidate to the end.

    >>> share_of_steps(10, 0.25), share_of_steps(2, 0.25)
    (3, 1)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def share_of_steps(total: int, share: float) -> int:
    """The steps a candidate trains before the race (at least one)."""
    return max(1, math.ceil(share * total))


def races(attempt, req, n_candidates: int) -> bool:
    """Whether this attempt's candidates may race: K > 1, a share above 0, questions to rank by and
    the margin rule on (the caller leaves out a batched pass: a GPU trains the K together instead)."""
    from .gates import margin_rule

    return (n_candidates > 1 and req.race > 0 and bool(attempt.contrast)
            and margin_rule(attempt.policy.gates) is not None
            and any(g.name == "efficacy_margin" for g in attempt.gates))


def gain(cand_m: list[float], parent_m: list[float], parent_first: list[bool]) -> float:
    """The mean margin gain over the parent on the questions it does not already answer first
    (all of them when it answers every one first).

        >>> gain([1.0, 5.0], [0.0, 5.0], [False, True])
        1.0
    """
    rows = [(c, p) for c, p, first in zip(cand_m, parent_m, parent_first) if not first] or \
        list(zip(cand_m, parent_m))
    diffs = [c - p for c, p in rows if math.isfinite(c) and math.isfinite(p)]
    return float(np.mean(diffs)) if diffs else -math.inf


def run_race(session, attempt, candidates: list, req, train_one, parent_margins) -> list[dict]:
    """Train each candidate's first leg, rank them, and finish the best; the records, in order.
    ``train_one(c, leg)`` trains one leg of ``c`` (the stage's :func:`seal.editor.stages._train_one`);
    ``parent_margins()`` gives the parent's margins and which questions it answers first."""
    from .attach import attached
    from .efficacy import answer_margins
    from .train import Leg

    legs = {c.index: Leg(share=req.race) for c in candidates}
    records = {c.index: train_one(c, legs[c.index]) for c in candidates}
    parent_m, parent_first = parent_margins()
    running = [c for c in candidates if legs[c.index].optimizer is not None]
    gains = {}
    for c in running:
        with attached(session.model, legs[c.index].folder, merge=session.fast) as model:
            c.race_margins = answer_margins(model, session.tok, attempt.contrast)
        gains[c.index] = gain(c.race_margins[0], parent_m, parent_first)
    winner = max(running, key=lambda c: (gains[c.index], -c.index)) if running else None
    if winner is not None:
        winner.race_margins = None  # it trains on: its margins are measured again at the end
        records[winner.index] = train_one(winner, legs[winner.index])
    for c in candidates:
        leg = legs[c.index]
        raced = {"share": req.race, "steps": leg.step, "of_steps": leg.total,
                 "margin_gain": _number(gains.get(c.index)), "went_on": c is winner}
        if c in running and c is not winner:
            raced["by"] = winner.index + 1
            c.raced = raced
        records[c.index]["race"] = raced
    return [records[c.index] for c in candidates]


def raced_entry(c) -> dict:
    """The audit entry of a candidate the race stopped."""
    r = c.raced
    return {"check": "raced", "value": r["margin_gain"], "threshold": None, "passed": False,
            "detail": f"trained {r['steps']} of its {r['of_steps']} steps, then candidate {r['by']}'s answer "
                      "margins had risen more and only it trained on"}


def _number(x: Any) -> float | None:
    return round(float(x), 6) if x is not None and math.isfinite(x) else None


__all__ = ["races", "run_race", "raced_entry", "gain", "share_of_steps"]
