"""Benchmark: a finished acceptance run's efficacy verdicts under each variant of the margin rule.

Every candidate of ``bench/acceptance.py`` stores its per-question margins (its own, the
parent's and the placebo's) as a blob its line names (``margins.margins``). This reads them back
from the run's registry (``--workdir``) and judges each passage again under every rule of
``bench/recipe_sweep.py``'s ``RULES``, the engine's default first. ``accepted if the other gates
hold`` counts a passage whose efficacy passes and whose other gates passed in the run: an upper
estimate for a stream, whose later parents would change with each extra acceptance (run the
acceptance bench again to know). Prints one JSON line::

    python bench/rejudge.py --run bench/results/acceptance-2026-12-07-reply-anchor-50.jsonl \\
        --workdir /tmp/seal-acceptance
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def judge(docs: list[tuple[dict, dict]], rule) -> dict[str, Any]:
    from seal.editor.efficacy import decide_margins

    passed, accepted, new = 0, 0, []
    for line, doc in docs:
        q = doc["questions"]
        d = decide_margins([x["margin"] for x in q], [x["margin_parent"] for x in q],
                           [x["margin_placebo"] for x in q], [x["saturated"] for x in q], rule)
        others = [g for g in line.get("failed", []) if g != "efficacy_margin"]
        passed += d.passed
        accepted += d.passed and not others
        if d.passed and "efficacy_margin" in line.get("failed", []):
            new.append(line["passage"])
    return {"efficacy_passed": passed, "accepted_if_other_gates_hold": accepted, "newly_passed": new}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="the acceptance bench's --out file")
    ap.add_argument("--workdir", type=Path, required=True, help="the acceptance bench's --workdir (its registry)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from recipe_sweep import RULES
    from seal.editor.efficacy import MarginRule
    from seal.registry.repo import Registry

    lines = [json.loads(x) for x in args.run.read_text(encoding="utf-8").splitlines() if x.strip()]
    lines = [x for x in lines if "passage" in x and (x.get("margins") or {}).get("margins")]
    reg = Registry.open(args.workdir, read_only=True)
    try:
        docs = [(x, json.loads(reg.store.get(x["margins"]["margins"]))) for x in lines]
    finally:
        reg.close()
    out = {"bench": "rejudge", "run": str(args.run), "passages": len(docs),
           "accepted_in_run": sum(1 for x, _ in docs if x.get("accepted")),
           "rules": {name: {"words": replace(MarginRule(), **kw).words(), **judge(docs, replace(MarginRule(), **kw))}
                     for name, kw in RULES.items()}}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
