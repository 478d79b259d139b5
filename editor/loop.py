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

from seal.registry.errors import NoHead, UserError
from seal.registry.objects import score_value
from seal.registry.policy import read_policy, record_policy

from .candidate import Attempt
from .options import check_device, on_workers  # noqa: F401 (on_workers re-exported)
from .request import EditRequest, check_request
from .trigger import Trigger, efficacy_spec, read_jsonl, read_trigger, secrets_audit  # noqa: F401 (re-exported)


def run_edit(reg, req: EditRequest, *, progress=None) -> dict:
    """Run one SEAL self-edit on HEAD in this process and record every candidate. See the module
    docstring; :func:`seal.editor.run.run_edit` chooses between this and Ray workers."""
    from .progress import default_progress
    from .session import open_session

    trigger, ref, parent, findings, secrets_row = prepare_edit(reg, req)
    if findings and not req.allow_pii:
        return refuse_trigger(reg, trigger, req, findings, secrets_row, ref, parent)
    with open_session(reg, device=req.device, require_gpu=req.require_gpu, threads=req.threads, fast=req.fast,
                      progress=progress or default_progress(), track=req.track) as session:
        return edit_trigger(session, trigger, req, secrets_row=secrets_row)


def prepare_edit(reg, req: EditRequest) -> tuple[Trigger, str, str, list, dict]:
    """Everything checked before a model loads: the options, the trigger, the device (workers pick
    their own), HEAD; then the trigger's secrets audit. (trigger, ref, parent, findings, row)."""
    check_request(req, reg.base())
    if req.passages is not None:
        raise UserError("a stream of passages goes through seal.editor.run.run_stream")
    trigger = read_trigger(req)
    if not on_workers(req):
        check_device(req)
    ref, parent = reg.head()
    if parent is None:
        raise NoHead()
    findings, secrets_row = secrets_audit(trigger, req.message)
    return trigger, ref, parent, findings, secrets_row


def refuse_trigger(reg, trigger: Trigger, req: EditRequest, findings: list, secrets_row: dict, ref: str,
                   parent: str) -> dict:
    """Record the refusal of a trigger that holds secrets or personal data (no ``--allow-pii``)."""
    from .record import record_refusal

    policy = read_policy(reg)
    record_policy(reg, policy)
    return record_refusal(reg, trigger, req.message, findings, secrets_row, (ref, parent), policy)


def pii_allowed(secrets_row: dict) -> dict:
    """The secrets audit row of a trigger trained on anyway (``--allow-pii``): passed, saying so."""
    if secrets_row["passed"]:
        return secrets_row
    return {**secrets_row, "passed": True, "detail": "allowed by --allow-pii: " + secrets_row["detail"]}


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
        parent = reg.peel(ref)
    if parent is None:
        raise NoHead()
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
    for vid in reg.first_parent_line(start, 10 * window - 1) if window > 0 else []:
        manifest = reg.manifest(vid)
        value = score_value(manifest, "weights", "delta_norm", "parent")
        if value is not None and manifest["kind"] in ("edit", "merge", "consolidate"):
            norms.append(value)
            if len(norms) == window:
                break
    return norms


__all__ = ["EditRequest", "Trigger", "run_edit", "prepare_edit", "refuse_trigger", "edit_trigger", "edit_attempt",
           "recent_edit_norms", "on_workers", "pii_allowed"]
