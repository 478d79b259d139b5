"""Benchmark: does ReST-EM (`seal learn --rounds`) make the model's own self-edits worth having?

On SEAL's knowledge set (``squad-knowledge-200.jsonl``), split into training and held-out
passages disjoint by title:

1. **Rounds, through seal itself.** A fresh registry on the base; ``--rounds`` rounds of `seal
   learn` (the library calls of :func:`seal.editor.learn.run_rounds`, one warm session): sample
   the training passages through the edit stream (K candidates each, gated and recorded), build
   the round's dataset from the lineage, train a writer, evaluate it against the old writer on
   the held-out passages (its gate decision is reported as recorded).
2. **The knowledge measurement, at equal training steps.** For every held-out passage, a fresh
   LoRA on the base is trained for exactly ``--steps`` steps (the training sequences cycled,
   batch 1) on each condition, then asked the passage's questions without context (chat
   template, greedy, 48 tokens), graded by containment and token F1:

   - ``passage_only``: the title and passage;
   - ``own_r0``: the passage plus the base's own implications (the writer before any round);
   - ``own_rN``: the passage plus the implications written by the writer trained in round N
     (accepted or not: every writer version is measured);
   - ``published_<generator>``: the passage plus SEAL's published self-edits
     (``reference_self_edits``: ``gpt-4.1`` and ``seal-rl-iter2`` by default).

   Every own self-edit is sampled once per passage with the same seed and settings.

Prints one JSON line: per condition the mean containment / F1 over held-out questions and the
paired bootstrap 95% CIs of the differences that matter (each ``own_rN`` against
``passage_only``, ``own_r0`` and each published condition; each published against
``passage_only``), resampling passages (and questions inside them) and resampling questions;
plus each round's recorded gate decision, timings and settings. Partial results are written as
they come under ``--out``: ``progress.log`` (the engine's stage lines), ``rounds.jsonl`` (one
line per round), ``rows.jsonl`` (one line per held-out passage, condition and question) and
``summary.json``. Small CPU run (what fits a 2-core machine in a few hours)::

    nice -n 19 python bench/rest_em.py --data ../shared/data/squad-knowledge-200.jsonl \\
        --train 12 --heldout 8 --candidates 4 --rounds 2 --edit-epochs 3 --threads 1 \\
        --out /tmp/rest_em-small > /tmp/rest_em-small/result.json

The full configuration, for a GPU (``--full`` = ``--train 100 --heldout 50 --candidates 5
--rounds 2 --edit-epochs 10 --device cuda``)::

    python bench/rest_em.py --data squad-knowledge-200.jsonl --full --out /tmp/rest_em-full

``--eval-only --registry DIR`` re-runs the measurement on the writers of a registry that
finished (or stopped in) its rounds.
Adding ``--more-heldout N`` measures N further passages from titles outside the split instead (rows to
concatenate with the first run's before ``--summarise-only``).
``--summarise-only --out DIR`` (no model) summarises what a stopped run wrote: the rounds that
ended and the held-out passages every condition finished (``summary-partial.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from knowledge import METRICS, _bootstrap_indices, _compare, _score_rows  # noqa: E402

PUBLISHED = ("gpt-4.1", "seal-rl-iter2")
FULL = {"train": 100, "heldout": 50, "candidates": 5, "rounds": 2, "edit_epochs": 10, "device": "cuda"}


def _log(message: str) -> None:
    print(f"[rest_em] {message}", file=sys.stderr, flush=True)


def split_by_title(rows: list[dict], n_train: int, n_held: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out and training passages from disjoint titles (titles shuffled with ``seed``).

        >>> rows = [{"title": t, "context": f"{t}{i}"} for t in "abcd" for i in range(3)]
        >>> train, held = split_by_title(rows, 4, 2, 0)
        >>> len(train), len(held), {r["title"] for r in train} & {r["title"] for r in held}
        (4, 2, set())
    """
    titles = list(dict.fromkeys(r["title"] for r in rows))
    random.Random(seed).shuffle(titles)
    held, train, used = [], [], set()
    for title in titles:
        group = [r for r in rows if r["title"] == title]
        if len(held) < n_held:
            held += group[: n_held - len(held)]
            used.add(title)
        elif len(train) < n_train:
            train += group[: n_train - len(train)]
    if len(held) < n_held or len(train) < n_train:
        raise SystemExit(f"not enough passages for {n_train} train + {n_held} held-out disjoint by title")
    return train, held


def more_heldout(rows: list[dict], used: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` further passages whose titles none of ``used`` has (same title order as the split), to
    widen a finished run's measurement without touching anything a writer saw.

        >>> rows = [{"title": t, "context": f"{t}{i}"} for t in "abcd" for i in range(3)]
        >>> train, held = split_by_title(rows, 4, 2, 0)
        >>> extra = more_heldout(rows, train + held, 2, 0)
        >>> len(extra), {r["title"] for r in extra} & {r["title"] for r in train + held}
        (2, set())
    """
    titles = list(dict.fromkeys(r["title"] for r in rows))
    random.Random(seed).shuffle(titles)
    taken = {r["title"] for r in used}
    extra = [r for t in titles if t not in taken for r in rows if r["title"] == t][:n]
    if len(extra) < n:
        raise SystemExit(f"only {len(extra)} passages left outside the split's titles")
    return extra


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _append(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- the rounds

def run_rounds(args, reg, train_path: Path, held_path: Path, out: Path) -> list[dict]:
    """The rounds of `seal learn`, one warm session, one line per round in rounds.jsonl as it ends."""
    from dataclasses import replace

    from seal.editor.learn import LearnRequest, learn_step, open_learn_session, sample_round, starting_parent
    from seal.editor.progress import LineProgress
    from seal.editor.request import EditRequest
    from seal.editor.learning import Selection, build_dataset

    edit = EditRequest(candidates=args.eval_candidates, epochs=args.edit_epochs, lr=args.edit_lr,
                       max_new_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                       device=args.device, threads=args.threads, track=False)
    lreq = LearnRequest(holdout=held_path, writer="bench", epochs=args.writer_epochs, lr=args.writer_lr,
                        seed=args.seed, edit=edit, rounds=args.rounds, passages=train_path,
                        candidates=args.candidates, selection=Selection(margin=args.margin))
    from seal.editor.learn import check_disjoint, check_learn_request, read_passages

    check_learn_request(lreq, reg.base())
    train_set, heldout = read_passages(train_path, "--passages"), read_passages(held_path, "--holdout")
    check_disjoint(reg, heldout, None, train_set)
    parent = starting_parent(reg, lreq)
    log = open(out / "progress.log", "a", encoding="utf-8")
    rounds, cache = [], {}
    try:
        with open_learn_session(reg, lreq, LineProgress(stream=log)) as session:
            for n in range(1, args.rounds + 1):
                t = time.perf_counter()
                sampled = sample_round(session, lreq, train_set, parent, f"learn/bench/round-{n}", n)
                t_sample = time.perf_counter() - t
                dataset = build_dataset(reg, replace(lreq.selection, branch=sampled["branch"], since=sampled["since"]))
                item = {"round": n, "sampled": sampled, "sample_s": round(t_sample, 1)}
                if dataset.examples:
                    item.update(learn_step(session, lreq, dataset, heldout, parent, round_no=n, cache=cache))
                else:
                    item.update({"dataset": dataset.summary(), "writer": None})
                item["seconds"] = round(time.perf_counter() - t, 1)
                _append(out / "rounds.jsonl", item)
                _log(f"round {n}: {dataset.summary()['examples']} examples; writer "
                     f"{(item.get('writer') or {}).get('status')}; gain {item.get('gain')}; {item['seconds']}s")
                rounds.append(item)
    finally:
        log.close()
    return rounds


# --------------------------------------------------------------------------- the measurement

def equal_steps(sequences: list[str], steps: int) -> list[str]:
    """``steps`` sequences cycling through ``sequences`` (one epoch of batch 1 is then ``steps`` steps).

        >>> equal_steps(["a", "b"], 5)
        ['a', 'b', 'a', 'b', 'a']
    """
    return [sequences[i % len(sequences)] for i in range(steps)]


def writer_folders(reg, rounds: list[dict], scratch: Path) -> dict[str, Path | None]:
    """``own_r0`` (the bare base) and ``own_rN`` → the adapter folder of the writer round N trained."""
    from seal.registry.worktree import export_adapter

    folders: dict[str, Path | None] = {"own_r0": None}
    for item in rounds:
        w = item.get("writer")
        if w and reg.manifest(w["id"]).get("adapter"):
            folders[f"own_r{item['round']}"] = export_adapter(reg, reg.manifest(w["id"]), w["id"],
                                                              scratch / f"writer-r{item['round']}")
    return folders


def measure_heldout(args, base, held: list[dict], writers: dict[str, Path | None], out: Path,
                    scratch: Path) -> dict[str, Any]:
    """Every condition on every held-out passage at ``--steps`` steps; rows.jsonl as passages finish."""
    from seal.editor.attach import attached
    from seal.editor.evaluate import qa_scores
    from seal.editor.reflect import build_training_sequences, generate_self_edits, split_self_edit_lines
    from seal.editor.train import adapter_applied, train_adapter

    model, tok = base.model, base.tokenizer
    per_question: dict[str, list[dict]] = {}
    passage_of_question: list[int] = []
    steps_seen: dict[str, list[int]] = {}
    for pi, item in enumerate(held):
        started = time.perf_counter()
        title, passage, questions = item["title"], item["context"], item["questions"]
        conditions: list[tuple[str, list[str], str | None]] = [("passage_only", [], None)]
        for name, folder in writers.items():
            with attached(model, folder) as writer:
                text = generate_self_edits(writer, tok, passage, title, style="implications", k=1,
                                           temperature=args.temperature, max_new_tokens=args.max_tokens,
                                           seed=args.seed)[0]
            conditions.append((name, split_self_edit_lines(text), text))
        for generator in args.published:
            text = (item.get("reference_self_edits") or {}).get(generator)
            if isinstance(text, str) and text.strip():
                conditions.append((f"published_{generator}", split_self_edit_lines(text), None))
        for name, lines, text in conditions:
            sequences = equal_steps(build_training_sequences(passage, title, lines), args.steps)
            folder = scratch / f"p{pi}-{name}"
            rec = train_adapter(model, tok, sequences, out_dir=folder, seed=args.seed, lr=args.lr, epochs=1,
                                base_name=base.name)
            steps_seen.setdefault(name, []).append(rec["steps"])
            with adapter_applied(model, folder) as edited:
                result = qa_scores(edited, tok, questions, max_new_tokens=48, return_predictions=True)
            rows = _score_rows(result["predictions"], questions)
            per_question.setdefault(name, []).extend(rows)
            for qi, (q, pred, row) in enumerate(zip(questions, result["predictions"], rows)):
                _append(out / "rows.jsonl", {"passage": item["id"], "title": title, "condition": name, "question": qi,
                                             "answer": q["answer"], "prediction": pred, **row,
                                             **({"self_edit": text, "lines": len(lines)} if qi == 0 else {}),
                                             "steps": rec["steps"], "loss_final": rec["loss_final"]})
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
        passage_of_question.extend([pi] * len(questions))
        _log(f"held-out {pi + 1}/{len(held)} {item['id']}: {len(conditions)} conditions in "
             f"{time.perf_counter() - started:.0f}s")
    return {"per_question": per_question, "passage_of_question": passage_of_question, "steps": steps_seen}


def measured_from_rows(rows: list[dict]) -> dict[str, Any]:
    """``measure_heldout``'s result rebuilt from rows.jsonl, keeping only the held-out passages every
    condition finished (a run stopped mid-passage still gives paired figures on the rest).

        >>> rows = [{"passage": p, "condition": c, "question": q, "containment": 1.0, "f1": 1.0, "recall": 1.0,
        ...          "steps": 5} for p in ("a", "b") for c in ("x", "y") for q in (0, 1)][:-1]
        >>> m = measured_from_rows(rows)
        >>> m["passage_of_question"], sorted(m["per_question"]), m["steps"]["x"]
        ([0, 0], ['x', 'y'], [5])
    """
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    by: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        by.setdefault((r["passage"], r["condition"]), {})[r["question"]] = r
    passages = list(dict.fromkeys(r["passage"] for r in rows))
    n_q = {p: max(len(by.get((p, c), {})) for c in conditions) for p in passages}
    done = [p for p in passages if all(len(by.get((p, c), {})) == n_q[p] for c in conditions)]
    per_question: dict[str, list[dict]] = {c: [] for c in conditions}
    steps: dict[str, list[int]] = {c: [] for c in conditions}
    passage_of_question: list[int] = []
    for pi, p in enumerate(done):
        for c in conditions:
            qs = by[(p, c)]
            per_question[c].extend({m: qs[q][m] for m in METRICS} for q in sorted(qs))
            steps[c].append(qs[min(qs)]["steps"])
        passage_of_question.extend([pi] * n_q[p])
    return {"per_question": per_question, "passage_of_question": passage_of_question, "steps": steps}


def summarise(measured: dict, args) -> dict[str, Any]:
    """Means per condition and the paired bootstrap CIs of the comparisons that matter."""
    pq = np.asarray(measured["passage_of_question"])
    scores = {name: {m: np.array([r[m] for r in rows], dtype=float) for m in METRICS}
              for name, rows in measured["per_question"].items() if len(rows) == len(pq)}
    nested, flat = _bootstrap_indices(pq, args.resamples, args.bootstrap_seed)
    own = sorted(n for n in scores if n.startswith("own_r"))
    published = [n for n in scores if n.startswith("published_")]
    out: dict[str, Any] = {}
    for name in scores:
        entry: dict[str, Any] = {m: round(float(scores[name][m].mean()), 4) for m in METRICS}
        entry["steps"] = sorted(set(measured["steps"].get(name, [])))
        refs = ["passage_only"] if name in published else []
        if name in own:
            refs = ["passage_only"] + (["own_r0"] if name != "own_r0" else []) + published
        for ref in refs:
            entry[f"vs_{ref}"] = _compare(scores, name, ref, nested, flat)
        out[name] = entry
    return out


# --------------------------------------------------------------------------- main

def _registry(args, out: Path):
    from seal.cli.app import run as seal_run
    from seal.registry.repo import Registry

    folder = args.registry or out / "registry"
    if not (folder / ".seal").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the one JSON line
            rc = seal_run(["init", str(folder), *(["--base", args.base] if args.base else [])])
        if rc != 0:
            raise SystemExit("seal init failed")
    return Registry.open(folder)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="squad-knowledge JSONL (read only)")
    p.add_argument("--out", required=True, type=Path, help="folder for partial and final results")
    p.add_argument("--full", action="store_true", help="the GPU configuration: " + json.dumps(FULL))
    p.add_argument("--train", type=int, default=12)
    p.add_argument("--heldout", type=int, default=8)
    p.add_argument("--candidates", type=int, default=4, help="K self-edits per training passage and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--edit-epochs", type=int, default=3, help="epochs of every edit in the rounds (seal: 10)")
    p.add_argument("--edit-lr", type=float, default=3e-4)
    p.add_argument("--eval-candidates", type=int, default=1, help="self-edits per held-out passage in the writer gate")
    p.add_argument("--margin", type=float, default=0.0, help="a self-edit is kept if its gain beat the parent by more")
    p.add_argument("--writer-epochs", type=int, default=3)
    p.add_argument("--writer-lr", type=float, default=3e-4)
    p.add_argument("--steps", type=int, default=30, help="training steps of every measured condition")
    p.add_argument("--lr", type=float, default=1e-3, help="lr of the measured conditions (the knowledge recipe of results/findings-2026-11-27.md)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--published", nargs="*", default=list(PUBLISHED))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--bootstrap-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--base", default=None, help="seal init --base (default: the embedded SmolLM2-135M)")
    p.add_argument("--registry", type=Path, default=None, help="use (or resume measuring) this registry folder")
    p.add_argument("--eval-only", action="store_true", help="skip the rounds; measure the writers already recorded")
    p.add_argument("--more-heldout", type=int, default=0,
                   help="with --eval-only: measure this many further passages (titles outside the split) instead "
                        "of the held-out ones; concatenate the rows.jsonl files and --summarise-only")
    p.add_argument("--summarise-only", action="store_true",
                   help="no model: summarise the rows.jsonl and rounds.jsonl already under --out (a stopped run)")
    args = p.parse_args(argv)
    if args.full:
        for key, value in FULL.items():
            setattr(args, key, value)
    return args


def _round_summary(r: dict) -> dict:
    return {"round": r["round"], "sampled": {k: r["sampled"][k] for k in ("passages", "accepted", "candidates")},
            "dataset": {k: (r.get("dataset") or {}).get(k) for k in ("examples", "triggers", "considered", "mean_gain")},
            "writer": (r.get("writer") or {}).get("id"), "status": (r.get("writer") or {}).get("status"),
            "gate_gain": r.get("gain"), "failed_gates": (r.get("writer") or {}).get("failed_gates"),
            "seconds": r.get("seconds")}


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def summarise_only(args) -> int:
    """The summary of a run from what it wrote so far (rows of complete held-out passages only)."""
    measured = measured_from_rows(_jsonl(args.out / "rows.jsonl"))
    rounds = _jsonl(args.out / "rounds.jsonl")
    summary = {"bench": "rest_em", "partial": True,
               "conditions": summarise(measured, args) if measured["passage_of_question"] else {},
               "rounds": [_round_summary(r) for r in rounds],
               "n_heldout_complete": len(set(measured["passage_of_question"])),
               "n_questions": len(measured["passage_of_question"])}
    (args.out / "summary-partial.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.summarise_only:
        return summarise_only(args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    train, held = split_by_title(rows, args.train, args.heldout, args.split_seed)
    if args.more_heldout:
        if not args.eval_only:
            raise SystemExit("--more-heldout goes with --eval-only")
        held = more_heldout(rows, train + held, args.more_heldout, args.split_seed)
    train_path, held_path = out / "train.jsonl", out / "heldout.jsonl"
    strip = ("reference_self_edits",)  # the writer learns from its own self-edits, never the published ones
    _write_jsonl(train_path, [{k: v for k, v in r.items() if k not in strip} for r in train])
    _write_jsonl(held_path, [{k: v for k, v in r.items() if k not in strip} for r in held])
    reg = _registry(args, out)
    t = time.perf_counter()
    if args.eval_only:
        rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines() if line.strip()]
    else:
        rounds = run_rounds(args, reg, train_path, held_path, out)
    rounds_s = time.perf_counter() - t

    from seal.editor.session import loaded_base

    base = loaded_base(reg.base(), args.device)
    import tempfile

    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rest-em-", dir=reg.tmp_dir) as scratch:
        writers = writer_folders(reg, rounds, Path(scratch))
        measured = measure_heldout(args, base, held, writers, out, Path(scratch))
    summary = {
        "bench": "rest_em", "conditions": summarise(measured, args),
        "rounds": [_round_summary(r) for r in rounds],
        "n_heldout": len(held), "n_questions": len(measured["passage_of_question"]), "n_train": len(train),
        "seconds": {"rounds": round(rounds_s, 1), "measure": round(time.perf_counter() - t, 1),
                    "total": round(time.perf_counter() - started, 1)},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {
            "torch_threads": torch.get_num_threads(), "base": base.name, "registry": str(reg.root),
            "split": "titles shuffled with --split-seed; held-out titles first, then training titles",
            "measure": "fresh LoRA on the base per passage and condition, r=32 alpha=64 all-linear, batch 1, "
                       "exactly --steps steps, chat-template no-context QA, greedy, 48 tokens"},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
