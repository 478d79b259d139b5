"""What one Ray worker does: a warm edit session on its own device, serving the independent
pieces of attempts that the driver (:mod:`seal.editor.cluster`) hands it.

A worker holds one :class:`~seal.editor.session.Session` on the registry the driver names (the
same folder on one machine, or the shared database and object store from another) and serves two
kinds of job:

- :meth:`EditWorker.reflect`: the model at the parent writes the K self-edits of one trigger in
  one batched call (exactly what a serial `seal edit` does) and measures the parent once;
- :meth:`EditWorker.candidate`: one candidate, trained from the parent's adapter and scored
  against the parent and the base, with its gates run.

Nothing here writes to the database: deciding and recording stay on the driver. What a job makes
(self-edits, adapters, next-token log-probabilities) goes into the registry's object store, and
the job returns only digests and numbers, so a result outlives the worker that made it and the
driver checks every byte it reads against its digest. Torch-free at import; this module imports
no Ray (the driver wraps :class:`EditWorker` in ``ray.remote``).

    >>> worker = EditWorker()                                          # doctest: +SKIP
    >>> worker.open(spec)["device"]                                    # doctest: +SKIP
    'cpu'
    >>> worker.candidate(CandidateJob(attempt, req, 1, digest, parent)).gate_inputs.efficacy  # doctest: +SKIP
    -2.71
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seal.registry.adapters import ADAPTER_CONFIG_FILE, WEIGHTS_FILE
from seal.registry.errors import SealError, UserError
from seal.registry.store.objects import blob_digest


@dataclass(frozen=True)
class WorkerSpec:
    """Where a worker finds the registry and how it runs: small, picklable, no secrets but URLs."""

    seal_dir: str | None  # the driver's .seal folder: used when this machine has it
    config: Any  # seal.registry.config.Config of the driver's folder
    db_url: str
    objects_url: str | None
    known_blob: str  # a digest the driver stored: proves the worker sees the same object store
    device: str = "auto"
    require_gpu: bool = False
    threads: int | None = None
    fast: bool = True


@dataclass
class ReflectJob:
    """Write the K self-edits of one trigger; ``attempt.parent`` is a stub (id and manifest)."""

    attempt: Any  # seal.editor.candidate.Attempt, built by the driver
    trigger: Any  # seal.editor.trigger.Trigger
    req: Any  # seal.editor.request.EditRequest


@dataclass
class CandidateJob:
    """Train and score candidate ``index`` on the self-edit stored under ``self_edit``."""

    attempt: Any
    req: Any
    index: int
    self_edit: str  # blob digest of the SelfEdit's canonical JSON
    parent: dict  # the parent's measurements as reflect found them (see parent_doc)
    first: str | None = None  # candidate 0's self-edit (as reflected): the recipe its placebo repeats


def fetch(reg, digest: str) -> bytes:
    """A blob's bytes, refused unless they hash to ``digest`` (every store, local or S3).

        >>> class Store(dict):
        ...     def get(self, d): return self[d]
        >>> reg = type("R", (), {"store": Store({blob_digest(b"x"): b"y"})})()
        >>> fetch(reg, blob_digest(b"x"))
        Traceback (most recent call last):
        seal.registry.errors.SealError: blob sha256:2d711642b726... does not match its digest; run `seal verify`
    """
    data = reg.store.get(digest)
    if blob_digest(data) != digest:
        raise SealError(f"blob {digest[:19]}... does not match its digest; run `seal verify`")
    return data


def identity() -> dict:
    """Which process on which machine: what a lost worker is reported as."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def open_worker_registry(spec: WorkerSpec):
    """The driver's registry as this machine sees it: the driver's folder when it is here, else a
    scratch folder attached to the shared database and object store (PostgreSQL and S3)."""
    from seal.registry.repo import Registry

    seal_dir = Path(spec.seal_dir) if spec.seal_dir else None
    if seal_dir is None or not seal_dir.is_dir():
        if spec.db_url.startswith("sqlite") or not spec.objects_url:
            raise UserError(f"the registry folder {spec.seal_dir} is not on {socket.gethostname()}: workers on other "
                            "machines need a shared registry (a PostgreSQL database and SEAL_OBJECTS_URL=s3://...)")
        seal_dir = Path(tempfile.mkdtemp(prefix="seal-worker-")) / ".seal"
        seal_dir.mkdir()
    reg = Registry(seal_dir, spec.config, db_url=spec.db_url, objects_url=spec.objects_url)
    if not reg.store.has(spec.known_blob):
        raise UserError(f"the worker on {socket.gethostname()} does not see the registry's object store "
                        f"({spec.objects_url or seal_dir / 'objects'}); put the blobs on S3 (SEAL_OBJECTS_URL)")
    return reg


class EditWorker:
    """One warm session per worker process; the driver wraps this class in ``ray.remote``.

    ``__init__`` is cheap so that Ray can restart a killed worker at once; :meth:`open` loads the
    base (kept warm in the process, :func:`seal.editor.session.loaded_base`) and the probes.
    """

    def __init__(self) -> None:
        self.spec: WorkerSpec | None = None
        self.reg = None
        self.session = None
        self._context = None

    def open(self, spec: WorkerSpec) -> dict:
        """Open (or reopen, for another registry) the session; its identity, or ``{"error": ...}``."""
        if self.spec == spec and self.session is not None:
            return self.info()
        self.close()
        started = time.perf_counter()
        try:
            from .session import open_session

            self.reg = open_worker_registry(spec)
            self._context = open_session(self.reg, device=spec.device, require_gpu=spec.require_gpu,
                                         threads=spec.threads, fast=spec.fast, track=False)
            self.session = self._context.__enter__()
        except Exception as e:  # noqa: BLE001 (the driver reports it in one line and stops before any edit)
            self.close()
            return {**identity(), "error": str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}
        self.spec = spec
        return {**self.info(), "load_s": time.perf_counter() - started}

    def info(self) -> dict:
        s = self.session
        return {**identity(), "device": s.device, "threads": s.threads, "env": s.env,
                "probes": s.probes.digests, "base_logprobs": s.base_logprobs}

    def close(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
        if self.reg is not None:
            self.reg.close()
        self.spec = self.reg = self.session = self._context = None

    def reflect(self, job: ReflectJob) -> dict:
        """The K self-edits (as blobs) and the parent's measurements, measured once here so that
        every candidate, wherever it runs, is compared with the same numbers."""
        from .attach import attached
        from .stages import measure_parent, reflect, timed

        s, attempt = self.session, job.attempt
        attempt.parent = s.parent(attempt.parents[0], attempt.parent.manifest)
        audited = len(attempt.extra_audit)
        self_edits = reflect(s, attempt, job.trigger, job.req)
        if attempt.parent.efficacy is None:
            with timed(attempt, "reflect_s"), attached(s.model, attempt.parent.adapter_dir, merge=s.fast) as model:
                measure_parent(s, attempt, model, spec=attempt.spec)
        return {"self_edits": [self.reg.store.put(e.to_bytes()) for e in self_edits],
                "parent": parent_doc(self.reg, attempt.parent), "reflect_s": attempt.timings.get("reflect_s", 0.0),
                "base_logprobs": s.base_logprobs, "worker": identity(),
                "written": written_doc(attempt, attempt.extra_audit[audited:])}

    def candidate(self, job: CandidateJob) -> dict:
        """Train candidate ``job.index`` from the parent's adapter and score it; its adapter and
        log-probabilities go into the object store, the rest comes back as numbers."""
        from .candidate import SelfEdit
        from .stages import score, train

        s, attempt = self.session, job.attempt
        attempt.parent = parent_from_doc(s, attempt, job.parent)
        self_edit = SelfEdit(**json.loads(fetch(self.reg, job.self_edit)))
        shutil.rmtree(s.work / "candidate0", ignore_errors=True)  # left by a job that failed here
        # The candidate's own seed, as the serial loop gives candidate i (see stages.train).
        [c] = train(s, attempt, [self_edit], dataclasses.replace(job.req, seed=job.req.seed + job.index))
        c.index = job.index
        if attempt.contrast and job.first is not None:
            attempt.placebo_of = placebo_recipe(s, job.req, SelfEdit(**json.loads(fetch(self.reg, job.first))))
        try:
            score(s, attempt, [c])
            return WorkerResult.of(self.reg, s, c, attempt.timings)
        finally:
            if c.adapter_dir is not None:
                shutil.rmtree(c.adapter_dir, ignore_errors=True)


def placebo_recipe(session, req, first):
    """Candidate 0 as far as its placebo repeats it (seed, hyperparameters, sequences, replay
    lines): the serial run's placebo is the first live candidate's, and whichever candidate a
    worker scores, it is compared with that placebo. (Should candidate 0 diverge, the serial run
    takes candidate 1's; a worker cannot know, and keeps candidate 0's.)"""
    from .candidate import Candidate
    from .stages import hyperparameters, with_replay

    c = Candidate(index=0, seed=req.seed, self_edit=first, train={"hyperparameters": hyperparameters(req)})
    if req.replay:
        with_replay(session, [c], anchored=req.kl > 0)
    return c


def written_doc(attempt, audit: list[dict]) -> dict | None:
    """Who wrote the self-edits when it was not the model at the parent (a writer version or a
    ``--self-edits`` file): what reflect set on this copy of the attempt, for the driver's copy
    (the manifests' ``writer`` and ``reflect`` fields, and the secrets scan of what was written)."""
    if "writer" not in attempt.extra:
        return None
    return {"writer": attempt.extra["writer"], "reflect": attempt.extra["reflect"], "audit": audit}


def apply_written(attempt, doc: dict | None) -> None:
    """The driver's side of :func:`written_doc`: its attempt as the worker's reflect left it."""
    if doc is not None:
        attempt.extra["writer"], attempt.extra["reflect"] = doc["writer"], doc["reflect"]
        attempt.extra_audit.extend(doc["audit"])


def parent_doc(reg, parent) -> dict:
    """The parent's probe results and efficacy, its log-probabilities as a blob."""
    return {"vid": parent.vid, "measured": StoredMeasured.store(reg, parent.measured), "efficacy": parent.efficacy}


def parent_from_doc(session, attempt, doc: dict):
    """The parent as reflect measured it: its adapter folder here, its numbers from ``doc``."""
    from .evaluate import NextTokenDist
    from .measure import Measured

    parent = session.parent(attempt.parents[0], attempt.parent.manifest)
    m = doc["measured"]
    measured = measured_from_items(session.reg, m.items) or Measured(
        retention=m.retention, dist=NextTokenDist.from_bytes(fetch(session.reg, m.logprobs)), refusal=m.refusal,
        over_refusal=m.over_refusal)
    return dataclasses.replace(parent, measured=measured, efficacy=doc["efficacy"])


def items_blob(reg, measured) -> str | None:
    """The per-item probe results (what the paired gates compare) as a blob; None without them."""
    items = getattr(measured, "items", None)
    return reg.store.put(items.to_bytes()) if items is not None else None


def measured_from_items(reg, digest: str | None):
    """A model's measurement rebuilt from its per-item results blob, checked by digest."""
    if digest is None:
        return None
    from .measure import Measured
    from .probes import ProbeResults

    return Measured.of_items(ProbeResults.from_bytes(fetch(reg, digest)))


@dataclass(frozen=True)
class StoredMeasured:
    """A model's probe results as a job hands them on: the numbers, and the blobs by digest."""

    retention: float | None
    refusal: float | None
    over_refusal: float | None
    logprobs: str  # its next-token log-probabilities on the drift probes
    items: str | None  # its per-item results (what the paired gates compare)

    @classmethod
    def store(cls, reg, m) -> StoredMeasured:
        return cls(m.retention, m.refusal, m.over_refusal, reg.store.put(m.dist.to_bytes()), items_blob(reg, m))


@dataclass(frozen=True)
class WorkerResult:
    """One candidate trained and scored on a worker, as digests and numbers: what the driver records."""

    index: int
    train: dict
    diverged: str | None
    gate_inputs: Any  # seal.editor.gates.GateInputs
    scores: list[dict]
    audit: list[dict]
    failed: list[str]
    nonfinite: list[str]
    efficacy: Any  # seal.editor.measure.Efficacy, or None
    measured: StoredMeasured | None
    adapter: dict | None  # {"weights": digest, "config": {...}}, in the object store
    self_edit: str | None  # what it trained on: the reflected self-edit plus its replay lines
    evidence: dict | None
    worker: dict
    timings: dict

    @classmethod
    def of(cls, reg, session, c, timings: dict) -> WorkerResult:
        adapter = None
        if c.adapter_dir is not None:  # as the serial record stores it (a NaN-logits candidate keeps its adapter)
            adapter = {"weights": reg.store.put_file(c.adapter_dir / WEIGHTS_FILE),
                       "config": json.loads((c.adapter_dir / ADAPTER_CONFIG_FILE).read_text())}
        return cls(
            c.index, {**c.train, **session.env, "worker": socket.gethostname()}, c.diverged, c.gate_inputs, c.scores,
            c.audit, c.failed, c.nonfinite, c.efficacy,
            StoredMeasured.store(reg, c.measured) if c.measured is not None else None, adapter,
            reg.store.put(c.self_edit.to_bytes()) if c.self_edit is not None else None, c.evidence, identity(),
            {k: timings.get(k, 0.0) for k in ("train_s", "evaluate_s")})


__all__ = ["EditWorker", "WorkerSpec", "ReflectJob", "CandidateJob", "fetch", "identity", "open_worker_registry",
           "items_blob", "measured_from_items", "written_doc", "apply_written", "StoredMeasured", "WorkerResult"]
