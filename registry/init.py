"""Creating a registry: `.seal/` with its config, policy, key, trust file, database and root version.

Everything is built in a temporary folder beside the target and renamed into place, so a failed
init leaves nothing behind. The root version is the bare base model; it is deterministic (fixed
time, no author), so every registry on the same base shares its id and pulled lineages join at
the base.

>>> reg = init_registry(Path("."), base=base_record(name="org/model", revision=None,   # doctest: +SKIP
...                     source="hub", location=None))
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .bases import insert_base, record_base
from .config import CONFIG_FILE, SEAL_DIRNAME, config_text, read_config
from .errors import UserError
from .policy import read_policy, record_policy, write_default_policy
from .repo import Registry
from .store import refs as R
from .store.db import upgrade
from .store.objects import build_manifest
from .store.signing import add_trusted, create_key, public_key_hex

ROOT_TIME = "1970-01-01T00:00:00.000000Z"
DEFAULT_BRANCH = "main"


def root_manifest(base: dict) -> dict:
    """The root version: the bare base model, with no adapter."""
    return build_manifest(base=base["id"], parents=[], kind="root", status="accepted", created_at=ROOT_TIME,
                          message=f"base model {base['name']}")


def check_can_init(path: Path) -> Path:
    """Refuse early (before any model is read) to create a registry where one cannot go."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is not a folder; give the folder to create the registry in")
    if (path / SEAL_DIRNAME).exists():
        raise UserError(f"{path} is already a seal registry ({path / SEAL_DIRNAME} exists); use it, or remove it first")
    inside = next((p for p in path.resolve().parents if (p / SEAL_DIRNAME / CONFIG_FILE).is_file()), None) \
        if path.exists() else None
    if inside is not None and path.resolve().is_relative_to(inside / SEAL_DIRNAME):
        raise UserError(f"{path} is inside the registry folder {inside / SEAL_DIRNAME}; choose a folder outside it")
    return path


def init_registry(path: Path, *, base: dict | Callable[[], dict], db_url: str | None = None,
                  objects_url: str | None = None, branch: str = DEFAULT_BRANCH) -> Registry:
    """Create ``path/.seal`` with its database, key, trust file, the base's root version and ``main``.

    ``base`` is the base's record, or a function that makes it (the base's one-time work): it is
    called only once the database is known to be free, so a refusal comes before that work.
    """
    path = check_can_init(path)
    R.check_ref_name(branch)
    created = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".seal-init-", dir=path))
    shared_url = db_url or os.environ.get("SEAL_DATABASE_URL")
    try:
        with _init_lock(shared_url):  # of N inits racing on one new database, one wins
            if shared_url is not None:
                _refuse_attached(shared_url)
            record = base() if callable(base) else base
            _fill(staging, record, db_url, objects_url)
            reg = Registry(staging, read_config(staging), db_url=shared_url, objects_url=objects_url)
            upgrade(reg.database_url)
            _first_rows(reg, record, branch)
        reg.close()
        os.rename(staging, path / SEAL_DIRNAME)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise
    reg = Registry.open(path)
    record_policy(reg, read_policy(reg))
    return reg


def _remove_empty(folders: list[Path]) -> None:
    """Undo the folders a failed init made (innermost first), never one that now holds anything."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def _init_lock(url: str | None) -> Iterator[None]:
    """Inits on one shared database take turns, so the losers find the winner's HEAD and are told
    to `seal clone` instead of failing half-way through the schema."""
    from .store.sql import Database

    if url is None:  # a new SQLite file in the new folder: nobody else can race for it
        yield
        return
    db = Database.open(url)
    try:
        with db.session_lock("seal init"):
            yield
    finally:
        db.close()


def _refuse_attached(url: str) -> None:
    """A database that already holds a registry is joined with `seal clone`, which gives the new
    folder its own HEAD; a second init would share the first folder's HEAD."""
    from .store.db import current_revision
    from .store.sql import Database

    db = Database.open(url)
    if db.dialect == "sqlite" and not Path(db.parsed.target).exists():
        return  # a new file: nothing is attached to it yet
    try:
        taken = current_revision(db) is not None and _has_head(db)
    finally:
        db.close()
    if taken:
        raise UserError("this database already holds a seal registry; attach a folder to it with "
                        "`seal clone DATABASE_URL PATH --objects URL --trust-file FILE`")


def _has_head(db) -> bool:
    with db.read() as c:
        return c.scalar("SELECT 1 FROM refs WHERE name = ?", (R.HEAD,)) is not None


def _fill(staging: Path, base: dict, db_url: str | None, objects_url: str | None) -> None:
    (staging / CONFIG_FILE).write_text(config_text(base_id=base["id"], base_name=base["name"], db_url=db_url,
                                                   objects_url=objects_url))
    write_default_policy(staging)
    (staging / "worktree.lock").touch()  # checkouts take turns on it (seal.registry.worktree)
    key = create_key(staging / "keys" / "signing.key")
    add_trusted(staging / "allowed_signers", public_key_hex(key), R.actor())


def _first_rows(reg: Registry, base: dict, branch: str) -> None:
    """The base row, this registry's signer, the root version, ``main`` and HEAD (each only if missing)."""
    with reg.write() as c:
        insert_base(c, base)
    record_base(reg, base["id"])
    if reg.read_ref(R.HEADS + branch) is None:
        root = root_manifest(base)
        reg.record(root, ref=R.HEADS + branch, expected=None, reason="init")
    if reg.read_ref(R.HEAD) is None:
        reg.move_ref(R.HEAD, new=R.SYMBOLIC + R.HEADS + branch, expected=None, reason="init")
    else:
        with reg.write() as c:
            reg._register_signer(c)
