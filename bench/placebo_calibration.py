"""Benchmark: the efficacy margin rule's false-pass rate on placebo pairs, and what it accepts.

Per passage ``i`` of the data, one adapter is trained from the frozen base on that passage with
the recipe under test (the engine's training sequences: title-keyed lines, then the passage;
:func:`seal.editor.reflect.build_training_sequences`), and every adapter's contrastive answer
margins (:func:`seal.editor.efficacy.answer_margins`) are measured on every passage's questions,
with the base's as the parent's. Then, with the rule of :mod:`seal.editor.efficacy`:

- **null (placebo-against-placebo) pairs**: on passage ``i``'s questions, adapter ``j`` judged as
  the candidate against adapter ``k`` as its placebo, ``i``, ``j``, ``k`` all different: neither
  saw passage ``i``, so a pass is a false pass. Each passage's other adapters are paired off
  disjointly (``j``, ``k``), so each adapter appears once per passage;
- **edits**: adapter ``i`` on its own questions against a placebo ``k`` (the next passage's
  adapter): the share that passes is the rule's power on this recipe;
- **contradicting edits** (known-bad): the passage with every gold answer replaced by a
  distractor, judged on its questions: a pass is a bad edit let through.

Retention is measured too (accuracy of the retention set's first 200 items, first-token
log-likelihood, against the base), so the same run compares recipes (``--lr``, ``--epochs``,
``--recipes LR:EPOCHS,...``, ``--restate``, ``--replay``) on the efficacy-retention front. Prints one JSON line per recipe; ``--out`` receives one
JSON object per (recipe, passage)::

    nice python bench/placebo_calibration.py --data ../shared/data/squad-knowledge-200.jsonl \\
        --limit 20 --threads 1 > bench/results/placebo_calibration.json

``--tiny`` runs the tests' tiny random model on synthetic passages (seconds; many pairs).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- data

_NAMES = ("Orvella", "Tamsk", "Quilon", "Brevik", "Maundry", "Selwick", "Darrow", "Ilsen", "Penhallow", "Corvane",
          "Ashgrove", "Veltmar", "Rookby", "Famsted", "Gildermoor", "Hessary", "Juniper Vale", "Kestrow")
_THINGS = ("bridge", "observatory", "canal", "library", "foundry", "lighthouse", "market hall", "dam")
_MATERIALS = ("granite", "copper", "oak", "basalt", "limestone", "bronze", "slate", "cedar")
_MONTHS = ("January", "March", "May", "July", "September", "November", "April", "October")


def synthetic_passages(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Fictional passages, four facts and four questions each (deterministic).

        >>> p = synthetic_passages(2)
        >>> len(p), len(p[0]["questions"]), p[0]["questions"][0]["answer"] in p[0]["context"]
        (2, 4, True)
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        town, person = rng.choice(_NAMES), rng.choice(_NAMES)
        thing, material, month = rng.choice(_THINGS), rng.choice(_MATERIALS), rng.choice(_MONTHS)
        year = str(rng.randint(1700, 1990))
        title = f"The {thing} of {town}"
        context = (f"The {thing} of {town} was built from {material}. Its designer was {person}. "
                   f"It opened in {year}, and a festival is held there every {month}.")
        qa = [("What was the {t} of {w} built from?", material), ("Who designed the {t} of {w}?", person),
              ("In which year did the {t} of {w} open?", year), ("In which month is the festival at the {t} of {w}?",
                                                                  month)]
        out.append({"id": f"synthetic-{i}", "title": title, "context": context,
                    "questions": [{"question": q.format(t=thing, w=town), "answer": a} for q, a in qa]})
    return out


def read_passages(path: Path, limit: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit]


def contradicted(item: dict[str, Any], questions) -> str:
    """The passage with each gold answer replaced, everywhere and in one pass, by its question's
    first distractor that is no question's gold answer.

    Replacing one answer after another (as this bench did until 2026-12-07) wrote golds back:
    a question's first distractors are the passage's other answers, so swapping Q1's answer for
    Q2's and then Q2's for Q3's left Q2's answer in the text, and most "contradicting" edits
    still taught some of their gold answers.

        >>> from types import SimpleNamespace as Q
        >>> qs = [Q(options=("Ana", "Bo", "Cy"), n_gold=1), Q(options=("Bo", "Ana", "Dee"), n_gold=1)]
        >>> contradicted({"context": "Ana met Bo. Bo left."}, qs)
        'Cy met Dee. Dee left.'
    """
    import re

    golds = {o for q in questions for o in q.options[:q.n_gold]}
    swap = {}
    for q in questions:
        wrong = next((o for o in q.options[q.n_gold:] if o not in golds), None)
        for gold in q.options[:q.n_gold]:
            if wrong is not None:
                swap.setdefault(gold, wrong)
    if not swap:
        return item["context"]
    pattern = re.compile("|".join(re.escape(g) for g in sorted(swap, key=len, reverse=True)))
    return pattern.sub(lambda m: swap[m.group(0)], item["context"])


# ---------------------------------------------------------------------------- models


def load(args) -> tuple[Any, Any, str]:
    from seal.editor.base import default_cache_dir, load_base

    if args.tiny:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from tinymodel import build_tiny_model  # noqa: E402

        folder = build_tiny_model(Path(tempfile.mkdtemp(prefix="seal-tiny-")) / "tiny")
        base = load_base(str(folder), cache_dir=Path(tempfile.mkdtemp()), device="cpu")
    else:
        base = load_base(args.base, cache_dir=default_cache_dir(), device="cpu")
    return base.model, base.tokenizer, base.name


def train_one(model, tok, name: str, title: str, text: str, args, out: Path, seed: int) -> dict[str, Any]:
    from types import SimpleNamespace

    from seal.editor.replay import draw
    from seal.editor.self_edits import passage_self_edit
    from seal.editor.train import train_adapter

    # the engine's own builder, with no generated lines: the restatements, the passage, the replay
    edit = passage_self_edit("", SimpleNamespace(passage=text, title=title), style="rewrite", restate=args.restate)
    seqs = edit.sequences + (draw(args.replay_pool, len(edit.sequences), seed) if args.replay else [])
    return train_adapter(model, tok, seqs, out_dir=out, seed=seed, lr=args.lr, epochs=args.epochs, r=args.r,
                         alpha=2 * args.r, base_name=name)


def margins_on(model, tok, folder: Path | None, question_sets: list[list]) -> list[tuple[list[float], list[bool]]]:
    from seal.editor.attach import attached
    from seal.editor.efficacy import answer_margins

    with attached(model, folder) as m:
        return [answer_margins(m, tok, qs) for qs in question_sets]


def retention(model, tok, folder: Path | None, items) -> float:
    from seal.editor.attach import attached
    from seal.editor.probes import retention_outcomes

    with attached(model, folder) as m:
        return float(retention_outcomes(m, tok, items).correct.mean())


# ---------------------------------------------------------------------------- the run


def run(args) -> list[dict[str, Any]]:
    import torch

    from seal.editor.efficacy import contrast_questions, unrelated_answers
    from seal.editor.gates import margin_rule
    from seal.editor.retention_set import load_retention_set

    torch.set_num_threads(args.threads)
    passages = synthetic_passages(args.limit) if args.tiny or not args.data else read_passages(args.data, args.limit)
    model, tok, name = load(args)
    from seal.editor.replay import base_continuations

    args.replay_pool = base_continuations(model, tok) if args.replay else []
    rule = margin_rule({})
    qsets = [contrast_questions(p["questions"], p["context"], unrelated_answers()) for p in passages]
    items = load_retention_set()[:args.retention_items]
    work = Path(tempfile.mkdtemp(prefix="seal-placebo-"))
    base_m = margins_on(model, tok, None, qsets)
    base_ret = retention(model, tok, None, items)
    summaries = []
    for r, (lr, epochs) in enumerate(args.recipes):
        started = time.perf_counter()
        recipe = argparse.Namespace(**{**vars(args), "lr": lr, "epochs": epochs})
        edits, bad, train_s, retained = [], [], [], []
        for i, p in enumerate(passages):
            rec = train_one(model, tok, name, p["title"], p["context"], recipe, work / f"r{r}-edit{i}", seed=i)
            train_s.append(rec["seconds"])
            edits.append(margins_on(model, tok, work / f"r{r}-edit{i}", qsets))
            retained.append(retention(model, tok, work / f"r{r}-edit{i}", items))
            if args.bad and r == 0:
                train_one(model, tok, name, p["title"], contradicted(p, qsets[i]), recipe, work / f"bad{i}", seed=i)
                bad.append(margins_on(model, tok, work / f"bad{i}", [qsets[i]])[0])
            _log(f"recipe lr {lr:g} x {epochs} epochs, passage {i + 1}/{len(passages)}: trained in "
                 f"{rec['seconds']:.1f} s ({rec['steps']} steps), retention {retained[-1]:.3f}")
        if args.raw:
            with open(args.raw, "a", encoding="utf-8") as fh:  # every margin, to judge other rules offline
                fh.write(json.dumps({"lr": lr, "epochs": epochs, "base": base_m, "edits": edits, "bad": bad,
                                     "base_retention": base_ret, "retention": retained}) + "\n")
        summaries.append(summarize(passages, base_m, edits, bad, rule, base_ret, retained, train_s,
                                   time.perf_counter() - started, recipe))
        print(json.dumps(summaries[-1]), flush=True)
    return summaries


def _decide(i: int, cand, placebo, base_m, rule):
    from seal.editor.efficacy import decide_margins

    cm, _ = cand
    pm, _ = placebo
    bm, first = base_m[i]
    return decide_margins(cm, bm, pm, first, rule)


def summarize(passages, base_m, edits, bad, rule, base_ret, retained, train_s, seconds, args) -> dict[str, Any]:
    n = len(passages)
    null_pass, nulls, edit_rows = 0, 0, []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for j, k in zip(others[0::2], others[1::2]):
            d = _decide(i, edits[j][i], edits[k][i], base_m, rule)
            if d.n:
                nulls += 1
                null_pass += d.passed
        k = (i + 1) % n
        d = _decide(i, edits[i][i], edits[k][i], base_m, rule)
        edit_rows.append({"passage": passages[i].get("id", i), "passed": d.passed, "gain": d.mean, "n": d.n,
                          "saturated": d.saturated, "min": d.minimum, "p": d.p_value,
                          "retention_drop": base_ret - retained[i], "lr": args.lr, "epochs": args.epochs,
                          "bad_passed": (_decide(i, bad[i], edits[k][i], base_m, rule).passed if bad else None)})
        if args.out:
            with open(args.out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(edit_rows[-1]) + "\n")
    usable = [r for r in edit_rows if r["n"]]
    bad_rows = [r for r in edit_rows if r["bad_passed"] is not None and r["n"]]
    return {
        "bench": "placebo_calibration", "model": "tiny" if args.tiny else (args.base or "embedded SmolLM2-135M"),
        "passages": n, "recipe": {"lr": args.lr, "epochs": args.epochs, "r": args.r, "restate": args.restate,
                                      "replay": args.replay},
        "rule": rule.words(),
        "null_pairs": nulls, "null_false_passes": null_pass,
        "null_false_pass_rate": null_pass / nulls if nulls else None,
        "edits_judged": len(usable), "edits_passed": sum(r["passed"] for r in usable),
        "edit_pass_rate": sum(r["passed"] for r in usable) / len(usable) if usable else None,
        "median_edit_gain": statistics.median([r["gain"] for r in usable]) if usable else None,
        "bad_judged": len(bad_rows), "bad_passed": sum(r["bad_passed"] for r in bad_rows),
        "mean_retention_drop": statistics.fmean(r["retention_drop"] for r in edit_rows),
        "base_retention": base_ret, "median_train_s": statistics.median(train_s), "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="JSONL of passages with questions (SEAL's set); default: synthetic")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--base", default=None, help="a base seal can load (default: the embedded SmolLM2)")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny random model on synthetic passages")
    ap.add_argument("--recipes", default=None,
                    help="recipes to compare, LR:EPOCHS,... (default: the engine's); bad edits use the first")
    ap.add_argument("--r", type=int, default=None)
    ap.add_argument("--restate", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--replay", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--bad", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--retention-items", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--raw", type=Path, help="JSON lines: every model's margins on every passage, per recipe")
    args = ap.parse_args(argv)
    from seal.editor.request import DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_R, DEFAULT_REPLAY, DEFAULT_RESTATE

    args.recipes = [(float(a), int(b)) for a, b in (x.split(":") for x in args.recipes.split(","))] \
        if args.recipes else [(DEFAULT_LR, DEFAULT_EPOCHS)]
    args.r = DEFAULT_R if args.r is None else args.r
    args.restate = DEFAULT_RESTATE if args.restate is None else args.restate
    args.replay = DEFAULT_REPLAY if args.replay is None else args.replay
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
