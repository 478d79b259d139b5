"""seal against its peers, git and MLflow 3, in one run on the same real PEFT adapter folders.

    python bench/peers.py                          # 1k, 10k and 100k versions
    python bench/peers.py --sizes 1000 --record 10 # a quick look

Prints one JSON line:
- ``record_s``: the median time to record one version of an adapter folder: `seal import DIR` as a
  process and `Registry.record` through the library (validation, blob, signed version, branch
  move); `git add -A && git commit` as processes; MLflow's `log_artifacts` + `create_model_version`
  in one warm process (its fastest path);
- ``list20_s``: a cold listing of the latest 20 (a fresh process each time, median of --repeat):
  `seal log -n 20`, `git log -n 20`, and `MlflowClient.search_model_versions(..., max_results=20)`;
- the ratios seal / git and seal / MLflow for each.

The adapter folders are real: PEFT LoRA adapters of a small random Llama (r=8 on q,v), saved with
safetensors. Histories of 1k-100k versions are built in bulk for each system (seal: signed versions
inserted in transactions of 5000; git: `git fast-import`; MLflow: one real model version, then rows
copied in its own SQLite store with increasing version numbers), because recording them one by one
through MLflow alone would take hours; the listings then read what each system would hold.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(HERE))

from registry import SEAL, bench_base  # noqa: E402  (bench/registry.py)


def real_adapters(root: Path, n: int) -> list[Path]:
    """``n`` PEFT LoRA folders on one small random Llama (different seeds)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    base_dir = root / "base"
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(base_dir, safe_serialization=True)
    out = []
    for i in range(n):
        torch.manual_seed(i)
        model = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir),
                               LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        model.save_pretrained(root / f"adapter{i}", safe_serialization=True)
        cfg_path = root / f"adapter{i}" / "adapter_config.json"
        doc = json.loads(cfg_path.read_text())
        doc["base_model_name_or_path"] = "bench-base"
        cfg_path.write_text(json.dumps(doc))
        out.append(root / f"adapter{i}")
    from seal.registry.adapters import linear_shapes

    BASE["record"] = bench_base({k: list(v) for k, v in linear_shapes(base_dir).items()})
    return out


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed in {cwd}: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


def median(xs) -> float:
    return round(statistics.median(list(xs)), 4)


# --- seal --------------------------------------------------------------------------------------

BASE: dict = {}


def seal_registry(root: Path):
    from seal.registry.init import init_registry

    return init_registry(root, base=BASE["record"])


def seal_record(root: Path, adapters: list[Path], n: int, env: dict) -> dict:
    from seal.registry.porcelain import import_adapter
    from seal.registry.repo import Registry

    seal_registry(root).close()
    process = median(run(SEAL + ["import", str(adapters[i % len(adapters)]), "-m", f"v{i}"], root, env) for i in range(n))
    reg = Registry.open(root)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        import_adapter(reg, adapters[(i + 1) % len(adapters)], message=f"lib {i}")
        times.append(time.perf_counter() - t0)
    reg.close()
    return {"seal_import_process_s": process, "seal_record_library_s": median(times)}


def seal_history(root: Path, n: int, adapter: Path) -> None:
    from registry import build  # bench/registry.py's bulk builder

    build(root, n, adapter=adapter, base=BASE["record"])


# --- git ----------------------------------------------------------------------------------------

def git_record(root: Path, adapters: list[Path], n: int) -> float:
    root.mkdir(parents=True)
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "bench@example.invalid"], root)
    run(["git", "config", "user.name", "bench"], root)
    times = []
    for i in range(n):
        for f in adapters[i % len(adapters)].iterdir():
            shutil.copy(f, root / f.name)
        t0 = time.perf_counter()
        run(["git", "add", "-A"], root)
        run(["git", "commit", "-qm", f"v{i}"], root)
        times.append(time.perf_counter() - t0)
    return median(times)


def git_history(root: Path, n: int, adapter: Path) -> None:
    """``n`` commits of the adapter folder through `git fast-import` (the blobs are stored once)."""
    root.mkdir(parents=True)
    run(["git", "init", "-q"], root)
    files = {f.name: f.read_bytes() for f in adapter.iterdir()}
    stream = bytearray()
    for mark, (name, data) in enumerate(files.items(), start=1):
        stream += b"blob\nmark :%d\ndata %d\n" % (mark, len(data)) + data + b"\n"
    for i in range(n):
        msg = f"v{i}".encode()
        stream += b"commit refs/heads/main\ncommitter bench <b@example.invalid> %d +0000\ndata %d\n%s\n" % (
            1_700_000_000 + i, len(msg), msg)
        if i == 0:
            for mark, name in enumerate(files, start=1):
                stream += b"M 100644 :%d %s\n" % (mark, name.encode())
        stream += b"\n"
    subprocess.run(["git", "fast-import", "--quiet"], cwd=root, input=bytes(stream), check=True)
    run(["git", "symbolic-ref", "HEAD", "refs/heads/main"], root)


# --- MLflow -------------------------------------------------------------------------------------

MODEL = "seal-bench"


def mlflow_client(root: Path):
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", registry_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
    client.create_registered_model(MODEL)
    return client, exp


def mlflow_record(root: Path, adapters: list[Path], n: int) -> float:
    client, exp = mlflow_client(root)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        run_ = client.create_run(exp)
        client.log_artifacts(run_.info.run_id, str(adapters[i % len(adapters)]), "adapter")
        client.create_model_version(MODEL, f"runs:/{run_.info.run_id}/adapter", run_.info.run_id)
        client.set_terminated(run_.info.run_id)
        times.append(time.perf_counter() - t0)
    return median(times)


def mlflow_history(root: Path, n: int, adapter: Path) -> None:
    client, exp = mlflow_client(root)
    run_ = client.create_run(exp)
    client.log_artifacts(run_.info.run_id, str(adapter), "adapter")
    client.create_model_version(MODEL, f"runs:/{run_.info.run_id}/adapter", run_.info.run_id)
    db = sqlite3.connect(root / "mlflow.db")
    cols = [r[1] for r in db.execute("PRAGMA table_info(model_versions)")]
    row = dict(zip(cols, db.execute("SELECT * FROM model_versions").fetchone()))
    rows = [tuple({**row, "version": v, "creation_time": row["creation_time"] + v,
                   "last_updated_time": row["last_updated_time"] + v}[c] for c in cols) for v in range(2, n + 1)]
    db.executemany(f"INSERT INTO model_versions ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})", rows)
    db.commit()
    db.close()


MLFLOW_LIST = ("import sys; from mlflow.tracking import MlflowClient; "
               "c = MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1]); "
               f"r = c.search_model_versions(\"name='{MODEL}'\", max_results=20, order_by=['version_number DESC']); "
               "assert len(r) == 20, len(r)")


# --- the run ------------------------------------------------------------------------------------

def listings(work: Path, size: int, adapter: Path, repeat: int, env: dict) -> dict:
    out = {}
    seal_root, git_root, ml_root = work / f"seal-{size}", work / f"git-{size}", work / f"mlflow-{size}"
    seal_history(seal_root, size, adapter)
    git_history(git_root, size, adapter)
    mlflow_history(ml_root, size, adapter)
    run(SEAL + ["log", "-n", "20"], seal_root, env)  # bytecode warm, like every other run below
    out["seal"] = median(run(SEAL + ["log", "-n", "20"], seal_root, env) for _ in range(repeat))
    out["git"] = median(run(["git", "log", "-n", "20", "--oneline"], git_root) for _ in range(repeat))
    uri = f"sqlite:///{ml_root / 'mlflow.db'}"
    out["mlflow"] = median(run([sys.executable, "-c", MLFLOW_LIST, uri], ml_root, env) for _ in range(repeat))
    for path in (seal_root, git_root, ml_root):
        shutil.rmtree(path, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--record", type=int, default=30, help="versions recorded one by one per system")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seal-peers-"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME")}
    env.setdefault("SEAL_ACTOR", "bench")
    try:
        adapters = real_adapters(work / "adapters", 10)
        record = seal_record(work / "seal-record", adapters, args.record, env)
        record["git_commit_s"] = git_record(work / "git-record", adapters, args.record)
        record["mlflow_log_and_register_s"] = mlflow_record(work / "mlflow-record", adapters, args.record)
        record["seal_process_vs_git"] = round(record["seal_import_process_s"] / record["git_commit_s"], 2)
        record["seal_library_vs_mlflow"] = round(record["seal_record_library_s"] / record["mlflow_log_and_register_s"], 3)
        lists = {}
        for size in args.sizes:
            got = listings(work, size, adapters[0], args.repeat, env)
            got["seal_vs_git"] = round(got["seal"] / got["git"], 1)
            got["seal_vs_mlflow"] = round(got["seal"] / got["mlflow"], 3)
            lists[str(size)] = got
        print(json.dumps({"bench": "peers", "record_s": record, "list20_s": lists}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
