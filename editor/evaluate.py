"""Evaluate: efficacy (no-context QA), retention (anchor probes), drift (next-token KL/JS).

    >>> from seal.editor.evaluate import qa_scores, retention_accuracy, next_token_logprobs, kl_js  # doctest: +SKIP
    >>> qa_scores(model, tok, [{"question": "Who wrote Hamlet?", "answer": "Shakespeare"}])  # doctest: +SKIP
    {'containment': 1.0, 'f1': 0.4, 'recall': 1.0, 'n': 1}
    >>> base_dist = next_token_logprobs(base_model, tok, load_drift_probes())  # doctest: +SKIP
    >>> kl, js = kl_js(base_dist, next_token_logprobs(edited, tok, load_drift_probes(),  # doctest: +SKIP
    ...                                               support=base_dist.indices))

Grading follows SQuAD's normalisation (lower case, no punctuation, no articles, single
spaces). ``containment`` is 1 when a gold answer appears inside the prediction: instruct models
answer in sentences, so exact match would be ~0 for everything.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)

Gold = str | Sequence[str]


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 answer normalisation.

        >>> normalize_answer("The  Eiffel Tower!")
        'eiffel tower'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(gold: Gold) -> list[str]:
    return [gold] if isinstance(gold, str) else [g for g in gold if isinstance(g, str)]


def containment(pred: str, gold: Gold) -> float:
    """1.0 if any normalised gold answer occurs as a whole-word span of the prediction.

        >>> containment("It is Paris, of course.", "paris")
        1.0
        >>> containment("Parisian", "Paris")
        0.0
    """
    p = f" {normalize_answer(pred)} "
    for g in _golds(gold):
        n = normalize_answer(g)
        if n and f" {n} " in p:
            return 1.0
    return 0.0


def token_f1(pred: str, gold: Gold) -> float:
    """SQuAD token F1, the best over the gold answers.

        >>> round(token_f1("the capital is Paris", "Paris"), 3)  # doctest: +SKIP
        0.5
    """
    best = 0.0
    p_tokens = normalize_answer(pred).split()
    for g in _golds(gold):
        g_tokens = normalize_answer(g).split()
        if not p_tokens or not g_tokens:
            best = max(best, float(p_tokens == g_tokens))
            continue
        common = sum((Counter(p_tokens) & Counter(g_tokens)).values())
        if common == 0:
            continue
        precision, recall = common / len(p_tokens), common / len(g_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def token_recall(pred: str, gold: Gold) -> float:
    """Fraction of the gold answer's tokens found in the prediction (best over golds).

    Gold SQuAD spans are often long, so containment has a floor (the base contained about 1% of
    the gold answers of the first 20 SEAL passages, bench/results/findings-2026-11-27.md); recall
    shows partial knowledge that containment misses.

        >>> token_recall("born in 1879 in Ulm", "Ulm, Germany")  # doctest: +SKIP
        0.5
    """
    best = 0.0
    p_counts = Counter(normalize_answer(pred).split())
    for g in _golds(gold):
        g_tokens = normalize_answer(g).split()
        if not g_tokens:
            continue
        common = sum((p_counts & Counter(g_tokens)).values())
        best = max(best, common / len(g_tokens))
    return best


def answer_questions(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    max_new_tokens: int = 48,
    *,
    batch_size: int = 32,
) -> list[str]:
    """Greedy, no-context answers, asked inside the chat template, in batches.

    48 tokens by default: 32 cut off the long gold spans of SEAL's passages
    (bench/results/findings-2026-11-27.md).

        >>> answer_questions(model, tok, ["What is the capital of Italy?"])  # doctest: +SKIP
        ['The capital of Italy is Rome.']
    """
    from .generation import chat_prompt, generate_completions

    prompts = [chat_prompt(tokenizer, q) for q in questions]
    return generate_completions(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
    )


def qa_fields(item: Mapping[str, Any]) -> tuple[str, Gold]:
    question = item.get("question", item.get("prompt"))
    gold = item.get("answers", item.get("answer", item.get("completion")))
    if isinstance(gold, Mapping):  # SQuAD's {"text": [...], "answer_start": [...]}
        gold = gold.get("text", [])
    if not isinstance(question, str) or gold is None:
        raise ValueError(
            "each QA item needs 'question' and 'answer' (or 'answers'); "
            f"got keys {sorted(item)}"
        )
    return question, gold


def qa_scores(
    model: Any,
    tokenizer: Any,
    qa: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int = 48,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Mean containment, token F1 and token recall of no-context answers to ``qa``.

    Items are ``{"question": str, "answer": str | [str, ...]}`` (``answers`` and SQuAD's
    ``{"text": [...]}`` also work).

        >>> qa_scores(model, tok, [{"question": "2+2?", "answer": "4"}], return_predictions=True)  # doctest: +SKIP
        {'containment': 1.0, 'f1': 0.33, 'recall': 1.0, 'n': 1, 'predictions': ['2+2 = 4']}
    """
    pairs = [qa_fields(item) for item in qa]
    if not pairs:
        result: dict[str, Any] = {"containment": 0.0, "f1": 0.0, "recall": 0.0, "n": 0}
        if return_predictions:
            result["predictions"] = []
        return result
    preds = answer_questions(model, tokenizer, [q for q, _ in pairs], max_new_tokens)
    n = len(pairs)
    result = {
        "containment": sum(containment(p, g) for p, (_, g) in zip(preds, pairs)) / n,
        "f1": sum(token_f1(p, g) for p, (_, g) in zip(preds, pairs)) / n,
        "recall": sum(token_recall(p, g) for p, (_, g) in zip(preds, pairs)) / n,
        "n": n,
    }
    if return_predictions:
        result["predictions"] = preds
    return result


def passage_nll(model: Any, tokenizer: Any, text: str) -> float:
    """Mean negative log-likelihood per predicted token of ``text`` (nats).

    A direct measure of how well an adapter has absorbed a passage, cheaper than QA.

        >>> passage_nll(model, tok, "The Eiffel Tower is in Paris.")  # doctest: +SKIP
        2.71
    """
    import torch

    from .generation import model_device

    enc = tokenizer(text, return_tensors="pt").to(model_device(model))
    if enc["input_ids"].shape[1] < 2:
        raise ValueError("text must tokenize to at least two tokens")
    with torch.inference_mode():
        out = model(**enc, labels=enc["input_ids"])
    return float(out.loss)


# ---------------------------------------------------------------- probe sets shipped with seal


def _read_jsonl(name: str) -> list[dict[str, Any]]:
    text = resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_anchors() -> list[dict[str, Any]]:
    """The retention probe set: short general-knowledge questions with short answers.

        >>> load_anchors()[0]
        {'question': 'What is the capital of France?', 'answers': ['Paris']}
    """
    return _read_jsonl("anchors.jsonl")


def load_drift_probes() -> list[str]:
    """Short generic prompts whose next-token distributions measure drift.

        >>> load_drift_probes()[0]
        'The weather today is'
    """
    return [row["prompt"] for row in _read_jsonl("drift_probes.jsonl")]


def retention_accuracy(
    model: Any,
    tokenizer: Any,
    anchors: Sequence[Mapping[str, Any]] | None = None,
    *,
    max_new_tokens: int = 24,
) -> float:
    """Containment accuracy on the anchor probes (default: the shipped set), in [0, 1].

    Compare the number with the parent's and the base's on the same probes: forgetting shows
    as a drop, whatever the base's own accuracy is.

        >>> retention_accuracy(model, tok)  # doctest: +SKIP
        0.55
    """
    items = list(anchors) if anchors is not None else load_anchors()
    return float(qa_scores(model, tokenizer, items, max_new_tokens=max_new_tokens)["containment"])


# ---------------------------------------------------------------- drift


@dataclass
class NextTokenDist:
    """Next-token log-probabilities on a fixed support, one row per probe prompt.

    ``indices`` is ``[n, k]`` token ids (or None when the support is the whole vocabulary, in
    which case column j is token j); ``logprobs`` is ``[n, k + 1]``: the last column is the log
    of the probability mass outside the support, so each row sums to one in probability.

    Truncating to the base's top 256 tokens plus that remainder keeps a stored blob around
    100 KB instead of 6 MB (49k vocab × 32 probes × fp32). KL and JS computed on this coarser
    distribution are lower bounds of the full ones (data-processing inequality); in practice
    the top 256 tokens carry nearly all the mass of a chat model's next token.
    """

    indices: Any  # torch.LongTensor [n, k] or None
    logprobs: Any  # torch.FloatTensor [n, k+1]

    def to_bytes(self) -> bytes:
        """Serialise as safetensors (no pickle), e.g. to store the base's probe log-probs.

            >>> blob = dist.to_bytes(); NextTokenDist.from_bytes(blob).logprobs.shape  # doctest: +SKIP
        """
        import torch
        from safetensors.torch import save

        tensors = {"logprobs": self.logprobs.detach().to("cpu", torch.float32).contiguous()}
        if self.indices is not None:
            tensors["indices"] = self.indices.detach().to("cpu", torch.int64).contiguous()
        return save(tensors, metadata={"format": "seal-next-token-v1"})

    @classmethod
    def from_bytes(cls, blob: bytes) -> "NextTokenDist":
        from safetensors.torch import load

        tensors = load(blob)
        return cls(indices=tensors.get("indices"), logprobs=tensors["logprobs"])


def next_token_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    top_k: int | None = 256,
    support: Any = None,
    batch_size: int = 32,
) -> NextTokenDist:
    """Next-token log-probs after each prompt, truncated to a support plus a remainder bin.

    Compute the reference first (its own top-``top_k``), then every model to compare against
    it with ``support=reference.indices`` so both lie on the same bins. ``top_k=None`` keeps
    the whole vocabulary. Prompts are used as raw text, right-padded, read at the last real
    token (one forward pass per batch, no generation).

        >>> ref = next_token_logprobs(base_model, tok, probes)  # doctest: +SKIP
        >>> new = next_token_logprobs(edited_model, tok, probes, support=ref.indices)  # doctest: +SKIP
    """
    import torch

    from .generation import model_device, padding_side

    if not prompts:
        raise ValueError("no probe prompts")
    device = model_device(model)
    rows: list[torch.Tensor] = []
    with padding_side(tokenizer, "right"), torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            logits = model(**enc).logits
            last = enc["attention_mask"].sum(dim=1) - 1
            picked = logits[torch.arange(len(chunk), device=device), last]
            rows.append(torch.log_softmax(picked.float(), dim=-1).cpu())
    full = torch.cat(rows)
    if support is None and top_k is None:
        return NextTokenDist(indices=None, logprobs=torch.cat([full, torch.full((len(full), 1), -math.inf)], 1))
    if support is None:
        indices = full.topk(min(top_k, full.shape[1]), dim=-1).indices
    else:
        indices = torch.as_tensor(support, dtype=torch.long)
        if indices.shape[0] != full.shape[0]:
            raise ValueError("support has a different number of rows than prompts")
    kept = full.gather(1, indices)
    # log(1 - sum p_kept), computed stably; clamp so an all-covering support gives -inf, not NaN.
    mass = kept.exp().sum(dim=1).clamp(max=1.0)
    rest = torch.log1p(-mass).unsqueeze(1)
    return NextTokenDist(indices=indices, logprobs=torch.cat([kept, rest], dim=1))


def kl_js(p_logprobs: Any, q_logprobs: Any) -> tuple[float, float]:
    """Mean KL(p‖q) and mean Jensen-Shannon divergence over probe rows, in nats.

    Accepts two :class:`NextTokenDist` on the same support, or two ``[n, bins]`` log-prob
    tensors/arrays. JS is symmetric and bounded by ln 2 ≈ 0.693, which makes it the better
    gate; KL(base‖model) is the drift budget.

        >>> kl_js(dist, dist)  # doctest: +SKIP
        (0.0, 0.0)
    """
    import torch

    if isinstance(p_logprobs, NextTokenDist) or isinstance(q_logprobs, NextTokenDist):
        if not (isinstance(p_logprobs, NextTokenDist) and isinstance(q_logprobs, NextTokenDist)):
            raise TypeError("compare a NextTokenDist with another NextTokenDist")
        pi, qi = p_logprobs.indices, q_logprobs.indices
        if (pi is None) != (qi is None) or (pi is not None and not torch.equal(pi, qi)):
            raise ValueError(
                "the two distributions lie on different supports; compute the second with "
                "next_token_logprobs(..., support=first.indices)"
            )
        p_logprobs, q_logprobs = p_logprobs.logprobs, q_logprobs.logprobs
    p = torch.as_tensor(p_logprobs, dtype=torch.float64)
    q = torch.as_tensor(q_logprobs, dtype=torch.float64)
    if p.shape != q.shape:
        raise ValueError(f"shapes differ: {tuple(p.shape)} vs {tuple(q.shape)}")
    pp, qp = p.exp(), q.exp()

    def _kl(a_log: torch.Tensor, a: torch.Tensor, b_log: torch.Tensor) -> torch.Tensor:
        # Bins with zero probability under the first argument contribute nothing (0·log 0 = 0).
        terms = torch.where(a > 0, a * (a_log - b_log), torch.zeros_like(a))
        return terms.sum(dim=-1)

    kl = _kl(p, pp, q)
    m_log = torch.logaddexp(p, q) - math.log(2.0)
    js = 0.5 * _kl(p, pp, m_log) + 0.5 * _kl(q, qp, m_log)
    # Identical rows are exactly 0; rounding in log(m) would otherwise leave ~1e-20.
    same = (p == q).all(dim=-1)
    kl = torch.where(same, torch.zeros_like(kl), kl)
    js = torch.where(same, torch.zeros_like(js), js)
    return float(kl.mean().clamp(min=0.0)), float(js.mean().clamp(min=0.0))
