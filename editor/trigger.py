"""Encounter: the material that triggers an edit, read and checked before any model loads.

A trigger is a passage (text with an optional ``# Title`` line, or JSON ``{title, context,
questions}``), a JSONL file of examples (``{prompt, completion}``), or one line of a stream of
passages (``seal edit --passages FILE.jsonl``, the format of SEAL's
``squad-knowledge-200.jsonl``). Its bytes, as given, are what gets stored, and their digest is
what a stream uses to skip passages it has already recorded. Torch-free.

    >>> doc = {"title": "Moon", "context": "The Moon orbits the Earth.",
    ...        "questions": [{"question": "What orbits the Earth?", "answer": "The Moon"}]}
    >>> t = passage_trigger(doc, json.dumps(doc).encode(), "notes.json")
    >>> t.title, len(t.eval_items), [name for name, _ in trigger_fields(t)][:3]
    ('Moon', 1, ['context', 'questions[0].answer', 'questions[0].question'])

Every string a trigger holds (every JSON field, at any depth) is scanned for secrets before
anything is trained or stored in the clear (:func:`secrets_audit`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from seal.registry.errors import UserError
from seal.registry.store.objects import canonical_json

from .options import check_text

# A stream line is one passage with its questions; anything bigger is not material but an attack.
MAX_LINE_BYTES = 16 << 20
MAX_TITLE_CHARS = 1000


@dataclass
class Trigger:
    """One piece of material: its stored bytes, its text, and what efficacy is measured on."""

    kind: str  # "passage" | "examples"
    raw: bytes
    text: str
    title: str | None = None
    passage: str | None = None
    examples: list[dict] = field(default_factory=list)
    eval_items: list[dict] | None = None
    eval_raw: bytes | None = None
    doc: dict | None = None  # the parsed JSON object, when the passage came as JSON
    where: str = ""  # the file (and line) it came from, for messages


def loads(text: str, where: str, hint: str) -> object:
    """JSON given by a user: one line that names ``where`` for any failure, including nesting so
    deep that Python's parser runs out of stack (``[[[[…`` 100,000 deep)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg}); {hint}") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply; {hint}") from None


def read_utf8(path: Path, what: str) -> tuple[bytes, str]:
    """A user's file as bytes (what gets stored) and text, or a UserError saying what is wrong."""
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist")
    raw = path.read_bytes()
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save it as UTF-8") from None


def read_jsonl(path: Path, what: str, required: tuple[str, ...]) -> tuple[list[dict], bytes]:
    """Parse a JSONL file, naming the line of the first problem.

    ``required`` names keys that must hold a non-empty string or list; ``"a|b"`` means either.
    """
    path = Path(path)
    raw, text = read_utf8(path, what)
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        item = loads(line, f"{path} line {number}", "one JSON object per line")
        if not isinstance(item, dict):
            raise UserError(f"{path} line {number}: expected a JSON object with {', '.join(required)}")
        for key in required:
            alternatives = key.split("|")
            if not any(isinstance(item.get(k), (str, list)) and item.get(k) for k in alternatives):
                raise UserError(f"{path} line {number}: missing {' or '.join(repr(k) for k in alternatives)}")
        items.append(item)
    if not items:
        raise UserError(f"{path} holds no JSON lines; give at least one {what} item")
    return items, raw


def passage_trigger(doc, raw: bytes, where: str) -> Trigger:
    """A passage from a parsed JSON object ``{title, context|passage, questions}``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("context", doc.get("passage")), str):
        raise UserError(f"{where} needs a \"context\" (or \"passage\") string")
    title = doc.get("title")
    if title is not None and not isinstance(title, str):
        raise UserError(f"{where}: \"title\" must be a string")
    if title is not None:
        check_text(title, f"{where}: the title", MAX_TITLE_CHARS)
    passage = doc.get("context", doc.get("passage"))
    if not passage.strip():
        raise UserError(f"{where} holds no passage text")
    questions = doc.get("questions")
    if questions is not None and (not isinstance(questions, list) or not all(
            isinstance(q, dict) and isinstance(q.get("question"), str)
            and isinstance(q.get("answer", q.get("answers")), (str, list)) for q in questions)):
        raise UserError(f"{where}: \"questions\" must be a list of {{\"question\", \"answer\"}}")
    eval_items = eval_raw = None
    if questions:
        eval_items, eval_raw = questions, canonical_json(questions)
    return Trigger(kind="passage", raw=raw, text=passage, title=title, passage=passage.strip(),
                   eval_items=eval_items, eval_raw=eval_raw, doc=doc, where=where)


def read_trigger(req) -> Trigger:
    """The trigger of a one-off edit (``--passage`` or ``--examples``, with ``--eval``)."""
    if (req.passage is None) == (req.examples is None):
        raise UserError("give exactly one of --passage FILE or --examples FILE")
    eval_items = eval_raw = None
    if req.eval is not None:
        eval_items, eval_raw = read_jsonl(req.eval, "eval", ("question", "answer|answers"))
    if req.examples is not None:
        examples, raw = read_jsonl(req.examples, "examples", ("prompt", "completion"))
        return Trigger(kind="examples", raw=raw, text=raw.decode("utf-8"), examples=examples,
                       eval_items=eval_items, eval_raw=eval_raw, where=str(req.examples))
    path = Path(req.passage)
    raw, text = read_utf8(path, "passage")
    if path.suffix.lower() in (".json", ".jsonl"):
        lines = text.strip().splitlines() if path.suffix.lower() == ".jsonl" else [text]
        doc = loads(lines[0] if lines else "", str(path), 'give {"title", "context", "questions"} or plain text')
        trigger = passage_trigger(doc, raw, str(path))
    else:
        title, passage = None, text
        lines = text.splitlines()
        if lines and lines[0].startswith("# "):
            title, passage = check_text(lines[0][2:].strip(), f"{path}: the title", MAX_TITLE_CHARS), "\n".join(lines[1:])
        if not passage.strip():
            raise UserError(f"{path} holds no passage text")
        trigger = Trigger(kind="passage", raw=raw, text=passage, title=title, passage=passage.strip(), where=str(path))
    if eval_items is not None:
        trigger.eval_items, trigger.eval_raw = eval_items, eval_raw
    return trigger


# --- a stream of passages ----------------------------------------------------------------------

def stream_line(raw: bytes, number: int, source: str) -> Trigger | None:
    """One line of a passage stream as a trigger (None for a blank line). Its bytes are the line
    as given, without the line break, so a rerun finds the same digest."""
    where = f"{source} line {number}"
    raw = raw.rstrip(b"\r\n")
    if not raw.strip():
        return None
    if len(raw) > MAX_LINE_BYTES:
        raise UserError(f"{where} is {len(raw) >> 20} MiB; a passage line holds at most {MAX_LINE_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{where} is not UTF-8 text; save the stream as UTF-8") from None
    doc = loads(text, where, 'one flat {"title", "context", "questions"} object per line')
    return passage_trigger(doc, raw, where)


@dataclass
class Stream:
    """The passages of a stream; ``total`` is known for a file (checked whole before the first edit)."""

    triggers: Iterator[Trigger]
    total: int | None

    def __iter__(self) -> Iterator[Trigger]:
        return self.triggers


def read_stream(source: Path | str) -> Stream:
    """The passages of ``source``: a JSONL file, every line checked before the first edit (then
    read again, one line at a time, as the edits go), or ``"-"``: stdin, read line by line as the
    passages arrive (a bad line stops the stream there)."""
    if str(source) == "-":
        return Stream(_stdin_stream(), None)
    path = Path(source)
    if not path.is_file():
        raise UserError(f"passages file {path} does not exist")
    total = sum(1 for _ in _file_stream(path))
    if not total:
        raise UserError(f"{path} holds no passages; one JSON object per line")
    return Stream(_file_stream(path), total)


def _file_stream(path: Path) -> Iterator[Trigger]:
    with open(path, "rb") as fh:
        for number, line in enumerate(_lines(fh), start=1):
            trigger = stream_line(line, number, str(path))
            if trigger is not None:
                yield trigger


def _lines(fh) -> Iterator[bytes]:
    """Lines of a binary file, none read past the size limit (stream_line refuses the overlong one)."""
    while line := fh.readline(MAX_LINE_BYTES + 1):
        yield line


def _stdin_stream() -> Iterator[Trigger]:
    stdin = getattr(sys.stdin, "buffer", None)
    for number, line in enumerate(_lines(stdin) if stdin is not None else sys.stdin, start=1):
        trigger = stream_line(line if isinstance(line, bytes) else line.encode("utf-8"), number, "stdin")
        if trigger is not None:
            yield trigger


# --- what is scanned for secrets --------------------------------------------------------------

def trigger_fields(trigger: Trigger, message: str = "") -> list[tuple[str, str]]:
    """Every text of a trigger that could reach a blob, the database, MLflow or the Hub, after
    JSON decoding (so an escaped ``\\u`` secret is seen as the secret it is)."""
    if trigger.doc is not None:
        fields = list(_leaves(trigger.doc, ""))
        keys = sorted(set(_keys(trigger.doc)) - {"title", "context", "passage", "questions", "question", "answer", "answers"})
        if keys:
            fields.append(("(keys)", "\n".join(keys)))
    else:
        fields = [("title", trigger.title)] if trigger.title else []
        if trigger.kind == "passage":
            fields.append(("passage", trigger.passage or ""))
    for i, e in enumerate(trigger.examples):
        fields += [(f"examples[{i}].{k}", _as_text(e.get(k))) for k in sorted(e)]
    if trigger.doc is None or trigger.eval_items is not trigger.doc.get("questions"):
        for i, q in enumerate(trigger.eval_items or []):
            fields += [(f"eval[{i}].{k}", _as_text(q.get(k))) for k in sorted(q)]
    if message:
        fields.append(("message", message))
    return fields


def _leaves(node, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value, keys included, named by its path."""
    if isinstance(node, dict):
        for key in sorted(node):
            yield from _leaves(node[key], f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _leaves(item, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node
    elif node is not None:
        yield path, json.dumps(node)


def _keys(node) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item)


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def secrets_audit(trigger: Trigger, message: str = "") -> tuple[list, dict]:
    """Scan every field; findings keep field, kind and position, never the value."""
    from seal.registry.scan import scan_text

    findings = [(name, f) for name, text in trigger_fields(trigger, message) for f in scan_text(text)]
    detail = "; ".join(f"{f.kind} in {name} at line {f.line} col {f.column} (length {f.length})" for name, f in findings)
    return findings, {
        "check": "secrets", "value": float(len(findings)), "threshold": 0.0,
        "passed": not findings, "detail": detail or "no secrets or personal data found",
    }


def efficacy_spec(trigger: Trigger) -> dict:
    """What efficacy is measured on: QA items, or passages whose NLL should fall."""
    if trigger.eval_items is not None:
        return {"qa": trigger.eval_items}
    if trigger.kind == "examples":
        return {"qa": [{"question": e["prompt"], "answer": e["completion"]} for e in trigger.examples]}
    return {"texts": [f"{trigger.title}\n{trigger.passage}" if trigger.title else trigger.passage]}


__all__ = ["Trigger", "Stream", "read_trigger", "read_jsonl", "read_utf8", "passage_trigger", "read_stream", "stream_line",
           "trigger_fields", "secrets_audit", "efficacy_spec"]
