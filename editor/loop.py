"""The self-edit loop, end to end: encounter, reflect, train, score, decide, record.

:func:`run_edit` is the porcelain of `seal edit` for one trigger; :func:`edit_trigger` serves one
trigger in an open :class:`~seal.editor.session.Session`, so a stream of passages
(:mod:`seal.editor.stream`) loads the base once. The model at HEAD writes K candidate
self-edits in one batched call, each trains one LoRA child from the parent's adapter, every child
is scored (efficacy, retention, drift, weights, refusal, leakage), the policy's gates decide, and
every candidate is recorded as a version: the best one that passes every gate as ``accepted``
(the branch moves to it by compare-and-swap, in the same transaction), the others as ``rejected``
with the failing gates named. A candidate whose training loss or logits go NaN or infinite is
rejected with the reason ``diverged``; nothing non-finite reaches a record.

    >>> result = run_edit(reg, EditRequest(passage=Path("passage.json"), candidates=2))   # doctest: +SKIP
    >>> result["decision"]["accepted"], [c["status"] for c in result["candidates"]]        # doctest: +SKIP
    (True, ['accepted', 'rejected'])

Input is checked before any model is loaded; a bad file is a UserError (exit 2) and records
nothing. Triggering data that holds secrets or personal data is rejected before any training
(unless ``allow_pii``): the record keeps each finding's type and position and a redacted copy
of the data, and the secret itself is written nowhere.
"""

from __future__ import annotations

from pathlib import Path

from seal.registry import refs as R
from seal.registry.errors import UserError
from seal.registry.graph import parents_of
from seal.registry.objects import score_value
from seal.registry.policy import read_policy, record_policy
from seal.registry.versions import load_manifest

from .candidate import Attempt
from .request import EditRequest, check_request
from .trigger import Trigger, efficacy_spec, read_jsonl, read_trigger, secrets_audit  # noqa: F401 (re-exported)


def run_edit(reg, req: EditRequest, *, progress=None) -> dict:
    """Run one SEAL self-edit on HEAD and record every candidate. See the module docstring."""
    from .progress import default_progress
    from .record import record_refusal
    from .session import open_session

    check_request(req, reg.base())
    if req.passages is not None:
        raise UserError("a stream of passages goes through seal.editor.stream.run_stream")
    trigger = read_trigger(req)
    if not on_workers(req):  # workers pick their own devices
        _check_device(req)
    ref, parent = reg.head()
    if parent is None:
        raise UserError("HEAD points at nothing; run `seal checkout main` first")
    findings, secrets_row = secrets_audit(trigger, req.message)
    if findings and not req.allow_pii:
        policy = read_policy(reg)
        record_policy(reg, policy)
        return record_refusal(reg, trigger, req.message, findings, secrets_row, (ref, parent), policy)
    if on_workers(req):
        from .cluster import edit_on_workers

        return edit_on_workers(reg, trigger, req, ref=ref, secrets_row=pii_allowed(secrets_row), findings=findings,
                               progress=progress or default_progress())
    with open_session(reg, device=req.device, require_gpu=req.require_gpu, threads=req.threads, fast=req.fast,
                      progress=progress or default_progress(), track=req.track) as session:
        return edit_trigger(session, trigger, req, secrets_row=secrets_row)


def on_workers(req: EditRequest) -> bool:
    """Whether the edit fans out over Ray workers (``--workers`` or ``--ray``, :mod:`seal.editor.cluster`)."""
    return req.workers is not None or req.ray is not None


def pii_allowed(secrets_row: dict) -> dict:
    """The secrets audit row of a trigger trained on anyway (``--allow-pii``): passed, saying so."""
    if secrets_row["passed"]:
        return secrets_row
    return {**secrets_row, "passed": True, "detail": "allowed by --allow-pii: " + secrets_row["detail"]}


def _check_device(req: EditRequest) -> None:
    from .device import pick_device

    try:
        pick_device(req.device, require_gpu=req.require_gpu)
    except ValueError as e:
        raise UserError(str(e)) from None


def edit_trigger(session, trigger: Trigger, req: EditRequest, *, secrets_row: dict | None = None,
                 ref: str | None = None) -> dict:
    """Serve one trigger in an open session on ``ref`` (default: what HEAD moves), from its tip
    now: reflect, train, score, decide, record."""
    from .record import record, record_refusal
    from .stages import decide, reflect, score, train

    reg = session.reg
    if ref is None:
        ref, parent = reg.head()
    else:
        with reg.read() as conn:
            parent = R.peel(conn, ref)
    if parent is None:
        raise UserError("HEAD points at nothing; run `seal checkout main` first")
    if secrets_row is None:
        findings, secrets_row = secrets_audit(trigger, req.message)
        if findings and not req.allow_pii:
            policy = read_policy(reg)
            record_policy(reg, policy)
            return record_refusal(reg, trigger, req.message, findings, secrets_row, (ref, parent), policy)
    secrets_row = pii_allowed(secrets_row)
    attempt = edit_attempt(session, trigger, req, ref=ref, parent=parent, secrets_row=secrets_row)
    try:
        self_edits = reflect(session, attempt, trigger, req)
        candidates = train(session, attempt, self_edits, req)
        score(session, attempt, candidates)
        return record(session, attempt, candidates, decide(candidates))
    except BaseException:
        if session.tracker is not None:
            session.tracker.kill_open_runs()
        raise


def edit_attempt(session, trigger: Trigger, req: EditRequest, *, ref: str, parent: str, secrets_row: dict) -> Attempt:
    """The attempt for one trigger: its parent's state, policy and gates, data blobs and run."""
    from .gates import gates_from_policy

    reg = session.reg
    policy = read_policy(reg)
    record_policy(reg, policy)
    parent_manifest = reg.manifest(parent)
    style = req.style if trigger.kind == "passage" else "corrections"
    title = trigger.title or ""
    attempt = Attempt(
        kind="edit", parents=[parent], ref=ref, expected=parent, parent=session.parent(parent, parent_manifest),
        spec=efficacy_spec(trigger), policy=policy, gates=gates_from_policy(policy.gates),
        message=req.message or f"edit on {trigger.kind}" + (f" '{title}'" if title else ""), title=title,
        answer_tokens=req.answer_tokens, history=recent_edit_norms(reg, parent, int(policy.settings["weight_norm_window"])),
        extra_audit=[secrets_row], fields={"trigger": reg.store.put(trigger.raw)},
        extra={
            "eval": reg.store.put(trigger.eval_raw) if trigger.eval_raw is not None else None,
            "reflect": {"style": style, "temperature": req.temperature, "top_p": req.top_p,
                        "max_new_tokens": req.max_new_tokens, "seed": req.seed, "k": req.candidates},
            "trigger_info": {"kind": trigger.kind, "title": trigger.title, "redacted": False},
        },
        timings=session.first_timings(),
    )
    if trigger.kind == "passage" and attempt.spec.get("qa"):
        from .efficacy import contrast_questions, unrelated_answers

        attempt.contrast = contrast_questions(attempt.spec["qa"], trigger.passage, unrelated_answers())
        attempt.words = len(trigger.passage.split())
    if session.tracker is not None:
        attempt.run_id = session.tracker.start_run(
            f"edit {title or trigger.kind}", params={"k": req.candidates, "parent": parent, "style": style},
            tags={"seal.kind": "edit", "seal.trigger": attempt.fields["trigger"]})
    return attempt


def recent_edit_norms(reg, start: str, window: int) -> list[float]:
    """‖ΔW‖ against their parents of the last ``window`` edits on the first-parent line."""
    norms: list[float] = []
    with reg.read() as conn:
        vid, steps = start, 0
        while vid and len(norms) < window and steps < 10 * window:
            manifest = load_manifest(conn, vid)
            value = score_value(manifest, "weights", "delta_norm", "parent")
            if value is not None and manifest["kind"] in ("edit", "merge", "consolidate"):
                norms.append(value)
            ps = parents_of(conn, vid)
            vid = ps[0] if ps else None
            steps += 1
    return norms


__all__ = ["EditRequest", "Trigger", "run_edit", "edit_trigger", "edit_attempt", "recent_edit_norms", "on_workers",
           "pii_allowed"]
