"""Bench for a lent GPU, at most 8 minutes: edits of SmolLM2, a stream, and a 1B model's throughput.

Runs, on the device (``--device cuda``, the default):

1. ``seal edit`` through the CLI, one process each, K=1 and K=4 (cold: process start, imports
   and load included), on the demo passage;
2. the same edits in a warm session (one process, the base loaded once; the second K=1 and the
   second K=4 are timed): the engine's own speed;
3. the stream mode on the first 20 SEAL passages (``seal edit --passages``, one process), per
   passage against a separate process per passage (the K=1 cold time);
4. a throughput run on a Llama of about 1.1B parameters built from a config with random bf16
   weights: LoRA training and greedy generation tokens/s, peak memory, and MFU (training counts
   4·N FLOPs per token - forward and backward through frozen weights -, generation 2·N).

Prints ONE JSON line. Parts that would overrun ``--budget-s`` are skipped and say so.
``--smoke`` runs every code path on the CPU in seconds (a tiny model, K=1/2, 2 passages, a tiny
Llama) so a test keeps this script from rotting::

    python bench/gpu_edit.py --base /tmp/seal-gguf/SmolLM2-135M-Instruct.Q4_1.gguf   # on the GPU
    python bench/gpu_edit.py --smoke                                                  # anywhere

How to run it on the device machine is in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSAGE = ROOT / "editor" / "data" / "demo_passage.json"
# dense bf16 peak of the cards this bench is meant for (no sparsity)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
SMOKE_PASSAGES = [
    {"title": "Zorblat", "context": "The Zorblat river flows through the valley of Quenmar into the northern sea.",
     "questions": [{"question": "Where does the Zorblat flow?", "answer": "the northern sea"}]},
    {"title": "Mount Velder", "context": "Mount Velder is the tallest peak of the Quenmar range, at 4120 metres.",
     "questions": [{"question": "How tall is Mount Velder?", "answer": "4120 metres"}]},
]


def _log(message: str) -> None:
    print(f"[gpu_edit] {message}", file=sys.stderr, flush=True)


class Budget:
    def __init__(self, seconds: float):
        self.started, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)


IN_PROCESS = False  # --smoke runs the CLI in this process: the same code, without a process start per command


def seal(folder: Path, *argv: str) -> tuple[subprocess.CompletedProcess, float]:
    """`seal --repo FOLDER ARGV...` as a process (or, for --smoke, in this process)."""
    started = time.perf_counter()
    args = ["--repo", str(folder), *argv] if argv[0] != "init" else list(argv)
    if IN_PROCESS:
        import contextlib
        import io

        from seal.cli.app import run

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(args)
        proc = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    else:
        proc = subprocess.run([sys.executable, "-m", "seal.cli", *args], cwd=folder, capture_output=True, text=True)
    return proc, time.perf_counter() - started


def registry(work: Path, name: str, base: str | None) -> Path:
    """A fresh registry on ``base`` (None: the embedded default)."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    proc, _ = seal(folder, "init", str(folder), *(["--base", base] if base else []))
    if proc.returncode != 0:
        raise SystemExit(f"seal init failed: {proc.stderr[-2000:]}")
    return folder


def cli_edit(folder: Path, passage: Path, k: int, args) -> dict:
    proc, wall = seal(folder, "edit", "--passage", str(passage), "--candidates", str(k), "--device", args.device,
                      "--no-track", "--json", *args.edit_options)
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return {"exit": proc.returncode, "wall_s": round(wall, 2), "timings": doc.get("timings"),
            "accepted": (doc.get("decision") or {}).get("accepted"),
            **({"stderr": proc.stderr[-500:]} if proc.returncode not in (0, 1) else {})}


def warm_edits(folder: Path, passage: Path, ks: tuple[int, ...], args) -> dict:
    """Edits served by one session in this process; each K twice, the second one timed."""
    from seal.editor.loop import edit_trigger
    from seal.editor.progress import QuietProgress
    from seal.editor.request import EditRequest
    from seal.editor.session import open_session
    from seal.editor.trigger import read_trigger
    from seal.registry.repo import Registry

    reg = Registry.open(folder)
    out = {}
    with open_session(reg, device=args.device, progress=QuietProgress()) as session:
        out["load_s"] = round(session.load_s, 2)
        for k in ks:
            req = EditRequest(passage=passage, candidates=k, track=False, device=args.device, **args.req_options)
            trigger = read_trigger(req)
            for attempt in ("first", "timed"):
                started = time.perf_counter()
                result = edit_trigger(session, trigger, req)
                if attempt == "timed":
                    out[f"k{k}"] = {"wall_s": round(time.perf_counter() - started, 2), "timings": result["timings"],
                                    "accepted": result["decision"]["accepted"]}
    reg.close()
    if len(ks) > 1 and ks[0] == 1:
        out["k_ratio"] = round(out[f"k{ks[-1]}"]["wall_s"] / out["k1"]["wall_s"], 2)
    return out


def stream(folder: Path, passages: list[dict], args, per_process_s: float | None) -> dict:
    source = folder / "passages.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in passages))
    proc, wall = seal(folder, "edit", "--passages", str(source), "--device", args.device, "--no-track", "--json",
                      *args.edit_options)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    per_passage = wall / max(len(lines), 1)
    return {"exit": proc.returncode, "passages": len(lines), "wall_s": round(wall, 2),
            "per_passage_s": round(per_passage, 2), "accepted": sum(bool(i.get("decision", {}).get("accepted")) for i in lines),
            "vs_process_per_passage": round(per_passage / per_process_s, 3) if per_process_s else None,
            **({"stderr": proc.stderr[-500:]} if proc.returncode != 0 else {})}


def throughput(args, tokenizer_folder: str) -> dict:
    """LoRA training and greedy generation tokens/s of a ~1.1B Llama with random weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from seal.editor.generation import generate_completions
    from seal.editor.train import train_adapter

    tok = AutoTokenizer.from_pretrained(tokenizer_folder)
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2) if args.smoke else \
        dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=False, **size)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(dtype)
    model.eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    words = " ".join(p["context"] for p in _passages(args, 40))
    seq_tokens = 64 if args.smoke else 512
    ids = tok(words, add_special_tokens=False)["input_ids"]
    sequences = [tok.decode(ids[i * seq_tokens:(i + 1) * seq_tokens]) for i in range(8)]
    with tempfile.TemporaryDirectory() as out:
        train_adapter(model, tok, sequences[:2], out_dir=Path(out) / "warm", epochs=1, batch_size=2, seed=0)  # warm-up
        record = train_adapter(model, tok, sequences, out_dir=Path(out) / "a", epochs=1 if args.smoke else 3,
                               batch_size=8, seed=0, max_length=seq_tokens + 1)
    train_tps = record["n_tokens"] * record["epochs"] / record["seconds"]
    prompts = [tok.decode(ids[i * 32:(i + 1) * 32]) for i in range(8 if args.smoke else 32)]
    new_tokens = 8 if args.smoke else 128
    generate_completions(model, tok, prompts[:2], max_new_tokens=4)  # warm-up
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    generate_completions(model, tok, prompts, max_new_tokens=new_tokens, share_prefix=False)
    if cuda:
        torch.cuda.synchronize()
    gen_tps = len(prompts) * new_tokens / (time.perf_counter() - started)
    peak = next((v for k, v in PEAK_FLOPS.items() if cuda and k in torch.cuda.get_device_name()), None)
    return {
        "params": n_params, "dtype": str(dtype).removeprefix("torch."),
        "train_tokens_per_s": round(train_tps, 1), "train_step_batch": 8, "train_seq_tokens": seq_tokens,
        "generate_tokens_per_s": round(gen_tps, 1), "generate_batch": len(prompts), "new_tokens": new_tokens,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "mfu_train": round(4 * n_params * train_tps / peak, 4) if peak else None,
        "mfu_generate": round(2 * n_params * gen_tps / peak, 4) if peak else None,
    }


def _passages(args, n: int) -> list[dict]:
    if args.smoke or not args.data.is_file():
        return (SMOKE_PASSAGES * n)[:n] if args.smoke else SMOKE_PASSAGES
    rows = []
    with open(args.data, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                doc = json.loads(line)
                rows.append({k: doc[k] for k in ("title", "context", "questions") if k in doc})
            if len(rows) >= n:
                break
    return rows


def _smoke_base(work: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from tinymodel import build_tiny_model

    return str(build_tiny_model(work / "tiny"))


def _environment(args) -> dict:
    import torch

    env = {"device": args.device, "torch": torch.__version__, "cuda": torch.version.cuda}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every code path on the CPU with a tiny model, in seconds")
    parser.add_argument("--device", default=None, help="cuda (default) or cpu (the default with --smoke)")
    parser.add_argument("--base", default=None, help="the base: a GGUF file, a model folder (default: the embedded SmolLM2)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SEAL_SHARED_DATA", ROOT.parent / "shared" / "data"))
                        / "squad-knowledge-200.jsonl", help="SEAL's passages (JSONL)")
    parser.add_argument("--passages", type=int, default=20, help="stream length (default 20)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip parts that would overrun (default 450)")
    parser.add_argument("--workdir", type=Path, default=None, help="where registries go (default: a temp folder)")
    args = parser.parse_args(argv)
    global IN_PROCESS
    IN_PROCESS = args.smoke
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.edit_options = ["--epochs", "2", "--max-tokens", "16"] if args.smoke else []
    args.req_options = {"epochs": 2, "max_new_tokens": 16} if args.smoke else {}
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-edit-"))
    work.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    base = args.base or (_smoke_base(work) if args.smoke else None)
    out: dict = {"bench": "gpu_edit", "smoke": args.smoke, **_environment(args)}
    k_many = 2 if args.smoke else 4
    folder = registry(work, "cli", base)
    _log("K=1 through the CLI")
    out["k1"] = cli_edit(folder, PASSAGE, 1, args)
    if not args.smoke:  # the smoke run keeps to one CLI edit: K>1 goes through the warm session below
        _log(f"K={k_many} through the CLI")
        out[f"k{k_many}"] = cli_edit(folder, PASSAGE, k_many, args)
    # One registry serves every part: the stream and the warm edits go on from where the CLI left main.
    parts = [("warm", lambda: warm_edits(folder, PASSAGE, (1, k_many), args)),
             ("stream", lambda: stream(folder, _passages(args, 2 if args.smoke else args.passages), args,
                                       out["k1"]["wall_s"])),
             ("throughput", lambda: throughput(args, _tokenizer_folder(folder)))]
    needs = {"warm": 60, "stream": 150, "throughput": 90}
    for name, run in parts:
        if not args.smoke and budget.left() < needs[name]:
            out[name] = {"skipped": f"{budget.left():.0f}s of the budget left"}
            continue
        _log(name)
        out[name] = run()
    out["wall_s"] = round(time.perf_counter() - budget.started, 1)
    print(json.dumps(out))
    return 0


def _tokenizer_folder(folder: Path) -> str:
    """The safetensors folder of the registry's base (where its tokenizer is)."""
    from seal.editor.base import default_cache_dir, prepare_base
    from seal.registry.bases import base_spec
    from seal.registry.repo import Registry

    reg = Registry.open(folder)
    try:
        return str(prepare_base(base_spec(reg.base()), cache_dir=default_cache_dir())[1])
    finally:
        reg.close()


if __name__ == "__main__":
    raise SystemExit(main())
