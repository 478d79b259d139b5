"""The retention probe set: 400 multiple-choice cloze facts from Wikidata (BIG-bench ``qa_wikidata``).

``data/retention_wikidata.jsonl`` ships with seal; ``data/RETENTION_LICENSE.md`` gives its source,
licence (Apache-2.0 over CC0 facts) and how :func:`build_retention_set` drew it.

    >>> items = load_retention_set()
    >>> len(items), items[0].options[items[0].answer] in items[0].options
    (400, True)
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

RETENTION_FILE = "retention_wikidata.jsonl"

@dataclass(frozen=True)
class RetentionItem:
    """A cloze fact with its options; ``answer`` indexes the right one.

        >>> item = load_retention_set()[0]
        >>> item.prompt.endswith(" is"), item.options[item.answer] != item.options[item.answer - 1]
        (True, True)
    """

    id: int
    relation: str
    prompt: str
    options: tuple[str, ...]
    answer: int


#: Relations drawn from BIG-bench ``qa_wikidata`` and how many items each gives. Closed answer
#: vocabularies (countries, languages, continents, religions) make same-relation distractors
#: plausible, so an item measures the fact and not the answer's type.
RETENTION_RELATIONS: dict[str, int] = {
    "The capital of": 120,
    "The country of": 140,
    "The official language of": 50,
    "The native language of": 50,
    "The continent of": 40,
}
#: Answers left out as golds and as distractors: demonyms, historic states and parts of
#: countries, and languages that overlap another answer, any of which could make a distractor
#: also right (a Prussian is German, Scots is spoken in English-speaking Scotland).
RETENTION_EXCLUDED = frozenset({
    "Afghan", "German", "Bohemia", "Prussia", "Czechoslovakia", "Yugoslavia", "England", "Scotland",
    "Wales", "Macau", "Palestine", "Taiwan", "Korea", "Cantonese", "Scots", "Norman", "Egyptian",
    "Aramaic", "Turki", "Sanskrit", "Latin", "Romani", "Cornish", "Sioux",
})
RETENTION_SEED = 20261127
RETENTION_OPTIONS = 4


def _relation_of(prompt: str) -> str | None:
    for rel in RETENTION_RELATIONS:
        if prompt.startswith(rel + " ") and prompt.endswith(" is"):
            return rel
    return None


def build_retention_set(task_json: str | Path, *, relations: Mapping[str, int] = RETENTION_RELATIONS,
                        seed: int = RETENTION_SEED, options: int = RETENTION_OPTIONS) -> list[dict[str, Any]]:
    """Draw the retention set from BIG-bench's ``qa_wikidata/task.json``; how the shipped file was made.

    For each relation, examples with a single-string target outside :data:`RETENTION_EXCLUDED`
    are shuffled with the seeded generator and the first ``relations[rel]`` distinct prompts
    kept; each gets ``options - 1`` distractors drawn from the other answers of the same
    relation (none containing the gold or contained in it), and the options are shuffled. Items are
    returned grouped by relation in the order of ``relations``, ids from 0.

        >>> rows = build_retention_set("bigbench/benchmark_tasks/qa_wikidata/task.json")  # doctest: +SKIP
        >>> len(rows)                                                                         # doctest: +SKIP
        400
    """
    examples = json.loads(Path(task_json).read_text(encoding="utf-8"))["examples"]
    rng = random.Random(seed)
    by_rel: dict[str, list[tuple[str, str]]] = {rel: [] for rel in relations}
    for ex in examples:
        rel = _relation_of(ex.get("input", ""))
        target = ex.get("target")
        if rel in by_rel and isinstance(target, str) and target.strip() \
                and target.strip() not in RETENTION_EXCLUDED:
            by_rel[rel].append((ex["input"], target.strip()))
    rows: list[dict[str, Any]] = []
    for rel, quota in relations.items():
        pool = sorted(set(by_rel[rel]))
        vocab = sorted({t for _, t in pool})
        if len(vocab) < options or len(pool) < quota:
            raise ValueError(f"relation {rel!r} has {len(pool)} facts and {len(vocab)} answers; "
                             f"need {quota} facts and {options} answers")
        rng.shuffle(pool)
        seen: set[str] = set()
        for prompt, gold in pool:
            if len(seen) == quota:
                break
            if prompt in seen:  # one fact per prompt: a prompt with two golds is ambiguous
                continue
            seen.add(prompt)
            g = gold.lower()
            distractors = rng.sample([t for t in vocab if g not in t.lower() and t.lower() not in g],
                                     options - 1)
            opts = [gold] + distractors
            rng.shuffle(opts)
            rows.append({"id": len(rows), "relation": rel, "prompt": prompt,
                         "options": opts, "answer": opts.index(gold)})
    return rows


def load_retention_set() -> list[RetentionItem]:
    """The shipped retention set (400 Wikidata cloze facts, 4 options each), in id order.

        >>> items = load_retention_set()
        >>> len(items), {len(i.options) for i in items}
        (400, {4})
    """
    text = resources.files("seal.editor").joinpath("data", RETENTION_FILE).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [RetentionItem(r["id"], r["relation"], r["prompt"], tuple(r["options"]), r["answer"]) for r in rows]


