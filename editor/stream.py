"""A stream of material: `seal edit --passages FILE.jsonl` (or ``-`` for stdin).

Passage after passage, in one process, on the branch HEAD is on: each passage is one edit whose
parent is the branch's tip at that moment (so accepted passages chain), served by one warm
:class:`~seal.editor.session.Session`. The lines are SEAL's format (``{title, context,
questions: [{question, answer}]}``, as in ``squad-knowledge-200.jsonl``); other keys are kept in
the stored trigger and scanned for secrets like the rest.

Idempotent and resumable: a passage whose trigger digest already has a version on the branch
(an accepted edit on its line, or a rejected attempt hanging off it) is skipped. Each passage is
recorded in one transaction together with its branch move, so Ctrl-C or ``kill -9`` leaves every
finished passage recorded and nothing of the one in flight, and the next run resumes there.

    >>> summary = run_stream(reg, EditRequest(passages="squad.jsonl"), emit=print)   # doctest: +SKIP
    {"passage": 1, "title": "Genghis Khan", "skipped": false, "decision": {...}, ...}
    >>> summary                                                                       # doctest: +SKIP
    {'passages': 20, 'recorded': 20, 'skipped': 0, 'accepted': 7, 'stopped': None}
"""

from __future__ import annotations

import json
from collections.abc import Callable

from seal.registry import refs as R
from seal.registry.errors import UserError
from seal.registry.graph import ancestors
from seal.registry.objects import blob_digest

from .request import EditRequest, check_request
from .trigger import Trigger, read_stream, secrets_audit


def done_triggers(reg, tip: str) -> set[str]:
    """Trigger digests of the edits on ``tip``'s lineage and of the attempts whose parent is on it."""
    done: set[str] = set()
    with reg.read() as conn:
        line = ancestors(conn, tip)
        # Ids first (small), manifests only for the edits on or off the line, a chunk at a time.
        rows = conn.all("SELECT v.id, p.parent_id FROM versions v LEFT JOIN version_parents p "
                        "ON p.version_id = v.id AND p.position = 0 WHERE v.kind = 'edit'")
        wanted = [vid for vid, parent in rows if vid in line or parent in line]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            for (manifest,) in conn.all(f"SELECT manifest FROM versions WHERE id IN ({marks})", chunk):
                trigger = json.loads(manifest).get("trigger")
                if trigger:
                    done.add(trigger)
    return done


def trigger_key(trigger: Trigger, req: EditRequest) -> tuple[str, list, dict]:
    """The digest this passage is recorded under, with the secrets scan that decides it: the
    passage's own bytes, or, when it is refused for holding secrets, its redacted copy."""
    from .record import redacted_trigger

    findings, row = secrets_audit(trigger, req.message)
    if findings and not req.allow_pii:
        return blob_digest(redacted_trigger(trigger, req.message)), findings, row
    return blob_digest(trigger.raw), findings, row


def run_stream(reg, req: EditRequest, *, emit: Callable[[dict], None], progress=None) -> dict:
    """Edit every passage of ``req.passages`` in turn; ``emit`` gets one result per passage."""
    from .loop import _check_device
    from .progress import default_progress
    from .session import open_session

    check_request(req, reg.base())
    triggers = read_stream(req.passages)  # a file is read and checked whole before any model loads
    _check_device(req)
    ref, tip = reg.head()
    if tip is None:
        raise UserError("HEAD points at nothing; run `seal checkout main` first")
    done = done_triggers(reg, tip)
    total = triggers.total
    progress = progress or default_progress()
    summary = {"passages": 0, "recorded": 0, "skipped": 0, "accepted": 0, "stopped": None}
    with open_session(reg, device=req.device, require_gpu=req.require_gpu, threads=req.threads, fast=req.fast,
                      progress=progress, track=req.track) as session, progress.passages(total) as bar:
        for number, trigger in enumerate(triggers, start=1):
            summary["passages"] += 1
            item = _serve(session, trigger, req, done, number, ref)
            emit(item)
            bar.advance()
            summary["skipped" if item["skipped"] else "recorded"] += 1
            summary["accepted"] += bool(item.get("decision", {}).get("accepted")) and not item["skipped"]
            if item.get("decision", {}).get("conflict"):
                summary["stopped"] = item["decision"]["conflict"]
                break
    return summary


def _serve(session, trigger: Trigger, req: EditRequest, done: set[str], number: int, ref: str) -> dict:
    """One passage: skipped when its digest is done, else edited on the branch's tip now."""
    from .loop import edit_trigger
    from .record import record_refusal

    key, findings, row = trigger_key(trigger, req)
    head = {"passage": number, "title": trigger.title, "trigger": key, "where": trigger.where}
    if key in done:
        session.progress.say(f"passage {number} ({trigger.title or 'untitled'}): recorded before; skipped")
        return {**head, "skipped": True}
    session.progress.say(f"passage {number}: {trigger.title or 'untitled'}")
    if findings and not req.allow_pii:
        from seal.registry.policy import read_policy, record_policy

        policy = read_policy(session.reg)
        record_policy(session.reg, policy)
        with session.reg.read() as conn:
            tip = R.peel(conn, ref)
        result = record_refusal(session.reg, trigger, req.message, findings, row, (ref, tip), policy)
    else:
        result = edit_trigger(session, trigger, req, secrets_row=row, ref=ref)
    done.add(key)
    return {**head, "skipped": False, **result}


__all__ = ["run_stream", "done_triggers", "trigger_key"]
