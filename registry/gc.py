"""`seal gc`: the only command that deletes blobs.

It removes, once they are older than a grace period (default one day):
- litter a killed command left: staging folders under `.seal/tmp`, half-written temp blobs in
  the object store, staged files in `./adapter`;
- blobs no version references (an attempt killed before it was recorded, a pull that lost a
  race), keeping every blob a version, a policy ref, a reflog row or the journal names.

The grace period protects commands running now: a writer touches an existing blob before it
references it again (``freshen``), so a blob in use is always young.

>>> report = collect(Registry.open(), grace_s=0)     # doctest: +SKIP
>>> [item.path for item in report.items]             # what `seal gc --dry-run` lists  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .store.objects import DIGEST_PREFIX, is_digest, referenced_blobs
from .store.refs import META

DEFAULT_GRACE_S = 24 * 3600
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Collectable:
    """One thing gc would delete: stray litter in the store, or a blob nothing references."""

    kind: str  # "litter" | "unreferenced"
    path: str
    size: int
    age_s: float


@dataclass
class GcReport:
    items: list[Collectable] = field(default_factory=list)
    removed: bool = False

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.items)

    def to_json(self) -> dict:
        return {"removed": self.removed, "bytes": self.bytes, "items": [asdict(i) for i in self.items]}


def parse_grace(text: str) -> float:
    """``"0"``, ``"90s"``, ``"2h"``, ``"1d"``, ``"2w"`` → seconds; anything else is a UserError.

    >>> parse_grace("2h")
    7200.0
    """
    from .errors import UserError

    text = str(text).strip().lower()
    unit = text[-1:] if text[-1:] in _UNITS else "s"
    number = text[:-1] if text[-1:] in _UNITS else text
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not (0 <= value < 1e9):
        raise UserError(f"--grace {text!r} is not a duration; give e.g. 0, 90s, 2h, 1d or 2w")
    return value * _UNITS[unit]


def referenced(reg) -> set[str]:
    """Every blob digest a version, a meta ref or a reflog row names."""
    keep: set[str] = set()
    with reg.read() as c:
        for (text,) in c.execute("SELECT manifest FROM versions"):
            keep.update(referenced_blobs(json.loads(text)))
            keep.add(DIGEST_PREFIX + _id_of(text))
        for name, target in c.all("SELECT name, target FROM refs"):
            if name.startswith(META) and is_digest(target):
                keep.add(target)
        for old, new in c.all("SELECT old, new FROM reflog WHERE ref LIKE 'refs/meta/%'"):
            keep.update(v for v in (old, new) if is_digest(v))
    return keep


def _id_of(text: str) -> str:
    from .store.objects import sha256_hex

    return sha256_hex(text.encode("utf-8"))


def _is_journal(reg, digest: str) -> bool:
    """Journal copies (versions and reflog rows) are kept, even of rows no longer in the database:
    they are the evidence `seal verify` finds erased or rolled-back rows by."""
    from .verify import journal_doc

    return journal_doc(reg, digest) is not None


def collect(reg, *, grace_s: float = DEFAULT_GRACE_S) -> GcReport:
    """What gc would remove, without removing anything."""
    now = time.time()
    report = GcReport()
    report.items += _litter(reg, now, grace_s)
    keep = referenced(reg)
    for digest in reg.store.iter_digests():
        if digest in keep:
            continue
        size, mtime = reg.store.stat(digest)
        if now - mtime >= grace_s and not _is_journal(reg, digest):
            report.items.append(Collectable("unreferenced", digest, size, now - mtime))
    return report


# What seal's own commands leave behind when killed, by the names they give it; gc removes
# nothing else, and never looks through a link.
_TMP_WORK = re.compile(r"^(session|pull|push|behavior|edit|merge|consolidate|learn|cluster)-[A-Za-z0-9_]{8}$")
# A checkout stages files as .NAME.seal-XXXXXXXX; its marker goes through files.write_atomic (.NAME.XXXXXXXX.tmp).
_STAGED = re.compile(r"^\.(adapter_config\.json|adapter_model\.safetensors|\.seal-checkout\.json)\.seal-[A-Za-z0-9_]{8}$"
                     r"|^\.\.seal-checkout\.json\.[A-Za-z0-9_]{8}\.tmp$")
# The policy files go through files.write_atomic (.NAME.XXXXXXXX.tmp); before that, .NAME.tmp-PID.
_SEAL_TMP = re.compile(r"^\.(policy\.toml|policy\.synced)\.(tmp-\d+|[A-Za-z0-9_]{8}\.tmp)$")
_STAGING = re.compile(r"^\.seal-(init|clone)-[A-Za-z0-9_]{8}$")


def _matching(folder: Path, pattern: re.Pattern) -> list[Path]:
    if folder.is_symlink() or not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if pattern.match(p.name)]


def _litter(reg, now: float, grace_s: float) -> list[Collectable]:
    found: list[Path] = _matching(reg.seal_dir / "tmp", _TMP_WORK)
    found += _matching(reg.seal_dir, _SEAL_TMP)
    found += _matching(reg.worktree, _STAGED)
    found += [p for p in _matching(reg.root, _STAGING) if p.is_dir() and not p.is_symlink()]
    items = [(p, _size(p), p.lstat().st_mtime) for p in found]
    items += [(p, s, m) for p, s, m in getattr(reg.store, "iter_litter", lambda: [])()]
    return [Collectable("litter", str(p), size, now - mtime) for p, size, mtime in items if now - mtime >= grace_s]


def _size(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(p.lstat().st_size for p in path.rglob("*"))
    return path.lstat().st_size


def gc(reg, *, dry_run: bool = False, grace_s: float = DEFAULT_GRACE_S) -> GcReport:
    """Remove what :func:`collect` finds (unless ``dry_run``); never a referenced blob."""
    report = collect(reg, grace_s=grace_s)
    if dry_run:
        return report
    keep = referenced(reg)  # again, just before deleting: a version recorded meanwhile keeps its blobs
    for item in report.items:
        if item.kind == "unreferenced":
            if item.path not in keep:
                reg.store.delete(item.path)
        else:
            _remove(Path(item.path))
    report.removed = True
    return report


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.chmod(path, 0o600)
        except OSError:
            pass
        path.unlink(missing_ok=True)
