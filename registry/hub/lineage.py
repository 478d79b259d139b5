"""The lineage format, ``seal/lineage.json`` (``seal.lineage/2``): building it, and checking a pulled one.

One document per pushed version::

    {"format": "seal.lineage/2",
     "head": "<version id>",
     "base": {"id", "name", "revision", "source"},
     "signers": {"<signer id>": "<public key hex>"},
     "versions": [{"id", "manifest", "signature", "signer"}, ...],   parents first
     "blobs": {"sha256:<hex>": <size in bytes>},      each at seal/blobs/<hex> in the same commit
     "withheld": {"sha256:<hex>": "trigger" | "self_edit" | "eval"}}   data kept by the publisher

``versions`` holds the head, all its ancestors, and the rejected attempts made on that path (a
rejected version whose parents are all on it), so the puller's audit shows what was tried. Every
blob those manifests name is in ``blobs`` or, for data only, in ``withheld``; the publisher's
policy is a blob like any other, so it travels with the versions that cite it.

The document itself is not signed: each manifest is (its id is the hash of its bytes, and the
signature covers the id). So a pull trusts nothing else in it: sizes are checked against the Hub's
listing and a limit, blob bytes against their digests, and ``withheld`` may only name data.

>>> topo_order({"b": ["a"], "a": []}, {"a": "1", "b": "2"})
['a', 'b']
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field

from ..errors import ManifestInvalid, PullRefused, UserError
from ..store.objects import check_manifest, is_digest, is_hex64, referenced_blobs, version_id
from ..store.sql import Conn
from .layout import LINEAGE_FILE, short_id
from .withheld import DATA_FIELDS

LINEAGE_FORMAT = "seal.lineage/2"


def topo_order(parents: dict[str, list[str]], created: dict[str, str]) -> list[str]:
    """Every id in ``parents``, parents before children, oldest first among those ready (deterministic)."""
    members = set(parents)
    waiting = {v: sum(1 for p in ps if p in members) for v, ps in parents.items()}
    children: dict[str, list[str]] = {}
    for v, ps in parents.items():
        for p in ps:
            if p in members:
                children.setdefault(p, []).append(v)
    ready = [(created[v], v) for v, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        _, v = heapq.heappop(ready)
        out.append(v)
        for c in children.get(v, []):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, (created[c], c))
    if len(out) != len(members):
        raise UserError("the lineage has a cycle; it cannot be ordered (run `seal verify`)")
    return out


def ancestors_in(parents: dict[str, list[str]], vid: str) -> set[str]:
    """``vid`` and every version reachable through ``parents`` from it (within the map)."""
    seen, stack = {vid}, [vid]
    while stack:
        for p in parents.get(stack.pop(), []):
            if p in parents and p not in seen:
                seen.add(p)
                stack.append(p)
    return seen


def attempts_on(parents: dict[str, list[str]], statuses: dict[str, str], path: set[str]) -> set[str]:
    """Rejected versions, off ``path``, whose parents are all on it."""
    return {v for v, ps in parents.items()
            if v not in path and statuses.get(v) == "rejected" and ps and set(ps) <= path}


def blob_roles(manifests) -> dict[str, str]:
    """Digest → role (``weights``, ``policy``, a data field, or ``other``) over many manifests.

    A digest is data only if every place that names it is a data field, so nothing else can be
    withheld.

    >>> d = "sha256:" + "a" * 64
    >>> blob_roles([{"trigger": d}]), blob_roles([{"trigger": d, "probes": {"x": d}}])
    ({'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa': 'trigger'}, {'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa': 'other'})
    """
    seen: dict[str, set[str]] = {}
    for m in manifests:
        for key, value in m.items():
            for digest in referenced_blobs({key: value}):
                seen.setdefault(digest, set()).add(_role(key, value, digest))
    return {d: next((r for r in ("weights", "policy", "other") if r in roles), min(roles)) for d, roles in seen.items()}


def _role(key: str, value, digest: str) -> str:
    if key in DATA_FIELDS or key == "policy":
        return key
    if key == "adapter" and isinstance(value, dict) and value.get("weights") == digest \
            and digest not in referenced_blobs({k: v for k, v in value.items() if k != "weights"}):
        return "weights"
    return "other"


# --- the registry side ---------------------------------------------------------------------------

@dataclass
class Lineage:
    """A version's ancestry and the rejected attempts along it, as this registry records them."""

    head: str
    order: list[str]  # parents first
    parents: dict[str, list[str]]
    manifests: dict[str, dict]
    signatures: dict[str, tuple[str | None, str | None]]  # id -> (signature, signer)
    public_keys: dict[str, str]  # signer -> public key hex
    base: dict

    def members(self, vid: str) -> list[str]:
        """What the lineage document of ``vid`` holds: its ancestors and their attempts, parents first."""
        path = ancestors_in(self.parents, vid)
        statuses = {v: m["status"] for v, m in self.manifests.items()}
        keep = path | attempts_on(self.parents, statuses, path)
        return [v for v in self.order if v in keep]


def load_lineage(conn: Conn, vid: str) -> Lineage:
    """Read ``vid``'s lineage in a few queries: ancestry by one recursive query, then the attempts."""
    from ..bases import get_base
    from ..store.graph import ancestors, attempts_on_path

    path = sorted(ancestors(conn, vid))
    ids = sorted(set(path) | attempts_on_path(conn, path))
    manifests, sigs = {}, {}
    for v, text, signature, signer in conn.all_in("SELECT id, manifest, signature, signer FROM versions "
                                            "WHERE id IN ({marks})", ids):
        manifests[v] = json.loads(text)
        sigs[v] = (signature, signer)
    missing = [v for v in ids if v not in manifests]
    if missing:
        raise UserError(f"version {short_id(missing[0])} is referenced but missing; run `seal verify`")
    parents = {v: list(manifests[v]["parents"]) for v in ids}
    on_path = set(path)
    keep = on_path | attempts_on(parents, {v: m["status"] for v, m in manifests.items()}, on_path)
    parents = {v: ps for v, ps in parents.items() if v in keep}
    keys = {r[0]: r[1] for r in conn.all("SELECT id, public_key FROM signers")}
    order = topo_order(parents, {v: manifests[v]["created_at"] for v in parents})
    base = get_base(conn, manifests[vid]["base"])
    return Lineage(vid, order, parents, {v: manifests[v] for v in parents}, {v: sigs[v] for v in parents}, keys, base)


def lineage_document(lineage: Lineage, vid: str, *, sizes: dict[str, int], withheld: dict[str, str]) -> dict:
    """``seal/lineage.json`` for ``vid``. ``sizes``: every shipped blob's size; ``withheld``: data kept back."""
    items, signer_keys, blobs, kept = [], {}, {}, {}
    for v in lineage.members(vid):
        signature, signer = lineage.signatures[v]
        if not signature or not signer or signer not in lineage.public_keys:
            raise UserError(f"version {short_id(v)} is not signed by a known signer; run `seal verify`")
        signer_keys[signer] = lineage.public_keys[signer]
        manifest = lineage.manifests[v]
        items.append({"id": v, "manifest": manifest, "signature": signature, "signer": signer})
        for digest in referenced_blobs(manifest):
            if digest in withheld:
                kept[digest] = withheld[digest]
            else:
                blobs[digest] = sizes[digest]
    base = {k: lineage.base.get(k) for k in ("id", "name", "revision", "source")}
    return {"format": LINEAGE_FORMAT, "head": vid, "base": base, "signers": signer_keys, "versions": items,
            "blobs": dict(sorted(blobs.items())), "withheld": dict(sorted(kept.items()))}


def lineage_bytes(doc: dict) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


# --- the puller's side ---------------------------------------------------------------------------

@dataclass
class CheckedLineage:
    """A lineage.json that passed every check that needs no blob, with what it takes to import it."""

    head: str
    to_import: list[str]  # parents first: the head's new ancestors, then attempts along them
    manifests: dict[str, dict]  # every manifest in the document (each checked)
    signatures: dict[str, tuple[str, str]]  # of the versions to import
    signer_keys: dict[str, str]
    sizes: dict[str, int]  # declared sizes of shipped blobs
    withheld: dict[str, str] = field(default_factory=dict)  # digest -> data field, for versions imported
    attempts: set[str] = field(default_factory=set)
    path: set[str] = field(default_factory=set)  # the head and its ancestors that are new here

    def needed_blobs(self) -> list[str]:
        """Every blob the versions to import name, except withheld data, in a stable order."""
        seen: dict[str, None] = {}
        for v in self.to_import:
            for d in referenced_blobs(self.manifests[v]):
                if d not in self.withheld:
                    seen.setdefault(d)
        return list(seen)


def parse_lineage(data: bytes, where: str) -> dict:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise PullRefused(f"{where}: {LINEAGE_FILE} is not valid JSON ({str(e)[:80]}); nothing was imported") from None
    return doc


def doc_ids(doc) -> list[str]:
    """Every id a document names (its versions and their parents), for a lookup of what is local."""
    ids: set[str] = set()
    for item in (doc.get("versions") if isinstance(doc, dict) and isinstance(doc.get("versions"), list) else []):
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            ids.add(item["id"])
            manifest = item.get("manifest")
            if isinstance(manifest, dict) and isinstance(manifest.get("parents"), list):
                ids.update(p for p in manifest["parents"] if isinstance(p, str))
    return sorted(i for i in ids if is_hex64(i))


def known_ids(conn: Conn, ids: list[str]) -> set[str]:
    return {r[0] for r in conn.all_in("SELECT id FROM versions WHERE id IN ({marks})", ids)}


def check_lineage(doc, *, local_base: dict, known: set[str], where: str) -> CheckedLineage:
    """Every check on a pulled lineage.json that needs no blob. ``known``: ids already in this registry.

    A pulled signer's key is used only because every signature it made here verifies against it
    and every id it signed is the hash of its manifest: that proves who recorded these exact
    versions; whether to trust that key is the trust file's business (see ``seal pull --trust``).
    """

    def refuse(why: str):
        raise PullRefused(f"{where}: {why}; nothing was imported")

    if not isinstance(doc, dict) or doc.get("format") != LINEAGE_FORMAT:
        refuse(f"{LINEAGE_FILE} is not a {LINEAGE_FORMAT} document")
    items, keys, base = doc.get("versions"), doc.get("signers"), doc.get("base")
    blobs, withheld, head = doc.get("blobs"), doc.get("withheld", {}), doc.get("head")
    if not all(isinstance(x, t) for x, t in ((items, list), (keys, dict), (base, dict), (blobs, dict), (withheld, dict))):
        refuse(f"{LINEAGE_FILE} lacks versions, signers, base, blobs or withheld")
    _check_blob_tables(blobs, withheld, refuse)
    _check_keys(keys, refuse)
    manifests, sigs = _check_versions(items, keys, refuse)
    if not isinstance(head, str) or head not in manifests:
        refuse(f"the head version {str(head)[:12]} is not in {LINEAGE_FILE}")
    if base.get("id") != local_base["id"]:
        raise PullRefused(
            f"pulled lineage is on base {base.get('name')} ({str(base.get('id'))[:12]}); this registry is on "
            f"{local_base['name']} ({local_base['id'][:12]}); pull into a registry on that base "
            f"(`seal init --base ...`)"
        )
    closure = _closure(head, manifests, known, local_base, refuse)
    statuses = {v: m["status"] for v, m in manifests.items()}
    parents = {v: list(m["parents"]) for v, m in manifests.items()}
    attempts = {v for v in attempts_on(parents, statuses, closure | known) if v not in known}
    for v in attempts:
        if manifests[v]["base"] != local_base["id"]:
            refuse(f"attempt {short_id(v)} is on another base")
    members = closure | attempts
    head_adapter = manifests[head].get("adapter") or {}
    if not is_digest(head_adapter.get("weights")):
        refuse(f"the head version {short_id(head)} has no adapter")
    kept = _check_completeness(members, manifests, blobs, withheld, refuse)
    order = topo_order({v: [p for p in parents[v] if p in members] for v in members},
                       {v: manifests[v]["created_at"] for v in members})
    signers = {sigs[v][1] for v in members}
    return CheckedLineage(head, order, manifests, {v: sigs[v] for v in members},
                          {s: keys[s] for s in signers}, dict(blobs), kept, attempts, closure)


def _check_blob_tables(blobs: dict, withheld: dict, refuse) -> None:
    for digest, size in blobs.items():
        if not is_digest(digest) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            refuse(f"{LINEAGE_FILE} lists a blob with a malformed digest or size")
    for digest, role in withheld.items():
        if not is_digest(digest) or role not in DATA_FIELDS or digest in blobs:
            refuse(f"{LINEAGE_FILE} withholds {str(digest)[:20]!r} as {str(role)[:20]!r}; only data "
                   f"({', '.join(DATA_FIELDS)}) may be withheld")


def _check_keys(keys: dict, refuse) -> None:
    from ..store.signing import signer_id

    for sid, pub in keys.items():
        if not is_hex64(pub) or signer_id(pub) != sid:
            refuse(f"signer {str(sid)[:12]} does not match its public key")


def _check_versions(items: list, keys: dict, refuse) -> tuple[dict, dict]:
    from ..store.signing import check_signature

    manifests: dict[str, dict] = {}
    sigs: dict[str, tuple[str, str]] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("manifest"), dict):
            refuse(f"{LINEAGE_FILE} holds an entry that is not a version")
        vid, manifest = item.get("id"), item["manifest"]
        if not is_hex64(vid):
            refuse(f"{LINEAGE_FILE} holds a malformed version id {str(vid)[:20]!r}")
        if vid in manifests:
            refuse(f"version {short_id(vid)} appears twice in {LINEAGE_FILE}")
        try:
            actual = version_id(manifest)
        except Exception:  # rfc8785 refuses NaN, huge ints, non-string keys…
            refuse(f"the manifest of {short_id(vid)} cannot be put in canonical form")
        if actual != vid:
            refuse(f"the manifest of version {short_id(vid)} does not hash to its id (it was altered)")
        signature, signer = item.get("signature"), item.get("signer")
        if not isinstance(signature, str) or not isinstance(signer, str) or signer not in keys:
            refuse(f"version {short_id(vid)} is not signed by a key included in {LINEAGE_FILE}")
        if not check_signature(keys[signer], vid, signature):
            refuse(f"the signature of version {short_id(vid)} does not verify")
        try:
            check_manifest(manifest)
        except ManifestInvalid as e:
            refuse(f"the manifest of {short_id(vid)} breaks seal's schema ({e})")
        manifests[vid] = manifest
        sigs[vid] = (signature, signer)
    return manifests, sigs


def _closure(head: str, manifests: dict, known: set[str], local_base: dict, refuse) -> set[str]:
    """The head and its ancestors that this registry lacks; each must be in the document."""
    closure, stack = set(), [head]
    while stack:
        v = stack.pop()
        if v in closure or v in known:
            continue
        if v not in manifests:
            refuse(f"{LINEAGE_FILE} is incomplete: parent {short_id(v)} is neither in it nor in this registry")
        m = manifests[v]
        if m["base"] != local_base["id"]:
            raise PullRefused(f"pulled lineage is on base {m['base'][:12]}; this registry is on "
                              f"{local_base['name']} ({local_base['id'][:12]}); nothing was imported")
        closure.add(v)
        stack.extend(m["parents"])
    return closure


def _check_completeness(members: set[str], manifests: dict, blobs: dict, withheld: dict, refuse) -> dict[str, str]:
    """Every blob the members name is shipped or withheld data; the withheld ones that matter."""
    roles = blob_roles(manifests[v] for v in members)
    kept = {}
    for v in sorted(members):
        for digest in referenced_blobs(manifests[v]):
            if digest in blobs:
                continue
            if digest not in withheld:
                refuse(f"{LINEAGE_FILE} is incomplete: blob {digest[:19]}… of version {short_id(v)} is neither "
                       f"shipped nor withheld")
            if roles.get(digest) not in DATA_FIELDS:
                refuse(f"{LINEAGE_FILE} withholds blob {digest[:19]}… of version {short_id(v)}, which is its "
                       f"{roles.get(digest)}, not data; only data may be withheld")
            kept[digest] = withheld[digest]
    return kept
