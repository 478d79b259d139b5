"""Retention of what the branch was taught, in the efficacy gate's units.

The passages a branch's accepted edits taught are its own knowledge: a later edit that undoes
them forgets what a reviewer saw checked and kept. :func:`taught_questions` gathers, from the
parent's first-parent line, one question from each of the last :data:`TAUGHT_PASSAGES` passages
an accepted edit taught (the question that edit moved most, by its recorded placebo-corrected
effect), with the same contrastive options the efficacy rule scored it on. :func:`taught_decision`
is the gate: a one-sided non-inferiority rule on the per-question answer-margin drop against the
parent (:func:`seal.editor.stats.bootstrap_gate`): reject if the upper bound of the mean drop
passes the policy's ``taught_margin_drop_vs_parent_max``.

Nothing is stored: the questions are rebuilt from each edit's recorded trigger, questions and
margin evidence, so every candidate of a parent meets the same set (its digest is recorded).

    >>> taught_decision([], [], 1.0).passed
    True
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from seal.registry.errors import BlobMissing

from .efficacy import ContrastQuestion, contrast_questions, unrelated_answers
from .stats import GateDecision, bootstrap_gate
from .trigger import MAX_LINE_BYTES

#: How many taught passages the gate asks about (one question each): the last ones on the line.
TAUGHT_PASSAGES = 20
#: How far back the first-parent line is read for them (merges and imports are passed over).
SCAN_LIMIT = 200
#: The fewest taught questions the gate judges on: below, a bootstrap bound of a mean does not hold
#: its level (with one question it is that question's drop), and the gate passes, saying so.
TAUGHT_MIN = 5
GATE = "taught_vs_parent"
WHAT = "answer-margin drop on questions the branch was taught, vs parent (nats)"


@dataclass(frozen=True)
class Taught:
    """The questions of the passages the parent's line was taught, newest first, and the edits
    that taught them."""

    versions: tuple[str, ...] = ()
    questions: tuple[ContrastQuestion, ...] = ()

    @property
    def digest(self) -> str:
        doc = [[v, q.question, list(q.options), q.n_gold] for v, q in zip(self.versions, self.questions)]
        return "sha256:" + hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def question_key(q: ContrastQuestion) -> tuple:
    """What makes two contrast questions the same measurement: the question and its options."""
    return (q.question, tuple(q.options), q.n_gold)


@dataclass
class KnownMargins:
    """Answer margins measured in this session, by version and question.

    A candidate's margins (on its trigger's questions and on the taught ones) are noted while it is
    judged and become its version's once it is recorded, so an accepted edit's margins serve as the
    next parent's: a new parent is scored only on the questions it was never asked (in a stream, none).
    Only the parent being served is kept, beside the candidates of the attempt in hand."""

    versions: dict[str, dict[tuple, float]] = field(default_factory=dict)
    pending: list[tuple[Any, dict[tuple, float]]] = field(default_factory=list)

    def note(self, candidate: Any, questions: Sequence[ContrastQuestion], margins: Sequence[float]) -> None:
        """Candidate ``candidate`` (with ``.id`` once recorded) measured ``margins`` on ``questions``."""
        found = next((m for c, m in self.pending if c is candidate), None)
        if found is None:
            found = {}
            self.pending.append((candidate, found))
        found.update({question_key(q): float(m) for q, m in zip(questions, margins) if math.isfinite(m)})

    def margins(self, vid: str, questions: Sequence[ContrastQuestion],
                measure: Callable[[list[ContrastQuestion]], Sequence[float]], *,
                current: Sequence[Any] = ()) -> tuple[float, ...]:
        """Version ``vid``'s margins on ``questions``: those known, and ``measure`` of the rest.
        Candidates recorded since are filed under their versions; unrecorded ones other than the
        ``current`` attempt's (an attempt that failed) are dropped."""
        for c, found in self.pending:
            if getattr(c, "id", None):
                self.versions.setdefault(c.id, {}).update(found)
        self.pending = [(c, found) for c, found in self.pending
                        if not getattr(c, "id", None) and any(c is x for x in current)]
        known = self.versions.get(vid, {})
        self.versions = {vid: known}
        missing = [q for q in questions if question_key(q) not in known]
        if missing:
            known.update({question_key(q): float(m) for q, m in zip(missing, measure(missing))})
        return tuple(known[question_key(q)] for q in questions)


@dataclass(frozen=True)
class TaughtMargins:
    """A candidate's and its parent's answer margins on the same taught questions."""

    taught: Taught
    candidate: tuple[float, ...]
    parent: tuple[float, ...]

    def inputs(self) -> dict[str, float]:
        """The gate inputs: both means (none when nothing was taught yet)."""
        if not self.parent:
            return {}
        return {"taught": sum(self.candidate) / len(self.candidate), "taught_parent": sum(self.parent) / len(self.parent)}

    def decision(self, threshold: float, alpha: float = 0.05) -> GateDecision:
        decision = taught_decision(self.candidate, self.parent, threshold, alpha=alpha)
        if not self.parent:
            return decision
        where = f" (one question from each of {len(self.taught.versions)} taught passages, set {self.taught.digest[:19]})"
        return replace(decision, detail=decision.detail + where)


def taught_questions(reg, parent: str, *, limit: int = TAUGHT_PASSAGES, scan: int = SCAN_LIMIT) -> Taught:
    """One question from each of the last ``limit`` passages taught on ``parent``'s first-parent
    line (``parent`` included); a version whose trigger, questions or evidence cannot be read is
    passed over, as is a redacted trigger."""
    versions: list[str] = []
    questions: list[ContrastQuestion] = []
    for vid in reg.first_parent_line(parent, scan):
        if len(versions) == limit:
            break
        question = taught_question(reg, reg.manifest(vid))
        if question is not None:
            versions.append(vid)
            questions.append(question)
    return Taught(tuple(versions), tuple(questions))


def taught_question(reg, manifest: dict) -> ContrastQuestion | None:
    """The question an accepted passage edit moved most, with the options it was scored on."""
    info = manifest.get("trigger_info") or {}
    if manifest.get("kind") != "edit" or manifest.get("status") != "accepted" or info.get("kind") != "passage" \
            or info.get("redacted") or not manifest.get("eval") or not manifest.get("trigger"):
        return None
    try:
        evidence = (manifest.get("efficacy") or {}).get("margins")
        blobs = [manifest["trigger"], manifest["eval"]] + ([evidence] if evidence else [])
        if any(reg.store.stat(d)[0] > MAX_LINE_BYTES for d in blobs):
            return None  # bigger than any stream line seal accepts: not material seal wrote
        doc = json.loads(reg.store.get(manifest["trigger"]))
        qa = json.loads(reg.store.get(manifest["eval"]))
        passage = str(doc.get("context") or doc.get("passage") or "") if isinstance(doc, dict) else ""
        effects = _effects(json.loads(reg.store.get(evidence))) if evidence else {}
        asked = contrast_questions(qa, passage, unrelated_answers()) if isinstance(qa, list) and passage else []
    except (BlobMissing, KeyError, ValueError, TypeError, AttributeError, OSError):
        return None  # withheld by a pull, damaged or forged: passed over (the audit names the set used)
    return max(asked, key=lambda q: effects.get(q.question, -math.inf)) if asked else None


def _effects(evidence: dict) -> dict[str, float]:
    """Question -> the edit's placebo-corrected effect, for the usable questions it recorded."""
    return {q["question"]: float(q["effect"]) for q in evidence.get("questions", [])
            if isinstance(q, dict) and q.get("effect") is not None and not q.get("saturated")}


def taught_decision(candidate: Sequence[float], parent: Sequence[float], threshold: float, *,
                    alpha: float = 0.05) -> GateDecision:
    """The gate's verdict on the per-question margin drops (parent minus candidate): pass if the
    one-sided upper bound of the mean drop is at most ``threshold``; with fewer than
    :data:`TAUGHT_MIN` questions, pass and say so; a non-finite margin fails.

        >>> taught_decision([-1.0, -2.0] * 5, [-1.0, -2.0] * 5, 1.0).passed
        True
        >>> taught_decision([-9.0], [-1.0], 1.0).detail
        'only 1 passage(s) taught on this line yet: judged from 5'

        >>> taught_decision([-5.0, -6.0] * 5, [-1.0, -2.0] * 5, 1.0).passed
        False
    """
    drops = [float(p) - float(c) for c, p in zip(candidate, parent)]
    if len(drops) < TAUGHT_MIN:
        rule = (f"reject if the one-sided {round(100 * (1 - alpha))}% upper bound of the mean {WHAT} exceeds "
                f"{threshold:g}, once >= {TAUGHT_MIN} passages were taught")
        what = "no passage" if not drops else f"only {len(drops)} passage(s)"
        return GateDecision(GATE, None, None, None, len(drops), rule, float(threshold), True,
                            f"{what} taught on this line yet: judged from {TAUGHT_MIN}")
    if not all(math.isfinite(d) for d in drops):
        return GateDecision(GATE, None, None, None, len(candidate), "finite margins", float(threshold), False,
                            "a non-finite answer margin on a taught question failed")
    return bootstrap_gate(GATE, drops, threshold=threshold, what=WHAT, alpha=alpha)


__all__ = ["Taught", "TaughtMargins", "KnownMargins", "question_key", "taught_questions", "taught_question", "taught_decision", "TAUGHT_PASSAGES", "GATE"]
