"""A KL penalty to the parent while an adapter trains, on text the passage says nothing about.

Replay (:mod:`seal.editor.replay`) pulls an adapter back toward the base by training on the
base's greedy words; it sees one token per position. The anchor sees the parent's whole
next-token distribution instead: before the first step it records, on a few neutral texts, the
parent's top ``TOP_K`` log-probabilities per position (the rest of the vocabulary as one bucket),
and each training step adds ``weight x KL(parent || adapter)`` on one of those texts, in turn.

An anchor text is a string (every position counts) or a ``(prompt, reply)`` pair, where only the
positions that predict the reply count: a chat template's system prompt and markup are predicted
alike by any adapter, and averaging over them would drown the few positions where a chat model
decides how to answer (whether to refuse, above all) in near-zero terms.

The KL is taken between the two distributions coarsened to the parent's top-k tokens plus "the
rest": a lower bound of the full KL that needs ``TOP_K`` numbers per position instead of the
vocabulary (262k on Gemma-3), and that is zero exactly when the adapter still gives the parent's
top tokens the parent's probabilities.

    >>> anchor = Anchor.record(peft_model, tok, ["The train left the station and ..."])   # doctest: +SKIP
    >>> loss = ce + 0.5 * anchor.kl(peft_model, step)                                     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

TOP_K = 64
REPLY_POSITIONS = 4  # of a (prompt, reply) text, the reply's first tokens count: where the reply is decided
AnchorText = Union[str, tuple[str, str]]  # a text, or (prompt, reply): only the reply's positions count


@dataclass(frozen=True)
class _Snapshot:
    ids: torch.Tensor  # [1, T] the text's tokens
    top: torch.Tensor  # [P, K] the parent's top-k token ids per position that counts
    logp: torch.Tensor  # [P, K + 1] their log-probabilities, then the rest's
    start: int = 0  # the first position that counts (the last P of the T-1 predicting positions)


def _coarse(logits: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """log-probabilities of the ``top`` tokens and of the rest, ``[T, K + 1]``."""
    # at least float32 (a float64 model stays float64: the batched-training test compares in it)
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    picked = logp.gather(-1, top)
    rest = torch.log1p(-picked.exp().sum(-1).clamp(max=1 - 1e-6))
    return torch.cat([picked, rest.unsqueeze(-1)], dim=-1)


def kl_from_logits(logits: torch.Tensor, snap: _Snapshot) -> torch.Tensor:
    """KL(parent || model) per position that counts, averaged, from the model's logits ``[T-1, V]``
    on ``snap``'s text."""
    logq = _coarse(logits[snap.start:], snap.top)
    p = snap.logp.exp()
    return (p * (snap.logp - logq)).sum(-1).mean()


@dataclass(frozen=True)
class Anchor:
    """The parent's distributions on the anchor texts, recorded before training starts."""

    snapshots: tuple[_Snapshot, ...]
    digest: str = ""  # sha256 (hex) of the texts as given, in canonical JSON, for the train record

    @classmethod
    def record(cls, model: Any, tokenizer: Any, texts: Sequence[AnchorText], *, max_length: int = 128,
               cache: "AnchorCache | None" = None, parent: str | None = None) -> Anchor:
        """Record ``model``'s distributions (call it before the first step: it is the parent then).

        With a ``cache`` and the ``parent``'s key (:func:`parent_key`), a text already recorded at
        that parent is taken from the cache instead of run again: the same forward on the same
        weights, so the same snapshot."""
        device = next(model.parameters()).device
        cached = cache if parent is not None else None
        snaps = []
        with torch.no_grad():
            for text in texts:
                key = (parent, _text_key(text), max_length)
                snap = cached.get(key) if cached is not None else None
                if snap is None:
                    snap = _snapshot(model, tokenizer, text, max_length, device)
                    if cached is not None:
                        cached.put(key, snap)
                if snap is not False:
                    snaps.append(snap)
        return cls(tuple(snaps), texts_digest(texts))

    def kl(self, model: Any, step: int) -> torch.Tensor:
        """KL(parent || model) per position, averaged, on the anchor text for this ``step``."""
        snap = self.snapshots[step % len(self.snapshots)]
        return kl_from_logits(model(input_ids=snap.ids).logits[0, :-1], snap)

    def __bool__(self) -> bool:
        return bool(self.snapshots)


def _snapshot(model: Any, tokenizer: Any, text: AnchorText, max_length: int, device) -> _Snapshot | bool:
    """The model's coarsened distributions on one text; False when the text has no position that counts."""
    ids, start = _encode(tokenizer, text, max_length)
    if len(ids) < 2 or start >= len(ids) - 1:
        return False
    ids_t = torch.tensor([ids], dtype=torch.long, device=device)
    logits = model(input_ids=ids_t).logits[0, start:-1]
    top = torch.topk(logits.float(), min(TOP_K, logits.shape[-1]), dim=-1).indices
    return _Snapshot(ids_t, top, _coarse(logits, top), start)


def _text_key(text: AnchorText) -> str:
    return json.dumps(text if isinstance(text, str) else list(text), ensure_ascii=False)


class AnchorCache:
    """The parents' snapshots, by (parent key, text, max length), for the last ``parents`` parents:
    a warm session's candidates and placebo on one parent, and the next passages' while the parent
    stays (a rejected edit leaves it), share the texts' forwards (5-6 s per edit of SmolLM2 on one
    CPU thread). One cache serves one loaded base.

        >>> cache = AnchorCache(parents=1)
        >>> cache.put(("p1", "t", 8), "s1"); cache.put(("p2", "t", 8), "s2")
        >>> cache.get(("p1", "t", 8)) is None, cache.get(("p2", "t", 8))
        (True, 's2')
    """

    def __init__(self, parents: int = 2):
        self.parents = parents
        self._by_parent: dict[str, dict[tuple, Any]] = {}

    def get(self, key: tuple) -> Any:
        rows = self._by_parent.get(key[0])
        if rows is None:
            return None
        self._by_parent[key[0]] = self._by_parent.pop(key[0])  # most recently used last
        return rows.get(key)

    def put(self, key: tuple, snap: Any) -> None:
        rows = self._by_parent.pop(key[0], {})
        rows[key] = snap
        self._by_parent[key[0]] = rows
        while len(self._by_parent) > self.parents:
            del self._by_parent[next(iter(self._by_parent))]


def parent_key(adapter_dir: Any) -> str:
    """What the anchor's texts are recorded at: ``"base"`` (a fresh adapter adds exact zeros), or
    the sha256 of the parent adapter's files (config and weights), so a changed folder is a new key."""
    if adapter_dir is None:
        return "base"
    from pathlib import Path

    from seal.registry.adapters import ADAPTER_CONFIG_FILE, WEIGHTS_FILE

    h = hashlib.sha256()
    for name in (ADAPTER_CONFIG_FILE, WEIGHTS_FILE):
        h.update(name.encode() + b"\0" + (Path(adapter_dir) / name).read_bytes() + b"\0")
    return h.hexdigest()


def record_anchor(model: Any, tokenizer: Any, texts: Sequence[AnchorText], weight: float, *,
                  cache: AnchorCache | None = None, parent: str | None = None) -> Anchor | None:
    """The anchor an adapter trains against, recorded at the parent; None without a weight, without
    texts, or when no text is long enough to count. ``cache`` and ``parent``: see :meth:`Anchor.record`."""
    if weight <= 0 or not texts:
        return None
    return Anchor.record(model, tokenizer, texts, cache=cache, parent=parent) or None


def texts_digest(texts: Sequence[AnchorText]) -> str:
    """What an edit was held to, as the train record names it (``kl_anchor_sha256``).

        >>> texts_digest(["a", ("b", "c")]) == texts_digest(["a", ["b", "c"]])
        True
    """
    rows = [t if isinstance(t, str) else list(t) for t in texts]
    # plain hex: a "sha256:" string in a record names a blob the store must hold, and these texts are not stored
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def _encode(tokenizer: Any, text: AnchorText, max_length: int) -> tuple[list[int], int]:
    """The text's tokens, and the first predicting position that counts (that of the reply's first token)."""
    if isinstance(text, str):
        return tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"], 0
    prompt, reply = text
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(prompt + reply, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    return ids[:len(head) + REPLY_POSITIONS], max(len(head) - 1, 0)


__all__ = ["Anchor", "AnchorCache", "AnchorText", "kl_from_logits", "parent_key", "record_anchor", "texts_digest", "TOP_K"]
