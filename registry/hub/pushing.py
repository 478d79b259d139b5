"""`seal push`: a version and the ancestors the Hub branch lacks, one Hub commit each.

A push is private by default: it creates a missing repo private, and refuses to push into a
public repo unless ``public=True`` (``--public``), which also makes an existing private repo
public. Each commit names the branch head it was built on (``parent_commit``), so two pushes
racing for a branch cannot both win: the Hub answers 412 to the second, a :class:`RefConflict`.

What travels: every version on the pushed path with the rejected attempts made along it, and
every blob they name (adapters, the publisher's policy, probe sets, data), each once, under
``seal/blobs/``. The plan says which data blobs (trigger passages, self-edits, eval sets) it
uploads; ``data=False`` (``--no-data``) keeps them here, and the lineage then lists them under
``withheld``. Seal tags on the path become Hub tags of the same name; aliases become Hub tags
``alias-<name>``, moved when the alias moved.

>>> plan = plan_push(Registry.open(), "me/my-adapter", "HEAD")       # doctest: +SKIP
>>> [u.role for u in plan.uploads if u.is_data]                        # doctest: +SKIP
['trigger', 'self_edit']
>>> execute_push(Registry.open(), plan)["pushed"]                      # doctest: +SKIP
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..adapters import ADAPTER_CONFIG_FILE, WEIGHTS_FILE
from ..errors import RefConflict, UserError
from ..store import refs as R
from ..store.revisions import resolve_revision
from .card import model_card
from .errors import bounded_bar, hub_errors, quiet_unless_terminal
from .layout import (ALIAS_TAG, LINEAGE_FILE, README_FILE, alias_tag, blob_file, check_repo_id, config_bytes,
                     is_short_id_tag, max_lineage_bytes, short_id)
from .lineage import Lineage, ancestors_in, blob_roles, lineage_bytes, lineage_document, load_lineage
from .withheld import DATA_FIELDS, read_withheld


@dataclass(frozen=True)
class BlobUpload:
    """A blob a push sends (or, withheld, keeps), with its role and the versions that name it."""

    digest: str
    role: str
    size: int
    versions: tuple[str, ...]

    @property
    def is_data(self) -> bool:
        return self.role in DATA_FIELDS

    def to_json(self) -> dict:
        return {"digest": self.digest, "role": self.role, "size": self.size,
                "versions": [short_id(v) for v in self.versions]}


@dataclass
class PushPlan:
    """What a push will do, read from the registry and from the Hub branch at ``head_commit``."""

    repo_id: str
    branch: str
    vid: str
    head_commit: str  # the Hub branch head the first commit is built on (compare-and-swap)
    hub_head: str | None  # the version the Hub branch holds now
    to_push: list[str]
    lineage: Lineage
    sizes: dict[str, int]
    withheld: dict[str, str]
    hub_tags: dict[str, str] = field(default_factory=dict)  # every Hub tag -> commit
    set_tags: dict[str, str] = field(default_factory=dict)  # Hub tag to create or move -> version
    present: set[str] = field(default_factory=set)  # file names at head_commit
    uploads: list[BlobUpload] = field(default_factory=list)
    kept: list[BlobUpload] = field(default_factory=list)
    repo_url: str = ""
    private: bool = True
    make_public: bool = False
    retag: dict[str, str] = field(default_factory=dict)  # version -> Hub commit that lacks its tag


def plan_push(reg, repo_id: str, rev: str = "HEAD", *, branch: str = "main", public: bool = False,
              data: bool = True) -> PushPlan:
    """Read the registry and the Hub branch; decide what to send. Writes on the Hub only
    ``create_repo`` (private unless ``public``) and the branch, when they do not exist yet."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    R.check_ref_name(branch, "Hub branch")
    with reg.read() as conn:
        vid = resolve_revision(conn, rev)
        lineage = load_lineage(conn, vid)
        local_withheld = read_withheld(conn, reg.store)
        named = _named_refs(conn, set(lineage.members(vid)))
    if not lineage.manifests[vid].get("adapter"):
        raise UserError(f"{rev} ({short_id(vid)}) is the bare base model; there is no adapter to push")
    sizes, withheld = _blob_sizes(reg, lineage, data=data, local_withheld=local_withheld)
    api = HfApi()
    with hub_errors(repo_id, branch), quiet_unless_terminal(), \
            tempfile.TemporaryDirectory(prefix="push-", dir=reg.tmp_dir) as tmp:
        url, private = _open_repo(api, repo_id, public)
        refs = api.list_repo_refs(repo_id)
        branches = {b.name: b.target_commit for b in refs.branches}
        tags = {t.name: t.target_commit for t in refs.tags}
        if branch not in branches:
            start = _branch_start(api, repo_id, lineage, Path(tmp))
            api.create_branch(repo_id, branch=branch, revision=start, exist_ok=True)
            branches = {b.name: b.target_commit for b in api.list_repo_refs(repo_id).branches}
        head_commit = branches[branch]
        present, doc = _hub_state(api, repo_id, head_commit, Path(tmp))
        hub_ids = {item["id"] for item in doc["versions"]} if doc else set()
        path = ancestors_in(lineage.parents, vid)
        retag = _untagged(api, repo_id, head_commit, lineage, path & hub_ids, tags)
    hub_head = doc["head"] if doc else None
    to_push = _to_push(lineage, vid, path, hub_ids, hub_head, tags, repo_id, branch, rev)
    plan = PushPlan(repo_id, branch, vid, head_commit, hub_head, to_push, lineage, sizes, withheld, tags,
                    present=present, repo_url=str(url), private=private and not public,
                    make_public=private and public, retag=retag)
    plan.set_tags = _tags_to_set(plan, named, path)
    plan.uploads, plan.kept = _uploads(plan)
    return plan


def _named_refs(conn, members: set[str]) -> dict[str, str]:
    """Hub tag name -> version for the seal tags and aliases that point into the pushed lineage."""
    out = {}
    for name, target in R.list_refs(conn, R.TAGS):
        tag = name[len(R.TAGS):]
        if target in members:
            if tag.startswith(ALIAS_TAG) or is_short_id_tag(tag):
                raise UserError(f"seal tag {tag!r} would clash on the Hub with seal's own tags ('{ALIAS_TAG}NAME' "
                                f"carries aliases, 12-hex names carry version ids); rename it before pushing")
            out[tag] = target
    for name, target in R.list_refs(conn, R.ALIASES):
        if target in members:
            out[alias_tag(name[len(R.ALIASES):])] = target
    return out


def _blob_sizes(reg, lineage: Lineage, *, data: bool, local_withheld: dict) -> tuple[dict[str, int], dict[str, str]]:
    """Size of every blob that travels; data withheld (by ``data=False``, or never pulled here)."""
    roles = blob_roles(lineage.manifests.values())
    sizes: dict[str, int] = {}
    withheld: dict[str, str] = {}
    for digest, role in sorted(roles.items()):
        if role in DATA_FIELDS and (not data or (digest in local_withheld and not reg.store.has(digest))):
            withheld[digest] = role
            continue
        if not reg.store.has(digest):
            raise UserError(f"blob {digest} ({role}) is missing from the object store; run `seal verify`")
        sizes[digest] = reg.store.stat(digest)[0]
    return sizes, withheld


def _open_repo(api, repo_id: str, public: bool) -> tuple[str, bool]:
    """Create the repo (private unless ``public``); refuse a public one unless ``public``. (url, private)."""
    url = api.create_repo(repo_id, exist_ok=True, private=not public)
    private = bool(api.model_info(repo_id).private)
    if not private and not public:
        raise UserError(f"{repo_id} is public on the Hub; pass --public to publish to it (seal pushes privately "
                        f"by default), or push to another repo")
    return str(url), private


def _hub_state(api, repo_id: str, commit: str, tmp: Path) -> tuple[set[str], dict | None]:
    """(file names at ``commit``, its lineage document or None) — the document read within a limit."""
    info = api.model_info(repo_id, revision=commit, files_metadata=True)
    files = {s.rfilename: s.size for s in (info.siblings or [])}
    return set(files), _read_hub_lineage(api, repo_id, commit, files.get(LINEAGE_FILE, -1), tmp)


def _read_hub_lineage(api, repo_id: str, commit: str, size: int | None, tmp: Path) -> dict | None:
    import json

    if size == -1:
        return None
    limit = max_lineage_bytes()
    if size is not None and size > limit:
        raise UserError(f"{repo_id} holds a {LINEAGE_FILE} of {size} bytes, over the {limit} limit; push to another "
                        f"repo or raise SEAL_PULL_MAX_LINEAGE_BYTES")
    where = f"{repo_id}@{commit[:12]}"
    path = api.hf_hub_download(repo_id, LINEAGE_FILE, revision=commit, cache_dir=tmp,
                               tqdm_class=bounded_bar(limit, LINEAGE_FILE, where))
    try:
        doc = json.loads(Path(path).read_text("utf-8"))
        ids = {item["id"] for item in doc["versions"]}
        if doc["head"] not in ids:
            raise ValueError("head is not among the versions")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{repo_id} holds a {LINEAGE_FILE} that seal cannot read ({e}); push to another repo or --branch"
        ) from None
    return doc


def _branch_start(api, repo_id: str, lineage: Lineage, tmp: Path) -> str:
    """A new Hub branch starts at main when main holds an ancestor of what is pushed, else at the
    repo's first commit, so it never starts on an unrelated lineage."""
    commits = api.list_repo_commits(repo_id)
    _, doc = _hub_state(api, repo_id, commits[0].commit_id, tmp)
    if doc is not None and doc["head"] in lineage.parents:
        return commits[0].commit_id
    return commits[-1].commit_id


def _untagged(api, repo_id: str, head_commit: str, lineage: Lineage, on_hub: set[str], tags: dict) -> dict[str, str]:
    """A push cut off between its commit and its tag: find such commits by their title, to tag them now."""
    untagged = {short_id(v): v for v in on_hub if lineage.manifests[v]["kind"] != "root" and short_id(v) not in tags}
    retag: dict[str, str] = {}
    if untagged:
        for c in api.list_repo_commits(repo_id, revision=head_commit):
            m = re.match(r"seal ([0-9a-f]{12}):", c.title or "")
            if m and m[1] in untagged and untagged[m[1]] not in retag:
                retag[untagged[m[1]]] = c.commit_id
    return retag


def _to_push(lineage: Lineage, vid: str, path: set[str], hub_ids: set[str], hub_head: str | None, tags: dict,
             repo_id: str, branch: str, rev: str) -> list[str]:
    if vid in hub_ids:
        return []
    if hub_head is not None and hub_head not in path:
        raise RefConflict(f"hub:{repo_id}@{branch}", expected=None, actual=hub_head, message=(
            f"the Hub branch {repo_id}@{branch} holds version {short_id(hub_head)}, which is not an ancestor of "
            f"{rev} ({short_id(vid)}); run `seal pull {repo_id}` and merge, or push to another --branch"))
    to_push = [v for v in lineage.order if v in path and lineage.manifests[v]["kind"] != "root"
               and v not in hub_ids and short_id(v) not in tags]
    if vid not in to_push:
        to_push.append(vid)  # pushed before to another branch: this branch still needs its commit
    for v in to_push:
        if not lineage.manifests[v].get("adapter"):
            raise UserError(f"version {short_id(v)} ({lineage.manifests[v]['kind']}) has no adapter; "
                            f"seal pushes adapter versions only")
    return to_push


def _tags_to_set(plan: PushPlan, named: dict[str, str], path: set[str]) -> dict[str, str]:
    """The Hub tags to create or move. A seal tag already on the Hub at another version is refused."""
    out = {}
    for tag, v in sorted(named.items()):
        if v not in path or plan.lineage.manifests[v]["kind"] == "root":
            continue  # attempts and the root have no commit of their own
        current = plan.hub_tags.get(tag)
        commit = plan.hub_tags.get(short_id(v)) or plan.retag.get(v)
        if current is not None and current == commit:
            continue
        if current is not None and not tag.startswith(ALIAS_TAG):
            raise UserError(f"tag {tag} on the Hub ({plan.repo_id}) is not at version {short_id(v)} as here; tags do "
                            f"not move: delete it on the Hub or rename the seal tag, then push again")
        out[tag] = v
    return out


def _uploads(plan: PushPlan) -> tuple[list[BlobUpload], list[BlobUpload]]:
    """(blobs this push sends, data it withholds), each once, with the versions that name them."""
    from ..store.objects import referenced_blobs

    roles = blob_roles(plan.lineage.manifests.values())
    named: dict[str, list[str]] = {}
    for v in plan.to_push:
        for member in plan.lineage.members(v):
            for digest in referenced_blobs(plan.lineage.manifests[member]):
                users = named.setdefault(digest, [])
                if member not in users:
                    users.append(member)
    sent, kept = [], []
    for digest, users in named.items():
        if digest in plan.withheld:
            kept.append(BlobUpload(digest, plan.withheld[digest], 0, tuple(users)))
        elif blob_file(digest) not in plan.present:
            sent.append(BlobUpload(digest, roles[digest], plan.sizes[digest], tuple(users)))
    return sent, kept


def _blob_path(reg, digest: str) -> Path:
    path = reg.store.path_of(digest)
    if not path.is_file():
        raise UserError(f"blob {digest} is missing; run `seal verify`")
    if not reg.store.check(digest):  # never publish bytes that no longer match their name
        raise UserError(f"blob {digest} is corrupt; run `seal verify`")
    return path


def _commit_ops(reg, plan: PushPlan, v: str) -> list:
    from huggingface_hub import CommitOperationAdd

    manifest = plan.lineage.manifests[v]
    doc = lineage_document(plan.lineage, v, sizes=plan.sizes, withheld=plan.withheld)
    card = model_card(repo_id=plan.repo_id, base=plan.lineage.base, vid=v, manifest=manifest, lineage=doc["versions"])
    ops = [
        CommitOperationAdd(ADAPTER_CONFIG_FILE, config_bytes(manifest["adapter"]["config"])),
        CommitOperationAdd(WEIGHTS_FILE, str(_blob_path(reg, manifest["adapter"]["weights"]))),
        CommitOperationAdd(LINEAGE_FILE, lineage_bytes(doc)),
        CommitOperationAdd(README_FILE, card.encode("utf-8")),
    ]
    for digest in doc["blobs"]:
        name = blob_file(digest)
        if name not in plan.present:
            ops.append(CommitOperationAdd(name, str(_blob_path(reg, digest))))
            plan.present.add(name)
    return ops


def execute_push(reg, plan: PushPlan, *, create_pr: bool = False) -> dict:
    """One Hub commit per version in ``plan.to_push``, each built on the previous one, then the tags."""
    from huggingface_hub import HfApi

    api = HfApi()
    pushed: list[dict] = []
    parent, revision, pr_url = plan.head_commit, plan.branch, None
    commits = {v: c for v, c in plan.retag.items()}
    commits.update({v: plan.hub_tags[short_id(v)] for v in plan.lineage.parents if short_id(v) in plan.hub_tags})
    with hub_errors(plan.repo_id, plan.branch), quiet_unless_terminal():
        if plan.make_public:
            api.update_repo_settings(plan.repo_id, private=False)
        for v, oid in plan.retag.items():
            api.create_tag(plan.repo_id, tag=short_id(v), revision=oid, exist_ok=True)
        for i, v in enumerate(plan.to_push):
            manifest = plan.lineage.manifests[v]
            message = " ".join(str(manifest.get("message", "")).split()) or manifest["kind"]
            info = api.create_commit(
                plan.repo_id, _commit_ops(reg, plan, v), commit_message=f"seal {short_id(v)}: {message}"[:300],
                commit_description=f"seal version {v}\n\nkind {manifest['kind']}, status {manifest['status']}",
                revision=revision, parent_commit=parent, create_pr=create_pr and i == 0,
            )
            if create_pr and i == 0:
                revision, pr_url = info.pr_revision, info.pr_url
            parent = commits[v] = info.oid
            if short_id(v) not in plan.hub_tags:
                api.create_tag(plan.repo_id, tag=short_id(v), revision=info.oid, exist_ok=True)
            pushed.append({"id": v, "tag": short_id(v), "commit": info.oid, "url": info.commit_url})
        tags = _set_tags(api, plan, commits) if not create_pr else {}
    return {
        "repo_id": plan.repo_id, "branch": plan.branch, "id": plan.vid, "up_to_date": not pushed and not tags,
        "pushed": pushed, "commit": parent, "url": pushed[-1]["url"] if pushed else plan.repo_url, "pr_url": pr_url,
        "private": plan.private, "made_public": plan.make_public, "tags": tags,
        "uploaded": [u.to_json() for u in plan.uploads], "withheld": [k.to_json() for k in plan.kept],
    }


def _set_tags(api, plan: PushPlan, commits: dict[str, str]) -> dict[str, str]:
    """Create the seal tags and (re)point the alias tags; tag -> short id."""
    done = {}
    for tag, v in plan.set_tags.items():
        if v not in commits:
            continue
        if tag in plan.hub_tags:  # an alias that moved
            api.delete_tag(plan.repo_id, tag=tag)
        api.create_tag(plan.repo_id, tag=tag, revision=commits[v], exist_ok=True)
        done[tag] = short_id(v)
    return done


def push(reg, repo_id: str, rev: str = "HEAD", *, branch: str = "main", public: bool = False, data: bool = True,
         create_pr: bool = False) -> dict:
    """Push ``rev`` and the ancestors the Hub branch lacks, one commit per version, privately unless
    ``public``; a no-op when the branch already holds ``rev`` and its tags.

    >>> push(Registry.open(), "me/my-adapter", "main", data=False)    # doctest: +SKIP
    """
    plan = plan_push(reg, repo_id, rev, branch=branch, public=public, data=data)
    return execute_push(reg, plan, create_pr=create_pr)
