"""One attempt, opened and run the same way for every kind: train → score → decide → record.

An attempt is one thing tried on a parent: an edit of one trigger (`seal edit`, each passage of a
stream, a held-out edit of `seal learn`, an attempt a Ray driver serves), a merge, a consolidate
or a gated import. Every one is opened by :func:`open_attempt` (the policy read and recorded, the
gates built from it, the parent's state, the recent edits' weight norms, the MLflow run) and run
by :func:`run_attempt`: its candidates are made (reflected and trained, or combined by PEFT),
scored against the parent and the base, decided by the gates and recorded, the winner last with
its branch move. Should anything fail on the way, the attempt's MLflow runs end as KILLED, so no
run is left RUNNING. A trigger holding secrets is refused here too (:func:`refuse`), before any
attempt opens.

    >>> attempt = edit_attempt(session, trigger, req, ref="refs/heads/main", parent=head, secrets_row=row)  # doctest: +SKIP
    >>> result = run_edit_attempt(session, attempt, trigger, req)                                          # doctest: +SKIP
    >>> result["decision"]["accepted"], attempt.candidates[0].status                                         # doctest: +SKIP
    (True, 'accepted')
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from seal.registry.policy import read_policy, record_policy
from seal.registry.vocabulary import DELTA_NORM

from .candidate import Attempt, Candidate
from .trigger import Trigger, efficacy_spec


def current_policy(reg):
    """The policy in force, recorded as a blob so that every version can name it by digest."""
    policy = read_policy(reg)
    record_policy(reg, policy)
    return policy


def open_attempt(session, kind: str, parents: list[str], *, ref: str | None, expected: str | None, spec: dict,
                 message: str, title: str = "", answer_tokens: int = 48, parent_manifest: dict | None = None,
                 fields: dict | None = None, extra: dict | None = None, extra_audit: list[dict] | None = None,
                 run_title: str | None = None, params: dict | None = None, tags: dict | None = None) -> Attempt:
    """An attempt on ``parents`` (compared against the first), moving ``ref`` from ``expected`` if
    a candidate wins (``ref`` None: record only), with its MLflow run open."""
    from .gates import gates_from_policy

    reg = session.reg
    policy = current_policy(reg)
    manifest = parent_manifest if parent_manifest is not None else reg.manifest(parents[0])
    attempt = Attempt(
        kind=kind, parents=parents, ref=ref, expected=expected, parent=session.parent(parents[0], manifest),
        spec=spec, policy=policy, gates=gates_from_policy(policy.gates), message=message, title=title,
        answer_tokens=answer_tokens,
        history=recent_edit_norms(reg, parents[0], int(policy.settings["weight_norm_window"])),
        extra_audit=list(extra_audit or []), fields=dict(fields or {}), extra=dict(extra or {}),
        timings=session.first_timings())
    if session.tracker is not None:
        attempt.run_id = session.tracker.start_run(f"{kind} {run_title or title}", params=params,
                                                   tags={"seal.kind": kind, **(tags or {})})
    return attempt


def edit_attempt(session, trigger: Trigger, req, *, ref: str | None, parent: str, secrets_row: dict) -> Attempt:
    """The attempt of an edit of one trigger: its data blobs, the reflect settings, the margin
    questions of a passage with questions."""
    reg = session.reg
    style = req.style if trigger.kind == "passage" else "corrections"
    title = trigger.title or ""
    raw = reg.store.put(trigger.raw)
    attempt = open_attempt(
        session, "edit", [parent], ref=ref, expected=parent, spec=efficacy_spec(trigger),
        message=req.message or f"edit on {trigger.kind}" + (f" '{title}'" if title else ""), title=title,
        answer_tokens=req.answer_tokens, extra_audit=[secrets_row], fields={"trigger": raw},
        extra={
            "eval": reg.store.put(trigger.eval_raw) if trigger.eval_raw is not None else None,
            "reflect": {"style": style, "temperature": req.temperature, "top_p": req.top_p,
                        "max_new_tokens": req.max_new_tokens, "seed": req.seed, "k": req.candidates},
            "trigger_info": {"kind": trigger.kind, "title": trigger.title, "redacted": False},
        },
        run_title=title or trigger.kind, params={"k": req.candidates, "parent": parent, "style": style},
        tags={"seal.trigger": raw})
    if trigger.kind == "passage" and attempt.spec.get("qa"):
        from .efficacy import contrast_questions, unrelated_answers

        attempt.contrast = contrast_questions(attempt.spec["qa"], trigger.passage, unrelated_answers())
        attempt.words = len(trigger.passage.split())
    return attempt


def recent_edit_norms(reg, start: str, window: int) -> list[float]:
    """‖ΔW‖ against their parents of the last ``window`` edits on the first-parent line."""
    norms: list[float] = []
    for vid in reg.first_parent_line(start, 10 * window - 1) if window > 0 else []:
        manifest = reg.manifest(vid)
        value = DELTA_NORM.vs("parent").of(manifest)
        if value is not None and manifest["kind"] in ("edit", "merge", "consolidate"):
            norms.append(value)
            if len(norms) == window:
                break
    return norms


def pii_allowed(secrets_row: dict) -> dict:
    """The secrets audit row of a trigger trained on anyway (``--allow-pii``): passed, saying so."""
    if secrets_row["passed"]:
        return secrets_row
    return {**secrets_row, "passed": True, "detail": "allowed by --allow-pii: " + secrets_row["detail"]}


def refuse(reg, trigger: Trigger, message: str, findings: list, secrets_row: dict, head: tuple[str, str]) -> dict:
    """Record the refusal of a trigger that holds secrets or personal data (no ``--allow-pii``):
    rejected before any training, on ``head`` (ref, parent)."""
    from .record import record_refusal

    return record_refusal(reg, trigger, message, findings, secrets_row, head, current_policy(reg))


@contextmanager
def ending_runs(session) -> Iterator[None]:
    """Whatever stops an attempt (an error, Ctrl-C) ends its open MLflow runs as KILLED."""
    try:
        yield
    except BaseException:
        if session.tracker is not None:
            session.tracker.kill_open_runs()
        raise


def run_attempt(session, attempt: Attempt, make: Callable[[], list[Candidate]], *, scored: bool = False) -> dict:
    """Make the candidates, score them, decide, record; the `edit --json` document.

    ``scored``: the candidates come scored (by Ray workers), and are only ranked by margin gain as
    the serial run ranks them. The candidates stay on ``attempt.candidates``, with their ids."""
    from .record import record
    from .stages import decide, outrank, score

    with ending_runs(session):
        candidates = attempt.candidates = make()
        if scored:
            outrank(attempt, candidates)
        else:
            score(session, attempt, candidates)
        return record(session, attempt, candidates, decide(candidates))


def run_edit_attempt(session, attempt: Attempt, trigger: Trigger, req) -> dict:
    """An edit: the model at the parent writes K self-edits, one child trains on each, then as
    :func:`run_attempt`."""
    from .stages import reflect, train

    return run_attempt(session, attempt, lambda: train(session, attempt, reflect(session, attempt, trigger, req), req))


def single_candidate(session, attempt: Attempt, folder: Path, train: dict) -> Candidate:
    """The one candidate of a merge, consolidate or gated import: the adapter in ``folder``."""
    from .stages import open_run

    c = Candidate(index=0, seed=0, adapter_dir=folder, train=train)
    c.run_id = open_run(session, attempt, c, 1, {})
    return c


def measure_parent_attached(session, attempt: Attempt, stage) -> None:
    """The parent's measurements with its adapter attached (an attempt that reflects does this
    while reflecting)."""
    from .attach import attached
    from .stages import measure_parent

    with attached(session.model, attempt.parent.adapter_dir, merge=session.fast) as model:
        measure_parent(session, attempt, model, stage.advance)


__all__ = ["current_policy", "open_attempt", "edit_attempt", "recent_edit_norms", "pii_allowed", "refuse",
           "ending_runs", "run_attempt", "run_edit_attempt", "single_candidate", "measure_parent_attached"]
