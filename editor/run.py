"""Where `seal edit` runs: in this process, or over Ray workers (``--workers`` / ``--ray``).

The one place that chooses (the only caller of :func:`~seal.editor.options.on_workers`); the serial
flow (:mod:`seal.editor.loop`, :mod:`seal.editor.stream`) and the Ray flow
(:mod:`seal.editor.cluster`) do not import each other's entry points, and both run their attempts
through :mod:`seal.editor.attempt`.

    >>> result = run_edit(reg, EditRequest(passage=Path("passage.json"), workers=2))   # doctest: +SKIP
    >>> summary = run_stream(reg, EditRequest(passages="squad.jsonl"), emit=print)     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

from .attempt import pii_allowed, refuse
from .loop import prepare_edit, run_edit as edit_here
from .options import on_workers
from .request import EditRequest
from .stream import read_passages, run_stream as stream_here


def run_edit(reg, req: EditRequest, *, progress=None) -> dict:
    """One self-edit on HEAD (``--passage`` or ``--examples``), every candidate recorded."""
    if not on_workers(req):
        return edit_here(reg, req, progress=progress)
    from .cluster import edit_on_workers
    from .progress import default_progress

    trigger, ref, parent, findings, secrets_row = prepare_edit(reg, req, here=False)
    if findings and not req.allow_pii:
        return refuse(reg, trigger, req.message, findings, secrets_row, (ref, parent))
    return edit_on_workers(reg, trigger, req, ref=ref, secrets_row=pii_allowed(secrets_row), findings=findings,
                           progress=progress or default_progress())


def run_stream(reg, req: EditRequest, *, emit: Callable[[dict], None], progress=None) -> dict:
    """Every passage of ``req.passages`` (``--passages``); ``emit`` gets one result per passage."""
    if not on_workers(req):
        return stream_here(reg, req, emit=emit, progress=progress)
    from .cluster import stream_on_workers
    from .progress import default_progress

    triggers, ref, _ = read_passages(reg, req)
    return stream_on_workers(reg, req, triggers, default_ref=ref, emit=emit, progress=progress or default_progress())


__all__ = ["run_edit", "run_stream"]
