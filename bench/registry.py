"""Registry at scale: build a synthetic lineage, then time `seal` commands as separate processes.

    python bench/registry.py --versions 100000
    python bench/registry.py --versions 1000000 --repeat 3      # flat up to a million?

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


def build(root: Path, n: int, adapter: Path | None = None, base: dict | None = None) -> float:
    """``n`` versions on main (every tenth a rejected sibling), inserted in bulk; returns seconds."""
    from seal.registry import refs as R
    from seal.registry.init import init_registry
    from seal.registry.objects import build_manifest, version_id
    from seal.registry.versions import insert_version

    t0 = time.perf_counter()
    base = base or bench_base()
    reg = init_registry(root, base=base)
    adapter = adapter or make_adapter(root / "adapter-src")
    digest = reg.store.put_file(adapter / "adapter_model.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text())
    root_id = head = reg.resolve("main")
    start = time.time() - n - 10
    for lo in range(0, n, 5000):
        with reg.write() as c:
            for i in range(lo, min(n, lo + 5000)):
                accepted = i % 10 != 9
                manifest = _manifest(base["id"], head, i, start, digest, config, accepted, build_manifest)
                vid = version_id(manifest)
                insert_version(c, manifest, vid, reg.signer.sign_id(vid), reg.signer.id)
                head = vid if accepted else head
    reg.move_ref(R.HEADS + "main", new=head, expected=root_id, reason="bench: synthetic lineage")
    reg.close()
    return time.perf_counter() - t0


def _manifest(base_id, parent, i, start, digest, config, accepted, build_manifest) -> dict:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + i)) + f".{i % 1000000:06d}Z"
    value = (i % 100) / 100
    return build_manifest(
        base=base_id, parents=[parent], kind="edit", status="accepted" if accepted else "rejected", created_at=ts,
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, default=100000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", type=Path, default=None, help="build here and keep it (default: a temp folder)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="seal-bench-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPROFILEIMPORTTIME"}
    env.setdefault("SEAL_ACTOR", "bench")
    try:
        results: dict = {"bench": "registry", "versions": args.versions, "build_s": round(build(root, args.versions), 2)}
        commands = {
            "log_n20_s": SEAL + ["log", "-n", "20"],
            "show_head_s": SEAL + ["show", "HEAD"],
            "log_all_n20_s": SEAL + ["log", "--all", "-n", "20"],
            "checkout_head_500_s": SEAL + ["checkout", "HEAD~500", "--to", str(root / "co"), "--force"],
        }
        for name, cmd in commands.items():
            results[name] = median_of(cmd, root, env, args.repeat)
        results["import_s"] = import_per_version(root, env, args.repeat)
        results["record_in_process_s"] = record_in_process(root, max(args.repeat, 20))
        results["python_startup_s"] = median_of([sys.executable, "-c", "pass"], root, env, args.repeat)
        heavy: set[str] = set()
        for cmd in list(commands.values())[:3]:
            heavy.update(heavy_imports(timed([sys.executable, "-X", "importtime", *cmd[1:]], root, env)[1]))
        results["heavy_imports"] = sorted(heavy)
        print(json.dumps(results))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
