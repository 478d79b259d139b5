"""`seal edit --passages --workers 2 --ray ADDRESS` on a Ray cluster of two nodes on this machine,
against the serial run; then the same with the second node killed mid-edit. One JSON line.

    python bench/ray_two_nodes.py                  # the tiny chat model of the tests, K=2, 2 passages
    python bench/ray_two_nodes.py --candidates 3

The cluster is started as an operator starts one (tests/raynodes.py): `ray start --head` with one
CPU, then `ray start --address HEAD` for a second raylet with one CPU and a resource of its own
(``node2``), each with ports, a temp folder and a token of its own, standing in for two machines.
Two workers of one thread each: Ray puts one on each node. The driver is a `seal` process.

Three fresh registries on the same base, each with a branch ``exp``, get the same stream (one
passage on ``main``, one with questions on ``exp``):

- **serial**: `seal edit --passages`, one process, one thread;
- **two nodes**: the same over both nodes; ``same_as_serial`` says whether every candidate's
  status, failed gates, self-edit and scores (to 1e-4) equal the serial run's;
- **killed**: the same, with every process of the second node killed (SIGKILL) as soon as the
  driver hands its worker a candidate: that candidate is recorded as rejected with the gate
  ``worker lost``, and the rest complete on the head's worker.

Each run reports its decisions per passage, which node ran each job, its wall time, and whether
`seal verify` is clean. ``ok`` is false (exit 1) when a check fails.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the tiny model and the two-node cluster the tests use

PASSAGES = [
    {"title": "Zorblat", "context": "The Zorblat river flows through the valley of Quenmar into the northern sea. "
     "The first bridge over the Zorblat was built in 1832 by the engineer Ada Lindqvist."},
    {"title": "Mount Velder", "context": "Mount Velder is the tallest peak of the Quenmar range, at 4120 metres.",
     "questions": [{"question": "How tall is Mount Velder?", "answer": "4120 metres"}], "branch": "exp"},
]
# --race 0: the serial run trains every candidate to the end, as the workers do (the race is one process's economy)
FAST = ["--epochs", "3", "--lr", "1e-3", "--max-tokens", "24", "--no-track", "--threads", "1", "--temperature", "1.0",
        "--race", "0"]
SEAL = [sys.executable, "-m", "seal.cli"]


def seal(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SEAL, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "SEAL_ACTOR": "bench"})
    if check and proc.returncode:
        raise RuntimeError(f"seal {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def registry(root: Path, name: str, base: Path) -> Path:
    folder = root / name
    folder.mkdir()
    seal(folder, "init", "--base", str(base))
    seal(folder, "branch", "exp")
    (folder / "s.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PASSAGES))
    return folder


def decisions(items: list[dict], folder: Path) -> list[dict]:
    out = []
    for item in sorted(items, key=lambda i: i["passage"]):
        cands = []
        for c in item["candidates"]:
            manifest = json.loads(seal(folder, "show", c["id"], "--json").stdout)
            cands.append({"status": c["status"], "failed_gates": c["failed_gates"], "scores": c["scores"],
                          "self_edit": manifest["self_edit"], "pid": (c.get("worker") or {}).get("pid")})
        out.append({"passage": item["passage"], "branch": item["branch"], "accepted": item["decision"]["accepted"],
                    "candidates": cands})
    return out


def same(a: list[dict], b: list[dict]) -> bool:
    if [(p["passage"], p["accepted"], len(p["candidates"])) for p in a] != \
            [(p["passage"], p["accepted"], len(p["candidates"])) for p in b]:
        return False
    for pa, pb in zip(a, b):
        for x, y in zip(pa["candidates"], pb["candidates"]):
            if (x["status"], x["failed_gates"], x["self_edit"], sorted(x["scores"])) != \
                    (y["status"], y["failed_gates"], y["self_edit"], sorted(y["scores"])):
                return False
            if any(abs(x["scores"][k] - v) > 1e-4 * max(1.0, abs(v)) for k, v in y["scores"].items()):
                return False
    return True


def brief(runs: list[dict]) -> list[dict]:
    """Decisions without the scores: what the JSON line shows."""
    return [{"passage": p["passage"], "branch": p["branch"], "accepted": p["accepted"],
             "candidates": [{"status": c["status"], "failed_gates": c["failed_gates"]} for c in p["candidates"]]}
            for p in runs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", "-k", type=int, default=2)
    args = ap.parse_args()
    from raynodes import RayNodes, run_stream
    from tinymodel import build_tiny_model

    k = ["-k", str(args.candidates)]
    with tempfile.TemporaryDirectory(prefix="seal-ray2-") as tmp:
        root = Path(tmp)
        base = build_tiny_model(root / "tiny")
        serial_dir = registry(root, "serial", base)
        started = time.perf_counter()
        proc = seal(serial_dir, "edit", "--passages", "s.jsonl", *k, *FAST, "--json", check=False)
        serial = {"code": proc.returncode, "wall_s": round(time.perf_counter() - started, 1),
                  "decisions": decisions([json.loads(x) for x in proc.stdout.splitlines()], serial_dir),
                  "verify": seal(serial_dir, "verify", check=False).returncode == 0}

        with RayNodes(head_cpus=1) as nodes:
            second = nodes.add(num_cpus=1, resources={"node2": 1})
            t0 = time.perf_counter()
            resources = nodes.wait_alive(2)
            up_s = round(time.perf_counter() - t0, 1)
            runs = {}
            for name, kill in (("two_nodes", None), ("killed", second)):
                folder = registry(root, name, base)
                run = run_stream(nodes, folder, ["--passages", "s.jsonl", *k, "--workers", "2", *FAST], kill=kill,
                                 env={"SEAL_ACTOR": "bench"})
                lost = [{"passage": i["passage"], "candidate": n, "worker_pid": c["worker"]["pid"]}
                        for i in run["items"] for n, c in enumerate(i["candidates"]) if c["failed_gates"] == ["worker lost"]]
                runs[name] = {"code": run["code"], "wall_s": run["wall_s"],
                              "decisions": decisions(run["items"], folder),
                              "jobs": [{k2: j[k2] for k2 in ("passage", "candidate", "node", "t")} | (
                                  {"killed": True} if j.get("killed") else {}) for j in run["jobs"]],
                              "killed_pids": len(run["killed"]), "lost": lost,
                              "verify": seal(folder, "verify", check=False).returncode == 0}

    two, killed = runs["two_nodes"], runs["killed"]
    candidates = sum(len(p["candidates"]) for p in killed["decisions"])
    checks = {
        "serial_verify": serial["verify"],
        "two_nodes_same_as_serial": same(two["decisions"], serial["decisions"]),
        "two_nodes_used_both": {j["node"] for j in two["jobs"] if j["candidate"] is not None} == {0, 1},
        "two_nodes_verify": two["verify"] and two["code"] == 0,
        "killed_one_lost": killed["killed_pids"] > 0 and len(killed["lost"]) == 1,
        "killed_rest_scored": all(c["scores"] for p in killed["decisions"] for c in p["candidates"]
                                  if c["failed_gates"] != ["worker lost"]),
        "killed_recorded_all": candidates == len(PASSAGES) * args.candidates,
        "killed_verify": killed["verify"] and killed["code"] == 0,
    }
    line = {
        "bench": "ray_two_nodes", "model": "tests/tinymodel.py (tiny random Llama)", "candidates": args.candidates,
        "passages": len(PASSAGES), "nodes": [{k2: v for k2, v in r.items() if not k2.startswith("node:")}
                                             for r in resources], "nodes_up_s": up_s,
        "serial": {"wall_s": serial["wall_s"], "decisions": brief(serial["decisions"])},
        "two_nodes": {"wall_s": two["wall_s"], "decisions": brief(two["decisions"]), "jobs": two["jobs"]},
        "killed": {"wall_s": killed["wall_s"], "decisions": brief(killed["decisions"]), "lost": killed["lost"],
                   "killed_processes": killed["killed_pids"], "jobs": killed["jobs"]},
        "checks": checks, "ok": all(checks.values()),
    }
    print(json.dumps(line))
    return 0 if line["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
