"""A stream of material: `seal edit --passages FILE.jsonl` (or ``-`` for stdin).

Passage after passage, in one process, on the branch HEAD is on: each passage is one edit whose
parent is the branch's tip at that moment (so accepted passages chain), served by one warm
:class:`~seal.editor.session.Session`. The lines are SEAL's format (``{title, context,
questions: [{question, answer}]}``, as in ``squad-knowledge-200.jsonl``); other keys are kept in
the stored trigger and scanned for secrets like the rest.

A line may name the branch it is aimed at, ``"branch": "exp"`` (a branch that exists; without
the key, the branch HEAD is on): each branch chains its own passages, and with ``--workers``
(:mod:`seal.editor.cluster`) passages on different branches run side by side. The key is part of
the line, so it is stored with the trigger and its digest.

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

from seal.registry.errors import NoHead, UserError
from seal.registry.store import refs as R
from seal.registry.store.objects import blob_digest

from .options import check_request
from .request import EditRequest
from .trigger import Trigger, read_stream, secrets_audit


def read_passages(reg, req: EditRequest):
    """The options, the whole passages file (read and checked before any model loads), the
    branches it names, and HEAD: (triggers, the ref HEAD moves, its tip)."""
    check_request(req, reg.base())
    triggers = read_stream(req.passages)
    check_branches(reg, req.passages)
    ref, tip = reg.head()
    if tip is None:
        raise NoHead()
    return triggers, ref, tip


def done_triggers(reg, tip: str) -> set[str]:
    """Trigger digests of the edits on ``tip``'s lineage and of the attempts whose parent is on it."""
    return {m["trigger"] for m in reg.edits_on_or_off(tip) if m.get("trigger")}


def branch_ref(reg, trigger: Trigger, default: str) -> str:
    """The ref a passage is aimed at: its ``"branch"`` key (a branch that exists), else ``default``."""
    name = (trigger.doc or {}).get("branch")
    if name is None:
        return default
    if not isinstance(name, str):
        raise UserError(f"{trigger.where}: \"branch\" must be a branch name, not {json.dumps(name)[:40]}")
    try:
        R.check_ref_name(name)
    except UserError as e:
        raise UserError(f"{trigger.where}: {e}") from None
    if reg.read_ref(R.HEADS + name) is None:
        raise UserError(f"{trigger.where}: branch {name!r} does not exist; create it first: seal branch {name}")
    return R.HEADS + name


def check_branches(reg, source) -> None:
    """Every line's branch, before any model loads (a file; stdin is checked line by line)."""
    if str(source) == "-":
        return
    checked: set = set()
    for trigger in read_stream(source):
        name = (trigger.doc or {}).get("branch")
        if name is not None and (not isinstance(name, str) or name not in checked):
            branch_ref(reg, trigger, "")
            checked.add(name)


def trigger_key(trigger: Trigger, req: EditRequest) -> tuple[str, list, dict]:
    """The digest this passage is recorded under, with the secrets scan that decides it: the
    passage's own bytes, or, when it is refused for holding secrets, its redacted copy."""
    from .record import redacted_trigger

    findings, row = secrets_audit(trigger, req.message)
    if findings and not req.allow_pii:
        return blob_digest(redacted_trigger(trigger, req.message)), findings, row
    return blob_digest(trigger.raw), findings, row


def run_stream(reg, req: EditRequest, *, emit: Callable[[dict], None], progress=None) -> dict:
    """Edit every passage of ``req.passages`` in turn, in this process; ``emit`` gets one result
    per passage. (:func:`seal.editor.run.run_stream` chooses between this and Ray workers.)"""
    from .options import check_device
    from .progress import default_progress
    from .session import open_session

    triggers, ref, tip = read_passages(reg, req)
    progress = progress or default_progress()
    check_device(req)
    dones = {ref: done_triggers(reg, tip)}
    total = triggers.total
    summary = {"passages": 0, "recorded": 0, "skipped": 0, "accepted": 0, "stopped": None}
    with open_session(reg, device=req.device, require_gpu=req.require_gpu, threads=req.threads, fast=req.fast,
                      progress=progress, track=req.track) as session, progress.passages(total) as bar:
        for number, trigger in enumerate(triggers, start=1):
            summary["passages"] += 1
            target = branch_ref(reg, trigger, ref)
            if target not in dones:
                dones[target] = done_triggers(reg, _tip(reg, target))
            item = serve_passage(session, trigger, req, dones[target], number, target)
            emit(item)
            bar.advance()
            summary["skipped" if item["skipped"] else "recorded"] += 1
            summary["accepted"] += bool(item.get("decision", {}).get("accepted")) and not item["skipped"]
            if item.get("decision", {}).get("conflict"):
                summary["stopped"] = item["decision"]["conflict"]
                break
    return summary


def _tip(reg, ref: str) -> str:
    return reg.peel(ref)


def serve_passage(session, trigger: Trigger, req: EditRequest, done: set[str], number: int, ref: str) -> dict:
    """One passage: skipped when its digest is done, else edited on the branch's tip now."""
    from .attempt import refuse
    from .loop import edit_trigger

    key, findings, row = trigger_key(trigger, req)
    head = {"passage": number, "title": trigger.title, "trigger": key, "where": trigger.where,
            "branch": R.short_name(ref)}
    if key in done:
        session.progress.say(f"passage {number} ({trigger.title or 'untitled'}): recorded before; skipped")
        return {**head, "skipped": True}
    session.progress.say(f"passage {number}: {trigger.title or 'untitled'}")
    if findings and not req.allow_pii:
        result = refuse(session.reg, trigger, req.message, findings, row, (ref, _tip(session.reg, ref)))
    else:
        result = edit_trigger(session, trigger, req, secrets_row=row, ref=ref)
    done.add(key)
    return {**head, "skipped": False, **result}


__all__ = ["run_stream", "read_passages", "done_triggers", "trigger_key", "branch_ref", "check_branches"]
