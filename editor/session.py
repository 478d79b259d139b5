"""A warm session: one loaded base, its tokenizer, the probes and the base's results, serving many
triggers (one `seal edit`, a stream of passages, a merge, or a bench) in one process.

The base is loaded once per process and device and kept (:func:`loaded_base`); so are the base's
probe results. A session adds what belongs to one registry and one command: the registry, the
probe blobs in its store, a scratch folder, progress, MLflow tracking and the engine options.

    >>> with open_session(reg, device="cpu") as session:                    # doctest: +SKIP
    ...     for trigger in triggers:
    ...         result = edit_trigger(session, trigger, request)

Threads: on the CPU, torch's intra-op threads are set once per session. The default takes the
machine's load into account: on the 2-core machine this was built on, 2 threads ran the edit's
matmuls about 1.6x faster than 1 when the machine was quiet, but 3-10x slower when other
processes kept the cores busy (OpenMP threads wait on each other), so the default is the number of
cores minus the one-minute load average, at least 1. ``--threads`` (or ``OMP_NUM_THREADS``)
overrides it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seal.registry.bases import base_spec
from seal.registry.errors import UserError
from seal.registry.files import write_atomic
from seal.registry.vocabulary import OVER_REFUSAL, REFUSAL, RETENTION
from seal.registry.worktree import export_adapter

from .candidate import Parent
from .progress import Progress, QuietProgress

# (base spec, device) -> LoadedBase, and (base id, probe set, device) -> (Measured, logprobs bytes):
# what one process keeps warm across sessions.
_BASES: dict[tuple, Any] = {}
_BASE_RESULTS: dict[tuple, tuple[Any, bytes]] = {}
# (version id, probe set) -> per-item results bytes of parents measured in this process (old
# versions recorded before per-item results): each is measured once per process.
_PARENT_RESULTS: dict[tuple[str, str], bytes] = {}


def default_threads() -> int:
    """Cores this process may use, minus the one-minute load average, at least 1 (see module doc).

        >>> default_threads() >= 1
        True
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, cores - busy)


@dataclass
class Session:
    """One loaded base with its probes and the base's results, for one registry and command."""

    reg: Any
    base: Any  # seal.editor.base.LoadedBase
    base_row: dict
    device: str
    probes: Any  # seal.editor.measure.Probes
    base_m: Any  # seal.editor.measure.Measured
    base_logprobs: str
    env: dict
    work: Path
    progress: Progress
    fast: bool = True
    threads: int | None = None
    tracker: Any = None  # seal.registry.tracking.Tracker, when tracking
    load_s: float = 0.0
    base_results: str | None = None  # digest of the base's per-item probe results blob
    served: int = 0  # triggers served so far; the first one carries the load time
    _parents: dict = field(default_factory=dict)
    _known: Any = None  # seal.editor.taught.KnownMargins, made on first use
    _anchors: Any = None  # seal.editor.kl_anchor.AnchorCache, made on first use

    @property
    def anchor_cache(self):
        """The parents' distributions on the KL anchor's texts, recorded once per parent and text in
        this session (:class:`seal.editor.kl_anchor.AnchorCache`)."""
        if self._anchors is None:
            from .kl_anchor import AnchorCache

            self._anchors = AnchorCache()
        return self._anchors

    @property
    def known_margins(self):
        """Answer margins this session measured, by version and question
        (:class:`seal.editor.taught.KnownMargins`): a parent is scored only on what it was never asked."""
        if self._known is None:
            from .taught import KnownMargins

            self._known = KnownMargins()
        return self._known

    @property
    def tok(self):
        return self.base.tokenizer

    @property
    def model(self):
        return self.base.model

    def parent(self, vid: str, manifest: dict) -> Parent:
        """The parent's adapter folder and, when stored with the same probes, its probe results."""
        from .evaluate import NextTokenDist
        from .measure import Measured

        if not manifest.get("adapter"):
            return Parent(vid, manifest, None, measured=self.base_m)
        folder = self._parents.get(vid)
        if folder is None or not folder.is_dir():
            folder = export_adapter(self.reg, manifest, vid, self.work / f"parent-{vid[:16]}")
            self._parents[vid] = folder
        stored = manifest.get("probes") or {}
        retention = RETENTION.of(manifest)
        measured = None
        if self.probes.items is not None:
            return Parent(vid, manifest, folder, measured=self._stored_parent(vid, stored.get("results")))
        if stored.get("set") == self.probes.digests["set"] and retention is not None \
                and self.reg.store.has(stored.get("logprobs", "")):
            measured = Measured(
                retention=retention,
                dist=NextTokenDist.from_bytes(self.reg.store.get(stored["logprobs"])),
                refusal=REFUSAL.of(manifest),
                over_refusal=OVER_REFUSAL.of(manifest),
            )
        return Parent(vid, manifest, folder, measured=measured)

    def _stored_parent(self, vid: str, digest: str | None):
        """The parent's stored per-item results, else those measured before on this machine (an
        old version recorded without them), else None (it is measured)."""
        from .measure import Measured, stored_results

        results = stored_results(self.reg, digest, self.probes)
        if results is None:
            data = _PARENT_RESULTS.get((vid, self.probes.items.digest)) or _read_cached(self._parent_cache(vid))
            if data is not None:
                results = stored_results(self.reg, self.reg.store.put(data), self.probes)
        return None if results is None else Measured.of_items(results)

    def remember_parent(self, vid: str, measured) -> str | None:
        """Keep a parent's per-item results measured now (an old version had none): in this
        process, in the machine's cache beside the base's, and in the store; the digest."""
        if measured is None or measured.items is None:
            return None
        data = measured.items.to_bytes()
        _PARENT_RESULTS[(vid, self.probes.items.digest)] = data
        path = self._parent_cache(vid)
        with contextlib.suppress(OSError):  # a cache that cannot be written costs a measurement later
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        return self.reg.store.put(data)

    def _parent_cache(self, vid: str) -> Path:
        from .base import default_cache_dir

        return default_cache_dir().parent / "probes" / f"version-{vid[:32]}-{self.probes.items.digest[7:23]}.safetensors"

    def first_timings(self) -> dict:
        """The timings an attempt starts with: the load time for the first trigger of a session."""
        self.served += 1
        return {"load_s": self.load_s} if self.served == 1 else {"load_s": 0.0}

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.kill_open_runs()
        shutil.rmtree(self.work, ignore_errors=True)


def _read_cached(path: Path) -> bytes | None:
    """A cache file's bytes, when it is a small regular file (checked by the caller as data)."""
    try:
        return path.read_bytes() if path.is_file() and not path.is_symlink() and path.stat().st_size < 64 << 20 else None
    except OSError:
        return None


def checked_base(base_row: dict) -> tuple | None:
    """The base's files checked (:mod:`seal.editor.base_check`) and fingerprinted before anything
    loads, so a base that went bad since `init` is one line; None when this process holds it."""
    from .base import default_cache_dir, prepare_base

    if any(k[0] == base_spec(base_row) for k in _BASES):
        return None
    try:
        return prepare_base(base_spec(base_row), cache_dir=default_cache_dir())
    except FileNotFoundError as e:
        raise UserError(str(e)) from None


def loaded_base(base_row: dict, device: str, prepared: tuple | None = None) -> Any:
    """The base of ``base_row`` on ``device``, loaded once per process and checked against the
    registry's fingerprint. A base left with adapter layers by an interrupted call is reloaded."""
    from .base import default_cache_dir, load_base
    from .train import has_adapter_layers

    key = (base_spec(base_row), device)
    base = _BASES.get(key)
    if base is not None and (base.fingerprint != base_row["id"] or has_adapter_layers(base.model)):
        base = None
    if base is None:
        try:
            base = load_base(base_spec(base_row), cache_dir=default_cache_dir(), device=device, prepared=prepared)
        except FileNotFoundError as e:
            raise UserError(str(e)) from None
        if base.fingerprint != base_row["id"]:
            raise UserError(
                f"the base model found now ({base.name}, {base.fingerprint[:12]}) is not the one this registry "
                f"was made on ({base_row['name']}, {base_row['id'][:12]}); restore it or use another registry"
            )
        _BASES.clear()  # one base per process: a second one would double the memory
        _BASES[key] = base
    return base


def set_threads(device: str, threads: int | None) -> int | None:
    """Set torch's CPU threads (``threads``, else :func:`default_threads`); None on an accelerator."""
    import torch

    from .options import check_number

    if threads is not None:
        check_number("--threads", threads, low=1, high=1024, integer=True)
    if not str(device).startswith("cpu"):
        return None
    n = threads or default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def open_session(reg, *, device: str = "auto", require_gpu: bool = False, threads: int | None = None,
                 fast: bool = True, progress: Progress | None = None, track: bool = False) -> Iterator[Session]:
    """Load (or reuse) the base, the probes and the base's results; a scratch folder for the session."""
    from seal.registry.policy import read_policy

    from .device import environment_record, pick_device

    read_policy(reg)  # a broken policy.toml is refused before the model loads and before any blob is written
    device = pick_device(device, require_gpu=require_gpu)
    progress = progress or QuietProgress()
    base_row = reg.base()
    started = time.perf_counter()
    n_threads = set_threads(device, threads)
    prepared = checked_base(base_row)
    with progress.stage(f"load base {base_row['name']} on {device}"):
        base = loaded_base(base_row, device, prepared)
    with progress.stage("the base's probe results (measured once per machine and probe set, then cached)"):
        probes, base_m, base_logprobs = _base_results(reg, base_row, base, device, fast)
    env = {**environment_record(device), "threads": n_threads}
    work = Path(tempfile.mkdtemp(prefix="session-", dir=reg.tmp_dir))
    session = Session(reg=reg, base=base, base_row=base_row, device=device, probes=probes, base_m=base_m,
                      base_logprobs=base_logprobs, env=env, work=work, progress=progress, fast=fast,
                      threads=n_threads, load_s=time.perf_counter() - started,
                      base_results=reg.store.put(base_m.items.to_bytes()) if base_m.items is not None else None)
    if track:
        from seal.registry.tracking import Tracker

        session.tracker = Tracker(reg, warn=progress.say)
    try:
        yield session
    finally:
        session.close()


def _base_results(reg, base_row: dict, base, device: str, fast: bool):
    """The probes (as blobs in this registry) and the base's results on them, once per process."""
    from .measure import base_measurements, load_probes

    probes = load_probes(reg)
    key = (base_row["id"], probes.digests["set"], device)
    if key in _BASE_RESULTS:
        measured, data = _BASE_RESULTS[key]
        return probes, measured, reg.store.put(data)
    measured, digest = base_measurements(reg, base_row["id"], base.model, base.tokenizer, probes, share_prefix=fast)
    _BASE_RESULTS[key] = (measured, reg.store.get(digest))
    return probes, measured, digest


__all__ = ["Session", "open_session", "loaded_base", "default_threads", "set_threads", "measure_base"]


def measure_base(reg, progress) -> None:
    """The base's own probe results (retention, drift, refusal), measured once per machine, base and
    probe set and cached (:func:`seal.editor.measure.base_measurements`), so the first edit loads
    like any later one. A failure here leaves the new registry as it is: the first edit measures."""
    try:
        with open_session(reg, device="auto", progress=progress):
            pass
    except (UserError, OSError, MemoryError) as e:
        progress.say(f"note: the base's probe results were not measured now ({str(e).splitlines()[0]}); "
                     "the first edit measures them")
