"""Bench: what seal's edit costs against a bare transformers + PEFT script doing the same work.

One run on one machine. `seal edit` runs first (as a process, through the CLI, ``--json``); the
bare script then repeats its work from the recorded version, in a process of its own, with
plain transformers and PEFT and nothing of seal's engine:

- load: the same safetensors folder seal loads (the dequantized base in the cache);
- reflect: the parent's answers to the trigger's questions, then the K self-edits from the very
  prompt seal recorded, with the same seed and sampling settings (so the same tokens);
- train: a fresh LoRA per candidate (same rank, alpha, targets, lr, schedule, clipping) on the
  very sequences seal recorded, for the same number of steps;
- evaluate: per candidate, the adapter loaded with PEFT and greedy answers to the same prompts
  with the same token budgets (the eval questions, the retention anchors, the XSTest prompts and
  the canary question), the drift probes' next-token distributions, and the passage's NLL when
  there are no questions;
- record: the adapter file hashed and a JSON record written.

Prints ONE JSON line: each side's seconds per stage and in total (process wall time), and the
ratio seal / bare per stage and in total, with the targets (training ≤ 1.05×, whole edit ≤
1.15×)::

    python bench/edit_overhead.py                      # SmolLM2-135M, the demo passage, K=1
    python bench/edit_overhead.py --candidates 4 --device cuda
    python bench/edit_overhead.py --seal-path /tmp/old-seal/pkg   # an older seal, same bare side

On seal's fast path the parent answers the questions in evaluate, beside its candidates, where the
bare script answers them in reflect (as seal's plain path does): compare those two stages together.
A first `seal edit` warms the machine's cache of the base's probe results (not timed), as any
machine that has run seal once has it. ``--threads`` sets torch's CPU threads of both sides
(through ``OMP_NUM_THREADS``; default: seal's own default for this machine's load).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSAGE = ROOT / "editor" / "data" / "demo_passage.json"
STAGES = ("load", "reflect", "train", "evaluate", "record")
TARGETS = {"train": 1.05, "total": 1.15}
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


def _blob(folder: Path, digest: str) -> bytes:
    return (folder / ".seal" / "objects" / "sha256" / digest[7:9] / digest[9:]).read_bytes()


def bare_spec(folder: Path, result: dict, args) -> dict:
    """Everything the bare script needs to repeat seal's work, read from seal's own records."""
    cands = [json.loads(subprocess.run([sys.executable, "-m", "seal.cli", "show", c["id"], "--json"], cwd=folder,
                                       env=_env(args), capture_output=True, text=True, check=True).stdout)
             for c in result["candidates"]]
    first = cands[0]
    base = json.loads(subprocess.run([sys.executable, "-c", _WEIGHTS_FOLDER], cwd=folder, env=_env(args),
                                     capture_output=True, text=True, check=True).stdout)
    questions = json.loads(_blob(folder, first["eval"])) if first.get("eval") else []
    trigger = json.loads(_blob(folder, first["trigger"]))
    return {
        "weights": base["weights"], "device": args.device, "threads": args.threads,
        "reflect": first["reflect"], "questions": [q["question"] for q in questions],
        "passage": None if questions else (f"{trigger.get('title')}\n{trigger['context']}" if trigger.get("title")
                                           else trigger["context"]),
        "prompt": json.loads(_blob(folder, first["self_edit"]))["prompt"],
        "candidates": [{"sequences": json.loads(_blob(folder, c["self_edit"]))["sequences"],
                        "steps": c["train"]["steps"], "seed": c["train"]["seed"]} for c in cands],
        "train": {k: first["train"][k] for k in ("r", "alpha", "lr", "max_grad_norm")},
        "answer_tokens": 48,
        "anchors": [a["question"] for a in json.loads(_blob(folder, first["probes"]["anchors"]))],
        "xstest": [x["prompt"] for x in json.loads(_blob(folder, first["probes"]["xstest"]))],
        "drift": json.loads(_blob(folder, first["probes"]["drift"])),
    }


# The safetensors folder seal loads the registry's base from (the dequantized cache, or the base's own folder).
_WEIGHTS_FOLDER = """
import json
from seal.registry.bases import base_spec
from seal.registry.repo import Registry
from seal.editor.base import default_cache_dir, prepare_base
print(json.dumps({"weights": str(prepare_base(base_spec(Registry.open('.').base()), cache_dir=default_cache_dir())[1])}))
"""


# --- the bare script ----------------------------------------------------------------------------

def bare(spec: dict) -> dict:
    """transformers + PEFT, nothing else: the work of one edit, timed per stage."""
    t = {"start": time.perf_counter()}
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec["device"] == "cpu" and spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    folder = spec["weights"]
    dtype = torch.bfloat16 if spec["device"].startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(spec["device"]).eval()
    model.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(folder)
    out = {"load": time.perf_counter() - t["start"]}

    started = time.perf_counter()
    if spec["questions"]:
        _ask(model, tok, spec["questions"], spec["answer_tokens"])
    r = spec["reflect"]
    enc = tok([spec["prompt"]], return_tensors="pt", add_special_tokens=False).to(spec["device"])
    torch.manual_seed(r["seed"])
    with torch.inference_mode():
        model.generate(**enc, do_sample=r["temperature"] > 0, temperature=r["temperature"], top_p=r["top_p"], top_k=0,
                       max_new_tokens=r["max_new_tokens"], num_return_sequences=r["k"], pad_token_id=tok.pad_token_id)
    out["reflect"] = time.perf_counter() - started

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bare-"))
    for i, cand in enumerate(spec["candidates"]):
        _train(model, tok, cand, spec["train"], work / f"c{i}", spec["device"])
    out["train"] = time.perf_counter() - started

    started = time.perf_counter()
    for i, _ in enumerate(spec["candidates"]):
        _evaluate(model, tok, spec, work / f"c{i}")
    out["evaluate"] = time.perf_counter() - started

    started = time.perf_counter()
    for i, _ in enumerate(spec["candidates"]):
        digest = hashlib.sha256((work / f"c{i}" / "adapter_model.safetensors").read_bytes()).hexdigest()
        (work / f"c{i}" / "record.json").write_text(json.dumps({"adapter": digest, "spec": spec["train"]}))
    out["record"] = time.perf_counter() - started
    return out


def _ask(model, tok, questions: list[str], tokens: int) -> list[str]:
    import torch

    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in questions]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=tokens, pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def _train(model, tok, cand: dict, hyper: dict, out: Path, device: str) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cand["seed"])
    peft_model = get_peft_model(model, LoraConfig(r=hyper["r"], lora_alpha=hyper["alpha"], target_modules="all-linear",
                                                  lora_dropout=0.0, task_type="CAUSAL_LM"))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hyper["lr"], weight_decay=0.0)
    steps = cand["steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / steps))
    data = [tok(s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for s in cand["sequences"]]
    peft_model.train()
    for step in range(steps):
        ids = torch.tensor([data[step % len(data)]], device=device)
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, hyper["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    peft_model.save_pretrained(str(out))
    peft_model.unload()


def _evaluate(model, tok, spec: dict, adapter: Path) -> None:
    import torch
    from peft import PeftModel

    edited = PeftModel.from_pretrained(model, str(adapter)).eval()
    if spec["questions"]:
        _ask(edited, tok, spec["questions"], spec["answer_tokens"])
    _ask(edited, tok, spec["anchors"] + spec["xstest"] + [CANARY_QUESTION], 16)
    tok.padding_side = "right"
    enc = tok(spec["drift"], return_tensors="pt", padding=True).to(model.device)
    with torch.inference_mode():
        edited(**enc)
        if spec["passage"]:
            ids = tok(spec["passage"], return_tensors="pt")["input_ids"].to(model.device)
            edited(input_ids=ids, labels=ids)
    edited.unload()


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
    parser.add_argument("--workdir", type=Path, default=None, help="where the registry goes (default: a temp folder)")
    parser.add_argument("--bare", type=Path, default=None, help=argparse.SUPPRESS)  # internal: run the bare side
    args = parser.parse_args(argv)
    if args.bare is not None:
        print(json.dumps(bare(json.loads(args.bare.read_text()))))
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
                     time.perf_counter() - started))
    print(json.dumps(summary(runs, args)))
    return 0


def _median(values: list[float | None]) -> float | None:
    import statistics

    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def summary(runs: list, args) -> dict:
    result = runs[-1][0]
    seal_side = {s: _median([r[0].get("timings", {}).get(f"{s}_s") for r in runs]) for s in STAGES}
    seal_side["total"] = _median([r[1] for r in runs])
    bare_side = {**{s: _median([r[2][s] for r in runs]) for s in STAGES}, "total": _median([r[3] for r in runs])}
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
        "ratio": ratio, "targets": TARGETS,
        "met": {k: ratio[k] is not None and ratio[k] <= v for k, v in TARGETS.items()},
        "decision": {"accepted": result["decision"]["accepted"],
                     "candidates": [{"status": c["status"], "failed": c["failed_gates"]} for c in result["candidates"]]},
    }


if __name__ == "__main__":
    raise SystemExit(main())
