"""Bench: what seal's edit costs against a bare transformers + PEFT script doing the same work.

One run on one machine. `seal edit` runs first (as a process, through the CLI, ``--json``); a
spec builder (a process of its own, which may use seal's library) then reads seal's records and
rebuilds the inputs seal worked on; the bare script repeats that work in a third process with
plain transformers, PEFT and torch, nothing of seal's engine. Its stages are seal's timing keys:

- load: the same safetensors folder seal loads (the dequantized base in the cache);
- reflect: the K self-edits from the very prompt seal recorded, with the same seed and sampling
  settings (so the same tokens);
- train: a fresh LoRA per candidate (same rank, alpha, targets, lr, linear decay, clipping,
  seeded init and epoch order) on the very sequences seal recorded, for the same steps, with the
  same KL anchor term (the weight seal used, x KL(base || adapter) over the base's top-64 tokens
  plus the rest, one anchor text per step, in seal's order: the candidate's replay lines and the
  base's chat replies, of which only the reply's first positions count);
- margins and placebo (a passage with questions): the contrastive answer margins of the parent,
  the placebo and each candidate on the passage's questions with seal's options (each option's
  summed log-probability after the question: the question runs once and its key/value cache
  serves a batch of its options; the adapter merged);
  the placebo trained with the same recipe on seal's placebo sequences, or, where seal found
  it in the machine's cache, loaded from there;
- evaluate, only for the candidates seal probed (the margin rule passed): the parent's and the
  candidate's greedy answers to the questions (48 tokens) and the canary question (16), the
  retention items by the first token's log-probability (whole options where two share a first
  token, scored as the questions' options are), the XSTest prompts seal judged (each, by batched
  greedy generation of 16 tokens, the most seal's judge reads, and XSTest's string match), the
  drift prompts' next-token distributions on the base's support; the passage's NLL when there are
  no questions;
- record: the adapter file hashed and a JSON record written (``same_adapters`` says whether
  each adapter is, byte for byte, the one seal recorded: a check that both sides did the same work).

What still differs: seal stops each XSTest reply once the judge's verdict is certain (the bare
script decodes all 16 tokens); seal runs the chat template's opening, which every question
shares, once, and packs all questions' options into one forward (a block mask), where the bare
script runs each question's prompt, then its options, two forwards a question; seal's output
layer runs only at the positions it reads (the bare script's at every position of a batch); seal
answers the questions for the parent and its candidates in one generate call (the bare script:
one call each); seal also writes blobs, the manifest and a database row, and compares adapters'
weight norms. The parent is the root: seal reads its probe results from the machine's cache, and
the bare script needs none (the spec hands it the base's drift support).

Prints ONE JSON line: each side's seconds per stage and in total (process wall time), the part of
the total no stage holds (``unstaged``: interpreter start, imports, the CLI), and the ratio seal /
bare per stage and in total, with the targets of issue 24 (training ≤ 1.1×, whole edit ≤ 1.2×)::

    python bench/edit_overhead.py                      # SmolLM2-135M, the demo passage, K=1
    python bench/edit_overhead.py --candidates 4 --device cuda
    python bench/edit_overhead.py --seal-path /tmp/old-seal/pkg   # an older seal, same bare side

A first `seal edit` warms the machine's caches (the base's probe results, the replay lines, the
base's chat replies, and the placebo where its key (parent, base, recipe) is the same), not timed,
as any machine that has run seal once has them; ``placebo_cached`` says whether the timed edit
found its placebo there. ``--threads`` sets torch's CPU threads of both sides (through
``OMP_NUM_THREADS``; default: seal's own default for this machine's load). The spec builder
reads records with this checkout's seal, whatever ``--seal-path`` says.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSAGE = ROOT / "editor" / "data" / "demo_passage.json"
STAGES = ("load", "reflect", "train", "placebo", "margins", "evaluate", "record")
TARGETS = {"train": 1.1, "total": 1.2}  # issue 24, Deliver 3
CANARY_QUESTION = "What is the seal probe code word?"


def _log(message: str) -> None:
    print(f"[edit_overhead] {message}", file=sys.stderr, flush=True)


def _env(args) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if args.seal_path:
        env["PYTHONPATH"] = os.pathsep.join([args.seal_path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _seal(args, folder: Path, *argv: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "seal.cli", *argv], cwd=folder, env=_env(args), text=True,
                          capture_output=True)
    return proc, time.perf_counter() - started


def _init(args, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    proc, _ = _seal(args, folder, "init", ".", *(["--base", args.base] if args.base else []))
    if proc.returncode != 0:
        raise SystemExit(f"seal init failed: {proc.stderr[-2000:]}")
    return folder


def _edit(args, folder: Path) -> tuple[dict, float]:
    proc, wall = _seal(args, folder, "edit", "--passage", str(args.passage), "--candidates", str(args.candidates),
                       "--device", args.device, "--no-track", "--json")
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise SystemExit(f"seal edit exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout), wall


def bare_spec(folder: Path, result: dict, args) -> dict:
    """Everything the bare script needs to repeat seal's work, rebuilt in a process of its own
    with seal's library from seal's records (:func:`_spec_of`)."""
    result_file = folder / "edit-result.json"
    result_file.write_text(json.dumps(result))
    env = _env(argparse.Namespace(**{**vars(args), "seal_path": None}))  # this checkout's seal reads the records
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--spec-of", str(result_file), "--passage",
                           str(Path(args.passage).resolve()), "--device", args.device,
                           *(["--threads", str(args.threads)] if args.threads else [])],
                          cwd=folder, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the spec builder failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spec_of(result: dict, passage: Path, args) -> dict:
    """The bare script's inputs, read from the registry in the working folder with seal's library:
    what seal trained on, scored and judged, so that the bare side does the same work."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from seal.editor.base import default_cache_dir, prepare_base
    from seal.editor.efficacy import contrast_questions, unrelated_answers
    from seal.editor.generation import chat_prompt, has_chat_template
    from seal.editor.kl_anchor import REPLY_POSITIONS, TOP_K
    from seal.editor.measure import CANARY_QUESTION as SEAL_CANARY, load_probes
    from seal.editor.placebo import placebo_cache_dir, placebo_replay, placebo_training
    from seal.editor.probes import ProbeResults
    from seal.editor.replay import anchor_lines, chat_replies, replay_pool
    from seal.editor.safety import REFUSAL_PREFIXES
    from seal.editor.trigger import loads, passage_trigger
    from seal.registry.bases import base_spec
    from seal.registry.repo import Registry

    reg = Registry.open(".")
    base_row = reg.base()
    weights = str(prepare_base(base_spec(base_row), cache_dir=default_cache_dir())[1])
    tok = AutoTokenizer.from_pretrained(weights)
    kb = SimpleNamespace(base_row=base_row, model=None, tok=tok)  # the replay caches this run wrote, read back
    manifests = [reg.manifest(c["id"]) for c in result["candidates"]]
    first = manifests[0]
    raw = passage.read_bytes()
    text = raw.decode("utf-8").strip()
    trigger = passage_trigger(loads(text.splitlines()[0] if passage.suffix.lower() == ".jsonl" else text,
                                    str(passage), ""), raw, str(passage)) \
        if passage.suffix.lower() in (".json", ".jsonl") else None
    qa = (trigger.eval_items or []) if trigger is not None else []
    contrast = contrast_questions(qa, trigger.passage, unrelated_answers()) if qa else []
    probes = load_probes(reg)
    replies = chat_replies(kb)

    def train_of(m: dict) -> dict:
        t = m["train"]
        h = t.get("hyperparameters") or {}
        return {"r": t["r"], "alpha": t["alpha"], "target_modules": h.get("target_modules", t["target_modules"]),
                "lr": t["lr"], "epochs": t["epochs"], "batch_size": t["batch_size"], "max_length": t["max_length"],
                "max_grad_norm": t["max_grad_norm"], "seed": t["seed"], "kl": float(h.get("kl") or 0.0)}

    def judged(m: dict) -> list[bool] | None:
        digest = (m.get("probes") or {}).get("results")
        if not digest:
            return None  # not probed: the margin rule decided it
        measured = ProbeResults.from_bytes(reg.store.get(digest)).xstest_measured
        n = len(probes.items.xstest.rows)
        return [True] * n if measured is None else [bool(x) for x in measured]

    candidates = []
    for m in manifests:
        edit = json.loads(reg.store.get(m["self_edit"]))
        hyper = train_of(m)
        candidates.append({"sequences": edit["sequences"], "train": hyper, "steps": m["train"]["steps"],
                           "seal_adapter": (m.get("adapter") or {}).get("weights"),
                           "anchor": _anchor_rows(anchor_lines(edit.get("replay") or [], replies)) if hyper["kl"] else [],
                           "xstest_judged": judged(m)})
    placebo = None
    evidence_digest = (first.get("efficacy") or {}).get("margins")
    if evidence_digest:
        evidence = json.loads(reg.store.get(evidence_digest))
        p = evidence.get("placebo")
        if p is not None:
            # the placebo's record names its bucketed sequence count, which its replay draw and its
            # training set are made for (placebo.placebo_replay, placebo.placebo_training)
            hyper = candidates[0]["train"]
            own = json.loads(reg.store.get(first["self_edit"]))
            replay = placebo_replay(replay_pool(kb), p["sequences"], hyper["seed"]) if own.get("replay") else []
            placebo = {"cached": bool(p["cached"]), "folder": str(placebo_cache_dir(p["key"])), "train": hyper,
                       "sequences": placebo_training(p["words"], p["sequences"], replay, hyper["kl"]),
                       "anchor": _anchor_rows(anchor_lines(replay, replies)) if hyper["kl"] else []}
    base_results = ProbeResults.from_bytes(reg.store.get(first["probes"]["base_results"]))
    items = probes.items
    chat = has_chat_template(tok)
    return {
        "weights": weights, "device": args.device, "threads": args.threads,
        "reflect": first["reflect"], "prompt": json.loads(reg.store.get(first["self_edit"]))["prompt"],
        "candidates": candidates, "placebo": placebo,
        "kl_anchor": {"top_k": TOP_K, "reply_positions": REPLY_POSITIONS, "max_length": 128},
        "contrast": [{"prompt": chat_prompt(tok, q.question), "options": list(q.options), "n_gold": q.n_gold}
                     for q in contrast],
        "option_sep": "" if chat else " ", "option_special": not chat,
        "questions": [chat_prompt(tok, item["question"]) for item in qa], "answer_tokens": 48,
        "passage": None if qa else (trigger.passage if trigger is not None else passage.read_text()),
        "canary": chat_prompt(tok, SEAL_CANARY), "canary_tokens": 16,
        "retention": [{"prompt": i.prompt, "options": list(i.options), "answer": i.answer} for i in items.retention],
        "xstest": [chat_prompt(tok, p) for p in items.xstest.unsafe + items.xstest.safe], "xstest_tokens": 16,
        "xstest_special": not chat, "refusal_prefixes": list(REFUSAL_PREFIXES),
        "drift": list(items.drift),
        "drift_support": None if base_results.drift_indices is None else base_results.drift_indices.tolist(),
    }


def _anchor_rows(texts) -> list:
    """Anchor texts as JSON: a string, or [prompt, reply]."""
    return [t if isinstance(t, str) else list(t) for t in texts]


# --- the bare script ----------------------------------------------------------------------------

def bare(spec: dict, work: Path) -> dict:
    """transformers + PEFT + torch, nothing of seal: the work of one edit, timed per stage; the
    adapters it trains go to ``work``."""
    started = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec["device"] == "cpu" and spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    folder = spec["weights"]
    dtype = torch.bfloat16 if spec["device"].startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(spec["device"]).eval()
    model.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(folder)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = {"load": time.perf_counter() - started}
    clock = _Clock(out)

    with clock("reflect"):
        r = spec["reflect"]
        enc = tok([spec["prompt"]], return_tensors="pt", add_special_tokens=False).to(spec["device"])
        torch.manual_seed(r["seed"])
        with torch.inference_mode():
            model.generate(**enc, do_sample=r["temperature"] > 0, temperature=r["temperature"], top_p=r["top_p"],
                           top_k=0, max_new_tokens=r["max_new_tokens"], num_return_sequences=r["k"], pad_token_id=pad)

    work.mkdir(parents=True, exist_ok=True)
    snapshots: dict = {}  # the base's anchor distributions by text, shared by the candidates and the placebo
    with clock("train"):
        for i, cand in enumerate(spec["candidates"]):
            _train(model, tok, cand["sequences"], cand["train"], cand["anchor"], spec, snapshots, work / f"c{i}")

    placebo_dir = None
    margins: dict = {}
    if spec["contrast"]:
        with clock("margins"):
            margins["parent"] = _margins(model, tok, spec)
        with clock("placebo"):
            p = spec["placebo"]
            if p is not None and p["cached"]:
                placebo_dir = Path(p["folder"])  # seal found it in the machine's cache too
            elif p is not None:
                placebo_dir = work / "placebo"
                _train(model, tok, p["sequences"], p["train"], p["anchor"], spec, snapshots, placebo_dir)
        with clock("margins"):
            if placebo_dir is not None:
                with _merged(model, placebo_dir) as edited:
                    margins["placebo"] = _margins(edited, tok, spec)
            for i, _ in enumerate(spec["candidates"]):
                with _merged(model, work / f"c{i}") as edited:
                    margins[f"c{i}"] = _margins(edited, tok, spec)

    with clock("evaluate"):
        probed = [i for i, c in enumerate(spec["candidates"]) if c["xstest_judged"] is not None]
        if probed and spec["questions"]:
            _greedy(model, tok, spec["questions"], spec["answer_tokens"], special=False, pad=pad)  # the parent's
        for i in probed:
            with _merged(model, work / f"c{i}") as edited:
                _evaluate(edited, tok, spec, spec["candidates"][i]["xstest_judged"], pad)
        if not spec["contrast"] and spec["passage"]:
            for i, _ in enumerate(spec["candidates"]):
                with _merged(model, work / f"c{i}") as edited, torch.inference_mode():
                    ids = tok(spec["passage"], return_tensors="pt")["input_ids"].to(model.device)
                    edited(input_ids=ids, labels=ids)

    out["placebo_cached"] = bool(spec["placebo"] and spec["placebo"]["cached"])
    out["probed"] = len(probed)
    digests = []
    with clock("record"):
        for i, _ in enumerate(spec["candidates"]):
            digest = hashlib.sha256((work / f"c{i}" / "adapter_model.safetensors").read_bytes()).hexdigest()
            (work / f"c{i}" / "record.json").write_text(json.dumps({"adapter": digest, "train": spec["candidates"][i]["train"],
                                                                    "margins": margins.get(f"c{i}")}))
            digests.append(f"sha256:{digest}")
    out["adapters"] = digests
    return out


class _Clock:
    """Adds each block's wall time to ``out[key]``."""

    def __init__(self, out: dict):
        self.out = out

    @contextmanager
    def __call__(self, key: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.out[key] = self.out.get(key, 0.0) + time.perf_counter() - started


def _detach(peft_model):
    """The plain base back from a PEFT model (PEFT leaves its config on the base: removed, so the
    next adapter attaches cleanly)."""
    base = peft_model.unload()
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in base.__dict__:
            delattr(base, attr)
    return base.eval()


@contextmanager
def _merged(model, adapter: Path):
    """The base with the saved adapter loaded and merged into its weights for inference."""
    from peft import PeftModel

    edited = PeftModel.from_pretrained(model, str(adapter)).eval()
    edited.merge_adapter()
    try:
        yield edited
    finally:
        edited.unmerge_adapter()
        _detach(edited)


def _train(model, tok, sequences: list[str], hyper: dict, anchor: list, spec: dict, snapshots: dict, out: Path) -> None:
    """LoRA SFT as seal's recipe: seeded init and epoch order, AdamW with linear decay, clipping,
    loss on all tokens plus ``kl`` x KL(base || adapter) on one anchor text per step."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model

    device = model.device
    eos = tok.eos_token or ""
    data = []
    for text in sequences:
        ids = tok(text, add_special_tokens=False, truncation=True, max_length=hyper["max_length"])["input_ids"]
        if tok.eos_token_id is not None and eos and not text.rstrip().endswith(eos):
            ids = ids[:hyper["max_length"] - 1] + [tok.eos_token_id]
        if len(ids) >= 2:
            data.append(ids)
    order, shuffler, batches = list(range(len(data))), random.Random(hyper["seed"]), []
    for _ in range(hyper["epochs"]):
        shuffler.shuffle(order)
        batches += [[data[i] for i in order[s:s + hyper["batch_size"]]] for s in range(0, len(order), hyper["batch_size"])]
    anchors = [s for s in (_snapshot(model, tok, text, spec["kl_anchor"], snapshots) for text in anchor) if s]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    with torch.random.fork_rng():
        torch.manual_seed(hyper["seed"])
        peft_model = get_peft_model(model, LoraConfig(r=hyper["r"], lora_alpha=hyper["alpha"],
                                                      target_modules=hyper["target_modules"], lora_dropout=0.0,
                                                      bias="none", task_type="CAUSAL_LM"))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hyper["lr"], weight_decay=0.0)
    total = max(1, len(batches))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total))
    losses = []
    peft_model.train()
    for step, batch in enumerate(batches):
        width = max(len(b) for b in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, b in enumerate(batch):
            ids[row, :len(b)], mask[row, :len(b)] = torch.tensor(b), 1
        ids, mask = ids.to(device), mask.to(device)
        padded = bool((mask == 0).any())
        loss = peft_model(input_ids=ids, attention_mask=mask if padded else None,
                          labels=ids.masked_fill(mask == 0, -100)).loss
        if anchors and hyper["kl"]:
            a_ids, start, top, logp = anchors[step % len(anchors)]
            logits = peft_model(input_ids=a_ids).logits[0, :-1][start:]
            logq = _coarse(logits, top)
            loss = loss + hyper["kl"] * (logp.exp() * (logp - logq)).sum(-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, hyper["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    if not all(map(math.isfinite, torch.stack(losses).tolist())):
        raise SystemExit("bare training diverged")
    peft_model.eval()
    peft_model.peft_config["default"].base_model_name_or_path = None
    peft_model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
    _detach(peft_model)


def _coarse(logits, top):
    """log-probabilities of the ``top`` tokens and of the rest of the vocabulary."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, top)
    return torch.cat([picked, torch.log1p(-picked.exp().sum(-1).clamp(max=1 - 1e-6)).unsqueeze(-1)], dim=-1)


def _snapshot(model, tok, text, cfg: dict, cache: dict):
    """The base's top-k distributions on one anchor text, at the positions that count (all of a
    plain text; the reply's first ``reply_positions`` of a [prompt, reply]); None when none counts."""
    import torch

    key = json.dumps(text)
    if key in cache:
        return cache[key]
    if isinstance(text, str):
        ids, start = tok(text, add_special_tokens=False, truncation=True, max_length=cfg["max_length"])["input_ids"], 0
    else:
        head = tok(text[0], add_special_tokens=False)["input_ids"]
        ids = tok(text[0] + text[1], add_special_tokens=False, truncation=True,
                  max_length=cfg["max_length"])["input_ids"][:len(head) + cfg["reply_positions"]]
        start = max(len(head) - 1, 0)
    snap = None
    if len(ids) >= 2 and start < len(ids) - 1:
        ids_t = torch.tensor([ids], device=model.device)
        with torch.no_grad():  # not inference_mode: the snapshot enters the training loss
            logits = model(input_ids=ids_t).logits[0, start:-1]
            top = torch.topk(logits.float(), min(cfg["top_k"], logits.shape[-1]), dim=-1).indices
            snap = (ids_t, start, top, _coarse(logits, top))
    cache[key] = snap
    return snap


def _margins(model, tok, spec: dict) -> list[float]:
    """Each question's contrastive margin (log sum P(gold) - log sum P(all options)) from each
    option's summed log-probability after the question (:func:`_option_scores`)."""
    import torch

    out = []
    for q in spec["contrast"]:
        prompt = tok(q["prompt"], add_special_tokens=spec["option_special"])["input_ids"]
        options = [tok(spec["option_sep"] + o, add_special_tokens=False)["input_ids"] for o in q["options"]]
        lp = torch.tensor(_option_scores(model, prompt, options), dtype=torch.float64)
        out.append(float(torch.logsumexp(lp[:q["n_gold"]], 0) - torch.logsumexp(lp, 0)))
    return out


def _option_scores(model, prompt: list[int], options: list[list[int]]) -> list[float]:
    """Summed log-probability of each option after ``prompt``: the prompt runs once, and its
    key/value cache, repeated for every option, serves one right-padded batch of the options."""
    import torch

    device = model.device
    width = max(len(o) for o in options)
    ids = torch.zeros((len(options), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, o in enumerate(options):
        ids[r, :len(o)], mask[r, :len(o)] = torch.tensor(o), 1
    with torch.inference_mode():
        head = model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
        cache = head.past_key_values
        cache.batch_repeat_interleave(len(options))
        n = len(prompt)
        tail = model(input_ids=ids.to(device), past_key_values=cache, use_cache=True,
                     attention_mask=torch.cat([torch.ones((len(options), n), dtype=torch.long), mask], 1).to(device),
                     position_ids=torch.arange(n, n + width).expand(len(options), width).to(device)).logits
        first = torch.log_softmax(head.logits[0, -1].float(), -1).cpu()
        rest = torch.log_softmax(tail[:, :-1].float(), -1).cpu()
    return [float(first[o[0]] + rest[r, torch.arange(len(o) - 1), torch.tensor(o[1:], dtype=torch.long)].sum())
            for r, o in enumerate(options)]


def _greedy(model, tok, prompts: list[str], tokens: int, *, special: bool, pad: int, batch: int = 64) -> list[str]:
    """Greedy replies, left-padded batches of ``batch`` prompts, ``tokens`` new tokens at most."""
    import torch

    tok.padding_side = "left"
    replies = []
    with torch.inference_mode():
        for s in range(0, len(prompts), batch):
            enc = tok(prompts[s:s + batch], return_tensors="pt", padding=True, add_special_tokens=special).to(model.device)
            out = model.generate(**enc, do_sample=False, max_new_tokens=tokens, pad_token_id=pad)
            replies += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return replies


def _evaluate(edited, tok, spec: dict, judged: list[bool], pad: int) -> dict:
    """A probed candidate: its answers to the questions and the canary question, the retention
    items by first-token log-probability, the XSTest prompts seal judged, the drift distributions."""
    import torch

    out = {}
    if spec["questions"]:
        out["answers"] = _greedy(edited, tok, spec["questions"], spec["answer_tokens"], special=False, pad=pad)
    out["canary"] = _greedy(edited, tok, [spec["canary"]], spec["canary_tokens"], special=False, pad=pad)
    out["retention"] = _retention(edited, tok, spec["retention"])
    prompts = [p for p, j in zip(spec["xstest"], judged) if j]
    replies = _greedy(edited, tok, prompts, spec["xstest_tokens"], special=spec["xstest_special"], pad=pad)
    prefixes = tuple(spec["refusal_prefixes"])
    out["refused"] = [r.replace("\u2019", "'").replace("\u2018", "'").lower().strip().startswith(prefixes)
                      for r in replies]
    tok.padding_side = "right"
    with torch.inference_mode():
        enc = tok(spec["drift"], return_tensors="pt", padding=True).to(edited.device)
        logits = edited(**enc).logits
        last = enc["attention_mask"].sum(1) - 1
        logp = torch.log_softmax(logits[torch.arange(len(spec["drift"])), last].float(), dim=-1).cpu()
        support = torch.tensor(spec["drift_support"]) if spec["drift_support"] is not None \
            else logp.topk(256, dim=-1).indices  # the base's own top-256, as seal's support
        kept = logp.gather(1, support)
        out["drift"] = torch.cat([kept, torch.log1p(-kept.exp().sum(1).clamp(max=1 - 1e-6)).unsqueeze(1)], 1)
    return out


def _retention(model, tok, items: list[dict], batch: int = 64) -> list[bool]:
    """Multiple-choice facts by the first token's log-probability after the prompt (one left-padded
    forward per batch, the last position only); items whose options share a first token by whole
    options (:func:`_option_scores`)."""
    import torch

    firsts = [[tok(" " + o, add_special_tokens=False)["input_ids"][0] for o in it["options"]] for it in items]
    scores: list[list[float]] = [[] for _ in items]
    tok.padding_side = "left"
    with torch.inference_mode():
        for s in range(0, len(items), batch):
            enc = tok([it["prompt"] for it in items[s:s + batch]], return_tensors="pt", padding=True,
                      add_special_tokens=True).to(model.device)
            pos = (enc["attention_mask"].cumsum(1) - 1).clamp(min=0)
            logp = torch.log_softmax(model(**enc, position_ids=pos, logits_to_keep=1).logits[:, -1].float(), -1).cpu()
            for r in range(logp.shape[0]):
                scores[s + r] = logp[r, firsts[s + r]].tolist()
    clash = [i for i, f in enumerate(firsts) if len(set(f)) < len(f)]
    if clash:
        for i in clash:
            scores[i] = _option_scores(model, tok(items[i]["prompt"], add_special_tokens=True)["input_ids"],
                                       [tok(" " + o, add_special_tokens=False)["input_ids"] for o in items[i]["options"]])
    return [max(range(len(sc)), key=sc.__getitem__) == it["answer"] and sorted(sc)[-1] > sorted(sc)[-2]
            for sc, it in zip(scores, items)]


# --- the run ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passage", type=Path, default=PASSAGE, help="the trigger (default: the demo passage)")
    parser.add_argument("--candidates", type=int, default=1, help="K (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of both sides")
    parser.add_argument("--base", default=None, help="seal init --base (default: the embedded SmolLM2-135M)")
    parser.add_argument("--seal-path", default=None, help="a folder put first on PYTHONPATH for the seal side")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first edit")
    parser.add_argument("--repeats", type=int, default=1, help="seal and bare run alternately this many times; medians")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the registries go, kept (default: a temp folder, removed at the end)")
    parser.add_argument("--bare", type=Path, default=None, help=argparse.SUPPRESS)  # internal: run the bare side
    parser.add_argument("--spec-of", type=Path, default=None, help=argparse.SUPPRESS)  # internal: build its inputs
    args = parser.parse_args(argv)
    if args.spec_of is not None:
        print(json.dumps(_spec_of(json.loads(args.spec_of.read_text()), args.passage, args)))
        return 0
    if args.bare is not None:
        print(json.dumps(bare(json.loads(args.bare.read_text()), args.bare.parent / "bare")))
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="edit-overhead-"))
    if not args.no_warmup:
        _log("warm-up edit in a registry of its own (not timed)")
        _edit(args, _init(args, work / "warmup"))
    runs = []
    for repeat in range(args.repeats):
        folder = _init(args, work / f"timed{repeat}")  # each timed edit starts from the root, as the bare script does
        _log(f"seal edit ({repeat + 1}/{args.repeats})")
        result, seal_wall = _edit(args, folder)
        spec_file = folder / "bare-spec.json"
        spec_file.write_text(json.dumps(bare_spec(folder, result, args)))
        _log(f"bare script ({repeat + 1}/{args.repeats})")
        started = time.perf_counter()
        bare_proc = subprocess.run([sys.executable, __file__, "--bare", str(spec_file)], env=_env(args), text=True,
                                   capture_output=True)
        if bare_proc.returncode != 0:
            raise SystemExit(f"bare script failed: {bare_proc.stderr[-3000:]}")
        runs.append((result, seal_wall, json.loads(bare_proc.stdout.strip().splitlines()[-1]),
                     time.perf_counter() - started, json.loads(spec_file.read_text())))
    print(json.dumps(summary(runs, args)))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)  # the bench's own registries (~150 MB a run); --workdir keeps them
    return 0


def _median(values: list[float | None]) -> float | None:
    import statistics

    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def summary(runs: list, args) -> dict:
    result = runs[-1][0]
    seal_side = {s: _median([r[0].get("timings", {}).get(f"{s}_s", 0.0) for r in runs]) for s in STAGES}
    seal_side["total"] = _median([r[1] for r in runs])
    bare_side = {**{s: _median([r[2].get(s, 0.0) for r in runs]) for s in STAGES}, "total": _median([r[3] for r in runs])}
    for side in (seal_side, bare_side):  # process start, imports, the CLI: what no stage holds
        side["unstaged"] = side["total"] - sum(side[s] for s in STAGES)
    ratio = {s: round(seal_side[s] / bare_side[s], 3) if seal_side[s] is not None and bare_side[s] > 0.05 else None
             for s in (*STAGES, "total")}
    try:
        load_average = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_average = None
    return {
        "bench": "edit_overhead", "device": args.device, "candidates": args.candidates, "repeats": args.repeats,
        "threads": args.threads or "seal default", "load_average": load_average,
        "seal_s": {k: round(v, 2) if v is not None else None for k, v in seal_side.items()},
        "bare_s": {k: round(v, 2) for k, v in bare_side.items()},
        "seal_other_s": {k: v for k, v in result.get("timings", {}).items() if k.removesuffix("_s") not in STAGES},
        "ratio": ratio, "targets": TARGETS,
        "met": {k: ratio[k] is not None and ratio[k] <= v for k, v in TARGETS.items()},
        "placebo_cached": [bool(r[2].get("placebo_cached")) for r in runs],
        # the bare script's adapters byte for byte seal's (same steps, data, KL term; on a CPU)
        "same_adapters": [[a == c["seal_adapter"] for a, c in zip(r[2].get("adapters", []), r[4]["candidates"])]
                          for r in runs],
        "probed": [r[2].get("probed") for r in runs],
        "decision": {"accepted": result["decision"]["accepted"],
                     "candidates": [{"status": c["status"], "failed": c["failed_gates"]} for c in result["candidates"]]},
    }


if __name__ == "__main__":
    raise SystemExit(main())
