"""Registry at scale: build a synthetic lineage, then time `seal` commands as separate processes.

    python bench/registry.py --versions 100000

Prints one JSON line: wall times (median of --repeat runs) of `seal log -n 20`, `seal show HEAD`
and `seal checkout HEAD~500 --to DIR`, the CLI's import time, and whether any of them imported
torch, transformers, peft or mlflow.
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

HEAVY = ("torch", "transformers", "peft", "mlflow")


def make_adapter(folder: Path) -> Path:
    """A small but real LoRA safetensors file and config, written with numpy (no torch needed)."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(2):
        for mod in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((8, 64)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((64, 8)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "bench-base", "task_type": "CAUSAL_LM",
    }))
    return folder


def build(root: Path, n: int) -> float:
    from seal.registry import refs as R
    from seal.registry.bases import base_record
    from seal.registry.objects import build_manifest, version_id
    from seal.registry.porcelain import init_registry
    from seal.registry.repository import insert_versions
    from seal.registry.signing import sign

    t0 = time.perf_counter()
    base = base_record(name="bench-base", revision=None, source="hub", location=None)
    repo = init_registry(root, base=base)
    adapter = make_adapter(root / "adapter-src")
    digest = repo.store.put_file(adapter / "adapter_model.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text())
    with repo.connect() as conn:
        head = R.peel(conn, R.HEADS + "main")
    key, signer = repo.signing_key, repo.signer
    batch: list = []
    start = time.time()
    for i in range(n):
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + i)) + f".{i % 1000000:06d}Z"
        accepted = i % 10 != 9  # every tenth attempt is a rejected sibling, as edits produce
        manifest = build_manifest(
            base=base["id"], parents=[head], kind="edit", status="accepted" if accepted else "rejected",
            created_at=ts, adapter={"weights": digest, "config": config, "format": "peft-lora"},
            scores=[{"suite": "efficacy", "metric": "containment", "value": (i % 100) / 100, "n": 5}],
            audit=[{"check": "retention", "value": 0.0, "threshold": 0.02, "passed": True, "detail": ""}],
            author="bench", message=f"synthetic edit {i}",
            extra={"headline": {"metric": "efficacy.containment", "value": (i % 100) / 100}},
        )
        vid = version_id(manifest)
        batch.append((manifest, sign(key, vid), signer))
        if accepted:
            head = vid
        if len(batch) >= 5000:
            with repo.transaction() as conn:
                insert_versions(conn, batch)
            batch = []
    with repo.transaction() as conn:
        insert_versions(conn, batch)
        R.set_ref(conn, R.HEADS + "main", head, reason="bench: synthetic lineage")
    return time.perf_counter() - t0


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, default=100000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", type=Path, default=None, help="build here and keep it (default: a temp folder)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="seal-bench-"))
    try:
        build_s = build(root, args.versions)
        seal = [sys.executable, "-m", "seal.cli"]
        env = {**os.environ, "PYTHONPROFILEIMPORTTIME": ""}
        env.pop("PYTHONPROFILEIMPORTTIME")
        commands = {
            "log_n20_s": seal + ["log", "-n", "20"],
            "show_head_s": seal + ["show", "HEAD"],
            "checkout_head_500_s": seal + ["checkout", "HEAD~500", "--to", str(root / "co"), "--force"],
        }
        results: dict = {"bench": "registry", "versions": args.versions, "build_s": round(build_s, 2)}
        for name, cmd in commands.items():
            times = [timed(cmd, root, env)[0] for _ in range(args.repeat)]
            results[name] = round(statistics.median(times), 4)
        heavy: set[str] = set()
        for cmd in commands.values():
            _, err = timed([sys.executable, "-X", "importtime", *cmd[1:]], root, env)
            heavy.update(heavy_imports(err))
        _, err = timed([sys.executable, "-X", "importtime", "-c", "import seal.cli.main"], root, env)
        total = [int(m.group(1)) for m in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \|\s*seal\.cli\.main$", err, re.M)]
        results["cli_import_s"] = round(total[0] / 1e6, 4) if total else None
        results["python_startup_s"] = round(statistics.median(
            timed([sys.executable, "-c", "pass"], root, env)[0] for _ in range(args.repeat)), 4)
        results["heavy_imports"] = sorted(heavy)
        results["torch_imported"] = "torch" in heavy
        print(json.dumps(results))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
