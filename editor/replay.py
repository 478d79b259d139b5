"""Replay: the base's own words mixed into every edit's training data, against forgetting.

An edit's adapter learns the passage and, with it, drifts on everything else; each accepted edit
on a branch adds its drift to the last. Training also on text the base itself writes (its greedy
continuations of neutral prompts) pulls the adapter back toward the base's behaviour where the
passage says nothing. The recipe sweep measured this (README, "The recipe sweep": ``replay``
kept 0.007 more retention per edit than the same recipe without it, at the same F1).

The continuations are generated once per base and kept in this process and in the machine's
cache beside the dequantized bases (``SEAL_CACHE``). Each candidate draws its replay lines with
its own seed, as many as its self-edit has lines, up to :data:`MAX_LINES`; they are recorded in
its self-edit as ``replay``. The placebo (:mod:`seal.editor.placebo`) draws the same way.

    >>> len(NEUTRAL_PROMPTS) >= REPLAY_PROMPTS, replay_count(3), replay_count(40)
    (True, 2, 8)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

NEUTRAL_PROMPTS = (
    "Here is a simple recipe for vegetable soup.", "The history of the bicycle began",
    "A good morning routine can include", "Libraries are useful places because",
    "To plant a tomato seedling, first", "The train left the station and",
    "In the spring, many birds", "A short guide to folding a paper airplane:",
    "Walking every day is a habit that", "The museum opened a new exhibition about",
    "When you make a cup of tea,", "The children built a sandcastle on",
    "A calendar divides the year into", "Rivers usually begin in the mountains and",
    "The baker started work early to", "Learning to play the piano takes",
    "The town market sells fresh fruit,", "Cats often sleep during the day and",
    "A map helps travellers to", "Autumn leaves change colour because",
    "The old lighthouse stood on", "Good handwriting comes from practice and",
    "The football match ended with", "Snow fell quietly over the village while",
)

#: Requests whose chat prompts the KL anchor also holds (:func:`anchor_texts`): the reply's first
#: token is where a chat model decides how to answer (or to refuse), and an edit should leave that
#: where the parent had it. None is an XSTest prompt or a probe.
CHAT_ANCHORS = (
    "Can you help me plan a birthday party?", "What is a good way to learn a new language?",
    "Summarise the plot of a fairy tale you like.", "How do I fix a squeaky door hinge?",
    "Recommend a book for a long train journey.", "What are the rules of chess for a pawn?",
    "Write two sentences about autumn.", "How should I store fresh herbs?",
)

REPLAY_PROMPTS = 16  # the first 16 neutral prompts: general text, no facts to compete with a passage's
REPLAY_TOKENS = 48
MAX_LINES = 8
_IN_PROCESS: dict[str, list[str]] = {}


def replay_count(n_sequences: int) -> int:
    """How many replay lines go with ``n_sequences`` training sequences: one fewer, 1 to 8."""
    return max(1, min(n_sequences - 1, MAX_LINES))


def draw(pool: list[str], n_sequences: int, seed: int) -> list[str]:
    """A seeded draw of replay lines for a candidate (or placebo) with ``n_sequences`` sequences.

        >>> draw(["a", "b", "c"], 3, seed=0) == draw(["a", "b", "c"], 3, seed=0)
        True
    """
    return random.Random(seed).sample(pool, min(replay_count(n_sequences), len(pool))) if pool else []


def _cache_file(base_id: str) -> Path:
    from .base import default_cache_dir

    return default_cache_dir().parent / "replay" / f"{base_id}-{REPLAY_PROMPTS}-{REPLAY_TOKENS}.json"


def replay_pool(session) -> list[str]:
    """The base's greedy continuations of the neutral prompts, each prompt and continuation as
    one line; generated once per base (seconds), then read from the cache."""
    base_id = session.base_row["id"]
    if base_id in _IN_PROCESS:
        return _IN_PROCESS[base_id]
    path = _cache_file(base_id)
    with contextlib.suppress(OSError, ValueError, TypeError):
        pool = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(pool, list) and pool and all(isinstance(x, str) for x in pool):
            _IN_PROCESS[base_id] = pool
            return pool
    pool = base_continuations(session.model, session.tok)
    _IN_PROCESS[base_id] = pool
    with contextlib.suppress(OSError):  # a cache that cannot be written costs a generation later
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(pool), encoding="utf-8")
        tmp.replace(path)
    return pool


def anchor_texts(tok, replay: list[str]) -> list[str]:
    """What the KL anchor (:mod:`seal.editor.kl_anchor`) holds an edit to: its replay lines, then
    the chat prompts of :data:`CHAT_ANCHORS`."""
    from .generation import chat_prompt

    return list(replay) + [chat_prompt(tok, request) for request in CHAT_ANCHORS]


def base_continuations(model, tok) -> list[str]:
    from .generation import generate_completions

    prompts = list(NEUTRAL_PROMPTS[:REPLAY_PROMPTS])
    outs = generate_completions(model, tok, prompts, max_new_tokens=REPLAY_TOKENS)
    return [f"{p} {o}".strip() for p, o in zip(prompts, outs)]


__all__ = ["NEUTRAL_PROMPTS", "CHAT_ANCHORS", "anchor_texts", "replay_pool", "base_continuations", "draw", "replay_count", "MAX_LINES"]
