"""`seal edit --passages` serial against `--workers N`, on the real model: wall time and decisions.

Each configuration gets a fresh registry (``seal init``, the embedded SmolLM2-135M-Instruct) and
edits the same first passages of SEAL's set, read from where they live (never copied into the
project). Configurations, run one after another in the order given:

- ``serial-tT``: one process, T torch threads;
- ``workersN-tT``: N Ray workers on this machine, T threads each (a local Ray, started by the
  command and counted in its wall time).

Each finished configuration is appended to ``--out`` as one JSON line (so a stopped run still
yields figures); at the end one JSON line compares them: wall time, the stages, every
candidate's status, failed gates and scores, and whether the decisions agree with the first.

    $ nice -n 19 python bench/cluster.py --passages 2 --candidates 2 \\
        --configs serial-t1,workers2-t1 --out /tmp/cluster-results/bench.jsonl   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("SEAL_DATA", "/work/shared/data")) / "squad-knowledge-200.jsonl"


def parse_config(name: str) -> tuple[int | None, int]:
    """``serial-t1`` -> (None, 1); ``workers2-t1`` -> (2, 1).

        >>> parse_config("workers2-t1"), parse_config("serial-t2")
        ((2, 1), (None, 2))
    """
    kind, threads = name.split("-t")
    return (None if kind == "serial" else int(kind.removeprefix("workers"))), int(threads)


def seal(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seal.cli", *args], cwd=cwd, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_config(name: str, lines: list[str], args) -> dict:
    """One configuration on a fresh registry: its wall time and what it decided."""
    workers, threads = parse_config(name)
    folder = Path(tempfile.mkdtemp(prefix=f"seal-bench-{name}-"))
    if seal(folder, "init", ".").returncode:
        raise SystemExit(f"{name}: seal init failed")
    (folder / "passages.jsonl").write_text("".join(lines))
    cmd = ["edit", "--passages", "passages.jsonl", "--candidates", str(args.candidates), "--epochs",
           str(args.epochs), "--max-tokens", str(args.max_tokens), "--threads", str(threads), "--no-track", "--json"]
    if workers:
        cmd += ["--workers", str(workers)]
    started = time.perf_counter()
    proc = seal(folder, *cmd)
    wall = time.perf_counter() - started
    items = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return {
        "config": name, "workers": workers, "threads": threads, "rc": proc.returncode, "wall_s": round(wall, 1),
        "stderr_tail": proc.stderr[-400:] if proc.returncode not in (0, 1) else "",
        "verify_rc": seal(folder, "verify").returncode,
        "passages": [{
            "passage": it["passage"], "accepted": it.get("decision", {}).get("accepted"),
            "timings": {k: round(v, 1) for k, v in it.get("timings", {}).items()},
            "candidates": [{"status": c["status"], "failed": c["failed_gates"],
                            "scores": {k: round(v, 4) for k, v in c["scores"].items() if isinstance(v, float)}}
                           for c in it.get("candidates", [])]} for it in items],
    }


def agree(a: dict, b: dict) -> bool:
    """Same decisions and the same candidates' statuses and failed gates, passage by passage."""
    key = lambda r: [(p["accepted"], [(c["status"], c["failed"]) for c in p["candidates"]]) for p in r["passages"]]  # noqa: E731
    return key(a) == key(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--passages", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--configs", default="serial-t1,workers2-t1,serial-t2")
    ap.add_argument("--out", type=Path, default=Path("/tmp/cluster-results/bench.jsonl"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lines = DATA.read_text().splitlines(keepends=True)[:args.passages]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.configs.split(","):
        results.append(run_config(name, lines, args))
        with args.out.open("a") as f:
            f.write(json.dumps(results[-1]) + "\n")
        print(f"{name}: {results[-1]['wall_s']} s, rc {results[-1]['rc']}", file=sys.stderr, flush=True)
    print(json.dumps({"bench": "seal edit --passages, serial vs --workers", "passages": args.passages,
                      "candidates": args.candidates, "epochs": args.epochs, "max_tokens": args.max_tokens,
                      "wall_s": collect(results, lambda r: r["wall_s"]),  # a list per config: repeats kept
                      "agree_with_first": collect(results[1:], lambda r: agree(results[0], r))}))


def collect(results: list[dict], value) -> dict[str, list]:
    """``{config: [value of each run of it]}``, in run order.

        >>> collect([{"config": "a", "x": 1}, {"config": "a", "x": 2}], lambda r: r["x"])
        {'a': [1, 2]}
    """
    out: dict[str, list] = {}
    for r in results:
        out.setdefault(r["config"], []).append(value(r))
    return out


if __name__ == "__main__":
    main()
