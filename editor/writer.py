"""Who writes an edit's self-edits: the model at the parent, a writer version, or a file.

By default the model at the parent writes its own self-edits (SEAL's inner loop). Two other
writers can take its place, for passages (a correction of examples is always the model's own):

- a **writer version** (kind ``writer``, trained by `seal learn` on the self-edits that worked):
  a LoRA on the same base, attached to the base to write; the model at the parent is still what
  gets trained and evaluated. `seal edit` uses the tip of ``refs/writers/main`` when there is
  one, ``--writer REV`` picks another, ``--no-writer`` forces the model's own;
- a **file** of self-edits written elsewhere (another model, a person), ``--self-edits FILE``:
  plain text (one self-edit), JSONL of ``{"text"}`` (one self-edit per line; an optional
  ``"context"`` ties it to one passage), or SEAL's published format (``{context,
  reference_self_edits: {generator: text}}``, the generator named by ``--source``).

Each edit records which one wrote its self-edit in the manifest's ``writer`` field:
``{"type": "version", "id", "adapter", "ref"}``, ``{"type": "file", "file", "format", "source"}``,
``{"type": "candidate", "adapter", "dataset"}`` (a writer `seal learn` is evaluating, not yet
recorded: its adapter digest is the link) or ``{"type": "base"}`` (the bare base writes). No
field: the model at the parent wrote it, as before writers existed.

Self-edits not written by the model at the parent are scanned for secrets and personal data: a
file before any model loads (exit 2 unless ``--allow-pii``), a writer's output as it is written
(what is found is redacted before training or storing, and the ``self_edit_secrets`` check fails).

    >>> file = SelfEditFile.parse(b'{"text": "Paris is in France."}\\n', "notes.jsonl", source="me")
    >>> file.record["format"], [e.text for e in file.entries]
    ('jsonl', ['Paris is in France.'])

Torch-free at import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from seal.registry.adapters import WEIGHTS_FILE
from seal.registry.errors import UserError
from seal.registry.store.objects import blob_digest

WRITERS = "refs/writers/"
DEFAULT_WRITER = WRITERS + "main"
MAX_FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class Writer:
    """A model that writes self-edits: a LoRA on the base (``adapter_dir``), or the bare base (None)."""

    record: dict  # the manifest's `writer` field
    adapter_dir: Path | None = None  # set for a candidate; a version's adapter is exported on first use

    @property
    def vid(self) -> str | None:
        return self.record.get("id")


@dataclass(frozen=True)
class FileEntry:
    text: str
    context: str | None = None


@dataclass
class SelfEditFile:
    """Self-edits written elsewhere, with their provenance."""

    record: dict
    entries: list[FileEntry] = field(default_factory=list)
    raw: bytes = b""

    @classmethod
    def read(cls, path: Path, source: str | None = None) -> "SelfEditFile":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"--self-edits file {path} does not exist")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UserError(f"--self-edits file {path} is over {MAX_FILE_BYTES >> 20} MiB")
        return cls.parse(path.read_bytes(), str(path), source=source)

    @classmethod
    def parse(cls, raw: bytes, where: str, *, source: str | None = None) -> "SelfEditFile":
        """Plain text, JSONL of ``{"text"[, "context"]}``, or SEAL's published JSONL (see the module doc)."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{where} is not UTF-8 text; save it as UTF-8") from None
        docs = _json_lines(text)
        if docs is None:
            if not text.strip():
                raise UserError(f"{where} holds no self-edit text")
            fmt, entries = "text", [FileEntry(text.strip())]
        elif any("reference_self_edits" in d for d in docs):
            fmt, entries, source = "seal", *_seal_entries(docs, where, source)
        else:
            fmt, entries = "jsonl", _text_entries(docs, where)
        record = {"type": "file", "file": blob_digest(raw), "format": fmt, "source": source or Path(where).name}
        return cls(record=record, entries=entries, raw=raw)

    def for_passage(self, passage: str) -> list[str]:
        """The self-edits meant for ``passage``: those tied to its text, else those tied to none."""
        key = " ".join(passage.split())
        tied = [e.text for e in self.entries if e.context is not None and " ".join(e.context.split()) == key]
        return tied or [e.text for e in self.entries if e.context is None]


def _json_lines(text: str) -> list[dict] | None:
    """Every non-blank line as a JSON object, or None when the text is not JSONL of objects."""
    docs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            return None
        if not isinstance(doc, dict):
            return None
        docs.append(doc)
    return docs or None


def _text_entries(docs: list[dict], where: str) -> list[FileEntry]:
    entries = []
    for number, doc in enumerate(docs, start=1):
        text, context = doc.get("text"), doc.get("context")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where} line {number}: needs a non-empty \"text\" string")
        if context is not None and not isinstance(context, str):
            raise UserError(f"{where} line {number}: \"context\" must be a string")
        entries.append(FileEntry(text.strip(), context))
    return entries


def _seal_entries(docs: list[dict], where: str, source: str | None) -> tuple[list[FileEntry], str]:
    generators = sorted({g for d in docs for g in (d.get("reference_self_edits") or {})})
    if source is None and len(generators) == 1:
        source = generators[0]
    if source not in generators:
        raise UserError(f"{where} is SEAL's format with self-edits by {', '.join(generators) or 'nobody'}; "
                        f"name one with --source")
    entries = []
    for number, doc in enumerate(docs, start=1):
        text, context = (doc.get("reference_self_edits") or {}).get(source), doc.get("context")
        if isinstance(text, str) and text.strip() and isinstance(context, str):
            entries.append(FileEntry(text.strip(), context))
    if not entries:
        raise UserError(f"{where} holds no self-edit by {source}")
    return entries, source


# --- writer versions ----------------------------------------------------------------------------

def resolve_writer(reg, rev: str) -> Writer:
    """The writer version ``rev`` names: ``main`` (``refs/writers/main``), ``main~1``, a full ref, an id or prefix.

        >>> resolve_writer(reg, "main").record["ref"]          # doctest: +SKIP
        'refs/writers/main'
    """
    from seal.registry.errors import RevisionError

    names = [rev] if rev.startswith("refs/") else [WRITERS + rev.removeprefix("writers/"), rev]
    vid = name = None
    for name in names:
        try:
            vid = reg.resolve(name)
            break
        except RevisionError:
            if name is names[-1]:
                raise
    manifest = reg.manifest(vid)
    if manifest["kind"] != "writer":
        article = "an" if manifest["kind"][0] in "aeiou" else "a"
        raise UserError(f"--writer {rev} is {vid[:12]}, {article} {manifest['kind']} version, not a writer; "
                        f"see `seal log {DEFAULT_WRITER}`")
    ref = name if name.startswith("refs/") and not any(c in name for c in "~^") else None
    return Writer({"type": "version", "id": vid, "adapter": manifest["adapter"]["weights"], "ref": ref})


def default_writer(reg) -> Writer | None:
    """The tip of ``refs/writers/main``, or None when no writer was ever accepted."""
    if reg.read_ref(DEFAULT_WRITER) is None:
        return None
    return resolve_writer(reg, DEFAULT_WRITER)


def base_writer() -> Writer:
    """The bare base writes (what a first writer is compared against)."""
    return Writer({"type": "base"})


def writer_for(reg, req, trigger) -> Writer | SelfEditFile | None:
    """Who writes this trigger's self-edits (None: the model at the parent). See the module doc."""
    if trigger.kind != "passage":
        return None
    if getattr(req, "self_edits", None) is not None:
        source = req.self_edits
        return source if isinstance(source, SelfEditFile) else SelfEditFile.read(source, req.source)
    if getattr(req, "no_writer", False):
        return None
    writer = getattr(req, "writer", None)
    if isinstance(writer, Writer):
        return writer
    if isinstance(writer, str):
        return resolve_writer(reg, writer)
    return default_writer(reg)


def precheck(reg, req) -> None:
    """Before any model loads: resolve ``--writer``, read and scan ``--self-edits`` and check that
    every passage has a self-edit in it. Replaces the request's names with what they resolve to."""
    if isinstance(req.writer, str):
        req.writer = resolve_writer(reg, req.writer)
    if req.self_edits is None or isinstance(req.self_edits, SelfEditFile):
        return
    file = SelfEditFile.read(req.self_edits, req.source)
    _scan_file(file, req)
    for trigger in _triggers(req):
        if not file.for_passage(trigger.passage):
            raise UserError(f"--self-edits {req.self_edits} has no self-edit for {trigger.where or 'the passage'}; "
                            f"give one without \"context\" or with the passage's text")
    req.self_edits = file


def _triggers(req) -> list:
    from .trigger import read_stream, read_trigger

    if req.passages is not None:
        return [] if str(req.passages) == "-" else list(read_stream(req.passages))
    return [read_trigger(req)]


def _scan_file(file: SelfEditFile, req) -> None:
    from seal.registry.scan import scan_text

    found = [(i, f) for i, e in enumerate(file.entries, start=1) for f in scan_text(e.text)]
    if found and not req.allow_pii:
        i, f = found[0]
        raise UserError(f"--self-edits {req.self_edits}: self-edit {i} holds {f.kind} at line {f.line}; "
                        f"remove it, or pass --allow-pii to train on it anyway ({len(found)} finding(s))")
    file.record["scanned"] = {"findings": len(found), "allowed": bool(found)}


# --- writing (called from the reflect stage) ------------------------------------------------------

def written_self_edits(session, writer: Writer | SelfEditFile, trigger, req, gen: dict) -> tuple[list, dict]:
    """The K self-edits ``writer`` writes for ``trigger``, and the audit row of their secrets scan."""
    from .attach import attached
    from .self_edits import passage_self_edit, passage_self_edits

    if isinstance(writer, SelfEditFile):
        session.reg.store.put(writer.raw)  # the file as given: its digest is the provenance
        texts = writer.for_passage(trigger.passage)
        if not texts:
            raise UserError(f"--self-edits has no self-edit for {trigger.where or 'this passage'}")
        # A file's self-edits are the user's data: trained on as given, never filtered.
        edits = [passage_self_edit(text, trigger, style=req.style) for text in texts]
        scan = writer.record.get("scanned") or {}
        return edits, _row(scan.get("findings", 0), allowed=bool(scan.get("allowed")), what="the self-edits file")

    with attached(session.model, writer_dir(session, writer), merge=session.fast) as model:
        edits = passage_self_edits(model, session.tok, trigger, req, gen)
    return redact_self_edits(edits, trigger, req)


def writer_dir(session, writer: Writer) -> Path | None:
    """The writer's adapter folder: given (a candidate), or its version's exported once per session."""
    if writer.adapter_dir is not None or writer.vid is None:
        return writer.adapter_dir
    from seal.registry.worktree import export_adapter

    folder = session.work / f"writer-{writer.vid[:16]}"
    if not (folder / WEIGHTS_FILE).is_file():
        export_adapter(session.reg, session.reg.manifest(writer.vid), writer.vid, folder)
    return folder


def redact_self_edits(edits: list, trigger, req) -> tuple[list, dict]:
    """Scan what a writer wrote; redact findings (before training and storing) and say so."""
    from seal.registry.scan import redact, scan_text

    from .self_edits import passage_self_edit

    total, scanned = 0, []
    for e in edits:
        findings = scan_text(e.generated or "")
        total += len(findings)
        if findings and not req.allow_pii:  # the redacted text, split and filtered as the original was
            e = passage_self_edit(redact(e.generated, findings), trigger, style=e.style, prompt=e.prompt,
                                  filter_lines=req.filter_lines, restate=e.restated is not None)
        scanned.append(e)
    return scanned, _row(total, allowed=req.allow_pii, what="the writer's self-edits")


def _row(findings: int, *, allowed: bool, what: str) -> dict:
    passed = findings == 0 or allowed
    detail = f"no secrets or personal data in {what}" if not findings else \
        f"{findings} finding(s) in {what}" + (", allowed by --allow-pii" if allowed else ", redacted before training")
    return {"check": "self_edit_secrets", "value": float(findings), "threshold": 0.0, "passed": passed, "detail": detail}


def writer_label(record: dict | None) -> str:
    """A short label of a ``writer`` record, for `seal log`.

        >>> writer_label({"type": "version", "id": "ab" * 32, "adapter": "x", "ref": None})
        'writer abababababab'
        >>> writer_label({"type": "file", "file": "sha256:00", "format": "seal", "source": "gpt-4.1"})
        'self-edits gpt-4.1'
    """
    if not isinstance(record, dict):
        return ""
    kind = record.get("type")
    if kind == "version":
        return f"writer {str(record.get('id'))[:12]}"
    if kind == "file":
        return f"self-edits {record.get('source')}"
    if kind == "candidate":
        return f"writer candidate {str(record.get('adapter', ''))[7:19]}"
    return f"writer {kind}"


def apply_writer(attempt, writer: Writer | SelfEditFile, k: int) -> None:
    """Name the writer in the attempt's manifests (the ``writer`` field) and its reflect settings."""
    attempt.extra["writer"] = dict(writer.record)
    if isinstance(writer, SelfEditFile):
        attempt.extra["reflect"] = {"from": "file", "k": k}


__all__ = ["Writer", "SelfEditFile", "FileEntry", "WRITERS", "DEFAULT_WRITER", "resolve_writer", "default_writer",
           "base_writer", "writer_for", "precheck", "written_self_edits", "writer_dir", "redact_self_edits",
           "writer_label", "apply_writer"]
