"""Efficacy a single edit can show: contrastive answer margins against a placebo edit. Torch-free.

A passage comes with 4-5 questions, too few for any test on generated answers (token F1 or
containment) to see an edit's gain. What a handful of questions *can* show is a shift in
likelihood. Each question is scored by its **contrastive answer margin** under the evaluation
prompt (the chat template, as the generated answers are asked):

    margin = log sum P(gold answers) - log sum P(candidate answers)

where the candidates are the gold answers plus at least 8 distractors: the passage's other
answers, spans of the same type from the passage (numbers with numbers, names with names), and
answers from unrelated facts. The margin moves only when the model has learned which answer
goes with the question, not merely the passage's words.

Training on *any* text with the same recipe also moves margins (unfamiliar names in general
become likelier), so each question's **effect** is the edit's margin minus a **placebo**
adapter's margin: the same recipe and token budget trained from the same parent on an unrelated
passage (:mod:`seal.editor.placebo`). Questions the parent already ranks first are
**saturated**: recorded, reported, and left out of the decision.

The rule (:class:`MarginRule`), pre-registered, on the usable questions:

- the mean effect is at least ``mean_min`` nats, and at least ``noise_z`` standard errors of a
  null difference, where the null's scale is read off the placebo itself: its RMS shift from the
  parent over the questions, ``s``, gives ``sqrt(2) * s / sqrt(n)`` (two independent trainings'
  shifts differ by about ``sqrt(2) * s`` per question). A base whose margins swing with any
  training needs a larger gain than one whose margins hold still;
- no question's effect falls below ``floor`` nats;
- when the policy sets ``alpha`` (off by default since 2026-12-07: on null pairs it held out
  almost nothing the mean and the noise bar let through, and it turned away real edits), with at
  least ``sign_test_min`` usable questions, the exact one-sided sign-flip test of the effects
  gives p <= ``alpha`` (with fewer, p cannot go below 1/2**n, so the test cannot be the rule there).

Its thresholds were chosen so that the false-pass rate on placebo-against-placebo pairs stays
at or under 5%; the rate measured by ``bench/gate_calibration.py --placebo-pairs`` is recorded
with the policy (:data:`seal.registry.vocabulary.EFFICACY_MARGIN_CALIBRATION`).

    >>> rule = MarginRule(mean_min=1.0, floor=-1.5)
    >>> # per question: the candidate's margins, the parent's, the placebo's; the parent already ranks q4 first
    >>> d = decide_margins([1.0, -1.0, -1.5, 0.0], [-2.0, -9.0, -4.0, 0.0], [-2.2, -8.5, -4.1, 0.0],
    ...                    [False, False, False, True], rule)
    >>> d.passed, d.n, d.saturated, round(d.mean, 2)
    (True, 3, 1, 4.43)
    >>> decide_margins([-2.0], [-2.3], [-2.0], [False], rule).passed   # a placebo-sized shift
    False
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any

#: Distractors per question (the issue's floor is 8; two more keep a margin off the floor when
#: a passage has few answers of the gold's type).
DISTRACTORS = 10
#: The defaults of the rule (policy keys ``efficacy_margin_gain_min``, ``efficacy_margin_floor``).
MEAN_MIN = 1.0
FLOOR = -2.0
ALPHA: float | None = None  # the sign-flip test is off by default: it added no null protection (README)
SIGN_TEST_MIN = 5
NOISE_Z = 2.0

_NUMBER = re.compile(r"\b\d[\d,.]*(?:\s(?:million|billion|thousand|hundred|percent|per cent))?\b")
_NAME = re.compile(r"\b[A-Z][\w'’-]+(?:\s(?:of|the|de|and|von|van)?\s?[A-Z][\w'’-]+)*")
_WORD = re.compile(r"[A-Za-z][\w'’-]*")


@dataclass(frozen=True)
class ContrastQuestion:
    """One question with its answer options: the gold answers first, then the distractors."""

    question: str
    options: tuple[str, ...]
    n_gold: int


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower())) or text.strip().lower()


def _golds(answer: Any) -> list[str]:
    golds = [answer] if isinstance(answer, str) else list(answer or [])
    out: list[str] = []
    for g in golds:
        if isinstance(g, str) and g.strip() and _norm(g) not in {_norm(o) for o in out}:
            out.append(g.strip())
    return out


def answer_kind(answer: str) -> str:
    """``number`` (holds a digit), ``name`` (capitalised) or ``phrase``.

        >>> answer_kind("26 February 2008"), answer_kind("Spitsbergen"), answer_kind("fled")
        ('number', 'name', 'phrase')
    """
    if any(ch.isdigit() for ch in answer):
        return "number"
    return "name" if answer[:1].isupper() else "phrase"


def passage_spans(passage: str, kind: str, length: int) -> list[str]:
    """Spans of the passage of one kind, in order of appearance, without repeats.

        >>> passage_spans("It opened in 2008 and holds 4.5 million seeds.", "number", 1)
        ['2008', '4.5 million']
        >>> passage_spans("Run by Norway and the Crop Trust.", "name", 1)
        ['Run', 'Norway', 'Crop Trust']
    """
    if kind == "number":
        found = [m.group(0).rstrip(".,") for m in _NUMBER.finditer(passage)]
    elif kind == "name":
        found = [m.group(0).strip() for m in _NAME.finditer(passage)]
    else:
        words = _WORD.findall(passage)
        n = max(1, min(length, 4))
        found = [" ".join(words[i:i + n]) for i in range(0, max(len(words) - n + 1, 0), n)]
    seen, out = set(), []
    for span in found:
        key = _norm(span)
        if span and key not in seen:
            seen.add(key)
            out.append(span)
    return out


def _stable_order(items: Sequence[str], key: str) -> list[str]:
    # A seeded order that does not depend on Python's hash seed: the same question always gets
    # the same distractors, on every machine.
    return sorted(items, key=lambda s: hashlib.sha256(f"{key}\x00{s}".encode()).digest())


def contrast_questions(qa: Sequence[Mapping[str, Any]], passage: str, pool: Sequence[str], *,
                       distractors: int = DISTRACTORS) -> list[ContrastQuestion]:
    """Every question with its gold answers and ``distractors`` wrong ones.

    Distractors come in this order: the passage's other answers, same-kind spans of the passage,
    then answers from ``pool`` (unrelated facts), each group in a seeded order; none equals a gold
    answer or contains one.

        >>> qa = [{"question": "When did it open?", "answer": "2008"}, {"question": "Where?", "answer": "Oslo"}]
        >>> q = contrast_questions(qa, "It opened in Oslo in 2008, 120 metres deep.", ["Paris", "1999", "Rome"],
        ...                        distractors=3)
        >>> q[0].options[:1], len(q[0].options), "Oslo" in q[0].options
        (('2008',), 4, True)
    """
    golds_of = [_golds(item.get("answer", item.get("answers"))) for item in qa]
    out = []
    for item, golds in zip(qa, golds_of):
        question = str(item.get("question", item.get("prompt", "")))
        gold_keys = {_norm(g) for g in golds}
        first = golds[0] if golds else ""
        others = [g for gs in golds_of if gs is not golds for g in gs]
        spans = passage_spans(passage, answer_kind(first), len(first.split())) if passage else []
        chosen: list[str] = []
        for group in (others, spans, list(pool)):
            for cand in _stable_order(group, question):
                key = _norm(cand)
                if len(chosen) >= distractors:
                    break
                if key in gold_keys or any(g and g in key for g in gold_keys) \
                        or key in {_norm(c) for c in chosen}:
                    continue
                chosen.append(cand)
        out.append(ContrastQuestion(question, tuple(golds) + tuple(chosen), len(golds)))
    return out


def margin_of(logprobs: Sequence[float], n_gold: int) -> tuple[float, bool]:
    """The contrastive margin of one question's option log-probabilities, and whether a gold
    answer ranks first.

        >>> m, first = margin_of([-1.0, -3.0, -2.0], 1)
        >>> round(m, 3), first
        (-0.408, True)
    """
    def lse(xs: Sequence[float]) -> float:
        top = max(xs)
        return top + math.log(sum(math.exp(x - top) for x in xs))

    values = [float(x) for x in logprobs]
    return lse(values[:n_gold]) - lse(values), max(values[:n_gold]) >= max(values)


def sign_flip_p(effects: Sequence[float]) -> float:
    """Exact one-sided p-value of the sign-flip (randomisation) test that the mean effect is 0:
    the share of the 2**n sign assignments whose mean is at least the observed one.

        >>> sign_flip_p([1.0, 2.0, 3.0]), sign_flip_p([1.0, 2.0, 3.0, 4.0, 5.0])
        (0.125, 0.03125)
    """
    xs = [abs(float(e)) for e in effects]
    n = len(xs)
    if n == 0:
        return 1.0
    observed = sum(effects)
    tol = 1e-12 * max(1.0, sum(xs))
    if n <= 20:
        hits = sum(1 for signs in itertools.product((1, -1), repeat=n)
                   if sum(s * x for s, x in zip(signs, xs)) >= observed - tol)
        return hits / 2 ** n
    import random

    rng, draws = random.Random(20261207), 100_000
    hits = sum(1 for _ in range(draws) if sum(x if rng.random() < 0.5 else -x for x in xs) >= observed - tol)
    return (hits + 1) / (draws + 1)


@dataclass(frozen=True)
class MarginRule:
    """The efficacy rule's thresholds (nats), from the policy."""

    mean_min: float = MEAN_MIN
    floor: float = FLOOR
    alpha: float | None = ALPHA  # None: no sign-flip test
    sign_test_min: int = SIGN_TEST_MIN
    noise_z: float = NOISE_Z

    def words(self) -> str:
        sign = ("" if self.alpha is None else f", and (with >= {self.sign_test_min} such questions) the exact "
                f"sign-flip p <= {self.alpha:g}")
        return (f"accept if, over the questions the parent does not already rank first, the mean placebo-corrected "
                f"answer-margin gain is >= {self.mean_min:g} nats and >= {self.noise_z:g} x sqrt(2) x the placebo's "
                f"RMS shift / sqrt(n), no question falls below {self.floor:g} nats{sign}")

    def sign_test_fails(self, n: int, p: float | None) -> bool:
        return self.alpha is not None and n >= self.sign_test_min and p is not None and p > self.alpha


@dataclass(frozen=True)
class MarginDecision:
    """The efficacy rule's verdict on one candidate, with everything it read."""

    effects: tuple[float | None, ...]  # per question; None where saturated
    n: int  # usable questions
    noise: float | None  # the placebo's RMS shift from the parent over the usable questions (nats)
    saturated: int
    mean: float | None
    minimum: float | None
    p_value: float | None
    passed: bool
    rule: MarginRule

    def detail(self) -> str:
        if self.n == 0:
            return (f"no usable question: the parent already ranks the gold answer first on all {self.saturated}; "
                    "nothing left to show")
        failing = []
        if self.mean is not None and self.mean < self.rule.mean_min:
            failing.append(f"mean {self.mean:.3g} < {self.rule.mean_min:g}")
        if self.mean is not None and self.mean < self.noise_bar():
            failing.append(f"mean {self.mean:.3g} < {self.noise_bar():.3g} (the placebo's own swing)")
        if self.minimum is not None and self.minimum < self.rule.floor:
            failing.append(f"a question at {self.minimum:.3g} < floor {self.rule.floor:g}")
        if self.rule.sign_test_fails(self.n, self.p_value):
            failing.append(f"sign-flip p {self.p_value:.3g} > {self.rule.alpha:g}")
        head = (f"placebo-corrected margin gain {self.mean:.3g} nats over {self.n} question(s) "
                f"(min {self.minimum:.3g}, sign-flip p {self.p_value:.3g}, placebo swing {self.noise:.3g}; "
                f"{self.saturated} saturated, left out)")
        return head + ("" if self.passed else ": " + "; ".join(failing) + " failed")

    def noise_bar(self) -> float:
        """The least mean gain this placebo's own swing allows (no bar when the policy turned it off)."""
        if self.rule.noise_z <= 0:
            return -math.inf
        return self.rule.noise_z * math.sqrt(2) * (self.noise or 0.0) / math.sqrt(max(self.n, 1))

    def audit_entry(self, name: str = "efficacy_margin") -> dict[str, Any]:
        return {"check": name, "value": self.mean, "ci_low": self.minimum, "ci_high": None, "n": self.n,
                "rule": self.rule.words(), "threshold": self.rule.mean_min, "passed": self.passed,
                "detail": self.detail(), "mde": None}

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["effects"] = list(self.effects)
        return doc


def decide_margins(candidate: Sequence[float], parent: Sequence[float], placebo: Sequence[float],
                   parent_first: Sequence[bool], rule: MarginRule) -> MarginDecision:
    """The rule on per-question margins of the candidate, the parent and the placebo (same
    questions, same order); ``parent_first`` marks the saturated questions.

    A non-finite margin makes its question's effect unknown, and an unknown effect fails the rule
    (a check that could not run lets nothing through).

        >>> decide_margins([0.0], [-1.0], [float("nan")], [False], MarginRule()).passed
        False
    """
    if not len(candidate) == len(parent) == len(placebo) == len(parent_first):
        raise ValueError("candidate, parent, placebo and parent_first must cover the same questions")
    effects: list[float | None] = []
    for c, pl, sat in zip(candidate, placebo, parent_first):
        effects.append(None if sat else float(c) - float(pl))
    usable = [e for e in effects if e is not None]
    shifts = [float(pl) - float(p) for pl, p, sat in zip(placebo, parent, parent_first) if not sat]
    saturated = sum(1 for s in parent_first if s)
    if not usable:
        return MarginDecision(tuple(effects), 0, None, saturated, None, None, None, False, rule)
    if not all(math.isfinite(e) for e in usable + shifts):
        return MarginDecision(tuple(effects), len(usable), None, saturated, None, None, None, False, rule)
    noise = math.sqrt(sum(x * x for x in shifts) / len(shifts))
    mean, minimum, p = sum(usable) / len(usable), min(usable), sign_flip_p(usable)
    decision = MarginDecision(tuple(effects), len(usable), noise, saturated, mean, minimum, p, False, rule)
    passed = mean >= rule.mean_min and mean >= decision.noise_bar() and minimum >= rule.floor \
        and not rule.sign_test_fails(len(usable), p)
    return replace(decision, passed=passed)


@dataclass(frozen=True)
class _Asked:
    prompt: str
    options: tuple[str, ...]


@lru_cache(maxsize=1)
def unrelated_answers() -> tuple[str, ...]:
    """Answers from facts unrelated to any passage: every option of seal's retention set."""
    from .retention_set import load_retention_set

    return tuple(sorted({o for item in load_retention_set() for o in item.options}))


def answer_margins(model: Any, tokenizer: Any, questions: Sequence[ContrastQuestion], *,
                   share_prefix: bool = True) -> tuple[list[float], list[bool]]:
    """Each question's contrastive margin under the evaluation prompt (the chat template, no
    context), and whether a gold answer ranks first. One packed forward pass per batch
    (:func:`seal.editor.probe_scoring.option_logprobs`).

        >>> answer_margins(model, tok, contrast_questions(qa, passage, unrelated_answers()))  # doctest: +SKIP
        ([-5.99, -11.65, -4.92, -0.0], [False, False, False, True])
    """
    from .generation import chat_prompt, has_chat_template
    from .probe_scoring import option_logprobs

    if not questions:
        return [], []
    chat = has_chat_template(tokenizer)
    asked = [_Asked(chat_prompt(tokenizer, q.question), q.options) for q in questions]
    lp = option_logprobs(model, tokenizer, asked, sep="" if chat else " ", special=not chat, share_prefix=share_prefix)
    pairs = [margin_of(lp[i, :len(q.options)], q.n_gold) for i, q in enumerate(questions)]
    return [m for m, _ in pairs], [first for _, first in pairs]


__all__ = ["answer_margins", "unrelated_answers", "ContrastQuestion", "MarginRule", "MarginDecision", "contrast_questions", "margin_of", "sign_flip_p",
           "decide_margins", "answer_kind", "passage_spans", "DISTRACTORS", "MEAN_MIN", "FLOOR", "ALPHA", "NOISE_Z"]
