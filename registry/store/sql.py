"""The lineage database at run time: plain DB-API connections (``sqlite3``, ``psycopg``).

SQLAlchemy and Alembic own the schema and its migrations (:mod:`seal.registry.store.schema`,
``migrations/``). Commands read and write through this thin layer instead, because importing
SQLAlchemy alone takes 0.2-0.35 s on a small machine, more than git needs for a whole ``log``.

Transactions are explicit. On SQLite a write transaction is taken up front (``BEGIN
IMMEDIATE``), so two writers never interleave and a compare-and-swap read inside it cannot go
stale; the database runs in WAL mode so readers never wait for a writer. On PostgreSQL every
statement of a :meth:`Database.write` block runs in one transaction, and compare-and-swap
relies on row locks taken by ``UPDATE … WHERE target = :old``.

>>> db = Database.open("sqlite:///:memory:")
>>> with db.write() as c:
...     _ = c.execute("CREATE TABLE t (a INTEGER)")
...     _ = c.execute("INSERT INTO t VALUES (?)", (1,))
>>> with db.read() as c:
...     c.scalar("SELECT a FROM t")
1
"""

from __future__ import annotations

import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from ..errors import DatabaseDamaged, DatabaseLocked, DatabaseUnavailable, UserError

LOCK_TIMEOUT_S = 30.0
IN_CHUNK = 500  # ids per IN (...) list: under the 999 host parameters of older SQLite builds
_PARAM = re.compile(r"\?")


@dataclass(frozen=True)
class Url:
    """A database URL split into what the drivers need."""

    dialect: str  # "sqlite" | "postgresql"
    target: str  # a file path (or ":memory:") for SQLite, a libpq conninfo URL for PostgreSQL

    @classmethod
    def parse(cls, url: str) -> "Url":
        if url.startswith("sqlite:///"):
            return cls("sqlite", url[len("sqlite:///"):] or ":memory:")
        if url in ("sqlite://", "sqlite:"):
            return cls("sqlite", ":memory:")
        for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return cls("postgresql", "postgresql://" + url[len(prefix):])
        raise UserError(
            f"cannot use database URL {url!r}; give sqlite:///PATH or postgresql://USER@HOST/DB"
        )


class Conn:
    """One connection inside one transaction: ``?`` placeholders on every dialect.

    ``head`` is the row that stands for ``HEAD`` in this working folder (see
    :func:`seal.registry.store.refs.worktree_head`): folders attached to one shared database each keep
    their own.
    """

    def __init__(self, raw: Any, dialect: str, head: str = "HEAD"):
        self.raw = raw
        self.dialect = dialect
        self.head = head

    def _sql(self, sql: str) -> str:
        return _PARAM.sub("%s", sql.replace("%", "%%")) if self.dialect == "postgresql" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self.raw.cursor()
        cur.execute(self._sql(sql), tuple(params))
        return cur

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = [tuple(r) for r in rows]
        if rows:
            self.raw.cursor().executemany(self._sql(sql), rows)

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return list(self.execute(sql, params).fetchall())

    def all_in(self, sql: str, ids: Sequence[Any]) -> list[tuple]:
        """The rows of ``sql``, whose ``{marks}`` is an IN list, over all of ``ids``: one query per
        :data:`IN_CHUNK` ids, rows in the order the chunks return them."""
        out: list[tuple] = []
        for start in range(0, len(ids), IN_CHUNK):
            part = list(ids[start:start + IN_CHUNK])
            out += self.all(sql.format(marks=", ".join("?" * len(part))), part)
        return out

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.one(sql, params)
        return None if row is None else row[0]

    def dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def insert(self, table: str, rows: list[dict]) -> None:
        """Insert dicts that share their keys (one statement, many rows)."""
        if not rows:
            return
        cols = list(rows[0])
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        self.executemany(sql, ([r[c] for c in cols] for r in rows))

    def insert_new(self, table: str, row: dict, key: str) -> bool:
        """Insert ``row`` unless a row with the same ``key`` exists; True when it was inserted."""
        cols = list(row)
        sql = (
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
            f"ON CONFLICT ({key}) DO NOTHING"
        )
        return self.execute(sql, [row[c] for c in cols]).rowcount == 1


class Database:
    """Connections to one lineage database. Cheap to create; connects on first use."""

    def __init__(self, url: str, *, create: bool = False, read_only: bool = False):
        self.url = url
        self.create = create
        self.read_only = read_only
        self.parsed = Url.parse(url)
        self.dialect = self.parsed.dialect
        self.head = "HEAD"
        self._raw: Any = None
        self.unwritable: str | None = None  # why a SQLite connection can only read (full disk, read-only media)

    @classmethod
    def open(cls, url: str, *, create: bool = False, read_only: bool = False) -> "Database":
        """Connections to ``url``; a SQLite file is created only with ``create`` (init, db upgrade).
        With ``read_only`` the driver itself refuses every write (`seal ui`)."""
        return cls(url, create=create, read_only=read_only)

    def _connect(self) -> Any:
        if self._raw is None:
            if self.dialect == "sqlite":
                self._raw, self.unwritable = _connect_sqlite(self.parsed.target, self.create, self.read_only)
            else:
                self._raw = _connect_postgres(self.parsed.target, self.read_only)
        return self._raw

    def use_wal(self) -> None:
        """SQLite only: write-ahead logging, so readers never wait for a writer (kept in the file)."""
        if self.dialect == "sqlite" and self.parsed.target != ":memory:":
            with _translated(self.url):
                raw = self._connect()
                if not self.read_only and not self.unwritable:
                    raw.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def session_lock(self, name: str) -> Iterator[None]:
        """PostgreSQL: hold an advisory lock named ``name`` for the block, so that whole steps (an
        init's schema, root and HEAD) run one at a time across processes. SQLite: no-op."""
        if self.dialect == "sqlite":
            yield
            return
        with _translated(self.url):
            raw = self._connect()
            raw.execute("SELECT pg_advisory_lock(hashtext(%s))", (name,))
        try:
            yield
        finally:
            with _translated(self.url):
                raw.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    @contextmanager
    def read(self) -> Iterator[Conn]:
        """A consistent snapshot for reading (no lock on SQLite in WAL mode)."""
        with _translated(self.url):
            raw = self._connect()
            conn = Conn(raw, self.dialect, self.head)
            # PostgreSQL's default (READ COMMITTED) gives each statement its own snapshot, so a
            # reader of several tables saw half of a version committed meanwhile; REPEATABLE READ
            # holds one snapshot for the whole block, as SQLite's WAL does.
            conn.execute("BEGIN" if self.dialect == "sqlite" else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield conn
            finally:
                _rollback(conn)

    @contextmanager
    def write(self) -> Iterator[Conn]:
        """One write transaction: everything in the block lands, or nothing does."""
        if self.read_only:
            raise UserError("this registry was opened read-only; nothing was written")
        with _translated(self.url):
            raw = self._connect()
            if self.unwritable:
                raise DatabaseUnavailable(f"cannot write the lineage database {_where(self.url)}: {self.unwritable}; "
                                          "nothing was changed")
            conn = Conn(raw, self.dialect, self.head)
            _begin_write(conn)
            try:
                yield conn
            except BaseException:
                _rollback(conn)
                raise
            _commit(conn)


def _begin_write(conn: Conn) -> None:
    if conn.dialect != "sqlite":
        conn.execute("BEGIN")
        return
    # busy_timeout makes BEGIN IMMEDIATE wait for another writer; past it we say so.
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _rollback(conn: Conn) -> None:
    try:
        conn.execute("ROLLBACK")
    except Exception:  # the transaction may already be gone (connection lost)
        pass


def _commit(conn: Conn) -> None:
    conn.execute("COMMIT")


# A WAL reader needs its -shm index (32 KiB) beside the database; below this much free space
# seal reads without one rather than fail a read or leave a half-made index behind.
MIN_FREE_BYTES = 1 << 20


def _connect_sqlite(path: str, create: bool = False, read_only: bool = False) -> tuple[sqlite3.Connection, str | None]:
    """A connection, and why it is read-only (None when it can write). ``read_only`` (`seal ui`)
    opens it so that the driver itself refuses every write.

    It never creates a missing registry database (only init and upgrade do). Where nothing can be
    written beside the database (read-only media, a full disk) it reads without writing a byte:
    WAL would need a new -shm index, so a database with no pending WAL is opened immutable (no
    writer can change it there), one with a pending WAL read-only through the index already there.
    A file the user may only read, on a writable disk, is opened read-only (others may write it).
    """
    import os
    from urllib.parse import quote

    def connect(uri: str) -> sqlite3.Connection:
        return _configured(sqlite3.connect(uri, uri=True, timeout=LOCK_TIMEOUT_S, isolation_level=None,
                                           check_same_thread=False))

    if path == ":memory:":
        raw = sqlite3.connect(path, timeout=LOCK_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        return _configured(raw), None
    if not create and not os.path.exists(path):
        raise DatabaseUnavailable(f"the lineage database {path} is missing; restore it from a backup")
    if create:
        return connect(f"file:{quote(path)}?mode=rwc"), None
    frozen, why = _why_unwritable(path)
    if why is None and not read_only:
        return connect(f"file:{quote(path)}?mode=rw"), None
    pending = os.path.exists(path + "-wal") and os.path.getsize(path + "-wal") > 0 and os.path.exists(path + "-shm")
    return connect(f"file:{quote(path)}?mode=ro" + ("&immutable=1" if frozen and not pending else "")), why


def _why_unwritable(path: str) -> tuple[bool, str | None]:
    """(whether nothing can write beside ``path``, why this process cannot write it) or (False, None)."""
    import os

    folder = os.path.dirname(path) or "."
    try:
        st = os.statvfs(folder)
    except OSError:
        st = None
    if st is not None and st.f_flag & os.ST_RDONLY:
        return True, "it is on read-only media"
    if st is not None and st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        return True, "its disk is full; free disk space and try again"
    if not os.access(path, os.W_OK):
        return not os.access(folder, os.W_OK) and not os.path.exists(path + "-shm"), \
            "this user may only read it (check the file's permissions)"
    return False, None


def _configured(raw: sqlite3.Connection) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves (the module's implicit transactions
    # mishandle SAVEPOINTs and let a failed compare-and-swap commit half of a change).
    raw.execute("PRAGMA foreign_keys=ON")
    raw.execute(f"PRAGMA busy_timeout={int(LOCK_TIMEOUT_S * 1000)}")
    return raw


def _connect_postgres(conninfo: str, read_only: bool = False) -> Any:
    try:
        import psycopg
    except ModuleNotFoundError:
        raise UserError("no PostgreSQL driver; install seal-registry[postgres] (psycopg)") from None
    options = {"options": "-c default_transaction_read_only=on"} if read_only else {}
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=10, **options)


@contextmanager
def _translated(url: str) -> Iterator[None]:
    """Driver errors about the database itself become one-line seal errors."""
    try:
        yield
    except sqlite3.OperationalError as e:
        raise _sqlite_error(url, e) from None
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.IntegrityError):
            raise
        raise DatabaseDamaged(
            f"the lineage database {_where(url)} is damaged ({e}); restore it from a backup "
            f"(every version's manifest is also kept in the object store)"
        ) from None
    except Exception as e:
        if type(e).__module__.startswith("psycopg") and type(e).__name__ in (
            "OperationalError", "InterfaceError", "ConnectionTimeout",
        ):
            raise DatabaseUnavailable(
                f"cannot reach the lineage database {_where(url)} ({str(e).splitlines()[0]}); "
                f"check that the server runs and SEAL_DATABASE_URL is right"
            ) from None
        raise


def _sqlite_error(url: str, e: sqlite3.OperationalError) -> Exception:
    text = str(e)
    if "locked" in text or "busy" in text:
        return DatabaseLocked(
            f"the lineage database {_where(url)} is locked by another seal process "
            f"(waited {LOCK_TIMEOUT_S:.0f} s); nothing was changed, try again"
        )
    if "readonly" in text or "read-only" in text:
        return DatabaseUnavailable(
            f"the lineage database {_where(url)} is read-only here; nothing was changed "
            f"(check the file's permissions and the disk)"
        )
    if "disk is full" in text or "disk I/O" in text:
        return DatabaseUnavailable(
            f"cannot write the lineage database {_where(url)} ({text}); free disk space and "
            f"try again; nothing was changed"
        )
    if "unable to open" in text:
        return DatabaseUnavailable(f"cannot open the lineage database {_where(url)} ({text})")
    if "no such table" in text or "no such column" in text:
        return DatabaseDamaged(
            f"the lineage database {_where(url)} lacks seal's schema ({text}); run `seal db upgrade`, "
            f"or restore it from a backup"
        )
    return DatabaseDamaged(f"the lineage database {_where(url)} failed: {text}")


def _where(url: str) -> str:
    parsed = Url.parse(url)
    if parsed.dialect == "sqlite":
        return parsed.target
    return re.sub(r"//[^@/]*@", "//", parsed.target)  # never print a password
