"""`seal clone`: attach a working folder to a registry that already exists, so a team shares one.

A shared registry is a database (PostgreSQL, or a SQLite file on one machine) plus an object
store (S3, or a local folder), and a trust file. Every attached folder reads and writes the
same rows and blobs, so each sees the others' versions at once; refs move only by
compare-and-swap in the shared database. What stays in the folder is what belongs to one
machine:

- its own signing key (``.seal/keys/signing.key``), made by the clone and never shared;
- its own HEAD, kept in the shared database as ``refs/worktrees/NAME/HEAD``, so one machine's
  checkout never moves another's;
- its ``config.toml`` (the URLs, the trust file's path, the folder's name) and ``policy.toml``
  (copied from ``refs/meta/policy``);
- a verified read cache of blobs (``.seal/cache/objects``).

Trust: the team keeps ONE trust file (``allowed_signers`` format) and every folder's config
names it; `seal verify` trusts exactly the keys in it, never a signer row that only the
database vouches for. The clone adds its new key to that file when it may write it; otherwise it
prints the line for whoever keeps the file, and until then every folder's `seal verify` names
the new key as untrusted.

Everything is checked before anything is written: the URL, the server, the seal schema, the
branch, the folder's name, that the object store holds the blobs the branch head needs, and that
the trust file trusts some key that signed the registry. A refusal is one line; nothing is
created.

>>> out = clone_registry(Path("work"), "postgresql://me@db.internal/seal",          # doctest: +SKIP
...                      objects_url="s3://team-blobs/seal",
...                      trust_file=Path("/team/seal/allowed_signers"))
>>> out["head"], out["trusted"]                                                     # doctest: +SKIP
('refs/worktrees/gpu-7-3f2a91/HEAD', True)
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .config import SEAL_DIRNAME, config_text, read_config
from .errors import SchemaError, UserError
from .policy import POLICY_FILE, POLICY_REF, parse_policy, render_policy
from .store import refs as R
from .store.objects import referenced_blobs
from .store.signing import add_trusted, create_key, format_trust_line, public_key_hex, read_trust_file, signer_id
from .store.sql import Database, Url
from .store.versions import load_manifest


@dataclass(frozen=True)
class RegistrySource:
    """What clone found, and checked, about the registry it attaches to. Nothing written yet."""

    db_url: str
    objects_url: str
    trust_file: Path
    base_id: str
    base_name: str
    branch: str  # the full name of the branch the new HEAD follows
    head: str | None  # the version that branch points at
    versions: int
    policy: str | None  # the digest refs/meta/policy names, copied into the folder's policy.toml


@dataclass(frozen=True)
class Attachment:
    """One attached folder; ``to_json()`` is what `seal clone --json` prints."""

    path: str
    name: str
    head: str
    branch: str
    id: str | None
    versions: int
    base: dict
    signer: str
    public_key: str
    trust_file: str
    trusted: bool
    trust_line: str

    def to_json(self) -> dict:
        return asdict(self)


# --- what the user gave ---------------------------------------------------------------------------

def source_of(where: str, *, objects_url: str | None, trust_file: Path | None) -> tuple[str, str, Path]:
    """(database URL, object store URL, trust file) from a URL, or from a registry folder here.

    A folder lends its own database, store and trust file, so ``seal clone ../a b`` attaches ``b``
    to the registry of ``../a`` on one machine; options given still win.
    """
    if "://" not in where:
        from .errors import NotARegistry
        from .repo import Registry

        try:
            origin = Registry.open(Path(where))
        except NotARegistry:
            raise UserError(f"{where!r} is neither a database URL (postgresql://USER@HOST/DB, sqlite:///PATH) "
                            f"nor a registry folder on this machine") from None
        objects_url = objects_url or origin.objects_url or (origin.seal_dir / "objects").resolve().as_uri()
        return origin.database_url, objects_url, trust_file or origin.trust_path
    objects_url = objects_url or os.environ.get("SEAL_OBJECTS_URL")
    if not objects_url:
        raise UserError("give the registry's object store with --objects s3://BUCKET/PREFIX (the one its "
                        "creator set with `seal init --objects`); attached folders share it")
    configured = trust_file or os.environ.get("SEAL_ALLOWED_SIGNERS")
    if not configured:
        raise UserError("give the team's trust file with --trust-file PATH (the allowed_signers file that lists "
                        "the team's keys; every attached folder names the same one)")
    return where, objects_url, Path(configured)


def check_database_url(url: str) -> str:
    """The URL as config.toml will keep it: never with a password, a SQLite path made absolute."""
    parsed = Url.parse(url)
    if parsed.dialect == "sqlite":
        path = Path(parsed.target).expanduser()
        if parsed.target == ":memory:" or not path.is_file():
            raise UserError(f"no lineage database at {parsed.target}; give the path of an existing registry's "
                            f"database (sqlite:///PATH) or its folder")
        return f"sqlite:///{path.resolve()}"
    if urlsplit(parsed.target).password:
        raise UserError("the database URL holds a password, which seal would have to write into .seal/config.toml; "
                        "put it in ~/.pgpass or PGPASSWORD and clone postgresql://USER@HOST/DB")
    return url


def check_tracking_uri(uri: str | None) -> str | None:
    """An MLflow tracking URI to keep in config.toml: a server or store URL, never with a password."""
    if uri is None:
        return None
    parts = urlsplit(uri)
    if not parts.scheme or (parts.scheme in ("http", "https") and not parts.netloc):
        raise UserError(f"--tracking {uri!r} is not a tracking URI; give the MLflow server, e.g. http://mlflow.internal:5000")
    if parts.password:
        raise UserError("the tracking URI holds a password, which seal would have to write into .seal/config.toml; "
                        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")
    return uri


def default_name() -> str:
    """``host-xxxxxx``: readable in `seal reflog`, and unique without asking anyone."""
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()).strip(".-_") or "worker"
    return f"{host[:40]}-{secrets.token_hex(3)}"


# --- checking the registry ------------------------------------------------------------------------

def inspect_registry(db_url: str, objects_url: str, trust_file: Path, *, branch: str | None,
                     name: str) -> RegistrySource:
    """Check everything clone needs, writing nothing; a refusal is a :class:`UserError`."""
    from .store.db import check_schema, current_revision

    db = Database.open(db_url)
    try:
        try:
            check_schema(db)
        except SchemaError:
            if current_revision(db) is None:
                raise UserError(f"{_shown(db_url)} holds no seal registry (no seal schema); create one with "
                                f"`seal init --db URL`, then clone it") from None
            raise
        with db.read() as c:
            found = _read_registry(c, branch, name)
    finally:
        db.close()
    store = _open_store(objects_url)
    _check_store(store, objects_url, found)
    trust = _check_trust(trust_file, found["signers"])
    return RegistrySource(db_url=db_url, objects_url=objects_url, trust_file=trust, base_id=found["base"][0],
                          base_name=found["base"][1], branch=found["branch"], head=found["head"],
                          versions=found["versions"], policy=found["policy"])


def _read_registry(c, branch: str | None, name: str) -> dict:
    base = c.one("SELECT id, name FROM bases ORDER BY created_at, id LIMIT 1")
    if base is None:
        raise UserError("the database has seal's schema but no base model, so no registry yet; run `seal init --db URL`")
    full = R.HEADS + R.check_ref_name(branch) if branch else _default_branch(c)
    if R.read_ref(c, full) is None:
        raise UserError(f"the registry has no branch {R.short_name(full)}; see its branches with "
                        f"`seal branch --repo FOLDER` on a folder attached to it")
    own_head = R.worktree_head(name)
    if R.read_ref(c, own_head) is not None:
        raise UserError(f"a folder named {name!r} is already attached to this registry; give another --name")
    head = R.peel(c, full)
    return {
        "base": base, "branch": full, "head": head, "own_head": own_head,
        "versions": c.scalar("SELECT COUNT(*) FROM versions"),
        "signers": {r[0] for r in c.all("SELECT DISTINCT signer FROM versions WHERE signer IS NOT NULL")},
        "policy": R.read_ref(c, POLICY_REF),
        "needs": referenced_blobs(load_manifest(c, head)) if head else [],
    }


def _default_branch(c) -> str:
    """The branch the creator's folder follows, else main, else the first branch."""
    target = c.scalar("SELECT target FROM refs WHERE name = ?", (R.HEAD,))
    if target and target.startswith(R.SYMBOLIC) and target[len(R.SYMBOLIC):].startswith(R.HEADS):
        return target[len(R.SYMBOLIC):]
    branches = [n for n, _ in R.list_refs(c, R.HEADS)]
    if not branches:
        raise UserError("the registry has no branch to follow; create one from a folder attached to it first")
    return R.HEADS + "main" if R.HEADS + "main" in branches else branches[0]


def _open_store(objects_url: str):
    from .store_url import open_object_store

    scheme = objects_url.partition("://")[0]
    if scheme not in ("s3", "file"):
        raise UserError(f"cannot share blobs at {objects_url!r}: give s3://BUCKET/PREFIX or file:///ABSOLUTE/PATH")
    # Only has() is called on this store, which never touches its read cache: nothing is written.
    return open_object_store(objects_url, Path(tempfile.gettempdir()) / f"seal-clone-{secrets.token_hex(4)}")


def _check_store(store, objects_url: str, found: dict) -> None:
    """The store must hold what the branch head needs (its blobs), and the policy it cites."""
    wanted = list(found["needs"]) + ([found["policy"]] if found["policy"] else [])
    missing = [d for d in wanted if not store.has(d)]
    if missing:
        raise UserError(f"the object store {objects_url} lacks blob {missing[0]}, which this registry needs "
                        f"({len(missing)} of {len(wanted)} missing); give the store the registry was created with")


def _check_trust(trust_file: Path, signers: set[str]) -> Path:
    path = Path(trust_file).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"the trust file {path} does not exist; give the team's allowed_signers file with --trust-file")
    trusted = read_trust_file(path)
    if signers and not signers & set(trusted):
        raise UserError(f"the trust file {path} trusts none of the {len(signers)} key(s) that signed this "
                        f"registry's versions; give the team's trust file")
    return path


def _shown(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//", url)  # never print a user or password


# --- attaching ----------------------------------------------------------------------------------

def clone_registry(path: Path, where: str, *, objects_url: str | None = None, trust_file: Path | None = None,
                   branch: str | None = None, name: str | None = None, tracking_uri: str | None = None) -> Attachment:
    """Attach ``path`` (made if missing) to the registry at ``where`` (a database URL or a folder).

    ``tracking_uri`` names the team's MLflow server in the folder's config (default: each folder
    keeps its own runs in ``.seal/mlflow.db``, or ``MLFLOW_TRACKING_URI`` decides).
    """
    from .init import check_can_init

    path = check_can_init(Path(path))
    name = R.check_ref_name(name, "folder") if name else default_name()
    tracking_uri = check_tracking_uri(tracking_uri)
    db_url, objects_url, trust_file = source_of(where, objects_url=objects_url, trust_file=trust_file)
    source = inspect_registry(check_database_url(db_url), objects_url, trust_file, branch=branch, name=name)
    made = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".seal-clone-", dir=path))
    try:
        key = _fill(staging, source, name, tracking_uri)
        _attach(staging, source, name)
        os.rename(staging, path / SEAL_DIRNAME)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made:
            shutil.rmtree(path, ignore_errors=True)
        raise
    public = public_key_hex(key)
    return Attachment(
        path=str((path / SEAL_DIRNAME).resolve()), name=name, head=R.worktree_head(name),
        branch=R.short_name(source.branch), id=source.head, versions=source.versions,
        base={"id": source.base_id, "name": source.base_name}, signer=signer_id(public), public_key=public,
        trust_file=str(source.trust_file), trusted=_trust_self(source.trust_file, public),
        trust_line=format_trust_line(public, R.actor()),
    )


def _fill(staging: Path, source: RegistrySource, name: str, tracking_uri: str | None):
    (staging / "config.toml").write_text(config_text(
        base_id=source.base_id, base_name=source.base_name, db_url=source.db_url, objects_url=source.objects_url,
        allowed_signers=str(source.trust_file), worktree=name, tracking_uri=tracking_uri,
    ))
    return create_key(staging / "keys" / "signing.key")


def _attach(staging: Path, source: RegistrySource, name: str) -> None:
    """The team's policy, then the folder's first write: its HEAD, created by compare-and-swap,
    which registers its signer in the same transaction."""
    from .repo import Registry

    reg = Registry(staging, read_config(staging), db_url=source.db_url, objects_url=source.objects_url)
    try:
        policy = reg.store.get(source.policy) if source.policy else render_policy().encode()
        parse_policy(policy, f"the registry's policy ({POLICY_REF})")
        (staging / POLICY_FILE).write_bytes(policy)
        reg.move_ref(R.HEAD, new=R.SYMBOLIC + source.branch, expected=None,
                     reason=f"clone: {name} attached by {R.actor()}")
    finally:
        reg.close()


def _trust_self(trust_file: Path, public: str) -> bool:
    """Add the new key to the team's trust file if this user may write it; False otherwise."""
    if not os.access(trust_file, os.W_OK):
        return False
    try:
        add_trusted(trust_file, public, R.actor())
    except OSError:
        return False
    return True


__all__ = ["clone_registry", "inspect_registry", "source_of", "check_database_url", "Attachment", "RegistrySource"]
