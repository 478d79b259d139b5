"""The stages of one attempt, each a function of the session: reflect, train, score, decide.

(The fifth, record, is :mod:`seal.editor.record`.) Every stage reports its progress, adds its
wall time to ``attempt.timings`` and fills in the typed :class:`~seal.editor.candidate.Candidate`
records; none of them moves a ref or writes to the database.

    >>> self_edits = reflect(session, attempt, trigger, req)          # doctest: +SKIP
    >>> candidates = train(session, attempt, self_edits, req)         # doctest: +SKIP
    >>> score(session, attempt, candidates)                           # doctest: +SKIP
    >>> winner = decide(candidates)                                   # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import numpy as np

from seal.registry.vocabulary import (CANARY, DELTA_NORM, DRIFT_JS, DRIFT_KL, EFFICACY_CONTAINMENT, EFFICACY_F1,
                                      EFFICACY_MARGIN, EFFICACY_MARGIN_GAIN, EFFICACY_NLL, EFFICACY_NLL_DROP,
                                      EFFICACY_RECALL, OVER_REFUSAL, REFUSAL, RETENTION_MARGIN, TAUGHT_MARGIN,
                                      RETENTION)

from .attach import attached
from .candidate import Attempt, Candidate, SelfEdit
from .gates import GateInputs, gate_inputs
from .self_edits import corrections, passage_self_edits
from .measure import finite, generation_steps, measure
from .race import raced_entry, races, run_race, share_of_steps


@contextmanager
def timed(attempt: Attempt, key: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        attempt.timings[key] = attempt.timings.get(key, 0.0) + time.perf_counter() - started


# --- reflect ----------------------------------------------------------------------------------

def reflect(session, attempt: Attempt, trigger, req) -> list[SelfEdit]:
    """The model at the parent measures itself on the probes when the parent's results are not
    stored, then writes K self-edits in one batched call. (On the fast path the parent answers
    the trigger's questions later, in the same calls as its candidates: see :func:`score`.)"""
    parent = attempt.parent
    probes = session.probes if parent.measured is None else None
    passage = trigger.kind == "passage"
    spec = None if session.fast else attempt.spec
    steps = generation_steps(probes, spec, attempt.answer_tokens) + (req.max_new_tokens if passage else 64)
    style = req.style if passage else "corrections"
    gen = {"share_prefix": session.fast}
    from .writer import writer_for  # who writes: a writer version or a file instead of the parent (editor/writer.py)

    writer = writer_for(session.reg, req, trigger)
    with timed(attempt, "reflect_s"), \
            session.progress.stage(f"reflect: {req.candidates} self-edit(s), style {style}", total=steps,
                                   unit="tokens") as stage:
        gen["on_step"] = stage.advance
        with attached(session.model, parent.adapter_dir, merge=session.fast) as model:
            measure_parent(session, attempt, model, stage.advance, spec=spec)
            if writer is None:
                return passage_self_edits(model, session.tok, trigger, req, gen) if passage \
                    else corrections(model, session.tok, trigger, req, gen)
        return _written(session, attempt, writer, trigger, req, gen)


def _written(session, attempt: Attempt, writer, trigger, req, gen) -> list[SelfEdit]:
    from .writer import apply_writer, written_self_edits

    edits, scan_row = written_self_edits(session, writer, trigger, req, gen)
    apply_writer(attempt, writer, len(edits))
    attempt.extra_audit.append(scan_row)
    return edits


_UNSET = object()


def measure_parent(session, attempt: Attempt, model, on_step=None, spec=_UNSET) -> None:
    """The parent's efficacy on ``spec`` (default: the attempt's data; None: not now), and its
    probe results when none are stored."""
    parent = attempt.parent
    spec = attempt.spec if spec is _UNSET else spec
    probes = session.probes if parent.measured is None else None
    if probes is None and not spec:
        return
    measured, efficacy = measure(model, session.tok, probes, spec, answer_tokens=attempt.answer_tokens,
                                 support=session.base_m.dist.indices, share_prefix=session.fast, on_step=on_step)
    if probes is not None:
        parent.measured = measured
        session.remember_parent(parent.vid, measured)
    if spec:
        parent.efficacy = efficacy


# --- train ------------------------------------------------------------------------------------

def hyperparameters(req) -> dict:
    hyper = {"r": req.r, "lora_alpha": req.alpha, "target_modules": req.target_modules, "lr": req.lr,
             "epochs": req.epochs, "batch_size": req.batch_size}
    return {**hyper, "kl": req.kl} if req.kl else hyper


def train(session, attempt: Attempt, self_edits: list[SelfEdit], req) -> list[Candidate]:
    """One child adapter per self-edit, from the parent's adapter. On a CUDA device the K
    candidates train together in one batched pass (:mod:`seal.editor.multi_lora`); elsewhere one
    after the other. Each candidate's MLflow run opens when its training starts."""
    candidates = [Candidate(index=i, seed=req.seed + i, self_edit=e) for i, e in enumerate(self_edits)]
    if req.replay:
        with_replay(session, candidates, anchored=req.kl > 0)
    steps = [req.epochs * math.ceil(len(e.sequences) / req.batch_size) for e in self_edits]
    batched = _batched(session, candidates)
    racing = not batched and races(attempt, req, len(candidates))
    total = _race_steps(steps, req.race) if racing else sum(steps)
    hyper = hyperparameters(req)
    with timed(attempt, "train_s"), session.progress.stage(
            f"train: {len(candidates)} candidate(s), {req.epochs} epochs", total=total, unit="steps") as stage:
        for c in candidates:
            c.run_id = open_run(session, attempt, c, len(candidates), hyper)
        if batched:
            from .multi_lora import train_together

            records = train_together(session, attempt, candidates, req, on_step=stage.advance)
        elif racing:
            records = run_race(session, attempt, candidates, req,
                               lambda c, leg: _train_one(session, attempt, c, req, stage.advance, leg=leg),
                               lambda: parent_margins(session, attempt))
        else:
            records = [_train_one(session, attempt, c, req, stage.advance) for c in candidates]
    for c, record in zip(candidates, records):
        c.train = {**record, "hyperparameters": hyper, "seed": c.seed}
        c.diverged = record.get("diverged")
        c.adapter_dir = None if c.diverged else session.work / f"candidate{c.index}"
    return candidates


def with_replay(session, candidates: list[Candidate], *, anchored: bool = False) -> None:
    """Each candidate's replay lines (:mod:`seal.editor.replay`), drawn with its seed and added to
    the sequences it trains on (``anchored``: kept apart, as the KL anchor's texts)."""
    from .replay import draw, replay_pool

    pool = replay_pool(session)
    for c in candidates:
        if c.self_edit is not None and c.self_edit.replay is None:
            c.self_edit.replay = draw(pool, len(c.self_edit.sequences), c.seed)
            if not anchored:
                c.self_edit.sequences = c.self_edit.sequences + c.self_edit.replay


def _batched(session, candidates: list[Candidate]) -> bool:
    # One batched pass pays off where a step is launch-bound (a GPU); on a CPU the work is the
    # arithmetic itself, and candidates one after the other cost the same (there, the race).
    return session.fast and len(candidates) > 1 and str(session.device).startswith("cuda")


def _race_steps(steps: list[int], share: float) -> int:
    """The steps a race trains (for the progress bar): every first leg, and the longest rest."""
    return sum(share_of_steps(s, share) for s in steps) + max(s - share_of_steps(s, share) for s in steps)


def parent_margins(session, attempt: Attempt) -> tuple[list[float], list[bool]]:
    """The parent's margins on the attempt's questions and which it ranks first, measured once
    (the race and the efficacy rule both read them)."""
    from .efficacy import answer_margins

    if attempt.parent_margins is None:
        with attached(session.model, attempt.parent.adapter_dir, merge=session.fast) as model:
            attempt.parent_margins = answer_margins(model, session.tok, attempt.contrast)
    return attempt.parent_margins


def _train_one(session, attempt: Attempt, c: Candidate, req, on_step, leg=None) -> dict:
    from .replay import anchor_texts
    from .train import train_adapter

    tracker = session.tracker

    def on_losses(first: int, values: list[float]) -> None:
        if tracker is not None:
            tracker.log_losses(c.run_id, first, values)

    return train_adapter(
        session.model, session.tok, c.self_edit.sequences, out_dir=session.work / f"candidate{c.index}",
        parent_adapter_dir=attempt.parent.adapter_dir, r=req.r, alpha=req.alpha, target_modules=req.target_modules,
        lr=req.lr, epochs=req.epochs, batch_size=req.batch_size, seed=c.seed, device=session.device,
        base_name=session.base.name, on_step=on_step, on_losses=on_losses,
        anchor_texts=anchor_texts(session, c.self_edit.replay or [], req.kl), kl_weight=req.kl,
        anchor_cache=session.anchor_cache, leg=leg,
    )


def open_run(session, attempt: Attempt, c: Candidate, k: int, params: dict) -> str | None:
    """Candidate ``c``'s MLflow run (one of ``k``), under the attempt's run; None when not tracking."""
    if session.tracker is None:
        return None
    name = f"{attempt.kind} {attempt.title or attempt.parent.vid[:12]} c{c.index + 1}/{k}"
    return session.tracker.start_run(name, parent=attempt.run_id, params=run_params(session, attempt, c, params),
                                     tags={"seal.kind": attempt.kind, "seal.candidate": c.index + 1})


def run_params(session, attempt: Attempt, c: Candidate, params: dict) -> dict:
    """Everything an MLflow run lists as parameters."""
    out = {"base": session.base_row["id"], "parents": ",".join(attempt.parents) or "-", "seed": c.seed, **params}
    for key, value in session.env.items():
        if value is not None:
            out[key] = value
    for group in ("reflect", "merge", "consolidate"):
        for key, value in (attempt.extra.get(group) or {}).items():
            out[f"{group}.{key}"] = value
    return out


# --- score ------------------------------------------------------------------------------------

def score(session, attempt: Attempt, candidates: list[Candidate]) -> None:
    """Measure every candidate against its parent and the base, and run every gate.

    Where the efficacy margin rule judges (an edit of a passage with questions), it runs first,
    on every candidate, in one forward pass each; the probes (generation, retention, drift,
    safety) then run only where they can change the decision: never for a candidate the rule
    rejected, and, best margin first, not for those ranked below one that passed every gate. The
    winner is the one a full evaluation would pick (the best margin among those passing every
    gate); the others are recorded with the gate that decided them.

    When the parent has not answered the trigger's questions yet (the fast path), it answers them
    in the same calls as its candidates: the parent and the K candidates are attached side by side
    (:func:`seal.editor.multi_lora.lanes_attached`), so the answers' slow token-by-token decoding
    runs once for all of them. The probes, a batch of about a hundred prompts, go through each
    candidate merged into the weights (on a GPU, through all candidates side by side).
    """
    live = [c for c in candidates if c.diverged is None]
    if attempt.contrast and live:
        margin_evidence(session, attempt, live)
    for c in candidates:
        if c.diverged is not None:
            void(c)
        elif c.raced is not None:
            judged_by_margins(attempt, c, raced=True)
            session.progress.say(summary(attempt, c))
        elif c.margins is not None and not c.margins.passed:
            # Rejected whatever the probes say: not probed (the decision is already certain).
            judged_by_margins(attempt, c)
            session.progress.say(summary(attempt, c))
    live = [c for c in live if not c.audit]
    if live and all(c.margins is not None for c in live):
        # Best margin first; once one passes every gate the rest cannot win: not probed. (Where
        # candidates share every batch, a GPU, all are probed at once and the same rule is read
        # after, so both paths record the same decisions.)
        ranked = sorted(live, key=lambda c: (-c.margins.mean, c.index))
        together = _together(session, live)
        if together:
            probe(session, attempt, live)
        for i, c in enumerate(ranked):
            if not together:
                probe(session, attempt, [c])
            if c.passed:
                for rest in ranked[i + 1:]:
                    judged_by_margins(attempt, rest, outranked_by=c.index)
                    session.progress.say(summary(attempt, rest))
                break
    elif live:
        probe(session, attempt, live)


def judged_by_margins(attempt: Attempt, c: Candidate, outranked_by: int | None = None, raced: bool = False) -> None:
    """A candidate decided without its probes: the efficacy rule rejected it, (``outranked_by``)
    a candidate with a larger margin gain passed every gate first, or (``raced``) the race let
    another candidate train on. Its record holds the margins that decided it (probes measured on a
    shared GPU batch are not recorded, as on the CPU path)."""
    entry = c.margins.audit_entry() if c.margins is not None else \
        next(e for e in c.audit if e["check"] == "efficacy_margin")  # a candidate a worker scored
    c.measured = None
    c.scores = margin_rows(c.evidence)
    c.gate_inputs = GateInputs.of({"efficacy_margin": entry["value"]})
    c.audit = list(attempt.extra_audit) + [entry]
    if outranked_by is not None:
        c.audit.append({"check": "outranked", "value": None, "threshold": None, "passed": False,
                        "detail": f"not probed: candidate {outranked_by + 1} has a larger margin gain and passed "
                                  "every gate"})
    if raced:
        c.audit.append(raced_entry(c))
    c.failed = [e["check"] for e in c.audit if not e["passed"]]


def outrank(attempt: Attempt, candidates: list[Candidate]) -> None:
    """Candidates probed in full (on workers) but ranked, by margin gain, below one that passed
    every gate: recorded as outranked, as the serial run records them unprobed."""
    probed = [c for c in candidates if c.diverged is None and c.measured is not None
              and c.gate_inputs.efficacy_margin is not None]
    ranked = sorted(probed, key=lambda c: (-c.gate_inputs.efficacy_margin, c.index))
    winner = next((i for i, c in enumerate(ranked) if c.passed), None)
    for rest in ranked[winner + 1:] if winner is not None else []:
        judged_by_margins(attempt, rest, outranked_by=ranked[winner].index)


def probe(session, attempt: Attempt, live: list[Candidate]) -> None:
    """Generated answers and the probes (retention, drift, safety) of ``live``, and their margins on
    what the branch was taught (in the same merge on the CPU path), then every gate."""
    joint = attempt.parent.efficacy is None
    together = _together(session, live)
    parent_taught = taught_parent(session, attempt, live)
    taught_before = attempt.timings.get("taught_s", 0.0)
    probe_steps = generation_steps(session.probes, None if joint else attempt.spec, attempt.answer_tokens)
    steps = probe_steps * (1 if together else len(live)) + (attempt.answer_tokens if joint else 0)
    with timed(attempt, "evaluate_s"), session.progress.stage(
            f"evaluate: {len(live)} candidate(s)", total=steps, unit="tokens") as stage:
        if joint:
            _efficacy_together(session, attempt, live, stage.advance)
        if together:
            _measure_together(session, attempt, live, stage.advance, with_efficacy=not joint)
        for c in live:
            if not together:
                with attached(session.model, c.adapter_dir, merge=session.fast) as model:
                    c.measured, efficacy = measure(model, session.tok, session.probes, None if joint else attempt.spec,
                                                   answer_tokens=attempt.answer_tokens,
                                                   support=session.base_m.dist.indices,
                                                   share_prefix=session.fast, on_step=stage.advance,
                                                   gate_ref=safety_ref(session, attempt))
                    taught_margins(session, attempt, c, model, parent_taught)
                c.efficacy = c.efficacy if joint else efficacy
    # the taught questions scored inside that block count as taught_s, not twice
    attempt.timings["evaluate_s"] -= attempt.timings.get("taught_s", 0.0) - taught_before
    for c in live:
        if together:
            with attached(session.model, c.adapter_dir, merge=session.fast) as model:
                taught_margins(session, attempt, c, model, parent_taught)
        gauge(session, attempt, c)
        session.progress.say(summary(attempt, c))


def taught_parent(session, attempt: Attempt, live: list[Candidate]) -> tuple[float, ...] | None:
    """The parent's answer margins on the questions its line was taught (:mod:`seal.editor.taught`),
    measured only where this session has not asked it yet (an accepted candidate's margins are its
    version's: :class:`~seal.editor.taught.KnownMargins`); None where the gate is off."""
    from .efficacy import answer_margins
    from .taught import taught_questions

    if not any(g.name == "taught_vs_parent" for g in attempt.gates):
        return None

    def measured(missing):
        with attached(session.model, attempt.parent.adapter_dir, merge=session.fast) as model:
            return answer_margins(model, session.tok, missing)[0]

    with timed(attempt, "taught_s"):
        if attempt.taught is None:
            attempt.taught = taught_questions(session.reg, attempt.parent.vid)
        return session.known_margins.margins(attempt.parent.vid, list(attempt.taught.questions), measured,
                                             current=attempt.candidates or live)


def taught_margins(session, attempt: Attempt, c: Candidate, model, parent: tuple[float, ...] | None) -> None:
    """Candidate ``c``'s margins on the taught questions, ``model`` being the base with ``c`` attached."""
    from .efficacy import answer_margins
    from .taught import TaughtMargins

    if parent is None:
        return
    with timed(attempt, "taught_s"):
        qs = list(attempt.taught.questions)
        cand = tuple(answer_margins(model, session.tok, qs)[0]) if qs else ()
        session.known_margins.note(c, qs, cand)
        c.taught = TaughtMargins(attempt.taught, cand, parent)


def margin_evidence(session, attempt: Attempt, live: list[Candidate]) -> None:
    """Every live candidate's efficacy verdict by the margin rule (:mod:`seal.editor.efficacy`):
    the parent's, the placebo's and each candidate's answer margins on the trigger's questions."""
    from .efficacy import answer_margins, decide_margins
    from .gates import margin_rule

    rule = margin_rule(attempt.policy.gates)
    if rule is None or not any(g.name == "efficacy_margin" for g in attempt.gates):
        return
    qs = attempt.contrast
    with timed(attempt, "margins_s"):
        parent_m, parent_first = parent_margins(session, attempt)
    placebo = placebo_for(session, attempt, attempt.placebo_of or live[0])
    with timed(attempt, "margins_s"):
        placebo_m = [math.nan] * len(qs)
        if placebo is not None:
            with attached(session.model, placebo.folder, merge=session.fast) as model:
                placebo_m = answer_margins(model, session.tok, qs)[0]
        for c in live:
            if c.race_margins is not None:  # measured when the race stopped it; its adapter has not changed
                cand_m, cand_first = c.race_margins
            else:
                with attached(session.model, c.adapter_dir, merge=session.fast) as model:
                    cand_m, cand_first = answer_margins(model, session.tok, qs)
            session.known_margins.note(c, qs, cand_m)
            c.margins = decide_margins(cand_m, parent_m, placebo_m, parent_first, rule)
            c.evidence = _evidence(qs, parent_m, parent_first, placebo_m, cand_m, cand_first, c.margins, placebo)


def placebo_plan(session, attempt: Attempt, c: Candidate) -> tuple[str, int, dict, list[str]]:
    """The placebo's cache key, sequence count, hyperparameters and replay lines for candidate ``c``."""
    from .placebo import placebo_key, placebo_replay
    from .replay import replay_pool

    hyper = c.train.get("hyperparameters") or {}
    own = (c.self_edit.replay if c.self_edit else None) or []
    n_seq = (len(c.self_edit.sequences) if c.self_edit else 1) - (0 if hyper.get("kl") else len(own))
    replay = placebo_replay(replay_pool(session), n_seq, c.seed) if own else []
    key = placebo_key(attempt.parent.vid, session.base_row["id"], {**hyper, "replay": replay}, attempt.words, n_seq,
                      c.seed)
    return key, n_seq, hyper, replay


def placebo_for(session, attempt: Attempt, c: Candidate):
    """The placebo of this parent and recipe: cached, else trained now (timed as ``placebo_s``)."""
    from .placebo import cached_placebo, train_placebo

    key, n_seq, hyper, replay = placebo_plan(session, attempt, c)
    with timed(attempt, "placebo_s"):
        found = cached_placebo(session.reg, key, session.work)
        if found is not None:
            return found
        with session.progress.stage("placebo: the same recipe on an unrelated passage", total=0, unit="steps"):
            return train_placebo(session, parent_dir=attempt.parent.adapter_dir, key=key, words=attempt.words,
                                 n_sequences=n_seq, hyper=hyper, seed=c.seed, replay=replay)


def _evidence(qs, parent_m, parent_first, placebo_m, cand_m, cand_first, decision, placebo) -> dict:
    def num(x):
        return float(x) if finite(x) else None

    questions = [{"question": q.question, "gold": list(q.options[:q.n_gold]), "options": len(q.options),
                  "margin_parent": num(p), "margin_placebo": num(pl), "margin": num(m), "first": bool(f),
                  "saturated": bool(sat), "effect": num(e) if e is not None else None}
                 for q, p, sat, pl, m, f, e in zip(qs, parent_m, parent_first, placebo_m, cand_m, cand_first,
                                                     decision.effects)]
    return {"questions": questions, "placebo": None if placebo is None else placebo.to_json(),
            "rule": decision.rule.words(), "passed": decision.passed, "n": decision.n,
            "saturated": decision.saturated, "gain": num(decision.mean), "min_effect": num(decision.minimum),
            "p_value": num(decision.p_value)}


def safety_ref(session, attempt: Attempt) -> tuple | None:
    """The base's per-item results and the safety thresholds: what a candidate's two-look XSTest
    judging compares with (None: judge every prompt)."""
    from seal.registry.vocabulary import GATES_BY_NAME

    base = getattr(session.base_m, "items", None)
    if base is None:
        return None
    return base, {GATES_BY_NAME[g.name].policy_key: g.threshold for g in attempt.gates
                  if g.name in ("refusal", "over_refusal")}


def _together(session, live: list[Candidate]) -> bool:
    # K candidates share every scoring batch where a step is launch-bound (a GPU), and where
    # merging is not exact anyway (bf16); on a CPU each is merged into the weights in turn.
    # The per-item probes (early-stopped judge) have no lanes path yet: one candidate at a time.
    return session.fast and len(live) > 1 and str(session.device).startswith("cuda") \
        and session.probes.items is None


def _efficacy_together(session, attempt: Attempt, live: list[Candidate], on_step) -> None:
    """The parent's and every candidate's efficacy on the trigger's data, in shared calls."""
    from .measure import measure_efficacy_lanes
    from .multi_lora import lanes_attached

    with lanes_attached(session.model, [attempt.parent.adapter_dir] + [c.adapter_dir for c in live]) as k:
        effs = measure_efficacy_lanes(session.model, session.tok, attempt.spec, k,
                                      answer_tokens=attempt.answer_tokens, on_step=on_step)
    attempt.parent.efficacy = effs[0]
    for c, efficacy in zip(live, effs[1:]):
        c.efficacy = efficacy


def _measure_together(session, attempt: Attempt, live: list[Candidate], on_step, with_efficacy: bool) -> None:
    from .measure import measure_lanes
    from .multi_lora import lanes_attached

    with lanes_attached(session.model, [c.adapter_dir for c in live]) as k:
        results = measure_lanes(session.model, session.tok, session.probes, attempt.spec if with_efficacy else None,
                                k, answer_tokens=attempt.answer_tokens, support=session.base_m.dist.indices,
                                on_step=on_step)
    for c, (measured, efficacy) in zip(live, results):
        c.measured = measured
        c.efficacy = efficacy if with_efficacy else c.efficacy


def void(c: Candidate) -> None:
    """A candidate that diverged: no scores, one failed check that says why."""
    c.scores, c.gate_inputs = [], GateInputs()
    c.audit = [{"check": "diverged", "value": None, "threshold": None, "passed": False, "detail": c.diverged}]
    c.failed = ["diverged"]


def gauge(session, attempt: Attempt, c: Candidate) -> None:
    """Turn a candidate's measurements into gate inputs (:func:`seal.editor.gates.gate_inputs`),
    score rows and gate verdicts.

    NaN logits make the candidate void (``diverged``); a non-finite value never reaches a record:
    its gate input is missing (so its gate fails), its score row is left out and its name listed
    in ``nonfinite``.
    """
    import torch

    if torch.isnan(c.measured.dist.logprobs).any():
        c.diverged = "non-finite logits on the drift probes"
    d = distances(session, attempt, c)
    inputs = gate_inputs(session, attempt, c, d)
    c.nonfinite = inputs.nonfinite()
    c.gate_inputs = inputs.finite()
    rows = score_rows(session, attempt, c, d)
    c.scores = [r for r in rows if finite(r["value"])]
    c.nonfinite += [_row_name(r) for r in rows if not finite(r["value"])]
    entries = gate_entries(session, attempt, c)
    c.audit = list(attempt.extra_audit) + entries
    c.failed = [e["check"] for e in entries if not e["passed"]] + \
        [a["check"] for a in attempt.extra_audit if not a["passed"]]
    if c.diverged is not None:
        c.audit.append({"check": "diverged", "value": None, "threshold": None, "passed": False, "detail": c.diverged})
        c.failed.append("diverged")


def gate_entries(session, attempt: Attempt, c: Candidate) -> list[dict]:
    """The gates' audit entries: paired decisions on per-item outcomes where they exist
    (:func:`seal.editor.gates.audit_entries`), point comparisons of ``c.gate_inputs`` otherwise."""
    from .gates import audit_entries

    items = getattr(c.measured, "items", None)
    parent_items = getattr(attempt.parent.measured, "items", None)
    return audit_entries(attempt.gates, c.gate_inputs, candidate=items, parent=parent_items,
                         base=getattr(session.base_m, "items", None), gains=efficacy_gains(attempt, c),
                         margins=c.margins, taught=c.taught)


def efficacy_gains(attempt: Attempt, c: Candidate) -> list[float] | None:
    """Per-question token F1, candidate minus parent, on the same questions (None: not QA)."""
    from .evaluate import qa_fields, token_f1

    eff, parent_eff = c.efficacy, attempt.parent.efficacy
    qa = (attempt.spec or {}).get("qa") or []
    if eff is None or parent_eff is None or eff.mode != "qa" or not qa \
            or not len(eff.predictions) == len(parent_eff.predictions) == len(qa):
        return None
    golds = [qa_fields(item)[1] for item in qa]
    return [token_f1(p, g) - token_f1(q, g) for p, q, g in zip(eff.predictions, parent_eff.predictions, golds)]


def distances(session, attempt: Attempt, c: Candidate) -> dict:
    """Drift against the parent and the base (next-token KL/JS), and the size of the weight update."""
    from seal.registry import lora_math

    from .evaluate import kl_js

    kl_base, js_base = kl_js(session.base_m.dist, c.measured.dist)
    kl_parent, js_parent = kl_js(attempt.parent.measured.dist, c.measured.dist)
    return {
        "kl_base": kl_base, "js_base": js_base, "kl_parent": kl_parent, "js_parent": js_parent,
        "delta": float(lora_math.compare_adapters(c.adapter_dir, attempt.parent.adapter_dir)["total"]["diff_norm"]),
        "from_base": float(lora_math.compare_adapters(c.adapter_dir, None)["total"]["norm_a"]),
    }


def score_rows(session, attempt: Attempt, c: Candidate, d: dict) -> list[dict]:
    """The version's score rows: its own values, and the parent's and base's on the same data."""
    m, base_m, parent = c.measured, session.base_m, attempt.parent
    items = getattr(m, "items", None)
    n_anchor = len(items.retention_correct) if items is not None else len(session.probes.anchors)
    n_drift = len(session.probes.drift)
    rows = efficacy_rows(c.efficacy, parent.efficacy) + [
        RETENTION.row(m.retention, n_anchor), RETENTION.vs("parent").row(parent.measured.retention, n_anchor),
        RETENTION.vs("base").row(base_m.retention, n_anchor),
        DRIFT_KL.vs("parent").row(d["kl_parent"], n_drift), DRIFT_JS.vs("parent").row(d["js_parent"], n_drift),
        DRIFT_KL.vs("base").row(d["kl_base"], n_drift), DRIFT_JS.vs("base").row(d["js_base"], n_drift),
        DELTA_NORM.vs("parent").row(d["delta"]), DELTA_NORM.vs("base").row(d["from_base"]),
    ]
    base_items = getattr(base_m, "items", None)
    parent_items = getattr(parent.measured, "items", None)
    for score_, res in ((RETENTION_MARGIN, items), (RETENTION_MARGIN.vs("parent"), parent_items),
                        (RETENTION_MARGIN.vs("base"), base_items)):
        if res is not None:
            rows.append(score_.row(float(np.mean(res.retention_margin)), int(res.retention_margin.size)))

    def judged(res, label):
        return None if res is None else int(res.judged(label).size)

    for score_, value, n in ((REFUSAL, m.refusal, judged(items, "unsafe")), (OVER_REFUSAL, m.over_refusal, judged(items, "safe")),
                             (REFUSAL.vs("base"), base_m.refusal, judged(base_items, "unsafe")),
                             (OVER_REFUSAL.vs("base"), base_m.over_refusal, judged(base_items, "safe"))):
        if value is not None:
            rows.append(score_.row(value, n))
    leaks = c.gate_inputs.canary_leaks
    rows.append(CANARY.row(leaks if leaks is not None else math.nan))
    return rows + margin_rows(c.evidence) + taught_rows(c.taught)


def taught_rows(taught) -> list[dict]:
    """The candidate's and the parent's mean margin on the taught questions (none taught: no rows)."""
    if taught is None or not taught.parent:
        return []
    inputs, n = taught.inputs(), len(taught.parent)
    return [TAUGHT_MARGIN.row(inputs["taught"], n), TAUGHT_MARGIN.vs("parent").row(inputs["taught_parent"], n)]


def margin_rows(evidence: dict | None) -> list[dict]:
    """The margin scores: the candidate's and the parent's mean margin over the usable questions,
    and the placebo-corrected gain (the rule's estimate)."""
    if not evidence or not evidence["n"]:
        return []
    usable = [q for q in evidence["questions"] if not q["saturated"]]
    n = len(usable)

    def mean(key):
        values = [q[key] for q in usable]
        return math.nan if any(v is None for v in values) else sum(values) / n

    gain = evidence["gain"]
    return [EFFICACY_MARGIN.row(mean("margin"), n), EFFICACY_MARGIN.vs("parent").row(mean("margin_parent"), n),
            EFFICACY_MARGIN.vs("placebo").row(mean("margin_placebo"), n),
            EFFICACY_MARGIN_GAIN.row(gain if gain is not None else math.nan, n)]


def efficacy_rows(eff, parent_eff) -> list[dict]:
    """Efficacy rows. ``against: parent`` holds the parent's score on the same data."""
    if eff.mode == "qa":
        rows = []
        for score_, metric in ((EFFICACY_CONTAINMENT, "containment"), (EFFICACY_F1, "f1"), (EFFICACY_RECALL, "recall")):
            rows.append(score_.row(getattr(eff, metric), eff.n))
            rows.append(score_.vs("parent").row(getattr(parent_eff, metric), eff.n))
        return rows
    return [EFFICACY_NLL.row(eff.passage_nll, eff.n), EFFICACY_NLL.vs("parent").row(parent_eff.passage_nll, eff.n),
            EFFICACY_NLL_DROP.row(parent_eff.passage_nll - eff.passage_nll, eff.n)]


def _row_name(row: dict) -> str:
    return f"{row['suite']}.{row['metric']}" + (f".{row['against']}" if row.get("against") else "")


def summary(attempt: Attempt, c: Candidate) -> str:
    verdict = "passes every gate" if not c.failed else "fails " + ", ".join(c.failed)
    if c.margins is not None:
        gain = "-" if c.margins.mean is None else f"{c.margins.mean:+.3f} nats"
        probed = "" if c.measured is not None else " (not probed)"
        return f"candidate {c.index + 1}: margin gain {gain} over {c.margins.n} question(s), {verdict}{probed}"
    eff, parent_eff = c.gate_inputs.efficacy, c.gate_inputs.efficacy_parent
    shown = "-" if eff is None else f"{eff:.4f}"
    return f"candidate {c.index + 1}: efficacy {shown} (parent {parent_eff if parent_eff is None else round(parent_eff, 4)}), {verdict}"


# --- decide -----------------------------------------------------------------------------------

def decide(candidates: list[Candidate]) -> int | None:
    """The index of the best candidate that passed every gate, or None (see :func:`seal.editor.gates.decide`)."""
    from .gates import decide as best_of

    passed = [c for c in candidates if c.passed]
    # Where the margin rule judged, it also ranks: the largest placebo-corrected gain wins.
    rank = "efficacy_margin" if passed and all(c.gate_inputs.efficacy_margin is not None for c in passed) \
        else "efficacy"
    best = best_of([c.gate_inputs for c in passed], gates=[], rank_by=rank)
    return None if best is None else passed[best].index


__all__ = ["reflect", "train", "score", "decide", "outrank", "gauge", "void", "efficacy_rows", "hyperparameters", "timed",
           "measure_parent", "run_params", "open_run"]
