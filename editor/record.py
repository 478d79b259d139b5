"""Record: every candidate becomes a version, and the ref moves to the winner, in one transaction.

The winner is recorded last, with the ref move in the same transaction (``Registry.record_many``
with a ``RefMove``), so a kill at any point leaves either nothing of the attempt or all of it with
the branch moved: a stream resumed after a kill never finds an accepted passage whose branch did
not move. When the compare-and-swap loses a race, the candidates are recorded anyway (a second
transaction, no move), so no work is lost, and the decision says where the winner is.

    >>> result = record(session, attempt, candidates, winner)        # doctest: +SKIP
    >>> result["decision"]["accepted"], result["decision"]["ref"]     # doctest: +SKIP
    (True, 'main')
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from seal.registry.adapters import ADAPTER_CONFIG_FILE, WEIGHTS_FILE
from seal.registry.errors import RefConflict
from seal.registry.repo import RefMove
from seal.registry.store import refs as R
from seal.registry.store.objects import build_manifest, canonical_json
from seal.registry.vocabulary import EFFICACY_NLL_DROP

from .candidate import Attempt, Candidate
from .stages import timed


def record(session, attempt: Attempt, candidates: list[Candidate], winner: int | None) -> dict:
    """Store every candidate's blobs, record each as a version, move the ref to the winner."""
    reg = session.reg
    with timed(attempt, "record_s"):
        blobs = [_store(reg, c) for c in candidates]
    manifests = [_manifest(session, attempt, c, winner, b, len(candidates)) for c, b in zip(candidates, blobs)]
    started = time.perf_counter()
    ids, conflict = _commit(reg, attempt, manifests, winner)
    for c, vid in zip(candidates, ids):
        c.id, c.status = vid, "accepted" if c.index == winner else "rejected"
    attempt.timings["record_s"] += time.perf_counter() - started
    _track(session, attempt, candidates, manifests, winner)
    return result_doc(session, attempt, candidates, winner, conflict)


def _store(reg, c: Candidate) -> dict:
    if c.stored is None and c.adapter_dir is None:
        return {}
    adapter = c.stored or {"weights": reg.store.put_file(c.adapter_dir / WEIGHTS_FILE),
                           "config": json.loads((c.adapter_dir / ADAPTER_CONFIG_FILE).read_text())}
    return {
        **adapter,
        "self_edit": reg.store.put(c.self_edit.to_bytes()) if c.self_edit is not None else None,
        "logprobs": reg.store.put(c.measured.dist.to_bytes()) if c.measured is not None else None,
        # Per-item probe results: the next edit from this version pairs with them, unmeasured.
        "results": reg.store.put(c.measured.items.to_bytes()) if getattr(c.measured, "items", None) is not None
        else None,
    }


def _results_digests(session, attempt: Attempt, blobs: dict) -> dict:
    """The per-item results blobs a version names: its own, its parent's and the base's."""
    out = {}
    if blobs.get("results"):
        out["results"] = blobs["results"]
    parent_items = getattr(attempt.parent.measured, "items", None)
    if parent_items is not None:
        out["parent_results"] = session.reg.store.put(parent_items.to_bytes())
    if getattr(session, "base_results", None):
        out["base_results"] = session.base_results
    return out


def reason_of(c: Candidate, winner: int | None, k: int) -> str:
    if c.index == winner:
        return f"best of {k} candidate(s) that pass every gate"
    if c.diverged is not None:
        return f"diverged: {c.diverged}"
    if c.passed:
        return "passed every gate but another candidate scored higher"
    if c.raced is not None:
        return f"raced: trained {c.raced['steps']} of {c.raced['of_steps']} steps; candidate {c.raced['by']} trained on"
    if c.failed == ["outranked"]:
        return "passed the efficacy rule; not probed: a candidate with a larger margin gain passed every gate"
    return "failed: " + ", ".join(c.failed)


def _manifest(session, attempt: Attempt, c: Candidate, winner: int | None, blobs: dict, k: int) -> dict:
    reg = session.reg
    accepted = c.index == winner
    train = dict(c.train)
    train.update({**session.env, "timings": {key: round(v, 3) for key, v in attempt.timings.items()}})
    if c.run_id:
        train["mlflow_run_id"] = c.run_id
    eff = c.gate_inputs.efficacy
    headline = None
    if c.efficacy is not None and eff is not None:
        headline = {"metric": "efficacy.f1", "value": eff} if c.efficacy.mode == "qa" else \
            {"metric": "efficacy.nll_drop", "value": EFFICACY_NLL_DROP.of({"scores": c.scores})}
    self_edit = blobs.get("self_edit")
    if self_edit is None and c.self_edit is not None:
        self_edit = reg.store.put(c.self_edit.to_bytes())
    extra = {
        **attempt.extra,
        "decision": {"accepted": accepted, "reason": reason_of(c, winner, k), "candidate": c.index, "of": k,
                     "failed_gates": c.failed},
        "probes": {**session.probes.digests, "base_logprobs": session.base_logprobs,
                   **({"logprobs": blobs["logprobs"]} if blobs.get("logprobs") else {}),
                   **_results_digests(session, attempt, blobs)},
    }
    if headline is not None and headline["value"] is not None:
        extra["headline"] = headline
    if c.nonfinite:
        extra["nonfinite"] = c.nonfinite
    if c.evidence is not None:
        extra["efficacy"] = efficacy_extra(reg, c.evidence)
    return build_manifest(
        base=session.base_row["id"], parents=attempt.parents, kind=attempt.kind,
        status="accepted" if accepted else "rejected",
        adapter={"weights": blobs["weights"], "config": blobs["config"], "format": "peft-lora"} if blobs else None,
        self_edit=self_edit, train=train, scores=c.scores, audit=c.audit, policy=attempt.policy.digest,
        author=R.actor(), message=attempt.message, **attempt.fields, extra=extra,
    )


def efficacy_extra(reg, evidence: dict) -> dict:
    """The margin rule's figures in the manifest, and its per-question record as a blob."""
    keep = ("n", "saturated", "gain", "min_effect", "p_value", "passed")
    placebo = evidence.get("placebo") or {}
    return {**{k: evidence[k] for k in keep}, "margins": reg.store.put(canonical_json(evidence)),
            "placebo": placebo.get("weights")}


def _commit(reg, attempt: Attempt, manifests: list[dict], winner: int | None) -> tuple[list[str], str | None]:
    """Record all manifests, the winner last with the ref move; on a lost race, record without it."""
    order = [i for i in range(len(manifests)) if i != winner] + ([winner] if winner is not None else [])
    ordered = [manifests[i] for i in order]
    move = None
    if winner is not None and attempt.ref is not None:
        move = RefMove(attempt.ref, attempt.expected,
                       f"{attempt.kind}: accepted candidate {winner + 1} of {len(manifests)}")
    conflict = None
    try:
        recorded = reg.record_many(ordered, move=move)
    except RefConflict as e:
        if move is None:
            raise
        recorded = reg.record_many(ordered)
        short = recorded[-1][:12]
        conflict = (f"{e}; the {attempt.kind} is recorded as {short} (accepted) but {R.short_name(attempt.ref)} did "
                    f"not move: run `seal merge {short} {R.short_name(attempt.ref)}` or `seal checkout -b NEW {short}`")
    ids: list[str] = [""] * len(manifests)
    for position, i in enumerate(order):
        ids[i] = recorded[position]
    return ids, conflict


def _track(session, attempt: Attempt, candidates: list[Candidate], manifests: list[dict], winner: int | None) -> None:
    tracker = session.tracker
    if tracker is None:
        return
    for c, manifest in zip(candidates, manifests):
        artifacts = {"audit.json": canonical_json(c.audit)}
        if c.self_edit is not None:
            artifacts["self_edit.json"] = c.self_edit.to_bytes()
        if c.index == winner:
            artifacts["seal/manifest.json"] = canonical_json({"id": c.id, **manifest})
            if c.stored is not None:
                artifacts["seal/adapter_config.json"] = json.dumps(c.stored["config"]).encode()
            elif c.adapter_dir is not None:
                artifacts["seal/adapter_config.json"] = (c.adapter_dir / ADAPTER_CONFIG_FILE).read_bytes()
        tracker.finish_attempt(c.run_id, manifest, c.id, artifacts=artifacts, failed_gates=c.failed,
                               reason=reason_of(c, winner, len(candidates)))
    if winner is not None:
        w = candidates[winner]
        branch = R.short_name(attempt.ref) if attempt.ref and attempt.ref != R.HEAD else None
        tracker.register_version(w.id, manifests[winner], run_id=w.run_id, branch=branch)
    tracker.end_run(attempt.run_id, "FINISHED" if winner is not None else "FAILED",
                    {"seal.status": "accepted" if winner is not None else "rejected",
                     **({"seal.version_id": candidates[winner].id} if winner is not None else {})})


def result_doc(session, attempt: Attempt, candidates: list[Candidate], winner: int | None,
               conflict: str | None = None) -> dict:
    """The documented `edit --json` shape: the decision, the timings, one item per candidate."""
    moved = None
    if winner is not None and attempt.ref is not None and conflict is None:
        moved = R.short_name(attempt.ref)
        session.progress.say(f"accepted {candidates[winner].id[:12]}; {moved} moved")
    elif winner is not None and conflict is None:
        session.progress.say(f"accepted {candidates[winner].id[:12]}; no branch moved (HEAD is not among its parents)")
    elif winner is None:
        session.progress.say("rejected: no candidate passed every gate; HEAD stays")
    decision = {"accepted": winner is not None, "id": candidates[winner].id if winner is not None else None,
                "ref": moved, "parent": attempt.parents[0] if attempt.parents else None,
                "reason": _decision_reason(candidates, winner)}
    if conflict is not None:
        decision["conflict"] = conflict
    return {
        "decision": decision,
        "timings": {k: round(v, 2) for k, v in attempt.timings.items()},
        "candidates": [candidate_doc(c) for c in candidates],
    }


def _decision_reason(candidates: list[Candidate], winner: int | None) -> str:
    if winner is not None:
        return "accepted"
    diverged = [f"candidate {c.index + 1} diverged: {c.diverged}" for c in candidates if c.diverged is not None]
    return "no candidate passed every gate" + (f" ({'; '.join(diverged)})" if diverged else "")


def candidate_doc(c: Candidate) -> dict:
    train = c.train or {}
    doc = {"id": c.id, "status": c.status, "scores": c.gate_inputs.to_json(), "gates": c.audit, "failed_gates": c.failed,
           "train": {"steps": train.get("steps"), "loss_final": train.get("loss_final"),
                     "seconds": train.get("seconds")}}
    if train.get("race"):
        doc["train"]["race"] = train["race"]
    if c.diverged is not None:
        doc["diverged"] = c.diverged
    if c.nonfinite:
        doc["nonfinite"] = c.nonfinite
    return doc


# --- refusing before any training ---------------------------------------------------------------

def redacted_trigger(trigger, message: str) -> bytes:
    """What a refused trigger is stored as: every field with its secrets masked (deterministic,
    so a stream rerun finds the same digest and skips the passage it refused before)."""
    from seal.registry.scan import redact, scan_text

    from .trigger import trigger_fields

    return canonical_json({name: redact(text, scan_text(text)) for name, text in trigger_fields(trigger, message)})


def record_refusal(reg, trigger, message: str, findings, audit_row: dict, head: tuple[str, str], policy) -> dict:
    """Reject before training: keep each finding's field, type and position and a redacted copy."""
    redacted_bytes = redacted_trigger(trigger, message)
    redacted = json.loads(redacted_bytes)
    ref, parent = head
    manifest = build_manifest(
        base=reg.base_id(), parents=[parent], kind="edit", status="rejected",
        trigger=reg.store.put(redacted_bytes), audit=[audit_row], policy=policy.digest,
        author=R.actor(), message=redacted.get("message") or f"edit on {trigger.kind} (rejected: secrets)",
        extra={
            "trigger_info": {"kind": trigger.kind, "redacted": True,
                             "findings": [{"field": name, **asdict(f)} for name, f in findings]},
            "decision": {"accepted": False, "reason": "secrets or personal data in the trigger; nothing was trained",
                         "failed_gates": ["secrets"]},
        },
    )
    vid = reg.record(manifest)
    return {
        "decision": {"accepted": False, "id": None, "reason": manifest["decision"]["reason"],
                     "ref": R.short_name(ref), "parent": parent},
        "timings": {},
        "candidates": [{"id": vid, "status": "rejected", "scores": {}, "gates": [audit_row],
                        "failed_gates": ["secrets"], "train": {}}],
    }


__all__ = ["record", "record_refusal", "redacted_trigger", "result_doc", "candidate_doc", "reason_of"]
