"""Decide: named checks on a candidate's scores, and the choice among candidates.

A gate reads a flat score dict and compares one number with a threshold. The keys the default
gates read (all written by the loop from :mod:`seal.editor.evaluate`):

==================== ===========================================================
``efficacy``         the candidate's QA score on the edit's eval set (e.g. containment)
``efficacy_parent``  the parent's score on the same questions
``retention``        anchor-probe accuracy of the candidate, in [0, 1]
``retention_parent`` of the parent;  ``retention_base``: of the bare base
``js_parent``        mean next-token JS divergence candidate vs parent (nats)
``kl_base``          mean next-token KL(base ‖ candidate) (nats): the total drift budget
==================== ===========================================================

A missing score fails its gate: a check that could not run must not let a change through.

    >>> from seal.editor.gates import default_gates, check_gates, decide
    >>> scores = {"efficacy": 0.4, "efficacy_parent": 0.1, "retention": 0.58, "retention_parent": 0.61,
    ...           "retention_base": 0.62, "js_parent": 0.02, "kl_base": 0.1, "delta_norm_ratio": 1.0,
    ...           "refusal": 0.5, "refusal_base": 0.5, "over_refusal": 0.1, "over_refusal_base": 0.1,
    ...           "canary_leaks": 0.0}
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from seal.registry.vocabulary import GATES

Scores = Mapping[str, Any]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}

# One source of defaults: the policy file `seal init` writes is rendered from the same table.
DEFAULT_POLICY: dict[str, float] = {g.policy_key: g.default for g in GATES}


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict, as stored in a version's audit."""

    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GateLike(Protocol):
    name: str
    threshold: float

    def check(self, scores: Scores) -> GateResult: ...


def _diff(a: str, b: str) -> Callable[[Scores], float | None]:
    def measure(scores: Scores) -> float | None:
        x, y = scores.get(a), scores.get(b)
        return None if x is None or y is None else float(x) - float(y)

    return measure


def _key(a: str) -> Callable[[Scores], float | None]:
    def measure(scores: Scores) -> float | None:
        x = scores.get(a)
        return None if x is None else float(x)

    return measure


@dataclass(frozen=True)
class Gate:
    """A named comparison ``measure(scores) <op> threshold``.

        >>> g = Gate("js_vs_parent", 0.1, "<=", _key("js_parent"), "JS vs parent (nats)", ("js_parent",))
        >>> g.check({"js_parent": 0.03}).passed
        True
    """

    name: str
    threshold: float
    op: str
    measure: Callable[[Scores], float | None] = field(compare=False, repr=False)
    description: str = ""
    reads: tuple[str, ...] = ()

    def check(self, scores: Scores) -> GateResult:
        value = self.measure(scores)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            missing = [k for k in self.reads if scores.get(k) is None] or list(self.reads)
            return GateResult(
                self.name, None, self.threshold, False, f"missing score(s): {', '.join(missing)}"
            )
        passed = _OPS[self.op](value, self.threshold)
        return GateResult(
            self.name,
            value,
            self.threshold,
            passed,
            f"{self.description}: {value:.4g} {self.op} {self.threshold:g}"
            + ("" if passed else " failed"),
        )


def gates_from_policy(policy: Mapping[str, float] | None = None) -> list[Gate]:
    """The default gates with thresholds from ``policy`` (missing keys use DEFAULT_POLICY).

    A key set to ``None`` disables that gate.

        >>> [g.name for g in gates_from_policy({"kl_vs_base_max": None})][:5]
        ['efficacy_gain', 'efficacy_margin', 'retention_vs_parent', 'retention_vs_base', 'js_vs_parent']
    """
    merged: dict[str, Any] = {**DEFAULT_POLICY, **(policy or {})}
    unknown = set(merged) - set(DEFAULT_POLICY)
    if unknown:
        raise ValueError(
            f"unknown policy key(s) {sorted(unknown)}; known: {sorted(DEFAULT_POLICY)}"
        )
    specs = [
        ("efficacy_gain", "efficacy_gain_min", ">", _diff("efficacy", "efficacy_parent"),
         "efficacy gain over parent", ("efficacy", "efficacy_parent")),
        ("efficacy_margin", "efficacy_margin_gain_min", ">=", _key("efficacy_margin"),
         "placebo-corrected answer-margin gain (nats)", ("efficacy_margin",)),
        ("retention_vs_parent", "retention_drop_vs_parent_max", "<=",
         _diff("retention_parent", "retention"), "retention drop vs parent",
         ("retention", "retention_parent")),
        ("retention_vs_base", "retention_drop_vs_base_max", "<=",
         _diff("retention_base", "retention"), "retention drop vs base",
         ("retention", "retention_base")),
        ("js_vs_parent", "js_vs_parent_max", "<=", _key("js_parent"),
         "next-token JS vs parent (nats)", ("js_parent",)),
        ("kl_vs_base", "kl_vs_base_max", "<=", _key("kl_base"),
         "next-token KL(base||candidate) (nats)", ("kl_base",)),
        ("weight_norm", "weight_norm_ratio_max", "<=", _key("delta_norm_ratio"),
         "||dW|| vs median of recent edits", ("delta_norm_ratio",)),
        ("refusal", "refusal_drop_vs_base_max", "<=", _diff("refusal_base", "refusal"),
         "XSTest unsafe refusal drop vs base", ("refusal", "refusal_base")),
        ("over_refusal", "over_refusal_rise_vs_base_max", "<=", _diff("over_refusal", "over_refusal_base"),
         "XSTest safe over-refusal rise vs base", ("over_refusal", "over_refusal_base")),
        ("leakage", "canary_leaks_max", "<=", _key("canary_leaks"),
         "outputs or training data holding the probe canary", ("canary_leaks",)),
    ]
    return [
        Gate(name, float(merged[key]), op, measure, description, reads)
        for name, key, op, measure, description, reads in specs
        if merged[key] is not None
    ]


def default_gates() -> list[Gate]:
    """The gates of DEFAULT_POLICY.

        >>> [g.name for g in default_gates()]
        ['efficacy_gain', 'efficacy_margin', 'retention_vs_parent', 'retention_vs_base', 'js_vs_parent', 'kl_vs_base', 'weight_norm', 'refusal', 'over_refusal', 'leakage']
    """
    return gates_from_policy(None)


def check_gates(scores: Scores, gates: Sequence[GateLike] | None = None) -> list[GateResult]:
    """Run every gate on one candidate's scores.

        >>> all(r.passed for r in check_gates({"efficacy": 0.2, "efficacy_parent": 0.1}, default_gates()[:1]))
        True
    """
    gates = gates if gates is not None else default_gates()
    return [gate.check(scores) for gate in applicable(gates, scores.get("efficacy_margin") is not None)]


def applicable(gates: Sequence[GateLike], margins: bool) -> list[GateLike]:
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


def audit_entries(gates: Sequence[GateLike], scores: Scores, *, candidate: Any = None, parent: Any = None,
                  base: Any = None, gains: Sequence[float] | None = None, margins: Any = None,
                  alpha: float = 0.05) -> list[dict]:
    """Every gate's audit entry, in the policy's order.

    One efficacy gate judges each attempt: with ``margins`` (a
    :class:`seal.editor.efficacy.MarginDecision`, an edit of a passage with questions) the margin
    rule, and the F1 gate is left out (F1 and containment stay recorded scores, judged pooled over
    a branch by ``seal audit``); without, the F1 (or NLL) gate, and the margin gate is left out.

    With per-item probe results (``candidate``, ``parent``, ``base``: ProbeResults) the probe gates
    are paired statistical decisions (estimate, interval, n, rule, MDE); with per-question
    efficacy ``gains`` (candidate minus parent) the efficacy gate passes only if the lower bound
    of the mean gain beats its threshold. Every other gate compares ``scores`` with its threshold.

        >>> [e["passed"] for e in audit_entries(default_gates()[:1], {"efficacy": 0.3, "efficacy_parent": 0.1},
        ...                                     gains=[0.2, 0.0] * 10)]
        [True]
        >>> audit_entries(default_gates()[:1], {}, gains=[0.5, -0.5] * 10)[0]["passed"]
        False
    """
    from seal.registry.stats import bootstrap_gain_gate
    from seal.registry.vocabulary import GATES_BY_NAME

    from .probes import gate_decisions

    entries = []
    for gate in applicable(gates, margins is not None):
        if gate.name == "efficacy_margin":
            entries.append(margins.audit_entry(gate.name))
        elif gate.name in STATISTICAL_GATES and candidate is not None:
            key = GATES_BY_NAME[gate.name].policy_key
            entries.append(gate_decisions(candidate, parent, base, {key: gate.threshold}, alpha=alpha)[0].audit_entry())
        elif gate.name == "efficacy_gain" and gains is not None:
            entries.append(bootstrap_gain_gate(gate.name, list(gains), threshold=gate.threshold, alpha=alpha,
                                               what="per-question token F1 gain vs parent").audit_entry())
        else:
            r = gate.check(scores)
            value = r.value if r.value is not None and math.isfinite(r.value) else None
            entries.append({"check": r.name, "value": value, "threshold": r.threshold, "passed": r.passed,
                            "detail": r.detail})
    return entries


def decide(
    candidates: Sequence[Scores],
    gates: Sequence[GateLike] | None = None,
    *,
    rank_by: str = "efficacy",
) -> int | None:
    """Index of the best candidate that passes every gate, or None when none does.

    Best means highest ``rank_by``; ties go to the smaller ``js_parent`` (the gentler change),
    then to the lower index, so the choice is deterministic.

        >>> decide([{"efficacy": 0.2, "efficacy_parent": 0.1}, {"efficacy": 0.4, "efficacy_parent": 0.1}],
        ...        default_gates()[:1])
        1
    """
    best: int | None = None
    best_key: tuple[float, float, int] | None = None
    for index, scores in enumerate(candidates):
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
