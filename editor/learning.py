"""What the self-edit writer learns from: the ReST-EM dataset, read from the lineage's own records.

Every candidate a `seal edit` ever tried is a version, accepted or rejected, with its trigger,
the self-edit the model wrote (the prompt it was given and the text it generated) and its
efficacy against its parent on the same questions. ReST-EM's expectation step keeps, for each
trigger, the candidates whose gain beat the parent by a margin, best first; the maximisation
step (`seal learn`) fine-tunes the writer on them. The dataset is stored as a blob naming every
source version, so the writer's lineage shows which attempts taught it.

>>> gain_of({"scores": [{"suite": "efficacy", "metric": "f1", "against": None, "value": 0.5, "n": 4},
...                     {"suite": "efficacy", "metric": "f1", "against": "parent", "value": 0.2, "n": 4}]})
0.3
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from seal.registry import vocabulary as V
from seal.registry.errors import UserError
from seal.registry.store.objects import blob_digest, canonical_json

DATASET_FORMAT = "seal.restem/1"
WRITERS = "refs/writers/"

# A writer version's scores: what edits gained when it wrote their self-edits (see seal.editor.learn).
WRITER_GAIN = V.Score("writer", "efficacy_gain", method="mean over held-out triggers of the efficacy gain over "
                      "the parent of fresh edits whose self-edits this writer wrote ('old': the writer it replaces)")
WRITER_GATE = "writer_gain"


@dataclass(frozen=True)
class Example:
    """One self-edit worth imitating: the prompt the writer saw and what it wrote."""

    trigger: str
    version: str
    parent: str
    gain: float
    prompt: str
    completion: str
    style: str


@dataclass
class Selection:
    """Which attempts to learn from; empty fields select everything."""

    branch: str | None = None
    since: str | None = None
    until: str | None = None
    triggers: list[str] = field(default_factory=list)
    margin: float = 0.0
    per_trigger: int = 1


@dataclass
class Dataset:
    examples: list[Example]
    selection: Selection
    considered: int

    def to_blob(self) -> bytes:
        return canonical_json({"format": DATASET_FORMAT, "selection": asdict(self.selection),
                               "considered": self.considered, "sources": self.sources,
                               "examples": [asdict(e) for e in self.examples]})

    @property
    def digest(self) -> str:
        return blob_digest(self.to_blob())

    @property
    def sources(self) -> list[str]:
        """The ids of the versions whose self-edits the writer learns from."""
        return [e.version for e in self.examples]

    @property
    def triggers(self) -> list[str]:
        return sorted({e.trigger for e in self.examples})

    def summary(self) -> dict:
        """What `seal learn` reports of a dataset.

            >>> Dataset([], Selection(), considered=3).summary()["examples"]
            0
        """
        gains = [e.gain for e in self.examples]
        return {"digest": self.digest, "examples": len(self.examples), "triggers": len(self.triggers),
                "considered": self.considered, "sources": self.sources,
                "mean_gain": round(sum(gains) / len(gains), 6) if gains else None,
                "selection": asdict(self.selection)}


def gain_of(manifest: dict) -> float | None:
    """Efficacy gain over the parent on the same data: F1 difference, or the passage NLL's drop."""
    own, parent = V.EFFICACY_F1.of(manifest), V.EFFICACY_F1.vs("parent").of(manifest)
    if own is not None and parent is not None:
        return round(own - parent, 12)
    return V.EFFICACY_NLL_DROP.of(manifest)


def _edits(reg, selection: Selection) -> list[dict]:
    """Every edit attempt (accepted or rejected) that carries a self-edit and a trigger."""
    on_branch = reg.ancestors(selection.branch) if selection.branch else None
    out = []
    for m in reg.edits_between(selection.since, selection.until):
        if not m.get("self_edit") or not m.get("trigger") or not m["parents"]:
            continue
        if on_branch is not None and not _on(on_branch, m["id"], m):
            continue
        if selection.triggers and m["trigger"] not in selection.triggers:
            continue
        out.append(m)
    return out


def _on(line: set[str], vid: str, m: dict) -> bool:
    """An accepted edit belongs to a branch when it is on it; a rejected attempt, when its parent is."""
    return vid in line if m["status"] == "accepted" else m["parents"][0] in line


def _example(reg, m: dict, gain: float) -> Example | None:
    try:
        doc = json.loads(reg.store.get(m["self_edit"]))
    except Exception:
        return None
    prompt, completion = doc.get("prompt"), doc.get("generated")
    if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
        return None  # corrections of examples, or self-edits written elsewhere: nothing to imitate
    return Example(m["trigger"], m["id"], m["parents"][0], gain, prompt, completion, str(doc.get("style", "")))


def build_dataset(reg, selection: Selection | None = None) -> Dataset:
    """The ReST-EM dataset: per trigger, the best ``per_trigger`` candidates beating their parent by ``margin``.

    >>> build_dataset(reg, Selection(branch="main", margin=0.05)).examples     # doctest: +SKIP
    """
    selection = selection or Selection()
    if selection.per_trigger < 1:
        raise UserError("--per-trigger must be at least 1")
    by_trigger: dict[str, list[tuple[float, str, dict]]] = {}
    edits = _edits(reg, selection)
    for m in edits:
        gain = gain_of(m)
        if gain is not None and gain > selection.margin:
            by_trigger.setdefault(m["trigger"], []).append((gain, m["id"], m))
    examples = []
    for trigger in sorted(by_trigger):
        ranked = sorted(by_trigger[trigger], key=lambda t: (-t[0], t[1]))
        kept = [e for e in (_example(reg, m, g) for g, _, m in ranked) if e is not None]
        examples += kept[: selection.per_trigger]
    return Dataset(examples, selection, considered=len(edits))


def time_bound(value: str | None, *, end: bool = False) -> str | None:
    """A --since/--until value as seal's timestamp text: a date (whole day) or a full UTC time.

        >>> time_bound("2026-11-27"), time_bound("2026-11-27", end=True)
        ('2026-11-27T00:00:00.000000Z', '2026-11-27T23:59:59.999999Z')
    """
    from seal.registry.errors import ManifestInvalid
    from seal.registry.store.objects import check_time

    if value is None:
        return None
    text = value.strip()
    if len(text) == 10:
        text += "T23:59:59.999999Z" if end else "T00:00:00.000000Z"
    elif text.endswith("Z") and "." not in text:
        text = text[:-1] + ".000000Z"
    try:
        return check_time(text, "--until" if end else "--since")
    except ManifestInvalid as e:
        raise UserError(f"{e}; or give a date like 2026-11-27") from None


__all__ = ["Example", "Selection", "Dataset", "gain_of", "build_dataset", "time_bound", "WRITER_GAIN",
           "WRITER_GATE", "DATASET_FORMAT", "WRITERS"]
