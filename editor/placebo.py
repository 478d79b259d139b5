"""The placebo edit: what training on *any* text with the edit's recipe does to a question's margin.

An edit's per-question effect (:mod:`seal.editor.efficacy`) is its margin change minus the change
a placebo causes: an adapter trained from the same parent, with the same hyperparameters and as
many training sequences, on an unrelated passage of matched length (seal's own neutral texts,
``data/placebo_passages.jsonl``, written for this purpose). Its training sequences are built as
an edit's are (:func:`seal.editor.reflect.build_training_sequences`): the placebo passage's
sentences as title-keyed lines, then the passage.

A placebo depends only on the parent, the recipe, the passage length (in 128-word buckets) and
the sequence count (rounded up to a multiple of 8; its replay lines are drawn for that rounded
count, not the edit's own), never on the trigger's questions, so a
stream's rejected edits share their parent's placebo: it is trained once per such key and kept
in this process and in the machine's cache beside the dequantized bases (``SEAL_CACHE``), and
its weights are stored as a blob that the versions it judged name. A cache entry is used only
when its weights have the digest its record names.

    >>> text_for(60)[0], len(text_for(60)[1].split()) >= 64
    ('The Harlow Valley Orchard Cooperative', True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable

WORD_BUCKET = 128  # 64 until 2026-12-07: SEAL passages of 44-297 words fell in five buckets, and few placebos were reused
SEQUENCE_BUCKET = 8
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_IN_PROCESS: dict[str, Path] = {}


@lru_cache(maxsize=1)
def _passages() -> tuple[tuple[str, str], ...]:
    text = resources.files("seal.editor").joinpath("data", "placebo_passages.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return tuple((r["title"], r["context"]) for r in rows)


def sentences(text: str) -> list[str]:
    """A passage's sentences.

        >>> sentences("It rains. It pours! Does it?")
        ['It rains.', 'It pours!', 'Does it?']
    """
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def text_for(words: int) -> tuple[str, str]:
    """The placebo passage for a trigger of ``words`` words: whole sentences of seal's neutral
    texts, in order, up to the next multiple of :data:`WORD_BUCKET` words (at least one bucket)."""
    target = word_budget(words)
    pool = [s for _, body in _passages() for s in sentences(body)]
    chosen: list[str] = []
    count = 0
    while count < target:
        s = pool[len(chosen) % len(pool)]
        chosen.append(s)
        count += len(s.split())
    return _passages()[0][0], " ".join(chosen)


def placebo_sequences(words: int, n_sequences: int) -> list[str]:
    """The placebo's training sequences: as many as the edit's, its sentences cycled as lines.

        >>> seqs = placebo_sequences(40, 4)
        >>> len(seqs), seqs[0].startswith("The Harlow Valley Orchard Cooperative\\n")
        (4, True)
    """
    from .reflect import build_training_sequences

    title, text = text_for(words)
    lines = sentences(text)
    wanted = max(n_sequences - 1, 0)
    cycled = [lines[i % len(lines)] for i in range(wanted)]
    return build_training_sequences(text, title, cycled)


@dataclass(frozen=True)
class Placebo:
    """A placebo adapter ready to score: its folder, its weights' digest, and what it was made of."""

    folder: Path
    weights: str
    key: str
    words: int
    sequences: int
    cached: bool

    def to_json(self) -> dict[str, Any]:
        return {"weights": self.weights, "key": self.key, "words": self.words, "sequences": self.sequences,
                "cached": self.cached, "source": "seal placebo passages (editor/data/placebo_passages.jsonl)"}


def word_budget(words: int) -> int:
    """The placebo's length for a trigger of ``words`` words: rounded up to a multiple of 128.

        >>> word_budget(1), word_budget(128), word_budget(129)
        (128, 128, 256)
    """
    return max(WORD_BUCKET, -(-words // WORD_BUCKET) * WORD_BUCKET)


def sequence_budget(n_sequences: int) -> int:
    """The placebo's sequence count for an edit of ``n_sequences``: rounded up to a multiple of 8.

        >>> sequence_budget(1), sequence_budget(8), sequence_budget(9)
        (8, 8, 16)
    """
    return max(SEQUENCE_BUCKET, -(-n_sequences // SEQUENCE_BUCKET) * SEQUENCE_BUCKET)


def placebo_replay(pool: list[str], n_sequences: int, seed: int) -> list[str]:
    """The placebo's replay lines: drawn for its bucketed sequence count (:func:`sequence_budget`),
    not for the edit's exact count, so edits whose counts share a bucket share a placebo.

        >>> pool = [f"line {i}" for i in range(40)]
        >>> placebo_replay(pool, 9, 0) == placebo_replay(pool, 14, 0), len(placebo_replay(pool, 3, 0))
        (True, 7)
    """
    from .replay import draw

    return draw(pool, sequence_budget(n_sequences), seed)


def placebo_training(words: int, n_sequences: int, replay: list[str], kl: float) -> list[str]:
    """What the placebo of an edit of ``n_sequences`` trains on: its bucketed sequences, then its
    replay lines, which with the KL anchor (``kl``) anchor and are not trained on.

        >>> len(placebo_training(40, 3, ["r0", "r1"], 0.0)), len(placebo_training(40, 3, ["r0", "r1"], 4.0))
        (10, 8)
    """
    return placebo_sequences(words, sequence_budget(n_sequences)) + ([] if kl else list(replay))


def placebo_key(parent: str, base: str, hyper: dict, words: int, n_sequences: int, seed: int) -> str:
    from .replay import anchor_recipe

    bucket = word_budget(words)
    doc = {"parent": parent, "base": base, "hyper": hyper, "words": bucket, "sequences": sequence_budget(n_sequences),
           "seed": seed,
           "texts": hashlib.sha256(json.dumps(_passages()).encode()).hexdigest(),
           "anchor": anchor_recipe() if hyper.get("kl") else None}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def placebo_cache_dir(key: str) -> Path:
    """Where this machine keeps the placebo trained for ``key``."""
    from .base import default_cache_dir

    return default_cache_dir().parent / "placebo" / key[:32]


def _adapter_digest(reg, folder: Path) -> str | None:
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file() or weights.is_symlink() or not (folder / "adapter_config.json").is_file():
        return None
    return reg.store.put(weights.read_bytes())


def cached_placebo(reg, key: str, work: Path) -> Placebo | None:
    """A placebo trained before, in this process or on this machine; None when there is none
    (or its record and weights disagree)."""
    for folder in (_IN_PROCESS.get(key), placebo_cache_dir(key)):
        if folder is None or not folder.is_dir():
            continue
        try:
            record = json.loads((folder / "placebo.json").read_text(encoding="utf-8"))
            if _adapter_digest(reg, folder) != record["weights"]:
                continue
            local = work / f"placebo-{key[:16]}"
            if folder != local:
                shutil.rmtree(local, ignore_errors=True)
                shutil.copytree(folder, local)
            _IN_PROCESS[key] = local
            return Placebo(local, record["weights"], key, record["words"], record["sequences"], cached=True)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged entry is trained again
    return None


def train_placebo(session, *, parent_dir: Path | None, key: str, words: int, n_sequences: int, hyper: dict,
                  seed: int, replay: list[str] = (), on_step: Callable[[], None] | None = None) -> Placebo | None:
    """Train the placebo for ``key`` with the edit's ``hyper`` (the candidates' hyperparameters)
    and its ``replay`` lines, and keep it; None when it diverged (the efficacy rule then has no
    control, and fails)."""
    from .request import DEFAULT_ALPHA, DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_R, DEFAULT_TARGETS
    from .replay import anchor_texts
    from .train import train_adapter

    folder = session.work / f"placebo-{key[:16]}"
    kl = float(hyper.get("kl") or 0.0)
    sequences = placebo_training(words, n_sequences, replay, kl)
    record = train_adapter(session.model, session.tok, sequences, out_dir=folder,
                           parent_adapter_dir=parent_dir, r=hyper.get("r", DEFAULT_R),
                           alpha=hyper.get("lora_alpha", DEFAULT_ALPHA),
                           target_modules=hyper.get("target_modules", DEFAULT_TARGETS),
                           lr=hyper.get("lr", DEFAULT_LR), epochs=hyper.get("epochs", DEFAULT_EPOCHS),
                           batch_size=hyper.get("batch_size", 1), seed=seed, device=session.device,
                           base_name=session.base.name, on_step=on_step, anchor_texts=anchor_texts(session, replay, kl),
                           kl_weight=kl, anchor_cache=session.anchor_cache)
    if record.get("diverged") is not None:
        return None
    digest = _adapter_digest(session.reg, folder)
    doc = {"weights": digest, "words": words, "sequences": sequence_budget(n_sequences), "key": key}
    (folder / "placebo.json").write_text(json.dumps(doc), encoding="utf-8")
    _IN_PROCESS[key] = folder
    _keep_on_machine(folder, key)
    return Placebo(folder, digest, key, words, sequence_budget(n_sequences), cached=False)


def _keep_on_machine(folder: Path, key: str) -> None:
    target = placebo_cache_dir(key)
    with contextlib.suppress(OSError):  # a cache that cannot be written costs a training later
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp)
        if target.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # another process kept the same placebo first
            return
        tmp.rename(target)


__all__ = ["Placebo", "placebo_key", "placebo_cache_dir", "placebo_replay", "placebo_sequences", "placebo_training",
           "cached_placebo",
           "train_placebo", "text_for", "sentences", "WORD_BUCKET", "word_budget", "sequence_budget"]
