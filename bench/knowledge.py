"""Benchmark: SEAL's single-passage knowledge incorporation on the loaded base (the recipe of
bench/results/findings-2026-11-27.md).

For each of the first N passages of a SEAL/SQuAD knowledge file (``shared/data/squad-knowledge-200.jsonl``
format: ``id, title, context, questions[{question, answer}], reference_self_edits{generator: text}``),
every condition starts from the same frozen base with a fresh LoRA and the same seed:

- ``no_edit``: the base itself;
- ``passage_only``: LoRA on ``title\\npassage``;
- ``passage_plus_own``: the model's own ``implications`` self-edit (k=1, temperature 0.7 by
  default), each line prefixed with the title, plus the passage;
- ``passage_plus_<generator>``: the same with each published reference self-edit
  (``qwen2.5-7b-base``, ``seal-rl-iter2``, ``gpt-4.1``).

Training sequences come from :func:`seal.editor.reflect.build_training_sequences`; training is
:func:`seal.editor.train.train_adapter` (all-linear, r=32, alpha=64, AdamW + linear decay,
batch 1, loss on all tokens; lr and epochs are flags: 3e-4, seal's default, and 10; the
tables of bench/results/findings-2026-11-27.md were measured with ``--lr 1e-3``).
The adapter is saved to a scratch folder and evaluated after reloading it, as the loop does.
Evaluation is no-context QA in the chat template, greedy, 48 new tokens, graded with
:func:`seal.editor.evaluate.qa_scores` (SQuAD-normalised containment, token F1, token recall).

Prints one JSON line: per condition the mean (over questions) containment / F1 / recall, and a
paired bootstrap 95% CI of its difference against ``passage_only`` and against ``no_edit``, both
resampling passages (with the questions inside each resampled passage resampled too) and
resampling questions; plus seconds per passage (total and per stage), counts and settings::

    python bench/knowledge.py --data ../shared/data/squad-knowledge-200.jsonl --limit 20 \\
        --out /tmp/knowledge20.jsonl > /tmp/knowledge20.json

On a shared CPU pass ``--threads 1`` (see ``--help``). Progress goes to stderr, one line per
condition and one per passage. ``--out`` receives one JSON object per
(passage, condition, question), written as each passage finishes. The data file is only read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("containment", "f1", "recall")
REFERENCE_GENERATORS = ("qwen2.5-7b-base", "seal-rl-iter2", "gpt-4.1")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _read_passages(path: Path, limit: int | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _score_rows(
    predictions: list[str], questions: list[dict[str, Any]]
) -> list[dict[str, float]]:
    from seal.editor.evaluate import containment, token_f1, token_recall

    return [
        {
            "containment": containment(pred, q["answer"]),
            "f1": token_f1(pred, q["answer"]),
            "recall": token_recall(pred, q["answer"]),
        }
        for pred, q in zip(predictions, questions)
    ]


# ----------------------------------------------------------------------------- bootstrap


def _bootstrap_indices(
    passage_of_question: np.ndarray, n_resamples: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Resampled global question indices: nested over passages, and flat over questions.

    Nested: draw passages with replacement, then, inside each drawn passage, draw its questions
    with replacement. Flat: draw questions with replacement from the pooled set. The same draws
    serve every pair of conditions, so all comparisons are paired and mutually consistent.
    """
    rng = np.random.default_rng(seed)
    passages = np.unique(passage_of_question)
    members = [np.flatnonzero(passage_of_question == p) for p in passages]
    n_q = len(passage_of_question)
    nested: list[np.ndarray] = []
    flat: list[np.ndarray] = []
    for _ in range(n_resamples):
        chosen = rng.integers(0, len(passages), size=len(passages))
        parts = [members[c][rng.integers(0, len(members[c]), size=len(members[c]))] for c in chosen]
        nested.append(np.concatenate(parts))
        flat.append(rng.integers(0, n_q, size=n_q))
    return nested, flat


def _ci(diff: np.ndarray, draws: list[np.ndarray]) -> list[float]:
    """Percentile 95% CI of the mean of ``diff`` (NaN = pair missing) over ``draws``."""
    stats = []
    for idx in draws:
        sample = diff[idx]
        sample = sample[~np.isnan(sample)]
        if sample.size:
            stats.append(sample.mean())
    if not stats:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(np.asarray(stats), [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def _compare(
    scores: dict[str, dict[str, np.ndarray]],
    name: str,
    reference: str,
    nested: list[np.ndarray],
    flat: list[np.ndarray],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in METRICS:
        diff = scores[name][metric] - scores[reference][metric]
        valid = diff[~np.isnan(diff)]
        out[metric] = {
            "diff": round(float(valid.mean()), 4) if valid.size else None,
            "ci95_passages": _ci(diff, nested),
            "ci95_questions": _ci(diff, flat),
        }
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="squad-knowledge JSONL to read")
    parser.add_argument("--limit", type=int, default=20, help="first N passages (default 20)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-4,
                        help="seal's default (3e-4); the knowledge tables of results/findings-2026-11-27.md used 1e-3")
    parser.add_argument("--seed", type=int, default=0, help="LoRA init/data order and own self-edit")
    parser.add_argument("--out", type=Path, default=None, help="per-question results (JSONL)")
    parser.add_argument("--temperature", type=float, default=0.7, help="own self-edit sampling")
    parser.add_argument("--self-edit-tokens", type=int, default=256)
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads; use 1 on a shared, loaded CPU (2 threads on 2 busy cores ran "
        "training steps ~4x slower than 1 thread, from OpenMP oversubscription)",
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    from seal.editor.base import default_cache_dir, load_base
    from seal.editor.evaluate import qa_scores
    from seal.editor.reflect import (
        build_training_sequences,
        generate_self_edits,
        split_self_edit_lines,
    )
    from seal.editor.train import (
        DEFAULT_ALPHA,
        DEFAULT_R,
        DEFAULT_TARGET_MODULES,
        adapter_applied,
        train_adapter,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    passages = _read_passages(args.data, args.limit)
    if not passages:
        raise SystemExit(f"no passages in {args.data}")

    t0 = time.perf_counter()
    base = load_base(None, cache_dir=default_cache_dir(), device=args.device)
    load_seconds = time.perf_counter() - t0
    model, tok = base.model, base.tokenizer
    _log(f"[knowledge] base {base.name} loaded in {load_seconds:.1f}s; {len(passages)} passages")

    out_fh = open(args.out, "w", encoding="utf-8") if args.out else None
    # per condition: list aligned with the global question list (None where not run)
    per_question: dict[str, list[dict[str, float] | None]] = {}
    passage_of_question: list[int] = []
    train_stats: dict[str, list[dict[str, Any]]] = {}
    stage_seconds: list[dict[str, float]] = []
    q_offset = 0

    def record(name: str, pi: int, rows: list[dict[str, float]]) -> None:
        column = per_question.setdefault(name, [])
        column.extend([None] * (q_offset + len(rows) - len(column)))
        column[q_offset : q_offset + len(rows)] = rows

    try:
        with tempfile.TemporaryDirectory(prefix="seal-knowledge-") as scratch:
            for pi, item in enumerate(passages):
                p_started = time.perf_counter()
                times = {"generate": 0.0, "train": 0.0, "eval": 0.0}
                title, passage, questions = item["title"], item["context"], item["questions"]
                passage_of_question.extend([pi] * len(questions))
                out_rows: list[dict[str, Any]] = []

                def evaluate(m: Any, name: str, extra: dict[str, Any]) -> dict[str, float]:
                    t = time.perf_counter()
                    result = qa_scores(
                        m, tok, questions, max_new_tokens=args.answer_tokens,
                        return_predictions=True,
                    )
                    times["eval"] += time.perf_counter() - t
                    rows = _score_rows(result["predictions"], questions)
                    record(name, pi, rows)
                    for qi, (q, pred, row) in enumerate(zip(questions, result["predictions"], rows)):
                        out_rows.append(
                            {
                                "passage_id": item["id"], "passage_index": pi, "title": title,
                                "condition": name, "question_index": qi,
                                "question": q["question"], "answer": q["answer"],
                                "prediction": pred, **row, **(extra if qi == 0 else {}),
                            }
                        )
                    return {k: result[k] for k in METRICS}

                summary: dict[str, dict[str, float]] = {}
                summary["no_edit"] = evaluate(model, "no_edit", {})

                # the model's own implications self-edit (from the base, before any training)
                t = time.perf_counter()
                own_text = generate_self_edits(
                    model, tok, passage, title, style="implications", k=1,
                    temperature=args.temperature, max_new_tokens=args.self_edit_tokens,
                    seed=args.seed,
                )[0]
                times["generate"] += time.perf_counter() - t
                own_lines = split_self_edit_lines(own_text)
                _log(
                    f"[knowledge]   {item['id']} no_edit eval {times['eval']:.0f}s; own self-edit "
                    f"{len(own_lines)} lines in {times['generate']:.0f}s"
                )

                conditions: list[tuple[str, list[str], dict[str, Any]]] = [
                    ("passage_only", [], {}),
                    ("passage_plus_own", own_lines, {"self_edit": own_text}),
                ]
                refs = item.get("reference_self_edits") or {}
                for generator in list(REFERENCE_GENERATORS) + sorted(set(refs) - set(REFERENCE_GENERATORS)):
                    text = refs.get(generator)
                    if isinstance(text, str) and text.strip():
                        conditions.append(
                            (f"passage_plus_{generator}", split_self_edit_lines(text), {})
                        )

                for name, lines, extra in conditions:
                    sequences = build_training_sequences(passage, title, lines)
                    adapter_dir = Path(scratch) / f"p{pi}-{name}"
                    t = time.perf_counter()
                    rec = train_adapter(
                        model, tok, sequences, out_dir=adapter_dir, seed=args.seed,
                        lr=args.lr, epochs=args.epochs, base_name=base.name,
                    )
                    times["train"] += time.perf_counter() - t
                    stats = {
                        "n_lines": len(lines), "n_sequences": rec["n_sequences"],
                        "n_tokens": rec["n_tokens"], "steps": rec["steps"],
                        "loss_first": rec["loss_first"], "loss_final": rec["loss_final"],
                        "train_seconds": rec["seconds"],
                    }
                    train_stats.setdefault(name, []).append(stats)
                    with adapter_applied(model, adapter_dir) as edited:
                        summary[name] = evaluate(edited, name, {**extra, "train": stats})
                    _log(
                        f"[knowledge]   {item['id']} {name}: {rec['steps']} steps "
                        f"{rec['n_tokens']} tok, loss {rec['loss_first']:.2f}->"
                        f"{rec['loss_final']:.2f} in {rec['seconds']:.0f}s; "
                        f"containment {summary[name]['containment']:.2f}"
                    )
                    for f in adapter_dir.iterdir():
                        f.unlink()
                    adapter_dir.rmdir()

                times["total"] = time.perf_counter() - p_started
                stage_seconds.append(times)
                q_offset += len(questions)
                if out_fh:
                    for row in out_rows:
                        out_fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    out_fh.flush()
                brief = " ".join(
                    f"{k}={v['containment']:.2f}/{v['f1']:.2f}" for k, v in summary.items()
                )
                _log(
                    f"[knowledge] {pi + 1}/{len(passages)} {item['id']} ({len(questions)} q) "
                    f"{times['total']:.0f}s (gen {times['generate']:.0f} train "
                    f"{times['train']:.0f} eval {times['eval']:.0f}) own_lines={len(own_lines)} "
                    f"| {brief}"
                )
    finally:
        if out_fh:
            out_fh.close()

    # ------------------------------------------------------------------ aggregate
    n_q = q_offset
    pq = np.asarray(passage_of_question)
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name, column in per_question.items():
        column = column + [None] * (n_q - len(column))
        scores[name] = {
            m: np.array([np.nan if r is None else r[m] for r in column], dtype=float)
            for m in METRICS
        }
    nested, flat = _bootstrap_indices(pq, args.resamples, args.bootstrap_seed)

    results: dict[str, Any] = {}
    for name in scores:
        entry: dict[str, Any] = {}
        for m in METRICS:
            values = scores[name][m]
            entry[m] = round(float(np.nanmean(values)), 4)
        entry["n_questions"] = int((~np.isnan(scores[name]["f1"])).sum())
        if name in train_stats:
            ts = train_stats[name]
            entry["train"] = {
                "mean_lines": round(float(np.mean([s["n_lines"] for s in ts])), 2),
                "mean_tokens": round(float(np.mean([s["n_tokens"] for s in ts])), 1),
                "mean_steps": round(float(np.mean([s["steps"] for s in ts])), 1),
                "mean_loss_final": round(float(np.mean([s["loss_final"] for s in ts])), 4),
                "mean_seconds": round(float(np.mean([s["train_seconds"] for s in ts])), 2),
            }
        for reference in ("passage_only", "no_edit"):
            if reference in scores and reference != name:
                entry[f"vs_{reference}"] = _compare(scores, name, reference, nested, flat)
        results[name] = entry

    def mean_of(key: str) -> float:
        return round(float(np.mean([s[key] for s in stage_seconds])), 2)

    summary_line = {
        "bench": "knowledge",
        "n_passages": len(passages),
        "n_questions": n_q,
        "conditions": results,
        "seconds_per_passage": {k: mean_of(k) for k in ("total", "generate", "train", "eval")},
        "seconds_total": round(time.perf_counter() - started, 1),
        "seconds_load_base": round(load_seconds, 2),
        "settings": {
            "data": str(args.data),
            "limit": args.limit,
            "base": base.name,
            "base_fingerprint": base.fingerprint[:16],
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "epochs": args.epochs,
            "lr": args.lr,
            "seed": args.seed,
            "lora": {"r": DEFAULT_R, "alpha": DEFAULT_ALPHA, "target_modules": DEFAULT_TARGET_MODULES},
            "batch_size": 1,
            "own_self_edit": {
                "style": "implications", "k": 1, "temperature": args.temperature,
                "top_p": 0.95, "max_new_tokens": args.self_edit_tokens,
            },
            "eval": {"format": "chat template, no context", "decoding": "greedy",
                     "max_new_tokens": args.answer_tokens},
            "bootstrap": {"resamples": args.resamples, "seed": args.bootstrap_seed,
                          "ci": "percentile 95%", "mean": "over questions",
                          "passages": "resample passages, then questions within each",
                          "questions": "resample pooled questions"},
        },
    }
    print(json.dumps(summary_line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
