"""Recompute everything: digests, manifest ids, rows, parent edges, signatures, refs and the journal.

What is checked, and what it catches:
- each manifest hashes to its id, is canonical, follows the schema, and its rows match it
  (a row changed behind the API's back);
- each version and each reflog row is signed by a key in the trust file (rows inserted by SQL
  alone, with a signer inserted the same way);
- each ref equals the new value of its last reflog row, and each ref's reflog is a chain
  (a ref re-pointed by SQL; an erased reflog row);
- each blob still hashes to its name, each adapter fits the base (a flipped byte; an adapter
  that cannot load); a blob may be missing only when ``refs/meta/withheld`` records that its
  publisher withheld it (see :mod:`seal.registry.hub.withheld`);
- every version and ref move copied into the object store is still in the database (a version
  rolled back, or a reflog erased, by SQL).

>>> faults = verify_registry(Registry.open())     # doctest: +SKIP
>>> [f["version"] for f in faults]                 # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass

from .errors import ManifestInvalid
from .store.objects import canonical_json, check_manifest, referenced_blobs, sha256_hex
from .store.refs import META, REFLOG_FORMAT, SYMBOLIC, reflog_entry
from .store.signing import check_signature
from .store.versions import version_rows

_VERSION_COLUMNS = ("base_id", "kind", "status", "created_at", "author", "message", "adapter_digest",
                    "headline_metric", "headline_value")
JOURNAL_MAX_BYTES = 4 << 20


@dataclass(frozen=True)
class Fault:
    version: str | None
    object: str
    fault: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Snapshot:
    """Every row verify looks at, read in one transaction."""

    versions: list[dict]
    parents: dict
    bases: dict
    signers: dict
    refs: list[tuple[str, str]]
    reflog: list[dict]


def _snapshot(reg) -> Snapshot:
    with reg.read() as c:
        parents = defaultdict(list)
        for r in c.dicts("SELECT version_id, position, parent_id FROM version_parents ORDER BY version_id, position"):
            parents[r["version_id"]].append(r)
        return Snapshot(
            versions=c.dicts("SELECT * FROM versions"), parents=parents,
            bases={r["id"]: r for r in c.dicts("SELECT * FROM bases")},
            signers={r["id"]: r for r in c.dicts("SELECT * FROM signers")},
            refs=[(r[0], r[1]) for r in c.all("SELECT name, target FROM refs ORDER BY name")],
            reflog=c.dicts("SELECT * FROM reflog ORDER BY id"),
        )


def verify_registry(reg, *, check_blobs: bool = True) -> list[dict]:
    """Every fault found, as ``{"version": id or None, "object": what, "fault": why}``."""
    snap = _snapshot(reg)
    trusted = {k: v.public_key for k, v in reg.trusted().items()}
    faults: list[Fault] = []
    ids = {r["id"] for r in snap.versions}
    blob_ok: dict[str, bool] = {}
    if check_blobs:  # data a publisher withheld (`seal push --no-data`) is missing on purpose, by a signed record
        from .hub.withheld import withheld_digests

        blob_ok.update({d: True for d in withheld_digests(reg) if not reg.store.has(d)})
    for row in snap.versions:
        faults += _check_version(reg, row, snap, ids, trusted, blob_ok if check_blobs else None)
    faults += _check_orphans(snap, ids)
    faults += _check_signers(snap, trusted)
    faults += _check_bases(reg, snap)
    faults += _check_refs(reg, snap, ids, trusted)
    if check_blobs:
        faults += _check_store(reg, snap, ids, blob_ok)
    return [f.to_json() for f in faults]


def _check_version(reg, row, snap, ids, trusted, blob_ok) -> list[Fault]:
    vid, text = row["id"], row["manifest"]
    if sha256_hex(text.encode("utf-8")) != vid:
        return [Fault(vid, "manifest", "the manifest does not hash to the version id: the row was changed")]
    try:
        manifest = json.loads(text)
        check_manifest(manifest)
    except (ValueError, ManifestInvalid) as e:
        return [Fault(vid, "manifest", f"the manifest breaks the schema: {e}")]
    out = []
    if canonical_json(manifest).decode("utf-8") != text:
        out.append(Fault(vid, "manifest", "the manifest is not in RFC 8785 canonical form"))
    out += _check_rows(row, manifest, snap, ids)
    out += _check_version_signature(row, trusted)
    if blob_ok is not None:
        out += _check_blobs(reg, vid, manifest, blob_ok, snap)
    return out


def _check_rows(row, manifest, snap, ids) -> list[Fault]:
    vid, out = row["id"], []
    expected = version_rows(manifest, vid, row["signature"], row["signer"])
    for col in _VERSION_COLUMNS:
        if expected["version"][col] != row[col]:
            out.append(Fault(vid, f"versions.{col}", f"column holds {row[col]!r} but the manifest says {expected['version'][col]!r}"))
    edges = snap.parents.get(vid, [])
    if [p["parent_id"] for p in edges] != manifest["parents"] or [p["position"] for p in edges] != list(range(len(edges))):
        out.append(Fault(vid, "version_parents", "parent edges differ from the manifest's parents"))
    out += [Fault(vid, "version_parents", f"parent {p[:12]} is missing") for p in manifest["parents"] if p not in ids]
    if manifest["base"] not in snap.bases:
        out.append(Fault(vid, "base", f"base {manifest['base'][:12]} is not recorded"))
    return out


def _check_version_signature(row, trusted) -> list[Fault]:
    vid = row["id"]
    if not row["signature"] or not row["signer"]:
        return [Fault(vid, "signature", "the version is not signed")]
    if row["signer"] not in trusted:
        return [Fault(vid, "signature", f"signed by {row['signer'][:12]}, a key that is not in the trust file")]
    if not check_signature(trusted[row["signer"]], vid, row["signature"]):
        return [Fault(vid, "signature", "the signature does not match the version id")]
    return []


def _check_blobs(reg, vid, manifest, blob_ok, snap) -> list[Fault]:
    out = []
    for digest in referenced_blobs(manifest):
        if digest not in blob_ok:
            blob_ok[digest] = reg.store.has(digest) and reg.store.check(digest)
        if not blob_ok[digest]:
            why = "is corrupt (its bytes no longer hash to its name)" if reg.store.has(digest) else "is missing"
            out.append(Fault(vid, "blob", f"blob {digest} {why}"))
    adapter = manifest.get("adapter")
    if adapter and blob_ok.get(adapter["weights"]):
        problem = _adapter_problem(reg, adapter, snap.bases.get(manifest["base"]))
        if problem:
            out.append(Fault(vid, "adapter", problem))
    return out


def _adapter_problem(reg, adapter: dict, base_row: dict | None) -> str | None:
    from .adapters import check_adapter_bytes
    from .errors import UserError

    shapes = None
    if base_row:
        try:
            shapes = json.loads(base_row["info"]).get("shapes")
        except (TypeError, ValueError):
            shapes = None
    try:
        check_adapter_bytes(adapter["config"], reg.store.path_of(adapter["weights"]), base_shapes=shapes)
    except UserError as e:
        return f"the adapter cannot load: {e}"
    return None


def _check_orphans(snap, ids) -> list[Fault]:
    return [Fault(v, "version_parents", "edges recorded for a version that does not exist") for v in set(snap.parents) - ids]


def _check_bases(reg, snap) -> list[Fault]:
    """Each base row equals its signed record (``refs/meta/base/<id>``, whose move the reflog signs)."""
    from .bases import BASE_REF, base_doc

    pinned = {name[len(BASE_REF):]: target for name, target in snap.refs if name.startswith(BASE_REF)}
    out = _check_config_base(reg.config, snap)
    for base_id, row in snap.bases.items():
        digest = pinned.get(base_id)
        if digest is None:
            if pinned:  # a registry that pins its bases: an unpinned row was added behind seal's back
                out.append(Fault(None, f"base {base_id[:12]}", "has no signed record (refs/meta/base/…)"))
            continue
        try:
            recorded = json.loads(reg.store.get(digest))
            same = recorded == json.loads(canonical_json(base_doc(row)))
        except Exception:
            same = False
        if not same:
            out.append(Fault(None, f"base {base_id[:12]}", "the row differs from its signed record: it was "
                             "changed behind seal's back (a base that checkouts would name and load)"))
    return out


def _check_config_base(config, snap) -> list[Fault]:
    """config.toml claims the base every edit loads: it must be a base this registry records."""
    row = snap.bases.get(config.base_id)
    if row is None:
        return [Fault(None, "config.toml", f"[base] id = {str(config.base_id)[:12]}… is no base this registry "
                      f"records ({', '.join(b[:12] for b in snap.bases) or 'none'}); restore the id `seal init` wrote")]
    if config.base_name is not None and config.base_name != row["name"]:
        return [Fault(None, "config.toml", f"[base] name = {config.base_name!r} but base {row['id'][:12]} is "
                      f"{row['name']!r}; restore the name `seal init` wrote")]
    return []


def _check_signers(snap, trusted) -> list[Fault]:
    return [Fault(None, f"signer {sid[:12]}", f"the signers table names key {sid[:12]} ({row['name']}), "
                  f"which is not in the trust file") for sid, row in snap.signers.items() if sid not in trusted]


def _check_refs(reg, snap, ids, trusted) -> list[Fault]:
    out, last, seen = [], {}, set()
    for entry in snap.reflog:
        out += _check_reflog_row(entry, trusted, last.get(entry["ref"]))
        key = (entry["ref"], entry["old"], entry["new"], entry["time"], entry.get("signature"))
        if key in seen:
            out.append(Fault(None, f"reflog {entry['id']} ({entry['ref']})", "repeats an earlier signed move "
                             "word for word: a replayed row, inserted behind seal's back"))
        seen.add(key)
        last[entry["ref"]] = entry
    current = dict(snap.refs)
    for name, target in snap.refs:
        out += _check_ref_target(reg, name, target, ids)
        row = last.get(name)
        if row is None:
            out.append(Fault(None, f"ref {name}", "has no reflog row: it was created behind seal's back"))
        elif row["new"] != target:
            out.append(Fault(None, f"ref {name}", f"points at {_short(target)} but its last reflog row moved it to "
                             f"{_short(row['new'])}: it was moved behind seal's back"))
    for name, row in last.items():
        if name not in current and row["new"] is not None:
            out.append(Fault(None, f"ref {name}", f"was deleted behind seal's back (its reflog says {_short(row['new'])})"))
    return out


def _check_ref_target(reg, name, target, ids) -> list[Fault]:
    if name.startswith(META):
        return [] if reg.store.has(target) else [Fault(None, f"ref {name}", f"points at {target}, which is not in the object store")]
    if not target.startswith(SYMBOLIC) and target not in ids:
        return [Fault(None, f"ref {name}", f"points at {_short(target)}, which is not a version")]
    return []


def _check_reflog_row(entry, trusted, previous) -> list[Fault]:
    where = f"reflog {entry['id']} ({entry['ref']})"
    out = []
    if previous is not None and str(entry["time"]) < str(previous["time"]):
        out.append(Fault(None, where, f"is dated {entry['time']}, before the row that precedes it "
                         f"({previous['time']}): a replayed or forged row"))
    if previous is not None and entry["old"] != previous["new"]:
        out.append(Fault(None, where, f"moves from {_short(entry['old'])} but the row before left the ref at "
                         f"{_short(previous['new'])}: a reflog row was erased or forged"))
    if not entry.get("signature"):
        return out + [Fault(None, where, "is not signed (inserted by SQL, or written before seal signed its reflog)")]
    if entry.get("signer") not in trusted:
        return out + [Fault(None, where, f"is signed by {str(entry.get('signer'))[:12]}, a key not in the trust file")]
    doc = reflog_entry(entry["ref"], entry["old"], entry["new"], actor=entry["actor"], reason=entry["reason"],
                       time=entry["time"], signer=entry["signer"])
    if not check_signature(trusted[entry["signer"]], canonical_json(doc), entry["signature"]):
        out.append(Fault(None, where, "its signature does not match its content: the row was changed"))
    return out


def _check_store(reg, snap, ids, blob_ok) -> list[Fault]:
    """Every blob intact; every journaled version and reflog row still in the database."""
    out, late_moves, late_versions = [], [], []
    moves = {_move_key(e) for e in snap.reflog}
    out += [Fault(None, f"object store file {path}", "is not a blob seal wrote (its name is no sha256 digest); "
                  "move it out of the object store") for path in getattr(reg.store, "iter_strays", list)()]
    for digest in reg.store.iter_digests():
        if digest not in blob_ok and not reg.store.check(digest):
            out.append(Fault(None, f"blob {digest}", "is corrupt (its bytes no longer hash to its name)"))
            continue
        doc = journal_doc(reg, digest)
        if doc is None:
            continue
        if doc.get("format") == REFLOG_FORMAT:
            if _move_key(doc) not in moves:
                late_moves.append(doc)
        elif digest[7:] not in ids:
            late_versions.append(digest[7:])
    # A writer journals after it commits, so the store may list what was committed after the
    # snapshot was read: look again before calling anything erased.
    moves, ids = _recent(reg, late_moves, late_versions)
    out += [Fault(None, f"reflog of {doc.get('ref')}", f"the move to {_short(doc.get('new'))} at {doc.get('time')} "
                  "is in the object store but not in the database: it was erased")
            for doc in late_moves if _move_key(doc) not in moves]
    out += [Fault(vid, "versions", "recorded in the object store but missing from the database: "
                  "it was rolled back or deleted behind seal's back") for vid in late_versions if vid not in ids]
    return out


def _move_key(entry: dict) -> tuple:
    return (entry.get("ref"), entry.get("old"), entry.get("new"), entry.get("time"), entry.get("signature"))


def _recent(reg, late_moves: list[dict], late_versions: list[str]) -> tuple[set, set]:
    """The moves and versions among these that the database holds now (a fresh snapshot)."""
    if not late_moves and not late_versions:
        return set(), set()
    with reg.read() as c:
        moves = {_move_key(r) for doc in late_moves
                 for r in c.dicts("SELECT ref, old, new, time, signature FROM reflog WHERE ref = ? AND time = ?",
                                  (doc.get("ref"), doc.get("time")))}
        ids = {vid for vid in late_versions if c.one("SELECT 1 FROM versions WHERE id = ?", (vid,))}
    return moves, ids


def journal_doc(reg, digest: str) -> dict | None:
    """The journal document stored as blob ``digest``, or None when the blob is not one."""
    try:
        size, _ = reg.store.stat(digest)
        if size > JOURNAL_MAX_BYTES:
            return None
        data = reg.store.get(digest)
    except Exception:
        return None
    if not data.startswith(b"{"):
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    if doc.get("format") == REFLOG_FORMAT:
        return doc
    if doc.get("format") == "seal.version/1" and "parents" in doc and sha256_hex(data) == digest[7:]:
        return doc
    return None


def _short(value) -> str:
    if value is None:
        return "nothing"
    return value[:12] if not str(value).startswith(SYMBOLIC) else value[len(SYMBOLIC):]
