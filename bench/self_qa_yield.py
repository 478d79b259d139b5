"""What a base writes when asked for SEAL's "self-qa" self-edit: how many question-answer pairs come back.

The answer-only QA loss (the issue's Deliver 4) trains on question -> answer pairs the model writes
itself. This counts, on the first ``--passages`` SEAL passages, the pairs the embedded base (or
``--base``) writes with the default sampling, as seal parses them
(:func:`seal.editor.reflect.split_self_edit_lines`; a pair is a unit with its answer line,
:func:`seal.editor.reflect.is_qa_pair`), and how many
of those answers the passage supports (:func:`seal.editor.reflect.filter_supported_lines`).
Prints one JSON line.

    python bench/self_qa_yield.py --passages 10 --threads 1    # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "squad-knowledge-200.jsonl")
    p.add_argument("--passages", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--base", default=None, help="a base folder or GGUF (default: the embedded SmolLM2-135M-Instruct)")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from seal.editor.base import default_cache_dir, load_base
    from seal.editor.reflect import filter_supported_lines, generate_self_edits, is_qa_pair, split_self_edit_lines
    from seal.editor.request import EditRequest

    req = EditRequest()
    b = load_base(args.base, cache_dir=default_cache_dir(), device="cpu")
    rows = [json.loads(line) for line in args.data.read_text().splitlines()[:args.passages]]
    started, per_passage = time.perf_counter(), []
    for r in rows:
        text = generate_self_edits(b.model, b.tokenizer, r["context"], r["title"], style="self-qa", k=1,
                                   temperature=req.temperature, top_p=req.top_p, max_new_tokens=req.max_new_tokens,
                                   seed=req.seed)[0]
        units = split_self_edit_lines(text)
        pairs = [u for u in units if is_qa_pair(u)]
        per_passage.append({"id": r["id"], "units": len(units), "pairs": len(pairs),
                            "supported": len(filter_supported_lines(pairs, r["context"])), "sample": text[:160]})
    print(json.dumps({"bench": "self_qa_yield", "base": args.base or "SmolLM2-135M-Instruct (embedded)",
                      "passages": len(rows), "with_a_pair": sum(x["pairs"] > 0 for x in per_passage),
                      "pairs": sum(x["pairs"] for x in per_passage),
                      "supported_pairs": sum(x["supported"] for x in per_passage),
                      "seconds": round(time.perf_counter() - started, 1), "per_passage": per_passage}))


if __name__ == "__main__":
    main()
