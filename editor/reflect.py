"""Reflect: the model writes its own training data (a "self-edit").

Two triggers:

- a passage: the model is asked, in one of SEAL's prompt styles, for implications, rewrites or
  question-answer pairs; K candidates are sampled in one batched ``generate`` call and each
  becomes the training data of one child adapter;
- examples (prompt → expected answer): the model answers, its answers are paired with the
  targets, and the model's own rephrasings of the targets are added (``corrections_self_edit``).

    >>> from seal.editor.reflect import (generate_self_edits, split_self_edit_lines,
    ...                                  build_training_sequences)
    >>> edits = generate_self_edits(model, tok, passage, "Apollo 11", style="implications",  # doctest: +SKIP
    ...                             k=4, temperature=0.7, seed=0)
    >>> lines = split_self_edit_lines(edits[0])  # doctest: +SKIP
    >>> sequences = build_training_sequences(passage, "Apollo 11", lines)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .evaluate import normalize_answer, token_recall
from .generation import chat_example, chat_prompt, generate_completions

# SEAL's knowledge-incorporation prompts (Zweiger et al. 2025), asked as the user turn.
SELF_EDIT_TEMPLATES: dict[str, str] = {
    "implications": (
        "Let's read the following passage and produce a list of implications derived "
        "directly or indirectly from the content.\n\nPassage:\n{header}{passage}\n\nImplications:"
    ),
    "rewrite": (
        "Let's read the following passage and rewrite it in a few different ways, each one "
        "separated by a newline.\n\nPassage:\n{header}{passage}\n\nRewritten passages:"
    ),
    "self-qa": (
        "Let's read the following passage and rewrite it in a question-answer format.\n\n"
        "Passage:\n{header}{passage}"
    ),
}
# SEAL's self-qa prompt ends in "Question 1: " so the model continues the format; in a chat
# the same cue goes at the start of the assistant turn and is put back on the output.
RESPONSE_PREFIX: dict[str, str] = {"self-qa": "Question 1:"}
STYLES: tuple[str, ...] = tuple(SELF_EDIT_TEMPLATES)

REPHRASE_TEMPLATE = (
    "Rewrite the answer below in different words. Keep every fact, name and number exactly.\n\n"
    "Question: {prompt}\nAnswer: {target}\n\nRewritten answer:"
)


def self_edit_prompt(tokenizer: Any, passage: str, title: str | None, *, style: str) -> str:
    """The exact prompt text the model continues for a self-edit (worth recording as data).

        >>> self_edit_prompt(tok, "The Moon orbits the Earth.", "Moon", style="rewrite")  # doctest: +SKIP
    """
    if style not in SELF_EDIT_TEMPLATES:
        raise ValueError(f"unknown self-edit style {style!r}; use one of {', '.join(STYLES)}")
    header = f"{title.strip()}\n" if title and title.strip() else ""
    user = SELF_EDIT_TEMPLATES[style].format(header=header, passage=passage.strip())
    return chat_prompt(tokenizer, user) + RESPONSE_PREFIX.get(style, "")


def generate_self_edits(
    model: Any,
    tokenizer: Any,
    passage: str,
    title: str | None,
    *,
    style: str = "implications",
    k: int = 4,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    seed: int = 0,
    **generation: Any,
) -> list[str]:
    """Sample ``k`` self-edits for ``passage`` in one batched ``generate`` call.

    ``generation`` goes to :func:`~seal.editor.generation.generate_completions` (``share_prefix``,
    ``on_step``).

    The default temperature is 0.7, not SEAL's 1.0: at T=1.0 most of SmolLM2-135M's implications
    were off-topic or invented, and training on them scored below the passage alone (containment
    0.011 against 0.045 on the first 20 SEAL passages, q,v targets; bench/knowledge.py's recipe,
    bench/results/findings-2026-11-27.md). Same seed, same outputs.

        >>> generate_self_edits(model, tok, "The Eiffel Tower is 330 m tall.", "Eiffel Tower",  # doctest: +SKIP
        ...                     style="implications", k=3, seed=1)
        ['1. The tower is taller than …', '…', '…']
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    prompt = self_edit_prompt(tokenizer, passage, title, style=style)
    texts = generate_completions(
        model,
        tokenizer,
        [prompt],
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature,
        top_p=top_p,
        num_return_sequences=k,
        seed=seed,
        **generation,
    )
    prefix = RESPONSE_PREFIX.get(style, "")
    return [f"{prefix} {t}".strip() if prefix else t for t in texts]


_BULLET = re.compile(r"^\s*(?:[-*•·–>]+|\(?\d{1,3}[.):]|\(?[a-zA-Z][.)]|#+)\s+")
_QA_START = re.compile(r"(?im)^\s*(?:\*\*)?\s*(?:Question|Q)\s*\d*\s*[:.]")
_QA_ANSWER = re.compile(r"(?im)^\s*(?:\*\*)?\s*(?:Answer|A)\s*\d*\s*[:.]")
_HEADER = re.compile(
    r"^(?:sure|here|certainly|okay|ok|implications|rewritten passages?|rewrites?)\b.*:$", re.I
)


def _clean_line(line: str) -> str:
    previous = None
    while previous != line:
        previous = line
        line = _BULLET.sub("", line).strip()
        line = line.strip("*_` ").strip()
    return line


def is_qa_pair(unit: str) -> bool:
    """Whether a unit of question-answer output holds its answer line (``Answer:``, ``A:``).

        >>> is_qa_pair("Question 1: Where is Paris?\\nAnswer: In France."), is_qa_pair("Question 1: Where?")
        (True, False)
    """
    return _QA_ANSWER.search(unit) is not None


def split_self_edit_lines(text: str) -> list[str]:
    """Split a self-edit into training lines, without bullets, numbering or preambles.

    Question-answer output is kept as whole ``Question …\\nAnswer …`` pairs, since a question
    without its answer teaches nothing. Duplicates (after normalisation) are dropped.

        >>> split_self_edit_lines("Implications:\\n1. Paris is in France.\\n- Paris is in France.\\n* It has a tower.")
        ['Paris is in France.', 'It has a tower.']
    """
    text = text.replace("\r\n", "\n").strip()
    if _QA_START.search(text) and _QA_ANSWER.search(text):
        starts = [m.start() for m in _QA_START.finditer(text)]
        chunks = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
        units = [
            "\n".join(_clean_line(x) for x in chunk.splitlines() if _clean_line(x))
            for chunk in chunks
        ]
        units = [u for u in units if is_qa_pair(u)]
    else:
        units = [_clean_line(raw) for raw in text.splitlines()]
        units = [u for u in units if not _HEADER.match(u)]
    seen: set[str] = set()
    out: list[str] = []
    for unit in units:
        key = normalize_answer(unit)
        if len(key) < 3 or key in seen:
            continue
        seen.add(key)
        out.append(unit)
    return out


def passage_support(line: str, passage: str) -> float:
    """Fraction of the line's normalised tokens that occur in the passage (0..1).

    A cheap guard against invented content, which is common in small-model self-edits (at T=1.0
    most of SmolLM2-135M's implications were off-topic or invented,
    bench/results/findings-2026-11-27.md): a line with little overlap is probably not derived
    from the passage.

        >>> passage_support("Paris is the capital", "The capital of France is Paris.")
        1.0
    """
    return token_recall(passage, line)


def filter_supported_lines(
    lines: Sequence[str], passage: str, *, min_support: float = 0.5
) -> list[str]:
    """Keep the lines whose :func:`passage_support` is at least ``min_support``.

        >>> filter_supported_lines(["Paris is the capital.", "Cats can fly."],
        ...                        "Paris is the capital of France.")
        ['Paris is the capital.']
    """
    return [line for line in lines if passage_support(line, passage) >= min_support]


def build_training_sequences(
    passage: str, title: str | None, self_edit_lines: Sequence[str]
) -> list[str]:
    """SEAL's training data: each self-edit line prefixed with the title, then the passage.

        >>> build_training_sequences("Paris is in France.", "Paris", ["It is a city."])
        ['Paris\\nIt is a city.', 'Paris\\nParis is in France.']
    """
    header = f"{title.strip()}\n" if title and title.strip() else ""
    sequences = [f"{header}{line.strip()}" for line in self_edit_lines if line.strip()]
    sequences.append(f"{header}{passage.strip()}")
    return sequences


def answer_prompts(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 48, **generation: Any
) -> list[str]:
    """Greedy answers to ``prompts`` asked in the chat template, one batched call.

        >>> answer_prompts(model, tok, ["What is 2 + 2?"])  # doctest: +SKIP
        ['2 + 2 = 4.']
    """
    formatted = [chat_prompt(tokenizer, p) for p in prompts]
    return generate_completions(model, tokenizer, formatted, max_new_tokens=max_new_tokens, **generation)


@dataclass
class Corrections:
    """A corrections self-edit: per example what was predicted, what was wanted, rephrasings.

    ``sequences`` are chat-formatted prompt→completion strings ready for ``train_adapter``;
    ``records`` is plain JSON-able data, the self-edit as stored.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)

    def to_jsonl(self) -> str:
        return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in self.records)


def _example_fields(example: Mapping[str, Any]) -> tuple[str, str]:
    prompt = example.get("prompt", example.get("question"))
    target = example.get("answer", example.get("completion", example.get("target")))
    if isinstance(target, list):
        target = target[0] if target else None
    if not isinstance(prompt, str) or not isinstance(target, str):
        raise ValueError(
            "each example needs a 'prompt' (or 'question') and an 'answer' (or 'completion') "
            f"string; got keys {sorted(example)}"
        )
    return prompt, target


def corrections_self_edit(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Mapping[str, Any]],
    *,
    predictions: Sequence[str] | None = None,
    n_rephrasings: int = 2,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 64,
    seed: int = 0,
    only_wrong: bool = True,
    min_recall: float = 0.75,
    **generation: Any,
) -> Corrections:
    """Turn examples the model gets wrong into chat-format training data.

    The model first answers every prompt (greedy; or pass ``predictions``). An answer counts as
    right when it contains the target after SQuAD normalisation. For each example kept
    (``only_wrong`` keeps the wrong ones) the training data is the prompt → target exchange
    plus up to ``n_rephrasings`` of the model's own rewordings of the target, sampled in one
    batched call. A rewording is kept only if it still recalls ``min_recall`` of the target's
    tokens, so a small model cannot rephrase the fact away.

        >>> c = corrections_self_edit(model, tok, [{"prompt": "Capital of Peru?", "answer": "Lima"}])  # doctest: +SKIP
        >>> c.records[0]["predicted"], c.records[0]["correct"], len(c.sequences)  # doctest: +SKIP
        ('The capital of Peru is Cusco.', False, 3)
    """
    from .evaluate import containment

    pairs = [_example_fields(e) for e in examples]
    if predictions is None:
        predictions = answer_prompts(model, tokenizer, [p for p, _ in pairs], max_new_tokens, **generation)
    if len(predictions) != len(pairs):
        raise ValueError("predictions must have one entry per example")
    records: list[dict[str, Any]] = []
    for (prompt, target), predicted in zip(pairs, predictions):
        correct = bool(containment(predicted, target))
        records.append(
            {
                "prompt": prompt,
                "target": target,
                "predicted": predicted,
                "correct": correct,
                "trained": not (only_wrong and correct),
                "rephrasings": [],
                "kept_rephrasings": [],
            }
        )
    chosen = [r for r in records if r["trained"]]
    if chosen and n_rephrasings > 0:
        _rephrase(model, tokenizer, chosen, n_rephrasings, min_recall, max_new_tokens=max_new_tokens,
                  do_sample=temperature > 0, temperature=temperature, top_p=top_p, seed=seed, **generation)
    sequences: list[str] = []
    for record in chosen:
        sequences.append(chat_example(tokenizer, record["prompt"], record["target"]))
        sequences.extend(
            chat_example(tokenizer, record["prompt"], text) for text in record["kept_rephrasings"]
        )
    return Corrections(records=records, sequences=sequences)


def _rephrase(model: Any, tokenizer: Any, chosen: list[dict[str, Any]], n: int, min_recall: float,
              **generation: Any) -> None:
    """Sample ``n`` rewordings of each chosen target in one call; keep those that keep the facts."""
    asks = [chat_prompt(tokenizer, REPHRASE_TEMPLATE.format(prompt=r["prompt"], target=r["target"])) for r in chosen]
    outs = generate_completions(model, tokenizer, asks, num_return_sequences=n, **generation)
    for i, record in enumerate(chosen):
        mine = outs[i * n : (i + 1) * n]
        record["rephrasings"] = mine
        seen = {normalize_answer(record["target"])}
        for text in mine:
            key = normalize_answer(text)
            if key and key not in seen and token_recall(text, record["target"]) >= min_recall:
                seen.add(key)
                record["kept_rephrasings"].append(text)
