"""Registry at scale: build a synthetic lineage, then time `seal` commands as separate processes.

    python bench/registry.py --versions 100000
    python bench/registry.py --versions 1000000 --repeat 3      # flat up to a million?
    python bench/registry.py --versions 1000000 --db postgresql # the same on a throwaway PostgreSQL

Prints one JSON line: wall times (median of --repeat cold runs) of `seal log -n 20`,
`seal show HEAD`, `seal log --all -n 20` and `seal checkout HEAD~500 --to DIR`; the time of one
`seal import` as a process and of `Registry.record` in-process; Python's own start-up; and any
of torch, transformers, peft, mlflow, sqlalchemy or alembic a read command imported.

The lineage is built in bulk through the registry's plumbing (each version signed and inserted
as `record` would, in transactions of 5000, without the per-version journal copy), because
recording a million versions one by one would take longer than the reads being measured.
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
    from seal.registry import refs as R
    from seal.registry.init import init_registry
    from seal.registry.objects import manifest_bytes, sha256_hex
    from seal.registry.versions import version_rows

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
        from seal.registry.objects import build_manifest, manifest_bytes

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
    from seal.registry.objects import build_manifest

    value = (i % 100) / 100
    return build_manifest(
        base=base_id, parents=[parent], kind="edit", status="accepted" if accepted else "rejected", created_at=_stamp(start, i),
        adapter={"weights": digest, "config": config, "format": "peft-lora"},
        scores=[{"suite": "efficacy", "metric": "f1", "against": None, "value": value, "n": 5}],
        audit=[{"check": "retention_vs_parent", "value": 0.0, "threshold": 0.05, "passed": True, "detail": ""}],
        author="bench", message=f"synthetic edit {i}", extra={"headline": {"metric": "efficacy.f1", "value": value}},
    )


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return wall, proc.stderr


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
    from seal.registry import refs as R
    from seal.registry.objects import build_manifest
    from seal.registry.repo import Registry

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


def postgres_url(stack) -> str:
    """A database on a throwaway PostgreSQL cluster (the tests' tests/pgcluster.py), stopped at exit."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from pgcluster import PgCluster, create_database, find_pg_bin

    bindir = find_pg_bin()
    if bindir is None:
        raise SystemExit("no PostgreSQL server binaries (initdb): apt-get install postgresql")
    cluster = PgCluster(bindir).start()
    stack.callback(cluster.stop)
    return create_database(cluster.url, "bench")


def main() -> None:
    import contextlib

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, default=100000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                    help="postgresql: a throwaway cluster started with initdb/pg_ctl, as the tests do")
    ap.add_argument("--reads-only", action="store_true", help="time the reads only (no import, record or import check)")
    ap.add_argument("--keep", type=Path, default=None, help="build here and keep it (default: a temp folder)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="seal-bench-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPROFILEIMPORTTIME"}
    env.setdefault("SEAL_ACTOR", "bench")
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            stack.callback(shutil.rmtree, root, True)
        db_url = postgres_url(stack) if args.db == "postgresql" else None
        results: dict = {"bench": "registry", "db": args.db, "versions": args.versions,
                         "build_s": round(build(root, args.versions, db_url=db_url), 2)}
        results.update(time_reads(root, env, args.repeat, args.reads_only))
        print(json.dumps(results), flush=True)


def time_reads(root: Path, env: dict, repeat: int, reads_only: bool) -> dict:
    from seal.registry.repo import Registry

    reg = Registry.open(root)
    prefix = reg.resolve("HEAD~1000")[:10]
    reg.close()
    commands = {
        "log_n20_s": SEAL + ["log", "-n", "20"],
        "show_head_s": SEAL + ["show", "HEAD"],
        "show_prefix_s": SEAL + ["show", prefix],
        "log_all_n20_s": SEAL + ["log", "--all", "-n", "20"],
        "checkout_head_500_s": SEAL + ["checkout", "HEAD~500", "--to", str(root / "co"), "--force"],
    }
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
