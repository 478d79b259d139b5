"""Benchmark: the self-edit recipe, one setting changed at a time, on SEAL passages.

Every condition starts from the same frozen base with a fresh LoRA and the same seed per passage,
trains on the passage's training sequences (:func:`seal.editor.reflect.build_training_sequences`:
each self-edit line under the title, then the passage) and is measured three ways:

- **efficacy**: no-context QA on the passage's questions in the chat template, greedy, 48 new
  tokens, SQuAD-normalised containment and token F1 (as ``bench/knowledge.py``);
- **retention**: the retention probe set of the gates (Wikidata facts, first-token
  log-likelihood; a seeded stratified half, 200 items, to keep the sweep cheap), as the drop of
  accuracy against the base on the same items;
- **drift**: mean next-token JS divergence against the base on the 32 drift probes (nats).

The reference condition is the engine's recipe at 5 epochs (``implications`` at temperature 0.7,
lr 3e-4, r 32, alpha 64, all linear layers, batch 1); each other condition changes one thing:
lr, epochs, rank, targets, a forgetting mitigation (``replay``: the base's own continuations of
neutral prompts mixed into the training data, as many as there are self-edit lines, up to 8), the
self-edit style (``rewrite``, ``self-qa``), the temperature, the ``filter`` that drops generated
lines the passage does not support (:func:`seal.editor.reflect.filter_supported_lines`), and the
passage alone. Conditions named ``...@Nsteps`` train for exactly N optimizer steps (the sequences
cycled in a seeded order) instead of 5 epochs, so styles are also compared at equal steps.

Self-edits are generated once per (passage, style, temperature) and shared by every condition
that uses them. Passages are run one after the other with every condition on each, so a run
stopped early still compares every condition on the same passages. ``--out`` receives one JSON
object per (passage, condition) as it finishes; ``--summarize FILE`` prints the summary of a
(partial) file. The summary is one JSON line: per condition the means, and paired bootstrap 95%
CIs over passages of its difference from the base (``vs_base``) and from the reference
(``vs_ref``)::

    nice -n 19 python bench/recipe_sweep.py --data ../shared/data/squad-knowledge-200.jsonl \\
        --limit 20 --threads 1 --out /tmp/sweep.jsonl > /tmp/sweep.json

The data file is only read.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

EQUAL_STEPS = 24
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gate_calibration import NEUTRAL_PROMPTS  # noqa: E402  (bench/gate_calibration.py, torch-free at import)

REPLAY_PROMPTS = NEUTRAL_PROMPTS[:16]  # general text mixed into training against forgetting


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Recipe:
    """One condition: how the self-edit is written and how the adapter is trained."""

    style: str | None = "implications"  # None: the passage alone
    temperature: float = 0.7
    lr: float = 3e-4
    epochs: int = 5
    r: int = 32
    alpha: int = 64
    targets: str = "all-linear"
    replay: bool = False
    filter: bool = False
    steps: int | None = None  # exactly this many optimizer steps instead of ``epochs``


REF = Recipe()
CONDITIONS: dict[str, Recipe] = {
    "ref": REF,
    "lr_1e-3": replace(REF, lr=1e-3),
    "lr_1e-4": replace(REF, lr=1e-4),
    "epochs_10": replace(REF, epochs=10),
    "r_8": replace(REF, r=8, alpha=16),
    "targets_qv": replace(REF, targets="q_proj,v_proj"),
    "replay": replace(REF, replay=True),
    "filter": replace(REF, filter=True),
    "style_rewrite": replace(REF, style="rewrite"),
    "style_self-qa": replace(REF, style="self-qa"),
    "temperature_0.3": replace(REF, temperature=0.3),
    "passage_only": replace(REF, style=None),
    f"ref@{EQUAL_STEPS}steps": replace(REF, steps=EQUAL_STEPS),
    f"passage_only@{EQUAL_STEPS}steps": replace(REF, style=None, steps=EQUAL_STEPS),
    f"style_rewrite@{EQUAL_STEPS}steps": replace(REF, style="rewrite", steps=EQUAL_STEPS),
    f"style_self-qa@{EQUAL_STEPS}steps": replace(REF, style="self-qa", steps=EQUAL_STEPS),
}


# ---------------------------------------------------------------------------- data


def training_sequences(recipe: Recipe, item: dict, lines: list[str], replay_pool: list[str], seed: int) -> list[str]:
    """The sequences one condition trains on, in the engine's format (lines under the title, then the passage)."""
    from seal.editor.reflect import build_training_sequences, filter_supported_lines

    if recipe.filter:
        lines = filter_supported_lines(lines, item["context"])
    seqs = build_training_sequences(item["context"], item["title"], lines if recipe.style else [])
    if recipe.replay:
        rng = random.Random(seed)
        seqs += rng.sample(replay_pool, min(max(len(seqs) - 1, 1), 8, len(replay_pool)))
    if recipe.steps is not None:  # cycle a seeded order until exactly ``steps`` sequences (batch 1)
        rng = random.Random(seed)
        order = seqs[:]
        rng.shuffle(order)
        seqs = [order[i % len(order)] for i in range(recipe.steps)]
    return seqs


def replay_pool(model: Any, tok: Any) -> list[str]:
    """General text the base itself writes: its greedy continuations of neutral prompts."""
    from seal.editor.generation import generate_completions

    outs = generate_completions(model, tok, list(REPLAY_PROMPTS), max_new_tokens=48)
    return [f"{p} {o}".strip() for p, o in zip(REPLAY_PROMPTS, outs)]


class SelfEdits:
    """Self-edits generated once per (passage, style, temperature), kept in a JSONL file for reruns."""

    def __init__(self, path: Path | None):
        self.path, self.cache = path, {}
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                self.cache[(row["passage"], row["style"], row["temperature"])] = row["text"]

    def get(self, model: Any, tok: Any, item: dict, style: str, temperature: float, seed: int) -> str:
        from seal.editor.reflect import generate_self_edits

        key = (item["id"], style, temperature)
        if key not in self.cache:
            text = generate_self_edits(model, tok, item["context"], item["title"], style=style, k=1,
                                       temperature=temperature, max_new_tokens=256, seed=seed)[0]
            self.cache[key] = text
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"passage": item["id"], "style": style, "temperature": temperature,
                                         "text": text}) + "\n")
        return self.cache[key]


# ---------------------------------------------------------------------------- measuring


def measure(model: Any, tok: Any, item: dict, ctx: dict) -> dict:
    """Efficacy per question, retention per item and drift per probe of one model."""
    from seal.editor.evaluate import containment, next_token_logprobs, qa_scores, token_f1
    from seal.editor.probes import drift_divergences, retention_outcomes

    t = time.perf_counter()
    preds = qa_scores(model, tok, item["questions"], max_new_tokens=48, return_predictions=True)["predictions"]
    eval_s = time.perf_counter() - t
    ret = retention_outcomes(model, tok, ctx["retention"])
    dist = next_token_logprobs(model, tok, ctx["drift"], support=ctx["base_dist"].indices)
    _, js = drift_divergences(ctx["base_dist"].logprobs, dist.logprobs)
    return {"containment": [containment(p, q["answer"]) for p, q in zip(preds, item["questions"])],
            "f1": [token_f1(p, q["answer"]) for p, q in zip(preds, item["questions"])],
            "retention": ret.correct.astype(int).tolist(), "js_base": float(js.mean()),
            "predictions": preds, "seconds": {"qa": eval_s, "probes": time.perf_counter() - t - eval_s}}


def run_condition(name: str, recipe: Recipe, item: dict, ctx: dict, seed: int, work: Path) -> dict:
    from seal.editor.attach import attached
    from seal.editor.reflect import split_self_edit_lines
    from seal.editor.train import train_adapter

    model, tok = ctx["model"], ctx["tok"]
    lines: list[str] = []
    if recipe.style is not None:
        lines = split_self_edit_lines(ctx["self_edits"].get(model, tok, item, recipe.style, recipe.temperature, seed))
    seqs = training_sequences(recipe, item, lines, ctx["replay"], seed)
    targets = recipe.targets if recipe.targets == "all-linear" else recipe.targets.split(",")
    rec = train_adapter(model, tok, seqs, out_dir=work / name, seed=seed, lr=recipe.lr,
                        epochs=1 if recipe.steps is not None else recipe.epochs, r=recipe.r, alpha=recipe.alpha,
                        target_modules=targets, base_name=ctx["base_name"])
    if rec["diverged"] is not None:
        return {"condition": name, "diverged": rec["diverged"], "steps": rec["steps"]}
    with attached(model, work / name) as edited:
        m = measure(edited, tok, item, ctx)
    return {"condition": name, "n_lines": len(lines), "n_sequences": len(seqs), "steps": rec["steps"],
            "n_tokens": rec["n_tokens"], "loss_first": rec["loss_first"], "loss_final": rec["loss_final"],
            "train_seconds": rec["seconds"], **m}


# ---------------------------------------------------------------------------- summary


def _bootstrap(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def per_passage(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """condition -> passage -> {containment, f1, retention, js_base, steps}: means over the passage's items."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        if "retention" not in r:
            continue
        out.setdefault(r["condition"], {})[r["passage"]] = {
            "containment": float(np.mean(r["containment"])), "f1": float(np.mean(r["f1"])),
            "retention": float(np.mean(r["retention"])), "js_base": r["js_base"], "steps": r.get("steps", 0)}
    return out


def summarize(rows: list[dict], meta: dict | None = None) -> dict:
    """Per condition: means, and paired 95% CIs over passages against the base and the reference."""
    table = per_passage(rows)
    base = table.get("no_edit", {})
    ref = table.get("ref", {})
    conditions = {}
    for name, by_passage in table.items():
        shared = sorted(set(by_passage) & set(base))
        entry: dict[str, Any] = {"passages": len(by_passage)}
        for metric in ("containment", "f1", "retention", "js_base", "steps"):
            entry[metric] = round(float(np.mean([v[metric] for v in by_passage.values()])), 4)
        if name != "no_edit" and shared:
            entry["vs_base"] = {}
            for metric in ("containment", "f1", "retention"):
                d = np.array([by_passage[p][metric] - base[p][metric] for p in shared])
                entry["vs_base"][metric] = {"diff": round(float(d.mean()), 4), "ci95": _bootstrap(d)}
        both = sorted(set(by_passage) & set(ref))
        if name not in ("ref", "no_edit") and both:
            entry["vs_ref"] = {}
            for metric in ("containment", "f1", "retention", "js_base"):
                d = np.array([by_passage[p][metric] - ref[p][metric] for p in both])
                entry["vs_ref"][metric] = {"diff": round(float(d.mean()), 4), "ci95": _bootstrap(d)}
        conditions[name] = entry
    diverged = sorted({f"{r['condition']}@{r['passage']}" for r in rows if r.get("diverged")})
    return {"bench": "recipe_sweep", "conditions": conditions, "front": efficacy_retention_front(conditions),
            "diverged": diverged, "n_passages": len(base), **({"meta": meta} if meta else {})}


def efficacy_retention_front(conditions: dict) -> list[str]:
    """Conditions no other condition (no edit included, at 0, 0) beats on both F1 gain and retention change.

    >>> c = {"a": {"vs_base": {"f1": {"diff": .03}, "retention": {"diff": -.02}}},
    ...      "b": {"vs_base": {"f1": {"diff": .01}, "retention": {"diff": -.03}}},
    ...      "c": {"vs_base": {"f1": {"diff": .00}, "retention": {"diff": .00}}}}
    >>> efficacy_retention_front(c)
    ['a', 'c', 'no_edit']
    """
    points = {n: (e["vs_base"]["f1"]["diff"], e["vs_base"]["retention"]["diff"])
              for n, e in conditions.items() if "vs_base" in e}
    points["no_edit"] = (0.0, 0.0)

    def beaten(p: tuple[float, float]) -> bool:
        return any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points.values())

    return [n for n, p in points.items() if not beaten(p)]


def _cell(entry: dict, side: str, metric: str) -> str:
    part = entry.get(side, {}).get(metric)
    if part is None:
        return ""
    lo, hi = part["ci95"]
    mark = "**" if lo > 0 or hi < 0 else ""  # the interval excludes 0
    return f"{mark}{part['diff']:+.3f}{mark} [{lo:+.3f}, {hi:+.3f}]"


def markdown_table(summary: dict) -> str:
    """The README table: per condition, paired differences with 95% CIs (bold where the CI excludes 0)."""
    head = ("| condition | steps | containment | F1 | Δ containment vs no edit | Δ F1 vs no edit "
            "| Δ retention vs no edit | Δ F1 vs ref | Δ retention vs ref | JS vs base |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, e in summary["conditions"].items():
        name = f"**{name}** (front)" if name in summary.get("front", ()) else name
        rows.append(f"| {name} | {e['steps']:.0f} | {e['containment']:.3f} | {e['f1']:.3f} "
                    f"| {_cell(e, 'vs_base', 'containment')} | {_cell(e, 'vs_base', 'f1')} "
                    f"| {_cell(e, 'vs_base', 'retention')} | {_cell(e, 'vs_ref', 'f1')} "
                    f"| {_cell(e, 'vs_ref', 'retention')} | {e['js_base']:.3f} |")
    return "\n".join(rows)


def summarize_files(paths: list[Path]) -> dict:
    lines = [json.loads(x) for p in paths for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    meta = next((x for x in lines if x.get("meta")), None)
    return summarize([x for x in lines if not x.get("meta")], meta)


# ---------------------------------------------------------------------------- main


def finished(out: Path | None) -> set[tuple[str, str]]:
    """(passage, condition) pairs the --out file already holds: a rerun resumes, and a second process
    on the same file (``--reverse``) takes the other end of the list, each skipping what the other did."""
    if out is None or not out.is_file():
        return set()
    pairs = set()
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # the other process's line, half written
            continue
        pairs.add((row.get("passage"), row.get("condition")))
    return pairs


def setup(args) -> dict:
    import torch

    from seal.editor.base import default_cache_dir, load_base
    from seal.editor.evaluate import load_drift_probes, next_token_logprobs
    from seal.editor.probes import load_retention_set

    torch.set_num_threads(args.threads)
    base = load_base(args.base, cache_dir=default_cache_dir(), device="cpu")
    retention = load_retention_set()[::2][: args.retention_items]
    drift = load_drift_probes()
    ctx = {"model": base.model, "tok": base.tokenizer, "base_name": base.name, "retention": retention,
           "drift": drift, "base_dist": next_token_logprobs(base.model, base.tokenizer, drift)}
    ctx["replay"] = replay_pool(base.model, base.tokenizer)
    ctx["self_edits"] = SelfEdits(args.out.with_suffix(".self_edits.jsonl") if args.out else None)
    return ctx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="squad-knowledge JSONL to read")
    parser.add_argument("--limit", type=int, default=20, help="first N passages (default 20)")
    parser.add_argument("--conditions", default=None, help="comma-separated subset of: " + ", ".join(CONDITIONS))
    parser.add_argument("--base", default=None, help="base model spec (default: the embedded SmolLM2-135M)")
    parser.add_argument("--retention-items", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="run only passages whose index is I modulo N (one process per core; cat the --out files)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="append one JSON object per (passage, condition)")
    parser.add_argument("--reverse", action="store_true",
                        help="take the passages last first (a second process on the same --out meets the first halfway)")
    parser.add_argument("--summarize", type=Path, default=None, nargs="+", metavar="FILE",
                        help="summarize --out file(s) (the shards of one run) and exit")
    parser.add_argument("--table", action="store_true", help="with --summarize: a markdown table instead of JSON")
    args = parser.parse_args(argv)
    if args.summarize is not None:
        summary = summarize_files(args.summarize)
        print(markdown_table(summary) if args.table else json.dumps(summary))
        return 0
    if args.data is None:
        parser.error("--data is required")
    names = list(CONDITIONS) if args.conditions is None else args.conditions.split(",")
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        parser.error(f"unknown condition(s) {unknown}")
    passages = [json.loads(x) for x in args.data.read_text(encoding="utf-8").splitlines() if x.strip()][: args.limit]
    shard, shards = (int(x) for x in args.shard.split("/"))
    passages = [p for i, p in enumerate(passages) if i % shards == shard]
    ctx = setup(args)
    if args.reverse:
        passages.reverse()
    if args.out is None or not args.out.is_file():
        meta = {"meta": True, "conditions": {n: asdict(CONDITIONS[n]) for n in names}, "threads": args.threads,
                "retention_items": len(ctx["retention"]), "seed": args.seed, "data": str(args.data)}
        if args.out is not None:
            args.out.write_text(json.dumps(meta) + "\n")
    rows: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seal-sweep-") as tmp:
        for pi, item in enumerate(passages):
            for name in ["no_edit"] + names:
                if (item["id"], name) in finished(args.out):
                    continue
                t = time.perf_counter()
                if name == "no_edit":
                    row = {"condition": name, **measure(ctx["model"], ctx["tok"], item, ctx)}
                else:
                    row = run_condition(name, CONDITIONS[name], item, ctx, args.seed, Path(tmp))
                row.update({"passage": item["id"], "passage_index": pi, "seconds_total": time.perf_counter() - t})
                rows.append(row)
                if args.out is not None:
                    with open(args.out, "ab", buffering=0) as fh:  # one write(2) in append mode: whole lines
                        fh.write((json.dumps(row) + "\n").encode("utf-8"))
                _log(f"[sweep] {pi + 1}/{len(passages)} {name}: F1 {np.mean(row.get('f1', [math.nan])):.3f} "
                     f"retention {np.mean(row.get('retention', [math.nan])):.3f} steps {row.get('steps', 0)} "
                     f"({row['seconds_total']:.0f} s, {time.perf_counter() - started:.0f} s so far)")
    print(json.dumps(summarize_files([args.out]) if args.out is not None else summarize(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
