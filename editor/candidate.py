"""The typed records the engine passes between its stages. Torch-free.

An :class:`Attempt` is one trigger being served (an edit of one passage, a merge, a
consolidate): what it is compared against (its :class:`Parent`), its policy and gates, and its
stage timings. Each of its :class:`Candidate` objects is one child adapter, filled in stage by
stage: the :class:`SelfEdit` it was trained on, the training record, its measurements, its
score rows and gate verdicts, and finally its version id.

    >>> c = Candidate(index=0, seed=0, self_edit=SelfEdit(style="rewrite", sequences=["a", "b"]))
    >>> c.passed, c.self_edit.to_json()["sequences"]
    (False, ['a', 'b'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seal.registry.store.objects import canonical_json

from .gates import GateInputs


@dataclass
class SelfEdit:
    """The training data one candidate was trained on, as the model wrote it."""

    style: str
    sequences: list[str]
    prompt: str | None = None
    generated: str | None = None
    lines: list[str] | None = None  # the lines trained on
    records: list[dict] | None = None
    dropped: list[str] | None = None  # generated lines the passage does not support (--filter), not trained on
    restated: list[str] | None = None  # the passage's own sentences, trained on under the title (--restate)
    replay: list[str] | None = None  # the base's own text mixed in against forgetting (--replay)

    def to_json(self) -> dict:
        doc: dict[str, Any] = {"style": self.style}
        for key in ("prompt", "generated", "lines", "dropped", "restated", "replay", "records"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        doc["sequences"] = self.sequences
        return doc

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


@dataclass
class Parent:
    """What candidates are compared against: a version, its adapter folder and its measurements."""

    vid: str
    manifest: dict
    adapter_dir: Path | None
    measured: Any = None  # seal.editor.measure.Measured, when known
    efficacy: Any = None  # seal.editor.measure.Efficacy on the attempt's data


@dataclass
class Candidate:
    """One child adapter, filled in by the stages: train, score, decide, record."""

    index: int
    seed: int
    self_edit: SelfEdit | None = None
    adapter_dir: Path | None = None
    # The adapter already in the object store, {"weights": digest, "config": {...}}: a Ray worker
    # stored it, and the driver records it by digest (adapter_dir stays None).
    stored: dict | None = None
    train: dict = field(default_factory=dict)
    diverged: str | None = None  # why the attempt is void: non-finite loss, weights or logits
    measured: Any = None
    efficacy: Any = None
    gate_inputs: GateInputs = field(default_factory=GateInputs)
    scores: list[dict] = field(default_factory=list)
    audit: list[dict] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)  # score names whose value was NaN or infinite
    run_id: str | None = None  # its MLflow run
    margins: Any = None  # seal.editor.efficacy.MarginDecision: the efficacy rule's verdict
    evidence: dict | None = None  # per-question margins and effects, and the placebo, as recorded
    id: str | None = None  # its version, once recorded
    status: str | None = None
    # The race (editor/race.py): its margins when it stopped (reused by the efficacy rule), and,
    # when another candidate trained on instead, where it stopped and why.
    race_margins: Any = None
    taught: Any = None  # seal.editor.taught.TaughtMargins: its margins on what the branch was taught, once probed
    raced: dict | None = None

    @property
    def passed(self) -> bool:
        """Scored, finite, and through every gate."""
        return self.diverged is None and bool(self.audit) and not self.failed


@dataclass
class Attempt:
    """One trigger being served: the parents, the ref to move, the policy, the data, the timings."""

    kind: str  # edit | merge | consolidate | import
    parents: list[str]
    ref: str | None  # the ref to move to the winner (None: record only)
    expected: str | None  # where that ref must still point
    parent: Parent
    spec: dict  # what efficacy is measured on
    policy: Any
    gates: list
    message: str
    title: str = ""
    answer_tokens: int = 48
    history: list[float] = field(default_factory=list)  # recent edits' ||dW||, for the weight-norm gate
    contrast: list = field(default_factory=list)  # seal.editor.efficacy.ContrastQuestion: the margin questions
    words: int = 0  # the trigger passage's length, which the placebo matches
    extra_audit: list[dict] = field(default_factory=list)
    fields: dict = field(default_factory=dict)  # manifest fields (trigger)
    extra: dict = field(default_factory=dict)  # extra manifest keys (eval, reflect, merge, ...)
    timings: dict = field(default_factory=dict)
    run_id: str | None = None  # the trigger's parent MLflow run
    # The candidate whose recipe the placebo repeats (None: the first live one). A Ray worker
    # scoring one candidate is given candidate 0's, so its placebo is the serial run's.
    placebo_of: Any = None
    parent_margins: Any = None  # the parent's (margins, ranked first) on ``contrast``, once measured
    taught: Any = None  # seal.editor.taught.Taught: the questions the parent's line was taught, once read
    candidates: list[Candidate] = field(default_factory=list)  # as seal.editor.attempt.run_attempt left them


__all__ = ["SelfEdit", "Parent", "Candidate", "Attempt"]
