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

from .attempt import edit_attempt, pii_allowed, refuse, run_edit_attempt
from .options import check_device, check_request
from .request import EditRequest
from .trigger import Trigger, read_trigger, secrets_audit


def run_edit(reg, req: EditRequest, *, progress=None) -> dict:
    """Run one SEAL self-edit on HEAD in this process and record every candidate. See the module
    docstring; :func:`seal.editor.run.run_edit` chooses between this and Ray workers."""
    from .progress import default_progress
    from .session import open_session

    trigger, ref, parent, findings, secrets_row = prepare_edit(reg, req)
    if findings and not req.allow_pii:
        return refuse(reg, trigger, req.message, findings, secrets_row, (ref, parent))
    with open_session(reg, device=req.device, require_gpu=req.require_gpu, threads=req.threads, fast=req.fast,
                      progress=progress or default_progress(), track=req.track) as session:
        return edit_trigger(session, trigger, req, secrets_row=secrets_row)


def prepare_edit(reg, req: EditRequest, *, here: bool = True) -> tuple[Trigger, str, str, list, dict]:
    """Everything checked before a model loads: the options, the trigger, the device when it runs
    ``here`` (Ray workers pick their own), HEAD; then the trigger's secrets audit.
    (trigger, ref, parent, findings, row)."""
    check_request(req, reg.base())
    if req.passages is not None:
        raise UserError("a stream of passages goes through seal.editor.run.run_stream")
    trigger = read_trigger(req)
    if here:
        check_device(req)
    ref, parent = reg.head()
    if parent is None:
        raise NoHead()
    findings, secrets_row = secrets_audit(trigger, req.message)
    return trigger, ref, parent, findings, secrets_row


def edit_trigger(session, trigger: Trigger, req: EditRequest, *, secrets_row: dict | None = None,
                 ref: str | None = None) -> dict:
    """Serve one trigger in an open session on ``ref`` (default: what HEAD moves), from its tip
    now: reflect, train, score, decide, record (:mod:`seal.editor.attempt`)."""
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
            return refuse(reg, trigger, req.message, findings, secrets_row, (ref, parent))
    attempt = edit_attempt(session, trigger, req, ref=ref, parent=parent, secrets_row=pii_allowed(secrets_row))
    return run_edit_attempt(session, attempt, trigger, req)


__all__ = ["EditRequest", "Trigger", "run_edit", "prepare_edit", "edit_trigger"]
