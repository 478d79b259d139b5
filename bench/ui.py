"""`seal ui` at scale: build a synthetic lineage, start the server as a user would, time its pages.

    python bench/ui.py --versions 100000
    python bench/ui.py --registry /path/to/built --repeat 20      # reuse a registry built before

Prints one JSON line:

- ``start_s``: median wall time from starting `seal ui` (a new process) to its first answered
  request, over ``--starts`` runs;
- per page, the server time (the app's ``Server-Timing`` header: from the request reaching the
  app to the response leaving it, so neither the client nor the loopback is counted): the first
  request (``*_first_ms``, templates compiled and modules imported on the way) and the median of
  ``--repeat`` requests after it (``*_ms``). Pages: the lineage's first page (all versions), the
  first page of main's history, the version page of main's head (with its parent diff), a
  rejected attempt's page, `HEAD~1` against `HEAD`, and main's drift (its newest 500 versions);
- ``heavy_imports``: any of torch, transformers, peft, mlflow the server imported (should be none).

The lineage is built by bench/registry.py's builder (every tenth version a rejected sibling).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from registry import build, heavy_imports  # noqa: E402  (bench/registry.py)

HEAVY = {"torch", "transformers", "peft", "mlflow"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(root: Path, env: dict, importtime: bool = False) -> tuple[subprocess.Popen, int, float]:
    """`seal ui` in a new process; returns it, its port and the seconds until it first answered."""
    port = free_port()
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "seal.cli", "ui", "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/seal.css", timeout=5) as r:
                r.read()
            return proc, port, time.perf_counter() - t0
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"seal ui exited: {proc.stderr.read().strip()}")
            time.sleep(0.005)


def server_ms(port: int, path: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=120) as r:
        r.read()
        timing = r.headers["server-timing"]
    return float(re.search(r"dur=([0-9.]+)", timing).group(1))


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, default=100000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--registry", type=Path, default=None, help="an existing registry (skips the build)")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPROFILEIMPORTTIME"}
    env.setdefault("SEAL_ACTOR", "bench")
    tmp = None
    if args.registry is None:
        tmp = Path(tempfile.mkdtemp(prefix="seal-bench-ui-"))
        root, build_s = tmp, round(build(tmp, args.versions), 2)
    else:
        root, build_s = args.registry, None
    try:
        from seal.registry.repo import Registry

        reg = Registry.open(root, read_only=True)
        head = reg.resolve("main")
        rejected = next(e.id for e in reg.log(all=True, n=50) if e.status == "rejected")
        reg.close()
        pages = {"lineage": "/", "lineage_main": "/?branch=main", "version_head": f"/v/{head}",
                 "version_rejected": f"/v/{rejected}", "compare_head": "/compare?old=HEAD~1&new=HEAD",
                 "drift_main": "/drift?branch=main"}
        results: dict = {"bench": "ui", "versions": args.versions, "build_s": build_s,
                         "machine": f"{os.cpu_count()} cpus", "load_avg_1m": round(os.getloadavg()[0], 2)}
        starts = []
        for _ in range(args.starts):
            proc, _, seconds = start(root, env)
            starts.append(seconds)
            stop(proc)
        results["start_s"] = round(statistics.median(starts), 3)
        proc, port, _ = start(root, env, importtime=True)
        try:
            for name, path in pages.items():
                results[f"{name}_first_ms"] = round(server_ms(port, path), 1)
                results[f"{name}_ms"] = round(statistics.median(server_ms(port, path) for _ in range(args.repeat)), 1)
        finally:
            err = stop(proc)
        results["heavy_imports"] = sorted(set(heavy_imports(err)) & HEAVY)
        print(json.dumps(results))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
