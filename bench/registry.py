"""Registry at scale: build a synthetic lineage, then time `seal` commands as separate processes.

    python bench/registry.py --versions 100000
    python bench/registry.py --versions 1000000 --repeat 3      # flat up to a million?
    python bench/registry.py --versions 100000 1000000 --db postgresql  # both sizes, reads taken in turn
    python bench/registry.py --bytes 3000                       # PostgreSQL bytes per version, by relation

Prints one JSON line. One size: wall times (median of --repeat cold runs) of `seal log -n 20`,
`seal show HEAD`, `seal show PREFIX`, `seal log --all -n 20` and `seal checkout HEAD~500 --to DIR`;
the time of one `seal import` as a process and of `Registry.record` in-process; Python's own
start-up; and any of torch, transformers, peft, mlflow, sqlalchemy or alembic a read command
imported. Several sizes: each is built, then the reads are timed one run of each on each size in
turn, with each process's own CPU time beside its wall time (on a shared machine the CPU time
moves far less with the load).

The lineage is built in bulk through the registry's plumbing (each version signed, and the rows
`version_rows` derives inserted in transactions of 5000, by COPY on PostgreSQL, without the
per-version journal copy), because recording a million versions one by one would take longer
than the reads being measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "peft", "mlflow", "sqlalchemy", "alembic")
SEAL = [sys.executable, "-m", "seal.cli"]


def lora_tensors(rng) -> dict:
    """r=8 LoRA factors for q_proj and v_proj of the bench base's 2 layers, drawn from ``rng``."""
    import numpy as np

    tensors = {}
    for layer in range(2):
        for mod in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((8, 64)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((64, 8)).astype(np.float32)
    return tensors


def make_adapter(folder: Path, seed: int = 0) -> Path:
    """A small but valid LoRA folder (safetensors + config) on the bench base, written with numpy."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(lora_tensors(np.random.default_rng(seed)), str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "bench-base", "task_type": "CAUSAL_LM", "bias": "none",
    }))
    return folder


def bench_base(shapes: dict | None = None) -> dict:
    from seal.registry.bases import base_record

    shapes = shapes or {f"model.layers.{i}.self_attn.{m}": [64, 64] for i in range(2) for m in ("q_proj", "v_proj")}
    return base_record(name="bench-base", revision=None, source="hub", location=None, info={"shapes": shapes})


def build(root: Path, n: int, adapter: Path | None = None, base: dict | None = None,
          db_url: str | None = None) -> float:
    """``n`` versions on main (every tenth a rejected sibling), inserted in bulk; returns seconds.

    Each manifest's canonical bytes come from a template cut out of one canonical manifest (only
    the parent, time, message and value differ; the first few are checked against
    ``manifest_bytes``), each id is signed, and the rows :func:`version_rows` derives are inserted
    in batches (``executemany`` on SQLite, ``COPY`` on PostgreSQL): a million in minutes."""
    from seal.registry.init import init_registry
    from seal.registry.store import refs as R
    from seal.registry.store.objects import manifest_bytes, sha256_hex
    from seal.registry.store.versions import version_rows

    t0 = time.perf_counter()
    base = base or bench_base()
    reg = init_registry(root, base=base, db_url=db_url)
    adapter = adapter or make_adapter(root / "adapter-src")
    digest = reg.store.put_file(adapter / "adapter_model.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text())
    root_id = head = reg.resolve("main")
    start = time.time() - n - 10
    template = ManifestTemplate(base["id"], digest, config)
    for lo in range(0, n, BATCH):
        tables: dict[str, list[dict]] = {}
        for i in range(lo, min(n, lo + BATCH)):
            accepted = i % 10 != 9
            text = template.text(head, i, start, accepted)
            if i < 3 or i == 9:
                assert text == manifest_bytes(_manifest(base["id"], head, i, start, digest, config, accepted))
            vid = sha256_hex(text)
            manifest = template.manifest(head, i, start, accepted)
            rows = version_rows(manifest, vid, reg.signer.sign_id(vid), reg.signer.id, text.decode("utf-8"))
            for table, got in (("versions", [rows["version"]]), *((t, rows[t]) for t in CHILD_TABLES if t in rows)):
                tables.setdefault(table, []).extend(got)
            head = vid if accepted else head
        with reg.write() as c:
            for table, got in tables.items():
                _bulk_insert(c, TABLE_NAMES.get(table, table), got)
    reg.move_ref(R.HEADS + "main", new=head, expected=root_id, reason="bench: synthetic lineage")
    reg.close()
    return time.perf_counter() - t0


BATCH = 5000
CHILD_TABLES = ("parents", "scores", "audits")
TABLE_NAMES = {"parents": "version_parents"}


def _bulk_insert(c, table: str, rows: list[dict]) -> None:
    if not rows:
        return
    if c.dialect != "postgresql":
        c.insert(table, rows)
        return
    cols = list(rows[0])
    with c.raw.cursor().copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row([r[k] for k in cols])


class ManifestTemplate:
    """The canonical bytes of :func:`_manifest` for any ``i``, by substitution into one canonical text."""

    PARENT, TIME, MESSAGE, STATUS = "P" * 64, "T" * 27, "M" * 24, "S" * 8

    def __init__(self, base_id: str, digest: str, config: dict):
        from seal.registry.store.objects import build_manifest, manifest_bytes

        self.base_id, self.digest, self.config = base_id, digest, config
        marked = build_manifest(
            base=base_id, parents=[self.PARENT], kind="edit", status="accepted", created_at=self.TIME,
            adapter={"weights": digest, "config": config, "format": "peft-lora"},
            scores=[{"suite": "efficacy", "metric": "f1", "against": None, "value": 0.123456789, "n": 5}],
            audit=[{"check": "retention_vs_parent", "value": 0.0, "threshold": 0.05, "passed": True, "detail": ""}],
            author="bench", message=self.MESSAGE, extra={"headline": {"metric": "efficacy.f1", "value": 0.123456789}},
        )
        text = manifest_bytes(marked).decode("utf-8").replace('"accepted"', '"' + self.STATUS + '"')
        self.pieces = re.split(f"({self.PARENT}|{self.TIME}|{self.MESSAGE}|{self.STATUS}|0\\.123456789)", text)
        self.values = [manifest_bytes({"v": (i % 100) / 100}).decode("utf-8")[5:-1] for i in range(100)]

    def text(self, parent: str, i: int, start: float, accepted: bool) -> bytes:
        fill = {self.PARENT: parent, self.TIME: _stamp(start, i), self.MESSAGE: f"synthetic edit {i}",
                self.STATUS: "accepted" if accepted else "rejected", "0.123456789": self.values[i % 100]}
        return "".join(fill.get(p, p) for p in self.pieces).encode("utf-8")

    def manifest(self, parent: str, i: int, start: float, accepted: bool) -> dict:
        """Only what :func:`version_rows` reads (the rows, not the id, come from it)."""
        value = (i % 100) / 100
        return {"base": self.base_id, "parents": [parent], "kind": "edit", "status": "accepted" if accepted else "rejected",
                "created_at": _stamp(start, i), "author": "bench", "message": f"synthetic edit {i}",
                "adapter": {"weights": self.digest}, "headline": {"metric": "efficacy.f1", "value": value},
                "scores": [{"suite": "efficacy", "metric": "f1", "against": None, "value": value, "n": 5}],
                "audit": [{"check": "retention_vs_parent", "value": 0.0, "threshold": 0.05, "passed": True, "detail": ""}]}


def _stamp(start: float, i: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + i)) + f".{i % 1000000:06d}Z"


def _manifest(base_id, parent, i, start, digest, config, accepted) -> dict:
    from seal.registry.store.objects import build_manifest

    value = (i % 100) / 100
    return build_manifest(
        base=base_id, parents=[parent], kind="edit", status="accepted" if accepted else "rejected", created_at=_stamp(start, i),
        adapter={"weights": digest, "config": config, "format": "peft-lora"},
        scores=[{"suite": "efficacy", "metric": "f1", "against": None, "value": value, "n": 5}],
        audit=[{"check": "retention_vs_parent", "value": 0.0, "threshold": 0.05, "passed": True, "detail": ""}],
        author="bench", message=f"synthetic edit {i}", extra={"headline": {"metric": "efficacy.f1", "value": value}},
    )


def process_env() -> dict:
    """The environment of the timed commands: seal runs from bytecode, as an installed seal does
    (PYTHONDONTWRITEBYTECODE would recompile every module of seal in every process)."""
    drop = ("PYTHONPROFILEIMPORTTIME", "PYTHONDONTWRITEBYTECODE")
    return {"SEAL_ACTOR": "bench", **{k: v for k, v in os.environ.items() if k not in drop}}


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return wall, proc.stderr


def timed_cpu(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, the process's own CPU seconds, user + system). On a shared machine the CPU
    time moves far less with the load than the wall time does."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = timed(cmd, cwd, env)[0]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def heavy_imports(importtime_stderr: str) -> list[str]:
    found = set()
    for line in importtime_stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", line)
        if m and m.group(1).split(".")[0] in HEAVY:
            found.add(m.group(1).split(".")[0])
    return sorted(found)


def median_of(cmd: list[str], root: Path, env: dict, repeat: int) -> float:
    return round(statistics.median(timed(cmd, root, env)[0] for _ in range(repeat)), 4)


def import_per_version(root: Path, env: dict, repeat: int) -> float:
    """`seal import` of a fresh adapter folder as a process (validation, blob, record, ref move)."""
    times = []
    for i in range(repeat):
        folder = make_adapter(root / f"import-{i}", seed=1000 + i)
        times.append(timed(SEAL + ["import", str(folder), "-m", f"bench import {i}"], root, env)[0])
    return round(statistics.median(times), 4)


def record_in_process(root: Path, repeat: int) -> float:
    """`Registry.record` of a small manifest moving a branch, in one warm process (median, seconds)."""
    from seal.registry.repo import Registry
    from seal.registry.store import refs as R
    from seal.registry.store.objects import build_manifest

    reg = Registry.open(root)
    head = reg.resolve("main")
    reg.move_ref(R.HEADS + "rec", new=head, expected=None, reason="bench")
    base_id = reg.base_id()
    times = []
    for i in range(repeat):
        m = build_manifest(base=base_id, parents=[head], kind="edit", status="accepted", message=f"rec {i}")
        t0 = time.perf_counter()
        head_new = reg.record(m, ref=R.HEADS + "rec", expected=head, reason="bench record")
        times.append(time.perf_counter() - t0)
        head = head_new
    reg.close()
    return round(statistics.median(times), 5)


def postgres_databases(stack):
    """A function that makes a database on a throwaway PostgreSQL cluster (the tests'
    tests/pgcluster.py), which is stopped when ``stack`` closes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from pgcluster import PgCluster, create_database, find_pg_bin

    bindir = find_pg_bin()
    if bindir is None:
        raise SystemExit("no PostgreSQL server binaries (initdb): apt-get install postgresql")
    cluster = PgCluster(bindir).start()
    stack.callback(cluster.stop)
    return lambda name: create_database(cluster.url, name)


def pg_bytes(n: int, db_url: str, root: Path) -> dict:
    """Bytes per version on PostgreSQL for ``n`` edit-shaped versions (bench/concurrency.py's: 17
    scores, 10 gates, the training record), each moving main as an accepted edit does: growth of
    every relation (heap, TOAST, each index) after VACUUM, divided by ``n``."""
    import psycopg

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from concurrency import adapter_bytes, edit_like
    from seal.registry.init import init_registry
    from seal.registry.store import refs as R
    from seal.registry.store.objects import manifest_bytes, sha256_hex
    from seal.registry.store.versions import insert_version

    reg = init_registry(root, base=bench_base(), db_url=db_url)
    data, config = adapter_bytes(0, 0)
    weights, base_id, head = reg.store.put(data), reg.base_id(), reg.resolve("main")
    plain = db_url.replace("postgresql+psycopg://", "postgresql://")

    def sizes() -> dict[str, int]:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute("VACUUM")
            return dict(conn.execute(RELATION_SIZES).fetchall())

    before, text_bytes = sizes(), 0
    for lo in range(0, n, 500):
        with reg.write() as c:
            for k in range(lo, min(n, lo + 500)):
                manifest = edit_like(base_id, head, weights, config, 0, k)
                text = manifest_bytes(manifest)
                vid, text_bytes = sha256_hex(text), text_bytes + len(text)
                insert_version(c, manifest, vid, reg.signer.sign_id(vid), reg.signer.id, text=text.decode("utf-8"))
                R.move_ref(c, R.HEADS + "main", expected=head, new=vid, reason=f"bench: edit {k}", signer=reg.signer)
                head = vid
    after = sizes()
    with reg.read() as c:
        stored = float(c.scalar("SELECT avg(pg_column_size(manifest)) FROM versions WHERE kind = 'edit'"))
    reg.close()
    grown = {name: round((after[name] - before.get(name, 0)) / n) for name in after if after[name] > before.get(name, 0)}
    return {"edits": n, "manifest_text_bytes": round(text_bytes / n), "manifest_stored_bytes": round(stored),
            "bytes_per_version": sum(grown.values()), "by_relation": dict(sorted(grown.items(), key=lambda kv: -kv[1]))}


# Each relation of seal's tables (heap, TOAST heap and index, every index), by a readable name.
RELATION_SIZES = """
SELECT CASE WHEN t.relkind = 't' THEN 'toast:' || o.relname WHEN t.relkind = 'i' AND o.relkind = 't'
            THEN 'toast-index:' || oo.relname ELSE t.relname END, pg_relation_size(t.oid)
FROM pg_class t
LEFT JOIN pg_class o ON t.relkind = 't' AND o.reltoastrelid = t.oid
    OR t.relkind = 'i' AND o.oid = (SELECT indrelid FROM pg_index WHERE indexrelid = t.oid) AND o.relkind = 't'
LEFT JOIN pg_class oo ON o.relkind = 't' AND oo.reltoastrelid = o.oid
JOIN pg_namespace n ON n.oid = COALESCE(oo.relnamespace, o.relnamespace, t.relnamespace)
WHERE n.nspname = current_schema() AND t.relkind IN ('r', 'i', 't')
"""


def main() -> None:
    import contextlib

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, nargs="+", default=[100000],
                    help="one size: build it and time everything; several: build each, then time their reads in turn")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                    help="postgresql: a throwaway cluster started with initdb/pg_ctl, as the tests do")
    ap.add_argument("--reads-only", action="store_true", help="time the reads only (no import, record or import check)")
    ap.add_argument("--compare", type=Path, nargs="+", default=None, metavar="DIR",
                    help="instead: time the reads of SQLite registries kept with --keep, taking turns")
    ap.add_argument("--bytes", type=int, default=0, metavar="N",
                    help="instead: PostgreSQL bytes per version for N edit-shaped versions, by relation")
    ap.add_argument("--keep", type=Path, default=None, help="build here and keep it (default: a temp folder)")
    args = ap.parse_args()
    if args.compare:
        print(json.dumps(compare_reads(args.compare, args.repeat)))
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="seal-bench-"))
    env = process_env()
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            stack.callback(shutil.rmtree, root, True)
        database = postgres_databases(stack) if args.db == "postgresql" or args.bytes else lambda name: None
        if args.bytes:
            print(json.dumps({"bench": "registry-bytes", "db": "postgresql", **pg_bytes(args.bytes, database("bytes"), root)}))
            return
        if len(args.versions) == 1:
            n = args.versions[0]
            results: dict = {"bench": "registry", "db": args.db, "versions": n,
                             "build_s": round(build(root, n, db_url=database("bench")), 2)}
            results.update(time_reads(root, env, args.repeat, args.reads_only))
            print(json.dumps(results), flush=True)
            return
        roots, built = [root / f"v{n}" for n in args.versions], {}
        for n, folder in zip(args.versions, roots):
            built[n] = round(build(folder, n, db_url=database(f"bench_{n}")), 2)
        results = compare_reads(roots, args.repeat)
        for entry, n in zip(results["registries"], args.versions):
            entry["build_s"] = built[n]
        print(json.dumps(results), flush=True)


def compare_reads(roots: list[Path], repeat: int) -> dict:
    """Median read times of several kept registries, one run of each command on each in turn."""
    from seal.registry.repo import Registry

    env = process_env()
    commands, times = {}, {}
    for root in roots:
        reg = Registry.open(root)
        commands[root] = read_commands(root, reg.resolve("HEAD~1000")[:10])
        with reg.read() as c:
            times[root] = {"versions": c.scalar("SELECT count(*) FROM versions"), "db": c.dialect}
        reg.close()
    runs: dict = {root: {name: [] for name in commands[root]} for root in roots}
    for _ in range(repeat):
        for name in commands[roots[0]]:
            for root in roots:
                runs[root][name].append(timed_cpu(commands[root][name], root, env))
    for root in roots:
        for name, ts in runs[root].items():
            times[root][name] = round(statistics.median(t[0] for t in ts), 4)
            times[root][name.replace("_s", "_cpu_s")] = round(statistics.median(t[1] for t in ts), 4)
    python = [timed_cpu([sys.executable, "-c", "pass"], roots[0], env) for _ in range(repeat)]
    return {"bench": "registry-compare", "repeat": repeat, "load_average": os.getloadavg()[0],
            "python_startup_s": round(statistics.median(t[0] for t in python), 4),
            "python_startup_cpu_s": round(statistics.median(t[1] for t in python), 4),
            "registries": [times[root] for root in roots]}


def read_commands(root: Path, prefix: str) -> dict:
    return {
        "log_n20_s": SEAL + ["log", "-n", "20"],
        "show_head_s": SEAL + ["show", "HEAD"],
        "show_prefix_s": SEAL + ["show", prefix],
        "log_all_n20_s": SEAL + ["log", "--all", "-n", "20"],
        "checkout_head_500_s": SEAL + ["checkout", "HEAD~500", "--to", str(root / "co"), "--force"],
    }


def time_reads(root: Path, env: dict, repeat: int, reads_only: bool) -> dict:
    from seal.registry.repo import Registry

    reg = Registry.open(root)
    prefix = reg.resolve("HEAD~1000")[:10]
    reg.close()
    commands = read_commands(root, prefix)
    results = {name: median_of(cmd, root, env, repeat) for name, cmd in commands.items()}
    results["python_startup_s"] = median_of([sys.executable, "-c", "pass"], root, env, repeat)
    if reads_only:
        return results
    results["import_s"] = import_per_version(root, env, repeat)
    results["record_in_process_s"] = record_in_process(root, max(repeat, 20))
    heavy: set[str] = set()
    for cmd in list(commands.values())[:4]:
        heavy.update(heavy_imports(timed([sys.executable, "-X", "importtime", *cmd[1:]], root, env)[1]))
    results["heavy_imports"] = sorted(heavy)
    return results


if __name__ == "__main__":
    main()
