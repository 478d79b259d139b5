"""Answer margins with the chat template's opening cached once against computed in every row.

Same run, same model (the embedded SmolLM2-135M-Instruct, CPU): the questions of the first
``--passages`` SEAL passages with their 10 distractors (what the efficacy rule and the taught gate
score), timed alternately with ``share_prefix`` off (the baseline) and on. Prints one JSON line:
the median seconds of each, their ratio, and the largest difference between the two margins.

    python bench/margin_prefix.py --passages 5 --reps 5 --threads 1    # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "squad-knowledge-200.jsonl")
    p.add_argument("--passages", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from seal.editor.base import default_cache_dir, load_base
    from seal.editor.efficacy import answer_margins, contrast_questions, unrelated_answers

    rows = [json.loads(line) for line in args.data.read_text().splitlines()[:args.passages]]
    qs = [q for r in rows for q in contrast_questions(r["questions"], r["context"], unrelated_answers())]
    b = load_base(None, cache_dir=default_cache_dir(), device="cpu")
    answer_margins(b.model, b.tokenizer, qs[:2])  # warm
    seconds: dict[bool, list[float]] = {False: [], True: []}
    margins: dict[bool, list[float]] = {}
    for _ in range(args.reps):
        for share in (False, True):
            started = time.perf_counter()
            margins[share] = answer_margins(b.model, b.tokenizer, qs, share_prefix=share)[0]
            seconds[share].append(time.perf_counter() - started)
    base, cached = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(json.dumps({"bench": "margin_prefix", "questions": len(qs), "threads": args.threads, "reps": args.reps,
                      "median_s": {"every_row": round(base, 3), "cached_prefix": round(cached, 3)},
                      "ratio": round(cached / base, 3),
                      "max_abs_margin_diff": max(abs(a - c) for a, c in zip(margins[False], margins[True]))}))


if __name__ == "__main__":
    main()
