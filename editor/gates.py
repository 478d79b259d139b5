"""Decide: named checks on a candidate's gate inputs, and the choice among candidates.

A gate compares one number with a threshold: one of the candidate's :class:`GateInputs`, or the
difference of two. Which, and how, is the gate's :class:`~seal.registry.vocabulary.GateSpec`
(``reads``, ``op``); its threshold is the policy's. The inputs are taken from a candidate's
measurements by :func:`gate_inputs`, so a new gate is its spec in registry/vocabulary.py and its
input here.

A missing input fails its gate: a check that could not run must not let a change through.

    >>> from seal.editor.gates import default_gates, check_gates, decide
    >>> scores = {"efficacy": 0.4, "efficacy_parent": 0.1, "retention": 0.58, "retention_parent": 0.61,
    ...           "retention_base": 0.62, "js_parent": 0.02, "kl_base": 0.1, "delta_norm_ratio": 1.0,
    ...           "refusal": 0.5, "refusal_base": 0.5, "over_refusal": 0.1, "over_refusal_base": 0.1,
    ...           "canary_leaks": 0.0, "taught": -2.1, "taught_parent": -2.0}
    >>> [r.name for r in check_gates(scores, default_gates()) if not r.passed]
    []
    >>> [r.name for r in check_gates({**scores, "retention": 0.5}) if not r.passed]
    ['retention_vs_parent', 'retention_vs_base']
    >>> decide([{**scores, "retention": 0.5}, scores])   # index of the best passing candidate, or None
    1
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from seal.registry.vocabulary import GATES, GATES_BY_NAME, GateSpec

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}

# One source of defaults: the policy file `seal init` writes is rendered from the same table.
DEFAULT_POLICY: dict[str, float | None] = {g.policy_key: g.default for g in GATES}


@dataclass(frozen=True)
class GateInputs:
    """What the gates read of one candidate (None: not measured, and its gate fails). In `edit
    --json` they are each candidate's ``scores``: the inputs given, in this order.

        >>> GateInputs.of({"js_parent": 0.02}).to_json()
        {'js_parent': 0.02}
    """

    efficacy: float | None = None  # token F1 on the eval questions, else minus the passage's NLL
    efficacy_parent: float | None = None  # the parent's, on the same data
    retention: float | None = None  # retention-set accuracy, in [0, 1]
    retention_parent: float | None = None
    retention_base: float | None = None
    taught: float | None = None  # mean answer margin on the questions the branch was taught (nats)
    taught_parent: float | None = None
    js_parent: float | None = None  # mean next-token JS against the parent (nats)
    kl_base: float | None = None  # mean next-token KL(base || candidate) (nats): the drift budget
    delta_norm_ratio: float | None = None  # ||dW|| over the median of the branch's recent edits
    refusal: float | None = None  # XSTest unsafe prompts refused
    refusal_base: float | None = None
    over_refusal: float | None = None  # XSTest safe prompts refused
    over_refusal_base: float | None = None
    canary_leaks: float | None = None  # outputs and training sequences holding the probe canary
    efficacy_margin: float | None = None  # the margin rule's placebo-corrected gain (nats)
    given: frozenset[str] = frozenset()  # which inputs were given (what to_json shows)

    @classmethod
    def of(cls, values: Mapping[str, float | None]) -> GateInputs:
        """From input names to values; an unknown name is a TypeError."""
        return cls(**values, given=frozenset(values))

    def get(self, name: str, default: float | None = None) -> float | None:
        value = getattr(self, name) if name in self.given else None
        return default if value is None else value

    def finite(self) -> GateInputs:
        """The same inputs with every NaN or infinite value missing."""
        return replace(self, **{k: None for k in self.given if not _finite(getattr(self, k))})

    def nonfinite(self) -> list[str]:
        return sorted(k for k in self.given if not _finite(getattr(self, k)))

    def to_json(self) -> dict[str, float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in self.given}


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def gate_inputs(session, attempt, c, d: dict) -> GateInputs:
    """A measured candidate's gate inputs, from its measurements, the parent's and the base's, and
    its distances ``d`` (:func:`seal.editor.stages.distances`)."""
    m, base_m, parent = c.measured, session.base_m, attempt.parent
    median = statistics.median(attempt.history) if attempt.history else None
    in_data = sum(session.probes.canary in s for s in (c.self_edit.sequences if c.self_edit else []))
    leaks = in_data + sum(session.probes.canary in o for o in m.outputs + c.efficacy.predictions)
    return GateInputs.of({
        "efficacy": c.efficacy.gate, "efficacy_parent": parent.efficacy.gate,
        "retention": m.retention, "retention_parent": parent.measured.retention, "retention_base": base_m.retention,
        "js_parent": d["js_parent"], "kl_base": d["kl_base"],
        # Without history the edit is its own median: ratio 1 (see README).
        "delta_norm_ratio": d["delta"] / median if median else 1.0,
        "refusal": m.refusal, "refusal_base": base_m.refusal,
        "over_refusal": m.over_refusal, "over_refusal_base": base_m.over_refusal,
        "canary_leaks": float(leaks),
        **({"efficacy_margin": c.margins.mean} if c.margins is not None else {}),
        **(c.taught.inputs() if c.taught is not None else {}),
    })


Scores = GateInputs | Mapping[str, Any]


def _inputs(scores: Scores) -> GateInputs:
    return scores if isinstance(scores, GateInputs) else GateInputs.of(scores)


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict, as stored in a version's audit."""

    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str


@dataclass(frozen=True)
class Gate:
    """A named comparison of ``reads`` (one input, or the first minus the second) with a threshold.

        >>> g = Gate.of(GATES_BY_NAME["js_vs_parent"], 0.1)
        >>> g.check(GateInputs.of({"js_parent": 0.03})).passed, g.op
        (True, '<=')
    """

    name: str
    threshold: float
    op: str
    reads: tuple[str, ...]
    description: str = ""

    @classmethod
    def of(cls, spec: GateSpec, threshold: float) -> Gate:
        return cls(spec.name, float(threshold), spec.op, spec.reads, spec.description)

    def measure(self, scores: Scores) -> float | None:
        values = [_inputs(scores).get(k) for k in self.reads]
        if any(v is None for v in values):
            return None
        return float(values[0]) - float(values[1]) if len(values) == 2 else float(values[0])

    def check(self, scores: Scores) -> GateResult:
        inputs = _inputs(scores)
        value = self.measure(inputs)
        if value is None or math.isnan(value):
            missing = [k for k in self.reads if inputs.get(k) is None] or list(self.reads)
            return GateResult(self.name, None, self.threshold, False, f"missing score(s): {', '.join(missing)}")
        passed = _OPS[self.op](value, self.threshold)
        return GateResult(self.name, value, self.threshold, passed,
                          f"{self.description}: {value:.4g} {self.op} {self.threshold:g}" + ("" if passed else " failed"))


def gates_from_policy(policy: Mapping[str, float] | None = None) -> list[Gate]:
    """The gates of the vocabulary (the specs with an ``op``), with thresholds from ``policy``
    (missing keys use DEFAULT_POLICY). A key set to ``None`` disables that gate.

        >>> [g.name for g in gates_from_policy({"kl_vs_base_max": None})][4:]
        ['taught_vs_parent', 'js_vs_parent', 'weight_norm', 'refusal', 'over_refusal', 'leakage']
    """
    merged: dict[str, Any] = {**DEFAULT_POLICY, **(policy or {})}
    unknown = set(merged) - set(DEFAULT_POLICY)
    if unknown:
        raise ValueError(
            f"unknown policy key(s) {sorted(unknown)}; known: {sorted(DEFAULT_POLICY)}"
        )
    return [Gate.of(spec, merged[spec.policy_key]) for spec in GATES if spec.op and merged[spec.policy_key] is not None]


def default_gates() -> list[Gate]:
    """The gates of DEFAULT_POLICY.

        >>> [g.name for g in default_gates()]
        ['efficacy_margin', 'efficacy_gain', 'retention_vs_parent', 'retention_vs_base', 'taught_vs_parent', 'js_vs_parent', 'kl_vs_base', 'weight_norm', 'refusal', 'over_refusal', 'leakage']
    """
    return gates_from_policy(None)


def check_gates(scores: Scores, gates: Sequence[Gate] | None = None) -> list[GateResult]:
    """Run every gate on one candidate's inputs.

        >>> [(r.name, r.passed) for r in check_gates({"efficacy": 0.2, "efficacy_parent": 0.1}, default_gates()[:2])]
        [('efficacy_gain', True)]
    """
    gates = gates if gates is not None else default_gates()
    inputs = _inputs(scores)
    return [gate.check(inputs) for gate in applicable(gates, inputs.efficacy_margin is not None)]


def applicable(gates: Sequence[Gate], margins: bool) -> list[Gate]:
    """The gates that judge one attempt: one efficacy gate, the margin rule where margins were
    measured and the F1/NLL comparison elsewhere.

        >>> [g.name for g in applicable(default_gates()[:2], margins=True)]
        ['efficacy_margin']
    """
    skip = "efficacy_gain" if margins else "efficacy_margin"
    return [g for g in gates if g.name != skip]


#: Gates decided by a paired statistical test on per-item outcomes (seal.editor.probes) when the
#: per-item results exist; the others (weight norm, leakage) stay point comparisons.
STATISTICAL_GATES = ("retention_vs_parent", "retention_vs_base", "js_vs_parent", "kl_vs_base", "refusal",
                     "over_refusal")


def margin_rule(policy_gates: Mapping[str, Any]):
    """The efficacy margin rule with the policy's thresholds, or None when the policy turned it off.

        >>> margin_rule({"efficacy_margin_gain_min": 0.5, "efficacy_margin_floor_min": -1.0}).floor
        -1.0
    """
    from .efficacy import MarginRule

    merged = {**DEFAULT_POLICY, **policy_gates}
    if merged["efficacy_margin_gain_min"] is None:
        return None
    floor, z = merged["efficacy_margin_floor_min"], merged["efficacy_margin_noise_z"]
    alpha = merged["efficacy_margin_sign_alpha"]
    return MarginRule(mean_min=float(merged["efficacy_margin_gain_min"]),
                      floor=-math.inf if floor is None else float(floor), noise_z=0.0 if z is None else float(z),
                      alpha=None if alpha is None else float(alpha))


def audit_entries(gates: Sequence[Gate], scores: Scores, *, candidate: Any = None, parent: Any = None,
                  base: Any = None, gains: Sequence[float] | None = None, margins: Any = None,
                  taught: Any = None, alpha: float = 0.05) -> list[dict]:
    """Every gate's audit entry, in the policy's order.

    One efficacy gate judges each attempt: with ``margins`` (a
    :class:`seal.editor.efficacy.MarginDecision`, an edit of a passage with questions) the margin
    rule, and the F1 gate is left out (F1 and containment stay recorded scores, judged pooled over
    a branch by ``seal audit``); without, the F1 (or NLL) gate, and the margin gate is left out.

    With per-item probe results (``candidate``, ``parent``, ``base``: ProbeResults) the probe gates
    are paired statistical decisions (estimate, interval, n, rule, MDE); with per-question
    efficacy ``gains`` (candidate minus parent) the efficacy gate passes only if the lower bound
    of the mean gain beats its threshold; with ``taught`` (a :class:`seal.editor.taught.TaughtMargins`)
    the taught-retention gate is its paired non-inferiority decision. Every other gate compares
    ``scores`` with its threshold.

        >>> f1 = [g for g in default_gates() if g.name == "efficacy_gain"]
        >>> [e["passed"] for e in audit_entries(f1, {"efficacy": 0.3, "efficacy_parent": 0.1}, gains=[0.2, 0.0] * 10)]
        [True]
        >>> audit_entries(f1, {}, gains=[0.5, -0.5] * 10)[0]["passed"]
        False
    """
    from .stats import bootstrap_gain_gate

    from .probes import gate_decisions

    inputs, entries = _inputs(scores), []
    for gate in applicable(gates, margins is not None):
        if gate.name == "efficacy_margin":
            entries.append(margins.audit_entry(gate.name))
        elif gate.name == "taught_vs_parent" and taught is not None:
            entries.append(taught.decision(gate.threshold, alpha).audit_entry())
        elif gate.name in STATISTICAL_GATES and candidate is not None:
            key = GATES_BY_NAME[gate.name].policy_key
            entries.append(gate_decisions(candidate, parent, base, {key: gate.threshold}, alpha=alpha)[0].audit_entry())
        elif gate.name == "efficacy_gain" and gains is not None:
            entries.append(bootstrap_gain_gate(gate.name, list(gains), threshold=gate.threshold, alpha=alpha,
                                               what="per-question token F1 gain vs parent").audit_entry())
        else:
            r = gate.check(inputs)
            value = r.value if r.value is not None and math.isfinite(r.value) else None
            entries.append({"check": r.name, "value": value, "threshold": r.threshold, "passed": r.passed,
                            "detail": r.detail})
    return entries


def decide(
    candidates: Sequence[Scores],
    gates: Sequence[Gate] | None = None,
    *,
    rank_by: str = "efficacy",
) -> int | None:
    """Index of the best candidate that passes every gate, or None when none does.

    Best means highest ``rank_by``; ties go to the smaller ``js_parent`` (the gentler change),
    then to the lower index, so the choice is deterministic.

        >>> decide([{"efficacy": 0.2, "efficacy_parent": 0.1}, {"efficacy": 0.4, "efficacy_parent": 0.1}],
        ...        [g for g in default_gates() if g.name == "efficacy_gain"])
        1
    """
    best: int | None = None
    best_key: tuple[float, float, int] | None = None
    for index, scores in enumerate(candidates):
        scores = _inputs(scores)
        if not all(r.passed for r in check_gates(scores, gates)):
            continue
        rank = scores.get(rank_by)
        js = scores.get("js_parent")
        key = (
            -(float(rank) if rank is not None else -math.inf),
            float(js) if js is not None else math.inf,
            index,
        )
        if best_key is None or key < best_key:
            best, best_key = index, key
    return best
