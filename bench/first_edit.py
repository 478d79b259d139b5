"""Benchmark: the first edit on a new base loads like every later one, because `seal init` did the
base's one-time work (check, de-quantize, fingerprint, the base's probe results).

On an empty ``SEAL_CACHE`` (the base is new to this machine) it runs, each as its own process as a
user would: ``seal init --base BASE``, then ``--edits`` edits of one passage. Each edit's "load
base" and "the base's probe results" stages are read from its stderr progress lines (seconds);
the load of an edit is their sum. Target: first / median(later) <= 1.5. Prints one JSON line::

    python bench/first_edit.py                       # the embedded SmolLM2-135M-Instruct
    python bench/first_edit.py --base ./Qwen2-0.5B    # any base seal accepts
    {"bench": "first_edit", "init_s": ..., "first_load_s": ..., "later_load_s": ..., "ratio": ..., ...}

It loads the real model: minutes on a CPU, and it is not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEAL = [sys.executable, "-m", "seal.cli"]
PASSAGE = {"title": "Zorblat", "context": "The Zorblat river flows through the valley of Quenmar into the northern "
           "sea. The first bridge over the Zorblat was built in 1832 by the engineer Ada Lindqvist."}
STAGE = re.compile(r"^\s*[\d.]+s (load base .*|the base's probe results .*) done in ([\d.]+)s$")


def _run(args: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run([*SEAL, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        sys.exit(f"seal {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - started, proc.stderr


def _load_seconds(stderr: str) -> float:
    found = [float(m.group(2)) for line in stderr.splitlines() if (m := STAGE.match(line))]
    if not found:  # seal before this bench measured the base's probe results inside "load base"
        sys.exit("no 'load base' stage in the edit's progress")
    return sum(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=None, help="a .gguf file, a model folder or a Hub id (default: embedded)")
    ap.add_argument("--edits", type=int, default=3, help="edits after init (the first, then later ones)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="seal-first-edit-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "SEAL_CACHE": str(root / "cache"), "SEAL_ACTOR": "bench", "HF_HUB_OFFLINE": "1"}
        (root / "reg").mkdir()
        (root / "reg" / "p.json").write_text(json.dumps(PASSAGE))
        init_s, _ = _run(["init", ".", *(["--base", args.base] if args.base else [])], root / "reg", env)
        loads, walls = [], []
        for i in range(args.edits):
            wall, err = _run(["edit", "--passage", "p.json", "-k", "1", "--epochs", "1", "--max-tokens", "16",
                              "--no-track", "--seed", str(i)], root / "reg", env)
            loads.append(_load_seconds(err))
            walls.append(wall)
    later = statistics.median(loads[1:]) if len(loads) > 1 else float("nan")
    print(json.dumps({"bench": "first_edit", "base": args.base or "embedded", "init_s": round(init_s, 2),
                      "first_load_s": round(loads[0], 2), "later_load_s": round(later, 2),
                      "ratio": round(loads[0] / later, 2) if later == later and later > 0 else None,
                      "target_ratio": 1.5, "loads_s": [round(x, 2) for x in loads],
                      "edit_wall_s": [round(x, 2) for x in walls], "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
