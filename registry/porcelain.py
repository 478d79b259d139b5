"""One function per `seal` command that needs no model. The CLI only parses and renders.

>>> init_registry(Path("."), base=base_record(name="org/model", revision=None, source="hub", location=None))  # doctest: +SKIP
>>> import_adapter(Repository.find(), Path("my-adapter"), message="first")  # doctest: +SKIP
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Connection

from . import refs as R
from .adapters import CONFIG_FILE, WEIGHTS_FILE, read_adapter_folder
from .bases import get_base, insert_base
from .db import make_engine, upgrade
from .errors import UserError
from .object_store import file_digest
from .policy import current_policy, write_default_policy
from .objects import build_manifest
from .repository import (
    CONFIG_FILE as REPO_CONFIG,
    SEAL_DIRNAME,
    Repository,
    load_manifest,
    record_version,
    register_signer,
    version_record,
)
from .revisions import parents_of, resolve_revision
from .schema import version_parents, versions

ROOT_TIME = "1970-01-01T00:00:00.000000Z"
CHECKOUT_MARKER = ".seal-checkout.json"
DEFAULT_BRANCH = "main"


# --- init -------------------------------------------------------------------------------------

def root_manifest(base: dict) -> dict:
    """The root version: the bare base model, with no adapter.

    It is deterministic (fixed time, no author), so every registry on the same base shares the same
    root id and lineages pulled from elsewhere join this one at the base.
    """
    return build_manifest(
        base=base["id"], parents=[], kind="root", status="accepted", created_at=ROOT_TIME,
        message=f"base model {base['name']}",
    )


def _config_text(base: dict, db_url: str | None) -> str:
    lines = [
        "# seal registry configuration",
        "[base]",
        f"id = {json.dumps(base['id'])}",
        f"name = {json.dumps(base['name'])}",
        "",
        "[database]",
        "# SEAL_DATABASE_URL overrides this; the default is sqlite:///.seal/lineage.db",
    ]
    lines.append(f"url = {json.dumps(db_url)}" if db_url else '# url = "postgresql://user@host/db"')
    lines += ["", "[tracking]", '# MLflow tracking URI; the default keeps runs in .seal/mlflow.db', ""]
    return "\n".join(lines)


def check_can_init(path: Path) -> Path:
    """Refuse early (before any model is read) to create a registry where one cannot go."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is not a folder; give the folder to create the registry in")
    if (path / SEAL_DIRNAME).exists():
        raise UserError(f"{path} is already a seal registry ({path / SEAL_DIRNAME} exists); use it, or remove it first")
    return path


def init_registry(path: Path, *, base: dict, db_url: str | None = None, branch: str = DEFAULT_BRANCH) -> Repository:
    """Create ``path/.seal`` with its database, keys, the base's root version and ``main``.

    Everything is built in a temporary folder and renamed into place, so a failed init leaves
    nothing behind.
    """
    path = check_can_init(path)
    target = path / SEAL_DIRNAME
    R.check_ref_name(branch)
    path.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".seal-init-", dir=path))
    url = db_url or os.environ.get("SEAL_DATABASE_URL")
    try:
        (staging / REPO_CONFIG).write_text(_config_text(base, db_url))
        write_default_policy(staging)
        repo = Repository(seal_dir=staging, config={"base": {"id": base["id"]}, "database": {"url": url} if url else {}})
        engine = make_engine(repo.database_url)
        try:
            upgrade(engine)
            with engine.begin() as conn:
                insert_base(conn, base)
                register_signer(repo, conn, R.actor())
                existing = R.peel(conn, R.HEADS + branch)
                if existing is None:
                    root = record_version(repo, conn, root_manifest(base))
                    R.compare_and_swap(conn, R.HEADS + branch, old=None, new=root, reason="init")
                if R.read_ref(conn, R.HEAD) is None:
                    R.compare_and_swap(conn, R.HEAD, old=None, new=R.SYMBOLIC + R.HEADS + branch, reason="init")
        finally:
            engine.dispose()
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    repo = Repository.find(path)
    current_policy(repo)
    return repo


# --- import -----------------------------------------------------------------------------------

def _head_state(conn: Connection) -> tuple[str, str | None]:
    """(the ref a new version moves, the version it points at now)."""
    branch = R.head_branch(conn)
    if branch is not None:
        return branch, R.peel(conn, branch)
    return R.HEAD, R.read_ref(conn, R.HEAD)


def check_same_base(repo: Repository, conn: Connection, adapter_config: dict, where: str) -> None:
    base = get_base(conn, repo.base_id(conn))
    claimed = adapter_config.get("base_model_name_or_path")
    if not claimed:
        return
    names = {base["name"]}
    if base.get("location"):
        names.add(str(Path(base["location"]).resolve()))
        names.add(Path(base["location"]).name)
    names.update(base.get("info", {}).get("aliases", []))
    candidates = {claimed, Path(claimed).name}
    if Path(claimed).exists():
        candidates.add(str(Path(claimed).resolve()))
    if not (names & candidates):
        raise UserError(
            f"{where} was trained on {claimed!r} but this registry's base is {base['name']!r}; "
            f"import it into a registry on that base"
        )


def import_adapter(repo: Repository, folder: Path, *, message: str = "", parent: str | None = None) -> dict:
    """Record an existing PEFT LoRA folder as a version on the current branch (or detached HEAD)."""
    adapter = read_adapter_folder(Path(folder))
    with repo.connect() as conn:
        ref, head = _head_state(conn)
        parent_id = resolve_revision(conn, parent) if parent else head
        if parent and parent_id != head:
            raise UserError(
                f"--parent {parent} is not the head of {R.short_name(ref)}; to start a line from it, "
                f"run `seal checkout -b NEW_BRANCH {parent}` first"
            )
        check_same_base(repo, conn, adapter.config, str(adapter.path))
        base_id = repo.base_id(conn)
    digest = repo.store.put_file(adapter.weights)
    manifest = build_manifest(
        base=base_id,
        parents=[parent_id] if parent_id else [],
        kind="import",
        status="accepted",
        adapter={"weights": digest, "config": adapter.config, "format": "peft-lora"},
        train={"source": "import", "folder": str(adapter.path.resolve())},
        author=R.actor(),
        message=message or f"import {adapter.path.name}",
    )
    with repo.transaction() as conn:
        vid = record_version(repo, conn, manifest)
        R.compare_and_swap(conn, ref, old=head, new=vid, reason=f"import: {manifest['message']}")
    return {"id": vid, "ref": R.short_name(ref), "parent": parent_id}


# --- log --------------------------------------------------------------------------------------

def _row(conn: Connection, vid: str) -> dict:
    row = conn.execute(
        select(
            versions.c.id, versions.c.kind, versions.c.status, versions.c.created_at, versions.c.message,
            versions.c.author, versions.c.headline_metric, versions.c.headline_value,
        ).where(versions.c.id == vid)
    ).mappings().first()
    if row is None:
        raise UserError(f"version {vid[:12]} is referenced but missing; run `seal verify`")
    return dict(row)


def _item(row: dict, parents: list[str], names: dict[str, list[str]]) -> dict:
    return {
        "id": row["id"],
        "parents": parents,
        "kind": row["kind"],
        "status": row["status"],
        "created_at": row["created_at"],
        "message": row["message"],
        "author": row["author"],
        "refs": names.get(row["id"], []),
        "headline": None if row["headline_metric"] is None
        else {"metric": row["headline_metric"], "value": row["headline_value"]},
    }


def log(repo: Repository, rev: str | None = None, *, n: int | None = None, all_versions: bool = False) -> list[dict]:
    """Versions newest first: the ancestors of ``rev`` (default HEAD), or every version with ``all_versions``."""
    if n is not None and n < 0:
        raise UserError("-n must be 0 or more")
    with repo.connect() as conn:
        names = R.refs_by_target(conn)
        if all_versions and rev is None:
            q = select(
                versions.c.id, versions.c.kind, versions.c.status, versions.c.created_at, versions.c.message,
                versions.c.author, versions.c.headline_metric, versions.c.headline_value,
            ).order_by(versions.c.created_at.desc(), versions.c.id.desc())
            if n is not None:
                q = q.limit(n)
            rows = [dict(r) for r in conn.execute(q).mappings()]
            ids = [r["id"] for r in rows]
            parents: dict[str, list[str]] = {i: [] for i in ids}
            for chunk in range(0, len(ids), 500):
                part = ids[chunk:chunk + 500]
                for vid, _pos, pid in conn.execute(
                    select(version_parents.c.version_id, version_parents.c.position, version_parents.c.parent_id)
                    .where(version_parents.c.version_id.in_(part))
                    .order_by(version_parents.c.version_id, version_parents.c.position)
                ):
                    parents[vid].append(pid)
            return [_item(r, parents[r["id"]], names) for r in rows]
        start = resolve_revision(conn, rev or "HEAD")
        # git's walk: a heap by time, so n items cost about n lookups however long the history.
        out: list[dict] = []
        seen = {start}
        first = _row(conn, start)
        heap = [(_neg(first["created_at"]), start, first)]
        while heap and (n is None or len(out) < n):
            _, vid, row = heapq.heappop(heap)
            ps = parents_of(conn, vid)
            out.append(_item(row, ps, names))
            for p in ps:
                if p not in seen:
                    seen.add(p)
                    prow = _row(conn, p)
                    heapq.heappush(heap, (_neg(prow["created_at"]), p, prow))
        return out


def _neg(ts: str) -> tuple:
    # heapq is a min-heap; newest first means inverting the timestamp's order.
    return tuple(-ord(c) for c in ts)


def graph_lines(items: list[dict]) -> list[tuple[str, dict | None]]:
    """Lanes like `git log --graph`: (prefix, item) for version lines, (prefix, None) for joins.

    Lane k is drawn at character 2k; a branch-out (``\\``) or join (``/``) sits between lanes.
    """
    columns: list[str] = []
    out: list[tuple[str, dict | None]] = []

    def row(cells: dict[int, str], width: int) -> str:
        chars = [" "] * (2 * width)
        for pos, ch in cells.items():
            chars[pos] = ch
        return "".join(chars).rstrip()

    for item in items:
        vid = item["id"]
        if vid not in columns:
            columns.append(vid)
        col = columns.index(vid)
        out.append((row({2 * i: ("*" if i == col else "|") for i in range(len(columns))}, len(columns)), item))
        ps = item["parents"]
        nxt = list(columns)
        if ps:
            nxt[col] = ps[0]
        else:
            nxt.pop(col)
        extra = [p for p in ps[1:] if p not in nxt]
        for k, p in enumerate(extra):
            nxt.insert(col + 1 + k, p)
        if extra:
            cells = {2 * i: "|" for i in range(col + 1)}
            for k in range(len(extra)):
                cells[2 * (col + k) + 1] = "\\"
            for i in range(col + 1 + len(extra), len(nxt)):
                cells[2 * i - 1] = "\\"
            out.append((row(cells, len(nxt) + 1), None))
        # Lanes waiting for the same version join here.
        while True:
            dup = next(((i, j) for i in range(len(nxt)) for j in range(i + 1, len(nxt)) if nxt[i] == nxt[j]), None)
            if dup is None:
                break
            _, j = dup
            cells = {2 * i: "|" for i in range(j)}
            for k in range(j, len(nxt)):
                cells[2 * k - 1] = "/"
            out.append((row(cells, len(nxt)), None))
            nxt.pop(j)
        columns = nxt
    return out


# --- show -------------------------------------------------------------------------------------

def show(repo: Repository, rev: str = "HEAD") -> dict:
    with repo.connect() as conn:
        vid = resolve_revision(conn, rev)
        record = version_record(conn, vid)
        record["refs"] = R.refs_by_target(conn).get(vid, [])
        record["children"] = [
            r[0] for r in conn.execute(select(version_parents.c.version_id).where(version_parents.c.parent_id == vid))
        ]
    return record


# --- checkout ---------------------------------------------------------------------------------

def materialize(repo: Repository, manifest: dict, vid: str, dest: Path, *, force: bool = False) -> Path:
    """Write the adapter of a version as a folder PeftModel.from_pretrained loads.

    The folder is built beside ``dest`` and renamed into place, so it is never half-written. An
    existing ``dest`` is replaced only when it is an unmodified seal checkout (or with ``force``).
    """
    adapter = manifest.get("adapter")
    if not adapter:
        raise UserError(f"version {vid[:12]} is the bare base model ({manifest['kind']}); it has no adapter to write")
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} exists and is not a folder; choose another --to")
    if dest.exists() and any(dest.iterdir()) and not force:
        _check_replaceable(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.seal-", dir=dest.parent))
    try:
        weights = staging / WEIGHTS_FILE
        src = repo.store.path_of(adapter["weights"])
        if not src.exists():
            raise UserError(f"blob {adapter['weights']} of version {vid[:12]} is missing; run `seal verify`")
        shutil.copyfile(src, weights)
        (staging / CONFIG_FILE).write_text(json.dumps(adapter["config"], indent=2, sort_keys=True) + "\n")
        files = {WEIGHTS_FILE: file_digest(weights), CONFIG_FILE: file_digest(staging / CONFIG_FILE)}
        if files[WEIGHTS_FILE] != adapter["weights"]:
            raise UserError(f"blob {adapter['weights']} is corrupt in the object store; run `seal verify`")
        (staging / CHECKOUT_MARKER).write_text(json.dumps({"version": vid, "files": files}, indent=2) + "\n")
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.rename(dest, trash / "old")
            os.rename(staging, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _check_replaceable(dest: Path) -> None:
    marker = dest / CHECKOUT_MARKER
    if not marker.is_file():
        raise UserError(f"{dest} is not empty and is not a seal checkout; choose another folder or remove it")
    try:
        files = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{marker} is damaged; remove {dest} or pass --force") from None
    present = {p.name for p in dest.iterdir()} - {CHECKOUT_MARKER}
    changed = sorted(
        name for name in present | set(files)
        if name not in files or not (dest / name).is_file() or file_digest(dest / name) != files[name]
    )
    if changed:
        raise UserError(
            f"{dest} has local changes ({', '.join(changed)}); record them with `seal import {dest}` "
            f"or pass --force to discard them"
        )


def checkout(repo: Repository, rev: str, *, branch: str | None = None, to: Path | None = None, force: bool = False) -> dict:
    """Move HEAD to ``rev`` (a branch name makes HEAD follow it) and write its adapter.

    With ``to``, only write the adapter folder there; HEAD stays where it is.
    """
    with repo.connect() as conn:
        vid = resolve_revision(conn, rev)
        manifest = load_manifest(conn, vid)
        old_head = R.read_ref(conn, R.HEAD)
        is_branch = not branch and R.read_ref(conn, R.HEADS + rev) is not None
    if to is not None:
        if branch:
            raise UserError("-b and --to do not go together: --to only writes a folder and moves no ref")
        path = materialize(repo, manifest, vid, to, force=force)
        return {"id": vid, "path": str(path), "head": None}
    if branch:
        R.check_ref_name(branch)
    if manifest.get("adapter"):
        # Check the working folder before moving anything, so a refusal changes nothing.
        if repo.worktree.exists() and any(repo.worktree.iterdir()) and not force:
            _check_replaceable(repo.worktree)
    with repo.transaction() as conn:
        if branch:
            if R.read_ref(conn, R.HEADS + branch) is not None:
                raise UserError(f"branch {branch} already exists; check it out with `seal checkout {branch}`")
            R.compare_and_swap(conn, R.HEADS + branch, old=None, new=vid, reason=f"branch: created from {rev}")
            new_head = R.SYMBOLIC + R.HEADS + branch
        elif is_branch:
            new_head = R.SYMBOLIC + R.HEADS + rev
        else:
            new_head = vid
        if new_head != old_head:
            R.compare_and_swap(conn, R.HEAD, old=old_head, new=new_head, reason=f"checkout: moving to {rev}")
    path = None
    if manifest.get("adapter"):
        path = str(materialize(repo, manifest, vid, repo.worktree, force=True))
    elif repo.worktree.exists():
        _check_replaceable(repo.worktree)
        shutil.rmtree(repo.worktree)
    head = R.short_target(new_head)
    return {"id": vid, "path": path, "head": head, "detached": not new_head.startswith(R.SYMBOLIC)}


# --- branch and tag ---------------------------------------------------------------------------

def list_branches(repo: Repository) -> list[dict]:
    with repo.connect() as conn:
        current = R.head_branch(conn)
        return [
            {"name": R.short_name(name), "id": target, "current": name == current}
            for name, target in R.list_refs(conn, R.HEADS)
        ]


def create_branch(repo: Repository, name: str, rev: str = "HEAD") -> dict:
    R.check_ref_name(name)
    with repo.transaction() as conn:
        vid = resolve_revision(conn, rev)
        if R.read_ref(conn, R.HEADS + name) is not None:
            raise UserError(f"branch {name} already exists; pick another name or delete it with `seal branch -d {name}`")
        R.compare_and_swap(conn, R.HEADS + name, old=None, new=vid, reason=f"branch: created from {rev}")
    return {"name": name, "id": vid}


def delete_branch(repo: Repository, name: str) -> dict:
    with repo.transaction() as conn:
        full = R.HEADS + name
        target = R.read_ref(conn, full)
        if target is None:
            raise UserError(f"there is no branch {name}; see `seal branch`")
        if R.head_branch(conn) == full:
            raise UserError(f"branch {name} is checked out; check out another branch before deleting it")
        R.delete_ref(conn, full, old=target, reason="branch: deleted")
    return {"name": name, "id": target}


def list_tags(repo: Repository) -> list[dict]:
    with repo.connect() as conn:
        return [{"name": R.short_name(n), "id": t} for n, t in R.list_refs(conn, R.TAGS)]


def create_tag(repo: Repository, name: str, rev: str = "HEAD") -> dict:
    R.check_ref_name(name, "tag")
    with repo.transaction() as conn:
        vid = resolve_revision(conn, rev)
        if R.read_ref(conn, R.TAGS + name) is not None:
            raise UserError(f"tag {name} already exists; tags never move, so pick another name")
        R.compare_and_swap(conn, R.TAGS + name, old=None, new=vid, reason=f"tag: {rev}")
    return {"name": name, "id": vid}


def reflog_entries(repo: Repository, ref: str | None = None, n: int | None = None) -> list[dict]:
    from .schema import reflog

    with repo.connect() as conn:
        q = select(reflog).order_by(reflog.c.id.desc())
        if ref:
            full = ref if ref == R.HEAD or ref.startswith("refs/") else (
                R.HEADS + ref if R.read_ref(conn, R.HEADS + ref) is not None else R.TAGS + ref
            )
            q = q.where(reflog.c.ref == full)
        if n:
            q = q.limit(n)
        return [dict(r) for r in conn.execute(q).mappings()]


# --- db ---------------------------------------------------------------------------------------

def db_current(seal_dir_or_url: str) -> dict:
    from .db import HEAD_REVISION, current_revision

    engine = make_engine(seal_dir_or_url)
    try:
        rev = current_revision(engine)
    finally:
        engine.dispose()
    return {"current": rev, "head": HEAD_REVISION, "up_to_date": rev == HEAD_REVISION}


def db_upgrade(url: str) -> dict:
    engine = make_engine(url)
    try:
        rev = upgrade(engine)
    finally:
        engine.dispose()
    return {"current": rev}


# --- revert -----------------------------------------------------------------------------------

def revert(repo: Repository, rev: str, *, to: str | None = None, message: str = "") -> dict:
    """Undo ``rev`` on the current branch: a new version whose adapter is that of ``rev``'s first
    parent (or of ``to``), with the old HEAD as its only parent. History is never rewritten.

    The branch (or a detached HEAD) moves by compare-and-swap, and the reflog keeps the reason.

    >>> revert(Repository.find(), "HEAD", message="drifted on the anchors")   # doctest: +SKIP
    {'id': '…', 'ref': 'main', 'parent': '…', 'of': '…', 'to': '…', 'adapter': 'sha256:…', ...}
    """
    from .repository import ancestor_ids

    with repo.connect() as conn:
        ref, head = _head_state(conn)
        if head is None:
            raise UserError(f"{R.short_name(ref)} has no versions yet; there is nothing to revert")
        rev_id = resolve_revision(conn, rev)
        on_branch = ancestor_ids(conn, head)
        if rev_id not in on_branch:
            raise UserError(
                f"{rev} ({rev_id[:12]}) is not an ancestor of HEAD ({R.short_name(ref)} at {head[:12]}); "
                f"check out a branch that contains it first"
            )
        if to is not None:
            target_id = resolve_revision(conn, to)
            if target_id == rev_id or target_id not in ancestor_ids(conn, rev_id):
                raise UserError(
                    f"--to {to} ({target_id[:12]}) is not an ancestor of {rev} ({rev_id[:12]}); "
                    f"revert goes back to a version before the one it undoes (see `seal log {rev}`)"
                )
        else:
            ps = parents_of(conn, rev_id)
            if not ps:
                raise UserError(f"{rev} ({rev_id[:12]}) is the root, the bare base model; there is nothing before it to go back to")
            target_id = ps[0]
        rev_manifest = load_manifest(conn, rev_id)
        target = load_manifest(conn, target_id)
        head_manifest = load_manifest(conn, head)
    if target["base"] != head_manifest["base"]:
        raise UserError(
            f"{target_id[:12]} is on base {target['base'][:12]} but HEAD is on {head_manifest['base'][:12]}; "
            f"revert only within one base"
        )
    adapter = target.get("adapter") or None
    if adapter == (head_manifest.get("adapter") or None):
        raise UserError(
            f"HEAD ({head[:12]}) already has the adapter of {target_id[:12]}; there is nothing to revert"
        )
    if adapter and not repo.store.has(adapter["weights"]):
        raise UserError(f"blob {adapter['weights']} of {target_id[:12]} is missing; run `seal verify`")
    subject = (rev_manifest.get("message") or "").strip().splitlines()
    undone = subject[0] if subject else rev_manifest["kind"]
    reason = message.strip() or f'undo "{undone}", back to {target_id[:12]}'
    manifest = build_manifest(
        base=head_manifest["base"],
        parents=[head],
        kind="revert",
        status="accepted",
        adapter=adapter,
        train={"source": "revert"},
        author=R.actor(),
        message=f"Revert {rev_id[:12]}: {reason}",
        extra={"revert": {"of": rev_id, "to": target_id, "reason": reason}},
    )
    with repo.transaction() as conn:
        vid = record_version(repo, conn, manifest)
        R.compare_and_swap(conn, ref, old=head, new=vid, reason=f"revert: {manifest['message']}")
    return {
        "id": vid,
        "ref": R.short_name(ref),
        "parent": head,
        "of": rev_id,
        "to": target_id,
        "adapter": adapter["weights"] if adapter else None,
        "message": manifest["message"],
    }
