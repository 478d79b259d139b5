"""Benchmark: the edit recipe on the efficacy-retention front, in answer-margin units, on SEAL passages.

Every condition trains, per passage, one adapter from the frozen base on what the engine trains
on: the model's own self-edit of the passage (``implications``, sampled once per passage with the
engine's seed and shared by every condition, filtered), the passage's sentences under its title,
the passage, and (with replay) the base's own continuations of neutral prompts. Each adapter is
then measured four ways:

- **efficacy**: the contrastive answer margins (:mod:`seal.editor.efficacy`) on its passage's
  questions, corrected by a placebo: the same condition's adapter of the *previous* passage, which
  never saw this one. The engine's rule (:class:`seal.editor.efficacy.MarginRule`) judges it;
- **null pairs**: on passage ``i``'s questions, two adapters of earlier passages (disjoint pairs
  among the ``--null-window`` before it, 6: three pairs a passage) judged as candidate and
  placebo: a pass is a false pass. The same pairs judge the rule's variants (``null_false_pass``
  per rule), so the rule is chosen on null edits too;
- **retention in the same units**: the margin change against the base on the first question of
  each of the ``--window`` (20) passages after it, which it never saw (its mean per adapter, with
  a bootstrap CI over adapters: the one-sided non-inferiority figure is its lower bound), beside
  the retention set's accuracy (200 Wikidata facts) against the base;
- **KL to the base** on generic prompts (neutral text and chat-formatted requests, none of them
  used in training): mean next-token KL(base || adapter), nats.

With ``--xstest`` (the published CSV) each adapter's greedy replies to XSTest's 200 unsafe prompts
are judged too (:func:`seal.editor.probe_scoring.judge_openings`): the refusals it lost against
the base.

Conditions (``--conditions``; the engine's recipe is ``kl``): ``default``, the replay lines trained
on (the recipe before the anchor); ``no-replay``; ``kl``, where the replay lines and the base's
replies to a few chat and harmful requests anchor a KL penalty to the parent
(:mod:`seal.editor.kl_anchor`, :func:`seal.editor.replay.anchor_lines`, weight 1) instead of the
replay lines being trained on; ``kl-prompts``, the same with the chat requests alone (no replies,
no harmful ones: the anchor's first form); ``kl-4`` (weight 4); ``kl-safety`` (the harmful
requests' replies alone); ``epochs-4``; ``epochs-4+kl``; ``lr-1e-3``. Every
difference from the ``--reference`` condition (``default``) comes with a paired bootstrap 95% CI
over passages. Passages are split over processes with ``--shard S/N`` (each writes its own
``--out``); ``--summarize FILE...`` prints the one-line JSON summary of any set of such files::

    nice python bench/recipe_sweep.py --data ../shared/data/squad-knowledge-200.jsonl --limit 50 \\
        --shard 0/2 --out /tmp/sweep0.jsonl &
    nice python bench/recipe_sweep.py --data ../shared/data/squad-knowledge-200.jsonl --limit 50 \\
        --shard 1/2 --out /tmp/sweep1.jsonl
    python bench/recipe_sweep.py --summarize /tmp/sweep0.jsonl /tmp/sweep1.jsonl

The data file is only read.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from placebo_calibration import read_passages  # noqa: E402  (torch-free at import)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Condition:
    lr: float | None = None  # None: the engine's default
    epochs: int | None = None
    replay: bool = True
    kl: float = 0.0  # > 0: the replay lines anchor a KL penalty to the parent instead of being trained on
    anchors: str = "replies"  # with kl: "replies" (the engine's) or "prompts" (the chat requests without replies)
    style: str = "implications"  # SEAL's prompt format the model writes its self-edit in
    samples: int = 1  # sampled self-edits combined into one training set (their lines, the passage once)


CONDITIONS = {
    "default": Condition(),
    "no-replay": Condition(replay=False),
    "kl": Condition(kl=1.0),
    "kl-prompts": Condition(kl=1.0, anchors="prompts"),
    "kl-4": Condition(kl=4.0),
    "kl-safety": Condition(kl=1.0, anchors="safety"),
    "epochs-4": Condition(epochs=4),
    "epochs-4+kl": Condition(epochs=4, kl=1.0),
    "lr-1e-3": Condition(lr=1e-3),
    "kl-4-rewrite": Condition(kl=4.0, style="rewrite"),
    "kl-4-self-qa": Condition(kl=4.0, style="self-qa"),
    "kl-4-x3": Condition(kl=4.0, samples=3),
}

GENERIC_CHAT = ("Give me three tips for a good night's sleep.", "How do I boil an egg?",
                "Write a short poem about the sea.", "What should I pack for a day hike?",
                "Explain what a noun is.", "Suggest a name for a pet goldfish.",
                "How can I keep my kitchen clean?", "Tell me a fun fact about bees.")


# ---------------------------------------------------------------------------- one run


def generic_texts(tok) -> list[str]:
    from seal.editor.generation import chat_prompt
    from seal.editor.replay import NEUTRAL_PROMPTS, REPLAY_PROMPTS

    return list(NEUTRAL_PROMPTS[REPLAY_PROMPTS:]) + [chat_prompt(tok, q) for q in GENERIC_CHAT]


def base_logprobs(model, tok, texts: list[str]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [torch.log_softmax(model(input_ids=torch.tensor([tok(t, add_special_tokens=False)["input_ids"]]))
                                  .logits[0].float(), -1) for t in texts]


def kl_to_base(model, tok, texts: list[str], base_lp: list[Any]) -> float:
    """Mean next-token KL(base || model) over every position of ``texts`` (nats)."""
    import torch

    total, n = 0.0, 0
    with torch.no_grad():
        for text, bl in zip(texts, base_lp):
            ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
            ml = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            total += float((bl.exp() * (bl - ml)).sum(-1).sum())
            n += bl.shape[0]
    return total / n


def self_edit_sequences(model, tok, item: dict, seed: int, replay_pool: list[str], cond: Condition
                        ) -> tuple[list[str], list[str]]:
    """The training sequences of one condition and its replay lines (the engine's builders)."""
    from types import SimpleNamespace

    from seal.editor.replay import draw
    from seal.editor.self_edits import passage_self_edit

    trigger = SimpleNamespace(passage=item["context"], title=item["title"])
    text = "\n".join(written(model, tok, item, seed, cond.style, cond.samples))
    edit = passage_self_edit(text, trigger, style=cond.style, filter_lines=True, restate=True)
    replay = draw(replay_pool, len(edit.sequences), seed) if cond.replay else []
    return edit.sequences + ([] if cond.kl else replay), replay


def written(model, tok, item: dict, seed: int, style: str = "implications", samples: int = 1) -> list[str]:
    """The self-edits the model writes for ``item`` in ``style`` (``samples`` of them, one batched
    call), written once per passage and style and kept on ``item``."""
    from seal.editor.reflect import generate_self_edits
    from seal.editor.request import DEFAULT_TEMPERATURE

    cache = item.setdefault("_written", {})
    if len(cache.get(style, [])) < samples:
        cache[style] = generate_self_edits(model, tok, item["context"], item["title"], style=style, k=samples,
                                           temperature=DEFAULT_TEMPERATURE, seed=seed)
    return cache[style][:samples]


def run(args) -> None:
    import torch

    from seal.editor.attach import attached
    from seal.editor.base import default_cache_dir, load_base
    from seal.editor.efficacy import answer_margins, contrast_questions, unrelated_answers
    from seal.editor.generation import chat_prompt
    from seal.editor.probe_scoring import judge_openings, retention_outcomes
    from seal.editor.probes import load_xstest
    from seal.editor.replay import CHAT_ANCHORS, SAFETY_ANCHORS, anchor_lines, base_chat_replies, base_continuations
    from seal.editor.request import DEFAULT_EPOCHS, DEFAULT_LR
    from seal.editor.retention_set import load_retention_set
    from seal.editor.train import train_adapter

    torch.set_num_threads(args.threads)
    passages = read_passages(args.data, args.limit)
    n = len(passages)
    base = load_base(args.base, cache_dir=default_cache_dir(), device="cpu")
    model, tok = base.model, base.tokenizer
    qsets = [contrast_questions(p["questions"], p["context"], unrelated_answers()) for p in passages]
    items = load_retention_set()[:args.retention_items]
    generic = generic_texts(tok)
    base_lp = base_logprobs(model, tok, generic)
    pool = base_continuations(model, tok)
    requests = CHAT_ANCHORS + SAFETY_ANCHORS
    replies = [(chat_prompt(tok, q), r) for q, r in zip(requests, base_chat_replies(model, tok))]
    unsafe = load_xstest(args.xstest).unsafe if args.xstest else []

    def anchors(cond: Condition, replay: list[str]) -> list[str]:
        if cond.anchors == "prompts":
            return list(replay) + [chat_prompt(tok, q) for q in CHAT_ANCHORS]
        if cond.anchors == "safety":
            return replies[len(CHAT_ANCHORS):]
        return anchor_lines(replay, replies)

    def refused(m) -> list[int]:
        return [int(j) for j in np.flatnonzero(judge_openings(m, tok, unsafe).refused)] if unsafe else []
    base_m = [answer_margins(model, tok, q) for q in qsets]
    _, by = load_rows([args.out] if args.out.is_file() else [])
    done = {(name, i) for name, rows in by.items() for i in rows}  # a rerun goes on where one stopped
    out = open(args.out, "a", encoding="utf-8")
    out.write(json.dumps({"base": True, "model": base.name, "passages": n, "window": args.window,
                          "null_window": args.null_window,
                          "margins": [m for m, _ in base_m], "first": [f for _, f in base_m],
                          "retention": float(retention_outcomes(model, tok, items).correct.mean()),
                          "unsafe": len(unsafe), "refused": refused(model)}) + "\n")
    shard, shards = args.shard
    work = Path(args.work)
    for i in range(shard, n, shards):
        item = dict(passages[i])
        todo = [name for name in args.conditions if (name, i) not in done]
        if not todo:
            continue
        t0 = time.perf_counter()
        written(model, tok, item, i)  # the default's self-edit (the others are written on first use)
        reflect_s = time.perf_counter() - t0
        # itself and the --null-window passages after it, every question (the placebo and null pairs
        # of later passages read these); the first question of each of the --window after it (retention)
        full = [(i + d) % n for d in range(args.null_window + 1)]
        firsts = [(i + d) % n for d in range(args.null_window + 1, args.window + 1)]
        for name in todo:
            cond = CONDITIONS[name]
            seqs, replay = self_edit_sequences(model, tok, item, i, pool, cond)
            folder = work / f"{name}-{i}"
            rec = train_adapter(model, tok, seqs, out_dir=folder, seed=i, lr=cond.lr or DEFAULT_LR,
                                epochs=cond.epochs or DEFAULT_EPOCHS, base_name=base.name,
                                anchor_texts=anchors(cond, replay), kl_weight=cond.kl)
            t1 = time.perf_counter()
            row = {"condition": name, "passage": i, "steps": rec["steps"], "train_s": rec["seconds"],
                   "reflect_s": round(reflect_s, 2), "loss_final": rec["loss_final"], "diverged": rec["diverged"],
                   "n_sequences": len(seqs)}
            if rec["diverged"] is None:
                with attached(model, folder) as m:
                    asked = [q for j in full for q in qsets[j]] + [qsets[j][0] for j in firsts]
                    got = answer_margins(m, tok, asked)[0]
                    row["margins"], at = {}, 0
                    for j in full + firsts:
                        size = len(qsets[j]) if j in full else 1
                        row["margins"][str(j)], at = got[at:at + size], at + size
                    row["retention"] = float(retention_outcomes(m, tok, items).correct.mean())
                    row["kl_generic"] = kl_to_base(m, tok, generic, base_lp)
                    if unsafe:
                        row["refused"] = refused(m)
                shutil.rmtree(folder)  # the bench's own adapter, measured: 39 MB each on SmolLM2
            row["measure_s"] = round(time.perf_counter() - t1, 2)
            out.write(json.dumps(row) + "\n")
            out.flush()
            _log(f"passage {i} {name}: {rec['steps']} steps in {rec['seconds']:.1f} s, measured in "
                 f"{row['measure_s']:.1f} s, retention {row.get('retention')}, KL {row.get('kl_generic', 0):.4f}")


# ---------------------------------------------------------------------------- the summary


def _boot(values: list[float], reps: int = 4000, seed: int = 20261207) -> tuple[float, float, float]:
    xs = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = xs[rng.integers(0, len(xs), (reps, len(xs)))].mean(axis=1)
    return float(xs.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _ci(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    est, lo, hi = _boot(values)
    return {"estimate": round(est, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4), "n": len(values)}


RULES = {  # the engine's default rule first (mean >= 1 nats, z 2, floor -2, no sign-flip test)
    "the default": {},
    "until 2026-12-07: floor -1.5, sign-flip at 0.10": {"floor": -1.5, "alpha": 0.10},
    "mean >= 0.5": {"mean_min": 0.5},
    "mean >= 0.5, noise z 1.5": {"mean_min": 0.5, "noise_z": 1.5},
    "floor -1.5": {"floor": -1.5},
    "no floor": {"floor": float("-inf")},
    "sign-flip at 0.10": {"alpha": 0.10},
    "no noise bar": {"noise_z": 0.0},
}


def load_rows(files: list[Path]) -> tuple[dict, dict[str, dict[int, dict]]]:
    base, by = None, {}
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("base"):
                base = base or row
            else:
                by.setdefault(row["condition"], {})[row["passage"]] = row
    return base, by


def _judge(rule, cand, placebo, base, j):
    from seal.editor.efficacy import decide_margins

    return decide_margins(cand["margins"][str(j)], base["margins"][j], placebo["margins"][str(j)],
                          base["first"][j], rule)


def condition_rows(base: dict, rows: dict[int, dict], rules: dict) -> dict[int, dict]:
    """Per passage: the edit's verdict under each rule, its gain, retention figures and KL."""
    n = base["passages"]
    out = {}
    for i, row in rows.items():
        placebo = rows.get((i - 1) % n)
        if "margins" not in row or placebo is None or "margins" not in placebo:
            continue
        verdicts = {name: _judge(rule, row, placebo, base, i) for name, rule in rules.items()}
        d = verdicts[next(iter(rules))]
        others = [j for j in (int(k) for k in row["margins"]) if j != i]  # the first question of each
        ret_m = [row["margins"][str(j)][0] - base["margins"][j][0] for j in others]
        out[i] = {"passed": {k: v.passed for k, v in verdicts.items()}, "gain": d.mean, "n": d.n,
                  "retention_margin": sum(ret_m) / len(ret_m), "retention_drop": base["retention"] - row["retention"],
                  "kl_generic": row["kl_generic"], "train_s": row["train_s"],
                  "refusal_drop": ((len(base["refused"]) - len(row["refused"])) / base["unsafe"]
                                   if "refused" in row and base.get("unsafe") else None)}
    return out


def null_pairs(base: dict, rows: dict[int, dict], rules: dict, *, every: bool = False) -> dict[str, list[bool]]:
    """Each rule's verdicts on null pairs: on passage ``i``'s questions, two adapters that never saw
    it, as candidate and placebo. By default disjoint pairs of the ``null_window`` passages before
    ``i`` (each adapter once per passage: independent verdicts); ``every``: every ordered pair of
    adapters that scored all of ``i``'s questions (more verdicts, sharing adapters)."""
    n, window = base["passages"], base["null_window"]
    out = {name: [] for name in rules}
    for i in range(n):
        others = [j for j in rows if j != i] if every else [(i - d) % n for d in range(1, window + 1)]
        seen = [j for j in others if j in rows and "margins" in rows[j]
                and len(rows[j]["margins"].get(str(i), [])) == len(base["margins"][i])]
        pairs = itertools.permutations(seen, 2) if every else zip(seen[0::2], seen[1::2])
        for j, k in pairs:
            for name, rule in rules.items():
                d = _judge(rule, rows[j], rows[k], base, i)
                if d.n:
                    out[name].append(d.passed)
    return out


def summarize(files: list[Path], reference: str = "default") -> dict[str, Any]:
    from seal.editor.efficacy import MarginRule

    base, by = load_rows(files)
    rules = {name: replace(MarginRule(), **kw) for name, kw in RULES.items()}
    per = {name: condition_rows(base, rows, rules) for name, rows in by.items()}
    ref = per.get(reference, {})
    summary = {}
    for name, rows in per.items():
        nulls, every = null_pairs(base, by[name], rules), null_pairs(base, by[name], rules, every=True)
        usable = [r for r in rows.values() if r["n"]]
        shared = sorted(set(rows) & set(ref))
        doc = {
            "passages": len(rows),
            "pass_rate": {k: round(sum(r["passed"][k] for r in usable) / len(usable), 3) if usable else None
                          for k in rules},
            "null_false_pass": {k: f"{sum(v)}/{len(v)}" for k, v in nulls.items()},
            "null_false_pass_every_pair": {k: f"{sum(v)}/{len(v)}" for k, v in every.items()},
            "margin_gain": _ci([r["gain"] for r in usable]),
            "retention_margin_other_passages": _ci([r["retention_margin"] for r in rows.values()]),
            "retention_drop": _ci([r["retention_drop"] for r in rows.values()]),
            "kl_generic": _ci([r["kl_generic"] for r in rows.values()]),
            "refusal_drop": _ci([r["refusal_drop"] for r in rows.values() if r["refusal_drop"] is not None]),
            "train_s_median": float(np.median([r["train_s"] for r in rows.values()])) if rows else None,
        }
        if name != reference and shared:
            doc["vs_default"] = {
                key: _ci([rows[i][key] - ref[i][key] for i in shared if rows[i][key] is not None
                          and ref[i][key] is not None])
                for key in ("gain", "retention_margin", "retention_drop", "kl_generic", "refusal_drop")}
            doc["vs_default"]["passed"] = _ci([float(rows[i]["passed"][next(iter(rules))])
                                               - float(ref[i]["passed"][next(iter(rules))]) for i in shared])
        summary[name] = doc
    return {"bench": "recipe_sweep", "model": base["model"], "passages": base["passages"], "window": base["window"],
            "base_retention": base["retention"], "reference": reference,
            "base_refused": f"{len(base.get('refused', []))}/{base.get('unsafe', 0)}", "conditions": {k: asdict(CONDITIONS[k]) for k in by},
            "rules": {k: replace(MarginRule(), **kw).words() for k, kw in RULES.items()}, "results": summary}


def _fmt(ci: dict, digits: int = 3) -> str:
    if not ci.get("n"):
        return "–"
    bold = ci["ci_low"] > 0 or ci["ci_high"] < 0
    text = f"{ci['estimate']:+.{digits}f} [{ci['ci_low']:+.{digits}f}, {ci['ci_high']:+.{digits}f}]"
    return f"**{text}**" if bold else text


def _rate(fraction: str) -> str:
    hits, total = (int(x) for x in fraction.split("/"))
    return f"{hits}/{total} ({hits / total:.1%})" if total else "–"


def table(summary: dict) -> str:
    """The summary as two Markdown tables: the conditions, and the rule's variants on null pairs."""
    engine = next(iter(RULES))
    lines = ["| condition | passages | passed (engine rule) | margin gain vs placebo (nats) | margin change on 20 other "
             "passages' questions | retention drop (200 facts) | KL to base, generic prompts | XSTest unsafe refusals "
             "lost | median train s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary["results"].items():
        lines.append(f"| {name} | {r['passages']} | {r['pass_rate'][engine]:.2f} | {_fmt(r['margin_gain'], 2)} | "
                     f"{_fmt(r['retention_margin_other_passages'], 2)} | {_fmt(r['retention_drop'])} | "
                     f"{_fmt(r['kl_generic'])} | {_fmt(r.get('refusal_drop', {}))} | {r['train_s_median']:.1f} |")
    for name, r in summary["results"].items():
        if "vs_default" in r:
            v = r["vs_default"]
            lines += ["", f"| {name} − {summary['reference']} (paired) | Δ passed | Δ margin gain | Δ margin on other "
                      "passages | Δ retention drop | Δ KL to base | Δ refusals lost |", "|---|---|---|---|---|---|---|",
                      f"| {name} | {_fmt(v['passed'], 2)} | {_fmt(v['gain'], 2)} | {_fmt(v['retention_margin'], 2)} | "
                      f"{_fmt(v['retention_drop'])} | {_fmt(v['kl_generic'])} | {_fmt(v.get('refusal_drop', {}))} |"]
    names = list(summary["results"])
    lines += ["", "| rule | " + " | ".join(f"{n}: null false passes (disjoint · every pair)" for n in names) + " | " +
              " | ".join(f"{n}: edits passed" for n in names) + " |", "|---" * (1 + 2 * len(names)) + "|"]
    for rule in summary["rules"]:
        fp = []
        for n in names:
            r = summary["results"][n]
            fp.append(" · ".join(_rate(r[key][rule]) for key in ("null_false_pass", "null_false_pass_every_pair")
                                 if key in r))
        lines.append(f"| {rule} | " + " | ".join(fp) + " | " +
                     " | ".join(f"{summary['results'][n]['pass_rate'][rule]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--base", default=None, help="a base seal can load (default: the embedded SmolLM2)")
    ap.add_argument("--conditions", default="default,kl,epochs-4+kl")
    ap.add_argument("--window", type=int, default=20,
                    help="passages after each whose first question measures retention")
    ap.add_argument("--null-window", type=int, default=6,
                    help="passages after each scored on every question (placebos and null pairs of later passages)")
    ap.add_argument("--retention-items", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--work", default=None, help="where the adapters go (default: a temporary folder)")
    ap.add_argument("--xstest", type=Path, default=None,
                    help="the published XSTest CSV: judge each adapter's replies to its unsafe prompts")
    ap.add_argument("--summarize", type=Path, nargs="+")
    ap.add_argument("--reference", default="default", help="with --summarize: the condition the others are paired with")
    ap.add_argument("--table", action="store_true", help="with --summarize: Markdown tables, not JSON")
    args = ap.parse_args(argv)
    if args.summarize:
        summary = summarize(args.summarize, args.reference)
        print(table(summary) if args.table else json.dumps(summary))
        return 0
    if args.data is None or args.out is None:
        ap.error("--data and --out are needed to run (or --summarize FILE...)")
    args.conditions = [c for c in args.conditions.split(",") if c]
    if unknown := [c for c in args.conditions if c not in CONDITIONS]:
        ap.error(f"unknown condition(s) {unknown}; known: {sorted(CONDITIONS)}")
    a, b = args.shard.split("/")
    args.shard = (int(a), int(b))
    if args.work is None:
        import tempfile

        args.work = tempfile.mkdtemp(prefix="seal-sweep-")
    if not 1 <= args.null_window <= args.window < args.limit:
        ap.error("need 1 <= --null-window <= --window < --limit")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
