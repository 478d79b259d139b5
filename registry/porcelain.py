"""One function per `seal` command that needs no model; the CLI only parses and renders.

Each takes a :class:`seal.registry.Registry` and goes through its API, so every version is
recorded and every ref moved by compare-and-swap with its signed reflog row.

>>> import_adapter(Registry.open(), Path("my-adapter"), message="first")   # doctest: +SKIP
{'id': '…', 'ref': 'main', 'parent': '…'}
"""

from __future__ import annotations

import os
from pathlib import Path

from .adapters import read_adapter_folder
from .errors import UserError
from .store import refs as R
from .store.graph import ancestors, parents_of
from .store.objects import UNSAFE_CHARS, build_manifest
from .store.revisions import resolve_revision
from .store.versions import load_manifest
from .tracking import mirror_alias

UNGATED = {"accepted": True, "gated": False,
           "reason": "recorded without scoring or gates; `seal import --gate` scores an adapter like an edit"}


def display_name(path: Path) -> str:
    """A file name as text fit for a manifest: bytes that are not UTF-8 (a folder named on another
    system) become U+FFFD, control characters become '?'.

    >>> display_name(Path(os.fsdecode(b"adapter-\\xff")))
    'adapter-\\ufffd'
    """
    return UNSAFE_CHARS.sub("?", os.fsencode(Path(path).name).decode("utf-8", "replace"))


def check_message(message: str, what: str = "-m") -> str:
    """A message is stored forever and may be pushed: refuse one holding a secret (exit 2)."""
    from .scan import scan_text

    if not isinstance(message, str) or len(message) > 10_000:
        raise UserError(f"{what} is too long; keep a message under 10,000 characters")
    if any("\ud800" <= ch <= "\udfff" for ch in message):  # argv bytes that were not UTF-8
        raise UserError(f"{what} is not valid UTF-8 text; write it in UTF-8")
    if UNSAFE_CHARS.search(message):
        raise UserError(f"{what} holds control or bidirectional characters; write plain text")
    findings = scan_text(message)
    if findings:
        kinds = ", ".join(sorted({f.kind for f in findings}))
        raise UserError(f"{what} holds what looks like a secret or personal data ({kinds}); remove it, nothing was recorded")
    return message


# --- import -------------------------------------------------------------------------------------

def check_same_base(base: dict, adapter_config: dict, where: str) -> None:
    claimed = adapter_config.get("base_model_name_or_path")
    if not claimed or not isinstance(claimed, str):
        return
    names = {base["name"]}
    for key in ("location",):
        if base.get(key):
            names.update({str(Path(base[key]).resolve()), Path(base[key]).name})
    info = base.get("info") or {}
    names.update(info.get("aliases", []))
    if info.get("weights_dir"):
        names.update({str(Path(info["weights_dir"]).resolve())})
    candidates = {claimed, Path(claimed).name}
    if Path(claimed).exists():
        candidates.add(str(Path(claimed).resolve()))
    if not (names & candidates):
        raise UserError(
            f"{where} was trained on {claimed!r} but this registry's base is {base['name']!r}; "
            f"import it into a registry on that base"
        )


def import_adapter(reg, folder: Path, *, message: str = "", parent: str | None = None) -> dict:
    """Record an existing PEFT LoRA folder as a version on the current branch (or detached HEAD).

    What is recorded is checked as stored: the folder is validated, its weights copied into the
    object store, and the stored copy validated again, so a file swapped under the command
    cannot slip through. Every refusal comes before the first write.
    """
    from .adapters import check_adapter_bytes
    from .errors import ManifestInvalid
    from .store.object_store import file_digest
    from .store.objects import check_manifest

    check_message(message)
    base = reg.base()
    shapes = (base.get("info") or {}).get("shapes")
    adapter = read_adapter_folder(Path(folder), base_shapes=shapes)
    with reg.read() as c:
        ref, head = R.head_state(c)
        parent_id = resolve_revision(c, parent) if parent is not None else head
    if parent is not None and parent_id != head:
        raise UserError(
            f"--parent {parent} is not the head of {R.short_name(ref)}; to start a line from it, "
            f"run `seal checkout -b NEW_BRANCH {parent}` first"
        )
    check_same_base(base, adapter.config, str(adapter.path))
    reg.signer.key  # a missing or damaged key refuses before anything is written
    manifest = _import_manifest(base, parent_id, file_digest(adapter.weights), adapter, message)
    try:
        check_manifest(manifest)
    except ManifestInvalid as e:
        raise UserError(f"cannot record {adapter.path}: {e}") from None
    digest = reg.store.put_file(adapter.weights)
    if digest != manifest["adapter"]["weights"]:
        raise UserError(f"{adapter.weights} changed while it was being imported; import it again when it is stable")
    check_adapter_bytes(adapter.config, reg.store.path_of(digest), base_shapes=shapes)
    vid = reg.record(manifest, ref=ref, expected=head, reason=f"import: {manifest['message']}")
    return {"id": vid, "ref": R.short_name(ref), "parent": parent_id, "gated": False}


def _import_manifest(base: dict, parent_id: str | None, digest: str, adapter, message: str) -> dict:
    return build_manifest(
        base=base["id"], parents=[parent_id] if parent_id else [], kind="import", status="accepted",
        adapter={"weights": digest, "config": adapter.config, "format": "peft-lora"},
        train={"source": "import"}, author=R.actor(), message=message or f"import {display_name(adapter.path)}",
        extra={"decision": UNGATED},
    )


# --- branches, tags, aliases -------------------------------------------------------------------

def list_branches(reg) -> list[dict]:
    with reg.read() as c:
        current = R.head_branch(c)
        return [{"name": R.short_name(n), "id": t, "current": n == current} for n, t in R.list_refs(c, R.HEADS)]


_KINDS = {"branch": R.HEADS, "tag": R.TAGS, "alias": R.ALIASES}


def refuse_other_kind(reg, name: str, kind: str) -> None:
    """A branch, a tag and an alias never share a name: one would hide the other in a revision."""
    for other, prefix in _KINDS.items():
        if other != kind and reg.read_ref(prefix + name) is not None:
            raise UserError(f"{name!r} is already a{'n' if other == 'alias' else ''} {other}; pick another {kind} name")


def create_branch(reg, name: str, rev: str = "HEAD") -> dict:
    R.check_ref_name(name)
    refuse_other_kind(reg, name, "branch")
    vid = reg.resolve(rev)
    if reg.read_ref(R.HEADS + name) is not None:
        raise UserError(f"branch {name} already exists; pick another name or delete it with `seal branch -d {name}`")
    reg.move_ref(R.HEADS + name, new=vid, expected=None, reason=f"branch: created from {rev}")
    return {"name": name, "id": vid}


def delete_branch(reg, name: str) -> dict:
    full = R.HEADS + name
    with reg.read() as c:
        target = R.read_ref(c, full)
        current = R.head_branch(c)
    if target is None:
        raise UserError(f"there is no branch {name}; see `seal branch`")
    if current == full:
        raise UserError(f"branch {name} is checked out; check out another branch before deleting it")
    reg.move_ref(full, new=None, expected=target, reason="branch: deleted")
    return {"name": name, "id": target}


def list_tags(reg) -> list[dict]:
    return [{"name": R.short_name(n), "id": t} for n, t in reg.refs(R.TAGS)]


def create_tag(reg, name: str, rev: str = "HEAD") -> dict:
    R.check_ref_name(name, "tag")
    refuse_other_kind(reg, name, "tag")
    vid = reg.resolve(rev)
    if reg.read_ref(R.TAGS + name) is not None:
        raise UserError(f"tag {name} already exists; tags never move, so pick another name")
    reg.move_ref(R.TAGS + name, new=vid, expected=None, reason=f"tag: {rev}")
    return {"name": name, "id": vid}


def list_aliases(reg) -> list[dict]:
    return [{"name": n[len(R.ALIASES):], "id": t} for n, t in reg.refs(R.ALIASES)]


def set_alias(reg, name: str, rev: str, *, reason: str) -> dict:
    """Point alias ``name`` (e.g. ``production``) at ``rev``; every move needs a reason. A move is
    mirrored to the MLflow alias of the same name (``mlflow``: its model version, or None)."""
    name = name.lstrip("@")
    R.check_ref_name(name, "alias")
    refuse_other_kind(reg, name, "alias")
    if not reason or not reason.strip():
        raise UserError("an alias move needs a reason: give -m REASON")
    check_message(reason)
    vid = reg.resolve(rev)
    old = reg.read_ref(R.ALIASES + name)
    if old == vid:
        return {"name": name, "id": vid, "old": old, "moved": False}
    reg.move_ref(R.ALIASES + name, new=vid, expected=old, reason=f"alias: {reason.strip()}")
    return {"name": name, "id": vid, "old": old, "moved": True, "mlflow": mirror_alias(reg, name, vid)}


# --- revert ------------------------------------------------------------------------------------

def revert(reg, rev: str, *, to: str | None = None, message: str = "") -> dict:
    """Undo ``rev`` on the current branch: a new version whose adapter is that of ``rev``'s first
    parent (or of ``to``), with the old HEAD as its only parent. History is never rewritten. The
    new version carries the scores of the state it restores, with a pointer to where they were
    measured.

    >>> revert(Registry.open(), "HEAD", message="drifted on the anchors")   # doctest: +SKIP
    """
    check_message(message)
    with reg.read() as c:
        ref, head = R.head_state(c)
        if head is None:
            raise UserError(f"{R.short_name(ref)} has no versions yet; there is nothing to revert")
        rev_id = resolve_revision(c, rev)
        target_id = _revert_target(c, rev, rev_id, head, to)
        rev_manifest, target, head_manifest = (load_manifest(c, v) for v in (rev_id, target_id, head))
    adapter = _check_revert(reg, target, target_id, head, head_manifest)
    subject = (rev_manifest.get("message") or "").strip().splitlines()
    reason = message.strip() or f'undo "{subject[0] if subject else rev_manifest["kind"]}", back to {target_id[:12]}'
    manifest = build_manifest(
        base=head_manifest["base"], parents=[head], kind="revert", status="accepted", adapter=adapter,
        train={"source": "revert"}, scores=list(target.get("scores") or []), author=R.actor(),
        message=f"Revert {rev_id[:12]}: {reason}",
        extra={"revert": {"of": rev_id, "to": target_id, "reason": reason, "scores_from": target_id},
               **({"headline": target["headline"]} if target.get("headline") else {})},
    )
    vid = reg.record(manifest, ref=ref, expected=head, reason=f"revert: {manifest['message']}")
    return {"id": vid, "ref": R.short_name(ref), "parent": head, "of": rev_id, "to": target_id,
            "adapter": adapter["weights"] if adapter else None, "message": manifest["message"]}


def _revert_target(c, rev: str, rev_id: str, head: str, to: str | None) -> str:
    if rev_id not in ancestors(c, head):
        raise UserError(f"{rev} ({rev_id[:12]}) is not an ancestor of HEAD ({head[:12]}); check out a branch that contains it first")
    if to is not None:
        target_id = resolve_revision(c, to)
        if target_id == rev_id or target_id not in ancestors(c, rev_id):
            raise UserError(
                f"--to {to} ({target_id[:12]}) is not an ancestor of {rev} ({rev_id[:12]}); "
                f"revert goes back to a version before the one it undoes (see `seal log {rev}`)"
            )
        return target_id
    ps = parents_of(c, rev_id)
    if not ps:
        raise UserError(f"{rev} ({rev_id[:12]}) is the root, the bare base model; there is nothing before it to go back to")
    return ps[0]


def _check_revert(reg, target: dict, target_id: str, head: str, head_manifest: dict) -> dict | None:
    if target["base"] != head_manifest["base"]:
        raise UserError(f"{target_id[:12]} is on another base than HEAD; revert only within one base")
    adapter = target.get("adapter") or None
    if adapter == (head_manifest.get("adapter") or None):
        raise UserError(f"HEAD ({head[:12]}) already has the adapter of {target_id[:12]}; there is nothing to revert")
    if adapter and not reg.store.has(adapter["weights"]):
        raise UserError(f"blob {adapter['weights']} of {target_id[:12]} is missing; run `seal verify`")
    return adapter
