"""Adapter folders on disk: `seal checkout`, `checkout --to` and `seal status`.

No command deletes what seal did not write. A folder seal writes holds a marker
(``.seal-checkout.json``) listing each file it wrote with its digest; a later checkout replaces
only those files, and only while they still hold what seal wrote (or with ``force``). Files
the user added are never touched. The registry root, `.seal`, and any folder that holds a
registry are never targets. A plain checkout writes the folder first and moves HEAD after, under
a lock, so HEAD never names a version whose folder is half-written.

>>> check_target(Path("/tmp/x"), registry_root=Path("/tmp/x"))   # doctest: +SKIP
Traceback (most recent call last):
UserError: /tmp/x is the registry's own folder; choose an empty or new folder for --to
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .adapters import ADAPTER_CONFIG_FILE, WEIGHTS_FILE
from .config import SEAL_DIRNAME
from .errors import UserError
from .files import read_small, write_atomic
from .store import refs as R
from .store.object_store import file_digest
from .store.objects import is_digest
from .store.revisions import resolve_revision
from .store.versions import load_manifest

MARKER = ".seal-checkout.json"
LOCK_FILE = "worktree.lock"
WRITTEN = frozenset({ADAPTER_CONFIG_FILE, WEIGHTS_FILE})  # the only files a checkout writes (besides MARKER)


@dataclass(frozen=True)
class Marker:
    version: str
    files: dict[str, str]
    previous: dict[str, str]


def read_marker(folder: Path) -> Marker | None:
    path = folder / MARKER
    if not path.is_file():
        return None
    damaged = UserError(f"{path} is damaged; seal cannot tell which files it wrote there, so it will not touch them")
    try:
        doc = json.loads(read_small(path, "the checkout marker", 64 * 1024))
        files = {str(k): str(v) for k, v in doc["files"].items()}
        previous = {str(k): str(v) for k, v in (doc.get("previous") or {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise damaged from None
    if not set(files) | set(previous) <= WRITTEN or not all(is_digest(d) for d in [*files.values(), *previous.values()]):
        raise damaged  # seal writes two known names; anything else is a forgery aimed at other files
    return Marker(str(doc["version"]), files, previous)


def check_target(dest: Path, *, registry_root: Path) -> Path:
    """Refuse targets whose replacement could destroy a registry or its folder."""
    dest = Path(dest).expanduser().resolve()
    root = registry_root.resolve()
    seal_dir = root / SEAL_DIRNAME
    if dest == root:
        raise UserError(f"{dest} is the registry's own folder; choose an empty or new folder for --to")
    if dest == seal_dir or dest.is_relative_to(seal_dir) or SEAL_DIRNAME in dest.parts:
        raise UserError(f"{dest} is inside a registry's {SEAL_DIRNAME} folder; choose an empty or new folder outside it")
    if root.is_relative_to(dest):
        raise UserError(f"{dest} holds the registry {seal_dir}; choose an empty or new folder for --to")
    if (dest / SEAL_DIRNAME).exists() or dest.name == SEAL_DIRNAME:
        raise UserError(f"{dest} holds a seal registry; choose an empty or new folder for --to")
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} exists and is not a folder; choose another --to")
    return dest


def _changed(folder: Path, marker: Marker) -> list[str]:
    """Files seal wrote that no longer hold what seal wrote (or that a half-done checkout left)."""
    out = []
    for name, digest in marker.files.items():
        path = folder / name
        if not path.exists():
            continue
        if not path.is_file() or path.is_symlink():
            out.append(name)
            continue
        actual = file_digest(path)
        if actual != digest and actual != marker.previous.get(name):
            out.append(name)
    return out


def check_replaceable(folder: Path, *, force: bool) -> Marker | None:
    """The folder's marker if seal may write there; refuse a folder of someone else's files."""
    if not folder.exists():
        return None
    marker = read_marker(folder)
    if marker is None:
        if any(folder.iterdir()):
            raise UserError(
                f"{folder} is not empty and seal did not write it; choose an empty or new folder "
                f"(seal never deletes files it did not write)"
            )
        return None
    changed = _changed(folder, marker)
    if changed and not force:
        raise UserError(
            f"{folder} has local changes ({', '.join(sorted(changed))}); record them with "
            f"`seal import {folder}` or pass --force to overwrite those files"
        )
    return marker


def adapter_files(reg, manifest: dict, vid: str) -> dict[str, bytes | Path]:
    """What a checkout writes: name → bytes, or the blob's path (copied, then checked)."""
    from .loadable import portable_config

    adapter = manifest.get("adapter")
    if not adapter:
        return {}
    if not reg.store.has(adapter["weights"]):
        raise UserError(f"blob {adapter['weights']} of version {vid[:12]} is missing; run `seal verify`")
    config = portable_config(reg, adapter["config"])
    return {WEIGHTS_FILE: reg.store.path_of(adapter["weights"]),
            ADAPTER_CONFIG_FILE: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()}


def write_folder(folder: Path, vid: str, files: dict[str, bytes | Path], *, force: bool,
                 expect: dict[str, str] | None = None) -> Path:
    """Write ``files`` into ``folder`` with a marker; touch nothing else in it.

    Each file is staged beside its target and renamed over it. The marker is written first
    naming both the old and the new digests, then the files, then the marker again: a kill at
    any point leaves a folder that a rerun replaces without ``force`` and that `seal status`
    reports as incomplete.
    """
    old = check_replaceable(folder, force=force)
    folder.mkdir(parents=True, exist_ok=True)
    staged = {name: _stage(folder, name, data) for name, data in files.items()}
    try:
        new = {name: file_digest(p) for name, p in staged.items()}
        for name, digest in (expect or {}).items():
            if new.get(name) != digest:
                raise UserError(f"blob {digest} is corrupt in the object store; run `seal verify`")
        previous = dict(old.files) if old else {}
        _write_marker(folder, Marker(vid, new, previous))
        for name, path in staged.items():
            os.replace(path, folder / name)
        for name in set(previous) - set(new):
            _remove_if_ours(folder / name, previous[name])
        if files:
            _write_marker(folder, Marker(vid, new, {}))
        else:
            _remove_if_ours(folder / MARKER, None)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
    return folder


def _stage(folder: Path, name: str, data: bytes | Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.seal-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, Path):
                with open(data, "rb") as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        f.write(chunk)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        raise
    return Path(tmp)


def _write_marker(folder: Path, marker: Marker) -> None:
    doc = {"version": marker.version, "files": marker.files}
    if marker.previous:
        doc["previous"] = marker.previous
    write_atomic(folder / MARKER, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def _remove_if_ours(path: Path, digest: str | None) -> None:
    if path.is_file() and not path.is_symlink() and (digest is None or file_digest(path) == digest):
        path.unlink()


@contextmanager
def worktree_lock(reg) -> Iterator[None]:
    """One checkout at a time per registry folder (the folder and HEAD change together)."""
    if reg.seal_dir is None:  # a registry opened from a URL has no folder of its own to guard
        yield
        return
    path = reg.seal_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """One `checkout --to` at a time into ``folder``'s parent, from any registry. The lock is taken
    on the parent folder itself, so no lock file is written anywhere: a registry on read-only
    media can still write an adapter folder elsewhere."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def checkout(reg, rev: str, *, branch: str | None = None, to: Path | None = None, force: bool = False) -> dict:
    """Move HEAD to ``rev`` (a branch name makes HEAD follow it) and write its adapter folder.

    With ``to``, only write the adapter folder there; HEAD stays where it is. Everything that
    could refuse (the revision, the branch name, the signing key, the target folder) is checked
    before the folder is touched.
    """
    if branch is not None and to is not None:
        raise UserError("-b and --to do not go together: --to only writes a folder and moves no ref")
    if branch is not None:
        R.check_ref_name(branch)
    with reg.read() as c:
        vid = resolve_revision(c, rev)
        manifest = load_manifest(c, vid)
        follows = R.HEADS + rev if branch is None and R.read_ref(c, R.HEADS + rev) is not None else None
        if branch is not None and R.read_ref(c, R.HEADS + branch) is not None:
            raise UserError(f"branch {branch} already exists; check it out with `seal checkout {branch}`")
        for prefix, other in ((R.TAGS, "a tag"), (R.ALIASES, "an alias")):
            if branch is not None and R.read_ref(c, prefix + branch) is not None:
                raise UserError(f"{branch!r} is already {other}; pick another branch name")
    if to is not None:
        dest = check_target(to, registry_root=reg.root)
        with folder_lock(dest):
            _materialize(reg, manifest, vid, dest, force)
        return {"id": vid, "path": str(dest), "head": None}
    with worktree_lock(reg):
        _check_worktree(reg)
        reg.signer.key  # a missing key refuses now, before the folder changes
        files = _materialize(reg, manifest, vid, reg.worktree, force)
        new_head = _move_head(reg, vid, rev, branch, follows)
    return {"id": vid, "path": str(reg.worktree) if files else None, "head": R.short_target(new_head),
            "detached": not new_head.startswith(R.SYMBOLIC)}


def _check_worktree(reg) -> None:
    folder = reg.worktree
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UserError(f"{folder} is not a plain folder (a link or a file); seal writes ./adapter only as a real folder")


def _materialize(reg, manifest: dict, vid: str, dest: Path, force: bool) -> dict:
    files = adapter_files(reg, manifest, vid)
    if not files and not dest.exists():
        return files
    weights = (manifest.get("adapter") or {}).get("weights")
    write_folder(dest, vid, files, force=force, expect={WEIGHTS_FILE: weights} if weights else None)
    return files


def _move_head(reg, vid: str, rev: str, branch: str | None, follows: str | None) -> str:
    with reg.write() as c:
        reg._register_signer(c)
        entries = []
        if branch is not None:
            entries.append(R.move_ref(c, R.HEADS + branch, expected=None, new=vid, reason=f"branch: created from {rev}",
                                      signer=reg.signer))
            new_head = R.SYMBOLIC + R.HEADS + branch
        else:
            new_head = R.SYMBOLIC + follows if follows else vid
        old_head = R.read_ref(c, R.HEAD)
        if new_head != old_head:
            entries.append(R.move_ref(c, R.HEAD, expected=old_head, new=new_head, reason=f"checkout: moving to {rev}",
                                      signer=reg.signer))
    reg.journal([], entries)
    return new_head


def status(reg) -> dict:
    """HEAD against ./adapter: clean, modified, stale, incomplete, missing, or not a checkout."""
    with reg.read() as c:
        ref, head = R.head_state(c)
        manifest = load_manifest(c, head) if head else {}
    folder = reg.worktree
    out = {"head": R.short_name(ref), "id": head, "path": str(folder), "adapter": bool(manifest.get("adapter"))}
    marker = read_marker(folder) if folder.exists() else None
    out.update(_folder_state(folder, marker, head, bool(manifest.get("adapter"))))
    return out


def _folder_state(folder: Path, marker: Marker | None, head: str | None, has_adapter: bool) -> dict:
    if marker is None:
        if folder.exists() and any(folder.iterdir()):
            return {"state": "foreign", "detail": f"{folder} holds files seal did not write", "changed": []}
        if has_adapter:
            return {"state": "missing", "detail": "no adapter folder; run `seal checkout HEAD`", "changed": []}
        return {"state": "clean", "detail": "HEAD is the bare base model; no adapter folder", "changed": []}
    changed = _changed(folder, marker)
    missing = [n for n in marker.files if not (folder / n).exists()]
    if marker.previous or missing:
        return {"state": "incomplete", "detail": f"a checkout of {marker.version[:12]} did not finish; "
                f"run `seal checkout {marker.version[:12]}`", "changed": sorted(changed + missing)}
    if changed:
        return {"state": "modified", "detail": f"changed since seal wrote {marker.version[:12]}: {', '.join(changed)}",
                "changed": sorted(changed)}
    if marker.version != head:
        return {"state": "stale", "detail": f"the folder holds {marker.version[:12]} but HEAD is "
                f"{(head or 'nothing')[:12]}; run `seal checkout HEAD`", "changed": [], "folder_version": marker.version}
    return {"state": "clean", "detail": f"the folder holds HEAD ({head[:12]})", "changed": []}


def export_adapter(reg, manifest: dict, vid: str, dest: Path) -> Path:
    """Write a version's adapter into a new folder (scratch work of the editor; no HEAD change)."""
    if Path(dest).exists() and any(Path(dest).iterdir()):
        raise UserError(f"{dest} is not empty")
    files = adapter_files(reg, manifest, vid)
    weights = (manifest.get("adapter") or {}).get("weights")
    return write_folder(Path(dest), vid, files, force=False, expect={WEIGHTS_FILE: weights} if weights else None)
