"""Many workers through Ray: `seal edit --workers N` (a local Ray) or `--ray ADDRESS` (a cluster).

What is independent fans out; what must be ordered stays on this process, the driver:

- **reflect** (the model at the parent writes the K self-edits in one batched call, as a serial
  edit does, and measures the parent once) runs on one worker;
- **train and score** run one candidate per job, on whichever worker is free: the K candidates of
  one trigger run side by side;
- **decide and record** run on the driver, one attempt at a time: every candidate is recorded
  exactly once, the winner last with its branch move by compare-and-swap in the shared database,
  as :func:`seal.editor.record.record` does for a serial edit;
- **branches**: a line of a passages stream may name the branch it is aimed at (``"branch":
  "exp"``, see :func:`seal.editor.stream.branch_ref`); passages on one branch chain in file order,
  and passages on different branches run side by side.

Each worker is a Ray actor holding one warm edit session (:mod:`seal.editor.cluster_worker`) on
its own device: ``num_gpus=1`` each where the cluster has GPUs (and ``--device`` is not cpu),
else CPU cores. Ray places the actors, starts their processes and restarts a killed one; seal
only says which job goes next. Self-edits, adapters and log-probabilities travel through the
registry's object store by digest, never through Ray's, so a result outlives the worker that made
it and the driver checks every byte it reads against its digest.

A worker that dies mid-job (killed, out of memory, its machine gone) loses only that job:

- a candidate is recorded as **rejected, failing ``worker lost``** (the audit row names the
  worker), with the self-edit it was given; it is not retried, since what killed the worker may
  be the candidate itself, and the K-1 others still compete;
- a reflect is retried once on another worker (nothing of the attempt exists yet); lost twice,
  the passage is reported as ``lost``, nothing is recorded, and a rerun serves it.

Ray restarts the dead worker (up to twice) and it rejoins once its base is loaded again.

    >>> req = EditRequest(passages="squad.jsonl", candidates=4, workers=2)            # doctest: +SKIP
    >>> summary = run_stream(reg, req, emit=print)  # seal.editor.run sends it here  # doctest: +SKIP
    >>> summary["lost"], summary["workers"]                                          # doctest: +SKIP
    (0, 2)

Ray is the optional extra ``[cluster]``; without it ``--workers`` is refused before anything
loads. Torch-free and Ray-free at import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seal.registry.errors import NoHead, SealError, UserError
from seal.registry.store import refs as R

from .candidate import Attempt, Candidate, Parent, SelfEdit
from .cluster_worker import (CandidateJob, EditWorker, ReflectJob, WorkerResult, WorkerSpec, apply_written, fetch,
                             measured_from_items)
from .options import INSTALL, check_cluster_request, ray_module  # noqa: F401 (re-exported)

LOST = "worker lost"
MAX_RESTARTS = 2  # per worker, by Ray; a worker killed more often than that leaves the pool


# --- Ray and the workers -------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """How many workers, and what each asks Ray for."""

    workers: int
    num_cpus: float
    num_gpus: float
    device: str  # what each worker's pick_device gets (Ray numbers its GPUs from 0)
    threads: int | None


def placement(req, resources: dict) -> Placement:
    """Workers for ``req`` on a cluster with ``resources`` (``ray.cluster_resources()``).

        >>> from seal.editor.request import EditRequest
        >>> placement(EditRequest(workers=2, device="cpu"), {"CPU": 4.0})
        Placement(workers=2, num_cpus=2, num_gpus=0, device='cpu', threads=2)
        >>> placement(EditRequest(workers=3), {"CPU": 16.0, "GPU": 2.0})
        Traceback (most recent call last):
        seal.registry.errors.UserError: --workers 3 needs 3 GPUs (one each); the Ray cluster has 2: use --workers 2 or --device cpu
    """
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    gpu = req.device.startswith("cuda") or req.require_gpu or (req.device == "auto" and gpus > 0)
    n = req.workers or (gpus if gpu else 0)
    if not n:
        raise UserError("the Ray cluster has no GPUs; say how many CPU workers to start with --workers N")
    if gpu and gpus < n:
        raise UserError(f"--workers {n} needs {n} GPUs (one each); the Ray cluster has {gpus}: "
                        f"use --workers {gpus} or --device cpu" if gpus else
                        f"--device {req.device} needs GPUs and the Ray cluster has none; use --device cpu")
    per = 1 if gpu else (req.threads or max(1, int(cpus // n)))
    if not gpu and n * per > cpus:
        raise UserError(f"--workers {n} with {per} thread(s) each needs {n * per} CPUs; the Ray cluster has {cpus:g}")
    device = "cuda" if req.device.startswith("cuda") else req.device
    return Placement(n, per, 1 if gpu else 0, device, req.threads or (None if gpu else per))


@contextlib.contextmanager
def ray_connection(req, say: Callable[[str], None]) -> Iterator[Any]:
    """Ray, as found (already initialised: left as it is), at ``req.ray``, or started here on
    127.0.0.1 for this command and stopped after it."""
    ray = ray_module()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    _cluster_errors_to_stderr(ray)
    try:
        if req.ray:
            ray.init(address=req.ray, **quiet)
        else:
            cores = os.cpu_count() or 1
            wanted = req.workers * (req.threads or max(1, cores // req.workers))
            say(f"starting a local Ray for {req.workers} worker(s)")
            ray.init(num_cpus=max(cores, wanted), include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
    except Exception as e:  # noqa: BLE001 (ConnectionError, RuntimeError, ValueError: all one line for the user)
        where = f"the Ray cluster at {req.ray}" if req.ray else "a local Ray"
        raise UserError(f"cannot start or reach {where}: {_first_line(e)}") from None
    try:
        yield ray
    finally:
        _POOLS.clear()
        ray.shutdown()


def _cluster_errors_to_stderr(ray) -> None:
    """Ray prints the cluster's errors (a node lost, say) on the driver's stdout whatever
    ``log_to_driver`` says; a stream's stdout is its JSON lines, so they go to stderr. (Ray has no
    setting for it: its printer is wrapped, once per process.)"""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    show = getattr(worker, "print_to_stdstream", None)
    if show is None or getattr(show, "to_stderr", False):
        return

    def to_stderr(data: dict, ignore_prefix: bool) -> None:
        show({**data, "is_err": True}, ignore_prefix)

    to_stderr.to_stderr = True
    worker.print_to_stdstream = to_stderr


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# Ray job id and placement -> actor handles: a process that runs several edits (a bench, a
# notebook, the tests) keeps its workers, and their warm bases, between them.
_POOLS: dict[tuple, list] = {}


class Pool:
    """The workers of one run: which are free, and the jobs in flight on the others."""

    def __init__(self, ray, spec: WorkerSpec, place: Placement, say: Callable[[str], None]):
        self.ray, self.spec, self.say = ray, spec, say
        self.key = (ray.get_runtime_context().get_job_id(), place)
        actors = _POOLS.get(self.key)
        if actors is None:
            remote = ray.remote(EditWorker).options(num_cpus=place.num_cpus, num_gpus=place.num_gpus,
                                                    max_restarts=MAX_RESTARTS)
            actors = _POOLS[self.key] = [remote.remote() for _ in range(place.workers)]
        say(f"opening {len(actors)} worker(s): {place.device}, "
            + (f"one GPU each" if place.num_gpus else f"{place.num_cpus:g} CPU(s) each"))
        infos = self._open_all(actors)
        self.actors = list(actors)
        self.info = dict(zip(actors, infos))
        self.free = list(actors)
        self.flying: dict[Any, tuple[Any, Any]] = {}  # future -> (actor, tag)
        self.reviving: dict[Any, Any] = {}  # future -> actor

    def _open_all(self, actors: list) -> list[dict]:
        try:
            # Retried: a worker killed during the last run may still be restarting.
            infos = self.ray.get([a.open.options(max_task_retries=MAX_RESTARTS).remote(self.spec) for a in actors])
        except self.ray.exceptions.RayActorError as e:
            self.drop_all()
            raise UserError(f"a worker could not start: {_first_line(e)}") from None
        for info in infos:
            if "error" in info:
                self.drop_all()
                raise UserError(f"the worker on {info['host']} could not open the registry: {info['error']}")
        return infos

    @property
    def load_s(self) -> float:
        return max((i.get("load_s", 0.0) for i in self.info.values()), default=0.0)

    def submit(self, method: str, job, tag) -> dict:
        """Send ``job`` to a free worker; the worker's identity."""
        actor = self.free.pop(0)
        self.flying[getattr(actor, method).remote(job)] = (actor, tag)
        return self.who(actor)

    def who(self, actor) -> dict:
        """A worker as results name it: its machine, process and device."""
        info = self.info[actor]
        return {"host": info.get("host"), "pid": info.get("pid"), "device": info.get("device")}

    def wait(self, timeout: float | None) -> list[tuple[Any, dict, Any]]:
        """Finished jobs as (tag, worker identity, result or the exception that ended it)."""
        pending = list(self.flying) + list(self.reviving)
        if not pending:
            return []
        done, _ = self.ray.wait(pending, num_returns=1, timeout=timeout)
        out = []
        for future in done:
            if future in self.reviving:
                self._revived(future)
                continue
            actor, tag = self.flying.pop(future)
            who = self.who(actor)
            try:
                out.append((tag, who, self.ray.get(future)))
                self.free.append(actor)
            except self.ray.exceptions.RayActorError as e:  # the process died; Ray restarts it
                out.append((tag, who, WorkerLost(who, f"Ray reported {type(e).__name__}")))
                self._revive(actor)
        return out

    def _revive(self, actor) -> None:
        """Ray restarts a killed worker; it rejoins once it has opened the session again."""
        self.free = [a for a in self.free if a is not actor]
        self.reviving[actor.open.options(max_task_retries=MAX_RESTARTS).remote(self.spec)] = actor

    def _revived(self, future) -> None:
        actor = self.reviving.pop(future)
        try:
            info = self.ray.get(future)
        except self.ray.exceptions.RayActorError:
            info = {"error": "it could not be restarted"}
        if "error" in info:
            self.say(f"worker {_who(self.who(actor))} left the pool: {info['error']}")
            self.actors.remove(actor)
            _POOLS[self.key] = [a for a in _POOLS.get(self.key, []) if a is not actor]
            return
        self.info[actor] = info
        self.free.append(actor)
        self.say(f"worker {_who(info)} rejoined")

    def drop_all(self) -> None:
        """Kill the workers (their jobs are abandoned); the next run starts new ones."""
        for actor in _POOLS.pop(self.key, []):
            with contextlib.suppress(Exception):
                self.ray.kill(actor)


@dataclass
class WorkerLost:
    """A job whose worker died before it returned."""

    worker: dict
    error: str


def _who(info: dict) -> str:
    return f"{info.get('host')}:{info.get('pid')}"


# --- the driver's side of a session --------------------------------------------------------------

@dataclass
class ProbeDigests:
    """The driver's view of the workers' probe set: its digests only (a worker holds the probes)."""

    digests: dict


@dataclass
class DriverSession:
    """What :func:`seal.editor.attempt.edit_attempt` and :func:`seal.editor.attempt.run_attempt` need
    of a session, without a model: the driver records, the workers compute."""

    reg: Any
    base_row: dict
    probes: ProbeDigests
    base_logprobs: str
    progress: Any
    work: Path
    tracker: Any = None
    env: dict = field(default_factory=dict)  # empty: each candidate's train record names its worker's
    load_s: float = 0.0
    served: int = 0

    def parent(self, vid: str, manifest: dict) -> Parent:
        return Parent(vid, manifest, None)  # the workers export its adapter and measure it

    def first_timings(self) -> dict:
        self.served += 1
        return {"load_s": self.load_s} if self.served == 1 else {"load_s": 0.0}


class Workers:
    """The pool, opened when the first job needs it: a rerun whose passages are all recorded
    starts no worker (Ray itself is reached first, so that a bad placement is refused before
    anything is written)."""

    def __init__(self, ray, spec: WorkerSpec, place: Placement, driver: DriverSession, say: Callable[[str], None]):
        self.ray, self.spec, self.place, self.driver, self.say = ray, spec, place, driver, say
        self.pool: Pool | None = None

    def get(self) -> Pool:
        if self.pool is None:
            pool = Pool(self.ray, self.spec, self.place, self.say)
            first = next(iter(pool.info.values()))
            self.driver.probes, self.driver.base_logprobs = ProbeDigests(first["probes"]), first["base_logprobs"]
            self.driver.load_s = pool.load_s
            self.pool = pool
        return self.pool

    @property
    def flying(self) -> bool:
        return self.pool is not None and bool(self.pool.flying)

    @property
    def count(self) -> int:
        return len(self.pool.actors) if self.pool is not None else self.place.workers


@contextlib.contextmanager
def cluster(reg, req, progress) -> Iterator[tuple[Workers, DriverSession]]:
    """Ray, the workers (opened on first use), and the driver's session, for one command."""
    from .attempt import current_policy
    from .writer import precheck

    # --writer and --self-edits resolved and read here, once: the jobs carry what they name (a
    # writer version's id, a file's bytes), so a worker needs neither the driver's refs nor its files.
    precheck(reg, req)
    known = current_policy(reg).digest
    spec = WorkerSpec(seal_dir=str(reg.seal_dir.resolve()) if reg.seal_dir else None, config=reg.config,
                      db_url=reg.database_url, objects_url=reg.objects_url, known_blob=known,
                      device=req.device, require_gpu=req.require_gpu, threads=req.threads, fast=req.fast)
    with ray_connection(req, progress.say) as ray:
        place = placement(req, ray.cluster_resources())
        work = Path(tempfile.mkdtemp(prefix="driver-", dir=reg.tmp_dir))
        driver = DriverSession(reg=reg, base_row=reg.base(), probes=ProbeDigests({}), base_logprobs="",
                               progress=progress, work=work)
        workers = Workers(ray, dataclasses.replace(spec, device=place.device, threads=place.threads), place, driver,
                          progress.say)
        if req.track:
            from seal.registry.tracking import Tracker

            driver.tracker = Tracker(reg, warn=progress.say)
        ok = False
        try:
            yield workers, driver
            ok = True
        finally:
            if driver.tracker is not None:
                driver.tracker.kill_open_runs()
            shutil.rmtree(work, ignore_errors=True)
            if not ok and workers.pool is not None:
                workers.pool.drop_all()  # jobs in flight are abandoned with their workers


# --- the attempts in flight ------------------------------------------------------------------------

@dataclass
class QueuedTrigger:
    """One trigger, aimed at ``ref``, as the driver classified it."""

    number: int
    trigger: Any  # seal.editor.trigger.Trigger
    ref: str
    key: str  # the digest it is recorded under
    findings: list
    row: dict  # the secrets audit row


@dataclass
class Flight:
    """One attempt in flight: reflect, then its K candidates, then the record."""

    item: QueuedTrigger
    attempt: Attempt
    reflect_tries: int = 0
    self_edits: list[str] = field(default_factory=list)
    parent: dict | None = None
    base_logprobs: str | None = None
    results: dict[int, Any] = field(default_factory=dict)  # index -> WorkerResult or WorkerLost
    runs: dict[int, str | None] = field(default_factory=dict)  # index -> MLflow run id


@dataclass
class BranchQueue:
    """The triggers aimed at one branch, served in order: each one's parent is the tip after the last."""

    ref: str
    queue: deque = field(default_factory=deque)
    flight: Flight | None = None
    done: set[str] | None = None


class Run:
    """The driver's loop: start attempts, hand their jobs to free workers, record what comes back.

    Everything here happens on one thread, one event at a time, so records and branch moves keep
    the order of their compare-and-swaps; the workers run the jobs.
    """

    def __init__(self, workers: Workers, driver: DriverSession, req, emit: Callable[[dict], None],
                 on_dispatch: Callable[[dict], None] | None = None):
        self.workers, self.driver, self.req, self.emit = workers, driver, req, emit
        # What a candidate job needs of the request: the writer wrote at reflect, so a --self-edits
        # file (up to 64 MiB) travels once per passage, not once per candidate.
        self.trainer = dataclasses.replace(req, writer=None, self_edits=None)
        self.on_dispatch = on_dispatch or (lambda event: None)
        self.lanes: dict[str, BranchQueue] = {}
        self.reflects: deque[Flight] = deque()
        self.candidates: deque[tuple[Flight, int]] = deque()
        self.stopped: str | None = None
        self.lost = 0  # candidates lost with their worker
        self.unserved = 0  # passages lost twice while reflecting

    @property
    def say(self):
        return self.driver.progress.say

    def serve(self, feed: "Feed") -> None:
        """Until the feed is empty and every attempt is recorded (or a lost race stopped it)."""
        while True:
            if not self.workers.count:
                raise SealError("every worker was lost; what finished is recorded: run the command again to go on")
            while not self.stopped and self._backlog() < 2 * self.workers.count + 2 and feed.more():
                item = feed.next(block=not self.workers.flying and not self._startable())
                if item is None:
                    break
                self._lane(item.ref).queue.append(item)
            if not self.stopped:
                self._start_lanes()
            self._dispatch()
            if not self.workers.flying and not self.candidates and not self.reflects:
                if not feed.more() or self.stopped:
                    return  # a worker Ray is still restarting rejoins in the background
                continue
            for tag, who, result in self.workers.get().wait(timeout=0.2 if feed.more() else None):
                self._landed(tag, who, result)

    def _backlog(self) -> int:
        return sum(len(lane.queue) for lane in self.lanes.values())

    def _startable(self) -> bool:
        return any(lane.queue and lane.flight is None for lane in self.lanes.values())

    def _lane(self, ref: str) -> BranchQueue:
        return self.lanes.setdefault(ref, BranchQueue(ref))

    def _start_lanes(self) -> None:
        for lane in sorted(self.lanes.values(), key=lambda ln: ln.queue[0].number if ln.queue else 1 << 62):
            while lane.flight is None and lane.queue and not self.stopped:
                self._begin(lane, lane.queue.popleft())

    def _begin(self, lane: BranchQueue, item: QueuedTrigger) -> None:
        """Skip it, refuse it (secrets), or start its attempt on the lane's tip now."""
        from .attempt import edit_attempt, pii_allowed, refuse
        from .stream import done_triggers

        reg, head = self.driver.reg, _head(item)
        tip = reg.peel(lane.ref)
        if tip is None:
            raise NoHead(R.short_name(lane.ref))
        if lane.done is None:
            lane.done = done_triggers(reg, tip)
        if item.key in lane.done:
            self.say(f"passage {item.number} ({item.trigger.title or 'untitled'}): recorded before; skipped")
            self.emit({**head, "skipped": True})
            return
        if item.findings and not self.req.allow_pii:
            result = refuse(reg, item.trigger, self.req.message, item.findings, item.row, (lane.ref, tip))
            lane.done.add(item.key)
            self.emit({**head, "skipped": False, **result})
            return
        attempt = edit_attempt(self.driver, item.trigger, self.req, ref=lane.ref, parent=tip,
                               secrets_row=pii_allowed(item.row))
        lane.flight = Flight(item, attempt)
        self.reflects.append(lane.flight)

    def _dispatch(self) -> None:
        if not self.candidates and not self.reflects:
            return
        fresh = self.workers.pool is None
        pool = self.workers.get()
        if fresh and self.reflects:  # the first attempt carries the workers' start, as a serial one the load
            self.reflects[0].attempt.timings["load_s"] = pool.load_s
        while pool.free and (self.candidates or self.reflects):
            if self.candidates:  # finish what has started before starting more
                flight, index = self.candidates.popleft()
                job = CandidateJob(flight.attempt, self.trainer, index, flight.self_edits[index], flight.parent,
                                   first=flight.self_edits[0])
                who = pool.submit("candidate", job, (flight, index))
            else:
                flight = self.reflects.popleft()
                who = pool.submit("reflect", ReflectJob(flight.attempt, flight.item.trigger, self.req), (flight, None))
                index = None
            what = "reflect" if index is None else f"candidate {index + 1}/{self.req.candidates}"
            self.say(f"passage {flight.item.number}: {what} on worker {_who(who)}")
            self.on_dispatch({"passage": flight.item.number, "candidate": index, "worker": who})

    def _landed(self, tag, who: dict, result) -> None:
        flight, index = tag
        if index is None:
            self._reflected(flight, who, result)
            return
        if isinstance(result, WorkerLost):
            self.lost += 1
            self.say(f"passage {flight.item.number}: worker {_who(who)} was lost while on candidate {index + 1}; "
                     f"it is recorded as rejected ({LOST})")
        flight.results[index] = result
        if len(flight.results) == len(flight.self_edits):
            self._finish(flight)

    def _reflected(self, flight: Flight, who: dict, result) -> None:
        if isinstance(result, WorkerLost):
            flight.reflect_tries += 1
            if flight.reflect_tries < 2:
                self.say(f"passage {flight.item.number}: worker {_who(who)} was lost while reflecting; trying again")
                self.reflects.appendleft(flight)
                return
            self.say(f"passage {flight.item.number}: lost twice while reflecting; nothing recorded, rerun to serve it")
            self.unserved += 1
            if self.driver.tracker is not None and flight.attempt.run_id:
                self.driver.tracker.end_run(flight.attempt.run_id, "KILLED", {"seal.status": "lost"})
            self._lane(flight.item.ref).flight = None
            self.emit({**_head(flight.item), "skipped": False, "lost": f"{LOST} twice while reflecting"})
            return
        flight.self_edits, flight.parent = result["self_edits"], result["parent"]
        apply_written(flight.attempt, result.get("written"))  # before the candidates: their audit carries it
        flight.base_logprobs = result["base_logprobs"]
        flight.attempt.timings["reflect_s"] = result["reflect_s"]
        self._open_runs(flight)
        self.candidates.extend((flight, i) for i in range(len(flight.self_edits)))

    def _open_runs(self, flight: Flight) -> None:
        """The candidates' MLflow runs, opened here (the workers do not track)."""
        from .stages import hyperparameters, open_run

        k = len(flight.self_edits)
        for i in range(k):
            c = Candidate(index=i, seed=self.req.seed + i)
            flight.runs[i] = open_run(self.driver, flight.attempt, c, k, hyperparameters(self.req))

    def _finish(self, flight: Flight) -> None:
        """Decide and record the attempt (every candidate once, the winner with its branch move)."""
        from .attempt import run_attempt

        lane = self._lane(flight.item.ref)
        timings = flight.attempt.timings
        for key in ("train_s", "evaluate_s"):  # worker time, summed as a serial edit would spend it
            timings[key] = sum(r.timings[key] for r in flight.results.values() if isinstance(r, WorkerResult))
        self.driver.base_logprobs = flight.base_logprobs or self.driver.base_logprobs
        # The workers probed every candidate; run_attempt ranks them as the serial run does.
        result = run_attempt(self.driver, flight.attempt, scored=True,
                             make=lambda: [self._candidate(flight, i) for i in range(len(flight.self_edits))])
        for doc, r in zip(result["candidates"], (flight.results[i] for i in range(len(flight.self_edits)))):
            doc["worker"] = r.worker
        lane.done.add(flight.item.key)
        lane.flight = None
        if result["decision"].get("conflict"):
            self.stopped = result["decision"]["conflict"]
        self.emit({**_head(flight.item), "skipped": False, **result})

    def _candidate(self, flight: Flight, index: int) -> Candidate:
        """The candidate as record() takes it, rebuilt from the worker's digests and numbers (its
        adapter stays in the object store, recorded by digest)."""
        from .measure import Measured

        reg, doc = self.driver.reg, flight.results[index]
        trained = doc.self_edit if isinstance(doc, WorkerResult) else None
        self_edit = SelfEdit(**json.loads(fetch(reg, trained or flight.self_edits[index])))
        c = Candidate(index=index, seed=self.req.seed + index, self_edit=self_edit, run_id=flight.runs.get(index))
        if isinstance(doc, WorkerLost):
            return lost_candidate(c, flight.attempt, doc, self.req)
        c.train, c.diverged, c.scores, c.gate_inputs = doc.train, doc.diverged, doc.scores, doc.gate_inputs
        c.audit, c.failed, c.nonfinite, c.efficacy, c.evidence = doc.audit, doc.failed, doc.nonfinite, doc.efficacy, \
            doc.evidence
        if doc.measured is not None:
            m = doc.measured
            c.measured = Measured(m.retention, StoredDist(fetch(reg, m.logprobs)), m.refusal, m.over_refusal)
            if m.items:  # the per-item results the record stores as the version's results blob
                c.measured.items = measured_from_items(reg, m.items).items
        if doc.adapter:
            fetch(reg, doc.adapter["weights"])  # there, and whole: checked against its digest
            c.stored = doc.adapter
        if self.driver.tracker is not None and c.run_id and c.train.get("losses"):
            self.driver.tracker.log_losses(c.run_id, 0, c.train["losses"])
        return c


@dataclass
class StoredDist:
    """Log-probabilities a worker stored, read back and checked: all record() asks of them is bytes."""

    data: bytes

    def to_bytes(self) -> bytes:
        return self.data


def lost_candidate(c: Candidate, attempt: Attempt, lost: WorkerLost, req) -> Candidate:
    """A candidate whose worker died: rejected, failing ``worker lost``, with its self-edit kept."""
    from .stages import hyperparameters

    c.train = {"hyperparameters": hyperparameters(req), "seed": c.seed, "worker": lost.worker.get("host")}
    c.audit = list(attempt.extra_audit) + [{
        "check": LOST, "value": None, "threshold": None, "passed": False,
        "detail": f"the worker {_who(lost.worker)} died before candidate {c.index + 1} was trained and scored "
                  f"({lost.error}); the candidate was not retried"}]
    c.failed = [LOST]
    return c


def _head(item: QueuedTrigger) -> dict:
    t = item.trigger
    return {"passage": item.number, "title": t.title, "trigger": item.key, "where": t.where,
            "branch": R.short_name(item.ref)}


# --- where the triggers come from ------------------------------------------------------------------

class Feed:
    """Triggers read on a thread of their own (stdin may wait for the next line while the workers
    run), classified on the driver's thread as they are taken."""

    _END = object()

    def __init__(self, triggers: Iterable, classify: Callable[[int, Any], QueuedTrigger]):
        self.classify = classify
        self.queue: queue.Queue = queue.Queue(maxsize=64)
        self.ended = False
        self.error: BaseException | None = None
        threading.Thread(target=self._read, args=(iter(triggers),), daemon=True).start()

    def _read(self, triggers: Iterator) -> None:
        try:
            for number, trigger in enumerate(triggers, start=1):
                self.queue.put((number, trigger))
        except BaseException as e:  # noqa: BLE001 (a bad line: raised on the driver once the rest is recorded)
            self.queue.put(e)
        self.queue.put(self._END)

    def more(self) -> bool:
        return not self.ended

    def next(self, block: bool) -> QueuedTrigger | None:
        try:
            got = self.queue.get(block=block)
        except queue.Empty:
            return None
        if got is self._END:
            self.ended = True
            return None
        try:
            if isinstance(got, BaseException):
                raise got
            return self.classify(*got)
        except UserError as e:  # a bad line ends the stream there, as in a serial run
            self.error, self.ended = e, True
            return None


# --- the porcelain ---------------------------------------------------------------------------------

def edit_on_workers(reg, trigger, req, *, ref: str, secrets_row: dict, findings: list, progress,
                    on_dispatch: Callable[[dict], None] | None = None) -> dict:
    """One trigger's K candidates over the workers (`seal edit --candidates K --workers N`): the
    documented `edit --json` document, each candidate with the worker that ran it."""
    from seal.registry.store.objects import blob_digest

    results: list[dict] = []
    item = QueuedTrigger(1, trigger, ref, blob_digest(trigger.raw), findings, secrets_row)
    with cluster(reg, req, progress) as (workers, driver):
        run = Run(workers, driver, req, results.append, on_dispatch)
        run._lane(ref).done = set()  # a one-off edit is never skipped
        run.serve(Feed([trigger], lambda number, t: item))
    if not results or results[0].get("lost"):
        raise SealError(f"the edit was not recorded: {LOST} twice while reflecting; run it again")
    return {k: v for k, v in results[0].items() if k in ("decision", "timings", "candidates")}


def stream_on_workers(reg, req, triggers, *, default_ref: str, emit: Callable[[dict], None], progress,
                      on_dispatch: Callable[[dict], None] | None = None) -> dict:
    """A stream of passages over the workers; the summary of `seal edit --passages`."""
    from .stream import branch_ref, trigger_key

    summary = {"passages": 0, "recorded": 0, "skipped": 0, "accepted": 0, "stopped": None, "lost": 0,
               "workers": 0}

    def classify(number: int, trigger) -> QueuedTrigger:
        key, findings, row = trigger_key(trigger, req)
        return QueuedTrigger(number, trigger, branch_ref(reg, trigger, default_ref), key, findings, row)

    with cluster(reg, req, progress) as (workers, driver), progress.passages(triggers.total) as bar:
        def counted(item: dict) -> None:
            summary["passages"] += 1
            if not item.get("lost"):
                summary["skipped" if item["skipped"] else "recorded"] += 1
            summary["accepted"] += bool(item.get("decision", {}).get("accepted")) and not item["skipped"]
            emit(item)
            bar.advance()

        run = Run(workers, driver, req, counted, on_dispatch)
        feed = Feed(triggers, classify)
        run.serve(feed)
        summary["stopped"], summary["lost"] = run.stopped, run.lost
        summary["workers"] = len(workers.pool.actors) if workers.pool is not None else 0
        if run.unserved and not run.stopped:
            summary["stopped"] = (f"{run.unserved} passage(s) lost with their workers while reflecting, nothing "
                                  "recorded for them; run the command again to serve them")
    if feed.error is not None:
        raise feed.error
    return summary


__all__ = ["check_cluster_request", "placement", "ray_connection", "Pool", "Run", "DriverSession",
           "edit_on_workers", "stream_on_workers", "lost_candidate", "LOST", "INSTALL"]
