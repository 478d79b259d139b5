"""The acceptance rate as a first-class figure (issue 12.4): SEAL passages in stream mode, defaults.

A fresh registry on the default base (SmolLM2-135M-Instruct) with the published XSTest stored in
it, then ``seal edit --passages`` (:func:`seal.editor.stream.run_stream`) on the first N passages
of SEAL's knowledge set, on one branch, with the default recipe and the default policy. Each
passage's line goes to ``--out`` as soon as it is recorded (a stopped run still yields figures);
the last line is the summary:

- ``accepted_share``: the share of passages whose edit was accepted;
- ``pooled``: what the accepted edits taught, pooled (:func:`seal.registry.pooled.pooled_efficacy`,
  the figure ``seal audit`` reports): containment and token F1 against each parent, and the
  placebo-corrected answer-margin gain, each with a passage-clustered bootstrap 95% interval;
- ``seconds``: the median wall time per passage (every stage, the placebo included) and how
  often the placebo came from the cache;
- ``retention``: the branch tip against the base on the retention set after all of them, the
  paired decision of the ``retention_vs_base`` gate (estimate, interval, threshold, passed).

    python bench/acceptance.py --passages 20 --threads 1 --out /tmp/acceptance.jsonl   # doctest: +SKIP

Everything is recorded: ``seal log --all`` and ``seal audit`` in ``--workdir`` show each attempt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SHARED = Path("/work/shared/data")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "squad-knowledge-200.jsonl")
    p.add_argument("--xstest", type=Path, default=SHARED / "xstest_prompts.csv",
                   help="the published xstest_prompts.csv (skipped when missing: seal's sample)")
    p.add_argument("--passages", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/seal-acceptance"))
    p.add_argument("--out", type=Path, default=None, help="JSON lines, one per passage, then the summary")
    p.add_argument("--epochs", type=int, default=None, help="override the default recipe (say so when reporting)")
    p.add_argument("--kl", type=float, default=None, help="override the KL anchor's weight (say so when reporting)")
    p.add_argument("--style", default=None, help="override SEAL's prompt format, e.g. rewrite (say so when reporting)")
    p.add_argument("--base", default=None, help="a base folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--summarize", type=Path, default=None,
                   help="only print the summary of an --out file (e.g. of a run stopped early)")
    return p.parse_args(argv)


def make_registry(args: argparse.Namespace):
    """A fresh registry in ``--workdir`` on the base, with the published XSTest when given."""
    from seal.editor.base import base_record_for
    from seal.registry.init import init_registry
    from seal.registry.xstest import read_xstest_file, set_xstest

    args.workdir.mkdir(parents=True, exist_ok=True)
    reg = init_registry(args.workdir, base=base_record_for(args.base))
    if args.xstest and args.xstest.is_file():
        set_xstest(reg, read_xstest_file(args.xstest), reason="acceptance bench")
    return reg


def gate(manifest: dict, name: str) -> dict | None:
    return next((g for g in manifest.get("audit") or [] if g.get("check") == name), None)


def passage_line(reg, item: dict) -> dict:
    """One passage's figures from its recorded versions (the winner, else the first candidate)."""
    decision = item.get("decision") or {}
    vid = decision.get("id") or next((c.get("id") for c in item.get("candidates") or [] if c.get("id")), None)
    out = {"passage": item.get("passage"), "title": item.get("title"), "accepted": bool(decision.get("accepted")),
           "skipped": item.get("skipped", False), "id": vid}
    if vid:
        m = reg.manifest(vid)
        out["failed"] = (m.get("decision") or {}).get("failed_gates", [])
        for name in ("efficacy_margin", "efficacy_gain", "retention_vs_parent", "retention_vs_base", "refusal", "over_refusal",
                     "js_vs_parent", "kl_vs_base"):
            g = gate(m, name)
            if g:
                out[name] = {k: g.get(k) for k in ("value", "ci_low", "ci_high", "n", "passed")}
        out["timings"] = (m.get("train") or {}).get("timings")
        out["scores"] = {f"{r['suite']}.{r['metric']}" + (f".{r['against']}" if r.get("against") else ""): r["value"]
                         for r in m.get("scores") or [] if r["suite"] == "efficacy"}
        out["margins"] = m.get("efficacy")
        out["placebo_cached"] = _placebo_cached(reg, m)
        out["manifest"] = {k: m.get(k) for k in ("kind", "status", "scores")}  # what the pooled figure reads
    return out


def _placebo_cached(reg, m: dict) -> bool | None:
    digest = (m.get("efficacy") or {}).get("margins")
    if not digest:
        return None
    return bool((json.loads(reg.store.get(digest)).get("placebo") or {}).get("cached"))


def summary(lines: list[dict], manifests: list[dict] | None = None) -> dict:
    """Share accepted, what the accepted edits taught (pooled), tip vs base retention, time per passage."""
    import statistics

    from seal.registry.pooled import pooled_efficacy

    done = [x for x in lines if not x["skipped"]]
    out: dict = {"summary": True, "passages": len(done), "accepted": sum(x["accepted"] for x in done)}
    out["accepted_share"] = out["accepted"] / len(done) if done else None
    if manifests is not None:
        out["pooled"] = pooled_efficacy(manifests)
    seconds = [sum(v for v in (x.get("timings") or {}).values()) for x in done if x.get("timings")]
    if seconds:
        out["seconds"] = {"median_per_passage": statistics.median(seconds),
                          "median_placebo": statistics.median((x.get("timings") or {}).get("placebo_s", 0.0)
                                                              for x in done),
                          "placebo_cached": sum(bool(x.get("placebo_cached")) for x in done)}
    failed: dict[str, int] = {}
    for x in done:
        for name in x.get("failed") or []:
            failed[name] = failed.get(name, 0) + 1
    out["failed_gates"] = failed
    last = next((x for x in reversed(done) if x["accepted"]), None)
    out["retention_tip_vs_base"] = last.get("retention_vs_base") if last else {"value": 0.0, "note": "no edit accepted"}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.summarize:
        lines = [json.loads(x) for x in args.summarize.read_text().splitlines() if x.strip()]
        rows = [x for x in lines if "passage" in x and not x.get("summary")]
        print(json.dumps(summary(rows, [x["manifest"] for x in rows if x.get("manifest")])))
        return 0
    from seal.editor.progress import QuietProgress
    from seal.editor.request import EditRequest
    from seal.editor.stream import run_stream

    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()][: args.passages]
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.workdir / "passages.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reg = make_registry(args)
    out = open(args.out, "a") if args.out else sys.stdout
    extra = {k: v for k, v in (("epochs", args.epochs), ("kl", args.kl), ("style", args.style)) if v is not None}
    req = EditRequest(passages=source, track=False, threads=args.threads, device="cpu", **extra)
    lines: list[dict] = []
    started = time.perf_counter()

    manifests: list[dict] = []

    def emit(item: dict) -> None:
        line = passage_line(reg, item)
        if line.get("manifest"):
            manifests.append(line["manifest"])
        line["elapsed_s"] = round(time.perf_counter() - started, 1)
        lines.append(line)
        print(json.dumps(line), file=out, flush=True)

    run_stream(reg, req, emit=emit, progress=QuietProgress())
    print(json.dumps({**summary(lines, manifests), "config": {"passages": args.passages, "threads": args.threads,
                                                        "overrides": extra, "xstest_full": bool(args.xstest and args.xstest.is_file())},
                      "wall_s": round(time.perf_counter() - started, 1)}), file=out, flush=True)
    reg.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
