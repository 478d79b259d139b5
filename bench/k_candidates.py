"""Benchmark: what K candidates cost against one, per passage, on the same machine in the same run.

For each of the first N passages of a JSONL file (SEAL's knowledge set by default), a fresh
registry on the default base runs ``seal edit --passage P -k 1``, then another fresh one ``-k 4``
(as processes, as a user would; the base's caches are warm after the first). Each edit starts
from the same root, so K=1 and K=4 face the same parent and placebo. Prints one JSON line: per K
the median wall time and stage times, and the ratio K=4 / K=1 (target <= 2). On a CPU K=4 races
its candidates (``--race``, editor/race.py); ``--race-off`` also runs K=4 with ``--race 0`` (every
candidate trained to the end), the cost before the race, in the same run::

    python bench/k_candidates.py --data ../shared/data/squad-knowledge-200.jsonl --passages 3 --race-off
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEAL = [sys.executable, "-m", "seal.cli"]


def edit(passage: dict, k: int, threads: int, extra: tuple[str, ...] = ()) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"seal-k{k}-"))
    subprocess.run([*SEAL, "init", str(work), "--json"], check=True, capture_output=True)
    (work / "p.json").write_text(json.dumps(passage))
    started = time.perf_counter()
    proc = subprocess.run([*SEAL, "edit", "--passage", "p.json", "-k", str(k), "--threads", str(threads),
                           "--no-track", "--json", *extra], cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        sys.exit(f"seal edit -k {k} exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    out = json.loads(proc.stdout)
    return {"k": k if not extra else f"{k} {' '.join(extra)}", "wall_s": round(wall, 2), "accepted": out["decision"]["accepted"],
            "timings": out.get("timings", {}), "failed": [c["failed_gates"] for c in out["candidates"]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/squad-knowledge-200.jsonl"))
    ap.add_argument("--passages", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--race-off", action="store_true", help="also K=4 with --race 0, the cost before the race")
    args = ap.parse_args(argv)
    rows = [json.loads(x) for x in args.data.read_text().splitlines() if x.strip()][:args.passages]
    settings = [(1, ()), (4, ())] + ([(4, ("--race", "0"))] if args.race_off else [])
    runs = []
    for row in rows:
        passage = {"title": row["title"], "context": row["context"], "questions": row["questions"]}
        for k, extra in settings:
            runs.append({"passage": row.get("id"), **edit(passage, k, args.threads, extra)})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    med = {str(k): statistics.median(r["wall_s"] for r in runs if r["k"] == k)
           for k in dict.fromkeys(r["k"] for r in runs)}
    ratios = {f"{k}/1": round(v / med["1"], 3) for k, v in med.items() if k != "1"}
    print(json.dumps({"bench": "k_candidates", "passages": len(rows), "threads": args.threads,
                      "median_wall_s": med, "ratio_k4_k1": ratios["4/1"], "ratios": ratios, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
