"""`seal edit`, `merge` and `consolidate`: commands that load a model, so they import the editor lazily.

Exit codes: 0 accepted (a stream: it ran to its end), 1 rejected or the branch moved under the
command, 2 refused before anything was recorded. With ``--json`` the decision document is printed
on every exit 0 and 1 (a stream prints one JSON line per passage).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from seal.editor import request as recipe

from .framework import JsonOpt, command, doc, open_registry
from .render import decision_lines, emit, print_json, short


NoTrackOpt = typer.Option(False, "--no-track", help="Do not log MLflow runs for this command.")
DeviceOpt = typer.Option("auto", "--device", help="Where the model runs: auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu.")
RequireGpuOpt = typer.Option(False, "--require-gpu", help="Refuse to run without a CUDA GPU.")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads for torch (default: the cores not already busy, at least 1).")
MessageOpt = typer.Option("", "-m", "--message", help="Why: recorded as the version's message.")


@command(help=doc(
    "Run SEAL self-edits on HEAD: the model writes its own training data (K candidates), trains a LoRA on each, "
    "and every candidate is scored, gated and recorded. Exit 0 accepted, 1 rejected. With --passages, a stream: "
    "passage after passage on the branch, skipping passages already recorded there (rerun it to resume).",
    "seal edit --passage notes.json --candidates 3 -m 'learn the notes'",
    "seal edit --examples fixes.jsonl --eval qa.jsonl",
    "seal edit --passages squad.jsonl --json > results.jsonl",
    "seal edit --passages squad.jsonl --candidates 4 --workers 2",
    "seal edit --passage notes.json --self-edits theirs.jsonl --source gpt-4.1"))
def edit(
    passage: Optional[Path] = typer.Option(None, "--passage", help="New material: text (first line '# Title' optional) or JSON {title, context, questions}."),
    examples: Optional[Path] = typer.Option(None, "--examples", help="JSONL of {prompt, completion} the model should get right."),
    passages: Optional[str] = typer.Option(None, "--passages", help="A stream: JSONL of {title, context, questions}, one passage a line, or - for stdin."),
    eval_file: Optional[Path] = typer.Option(None, "--eval", help="JSONL of {question, answer}: no-context QA that measures efficacy."),
    candidates: int = typer.Option(1, "--candidates", "-k", help="How many self-edits to sample and train (one batched generate)."),
    style: str = typer.Option(recipe.DEFAULT_STYLE, "--style", help="Self-edit prompt: implications | rewrite | self-qa."),
    temperature: float = typer.Option(recipe.DEFAULT_TEMPERATURE, "--temperature", help="Sampling temperature of the self-edits (0: greedy)."),
    filter_lines: bool = typer.Option(recipe.DEFAULT_FILTER, "--filter/--no-filter", help="Drop self-edit lines the passage does not support (under half their words in it) before training; the dropped lines are recorded."),
    replay: bool = typer.Option(recipe.DEFAULT_REPLAY, "--replay/--no-replay", help="Draw the base's own continuations of neutral prompts, against forgetting (recorded as 'replay'): the KL anchor's texts, or trained on with --kl 0."),
    kl: float = typer.Option(recipe.DEFAULT_KL, "--kl", metavar="WEIGHT", help="Above 0: the replay lines and a few chat prompts anchor a KL penalty to the parent (this weight x KL per step), and the replay lines are not trained on; 0: replay lines are trained on (recorded as 'kl')."),
    race: float = typer.Option(recipe.DEFAULT_RACE, "--race", metavar="SHARE", help="With -k above 1 on a CPU: every candidate trains this share of its steps, then only the one whose answer margins rose most trains on (the others are recorded as raced); 0: all train to the end."),
    restate: bool = typer.Option(recipe.DEFAULT_RESTATE, "--restate/--no-restate", help="Also train on the passage's own sentences, each under its title (recorded as 'restated')."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling of the self-edits."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Most new tokens per self-edit."),
    r: int = typer.Option(recipe.DEFAULT_R, "--r", help="LoRA rank of a fresh adapter."),
    alpha: int = typer.Option(recipe.DEFAULT_ALPHA, "--alpha", help="LoRA alpha of a fresh adapter."),
    targets: str = typer.Option(recipe.DEFAULT_TARGETS, "--targets", help="LoRA target modules (comma list or all-linear)."),
    lr: float = typer.Option(recipe.DEFAULT_LR, "--lr", help="AdamW learning rate (linear decay to 0)."),
    epochs: int = typer.Option(recipe.DEFAULT_EPOCHS, "--epochs", help="Passes over the self-edit's sequences."),
    batch_size: int = typer.Option(1, "--batch-size", help="Sequences per training step."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampling and training (candidate i uses seed + i)."),
    device: str = DeviceOpt,
    require_gpu: bool = RequireGpuOpt,
    threads: Optional[int] = ThreadsOpt,
    workers: Optional[int] = typer.Option(None, "--workers", help="Fan the K candidates, and passages aimed at different branches, out over N Ray workers (needs the [cluster] extra; a local Ray unless --ray)."),
    ray_address: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Use the running Ray cluster at ADDRESS (auto, HOST:PORT or ray://HOST:10001); default --workers: one per GPU."),
    plain: bool = typer.Option(False, "--plain", help="Score through PEFT's unmerged layers, without shared prompt prefixes or batched training (slower; to check the fast path)."),
    message: str = MessageOpt,
    allow_pii: bool = typer.Option(False, "--allow-pii", help="Train even if the trigger holds secrets or personal data."),
    writer: Optional[str] = typer.Option(None, "--writer", help="The writer version that writes the self-edits (default: the tip of refs/writers/main, if any; see `seal learn`)."),
    no_writer: bool = typer.Option(False, "--no-writer", help="The model at HEAD writes its own self-edits, even when a writer exists."),
    self_edits: Optional[Path] = typer.Option(None, "--self-edits", help="Train on self-edits written elsewhere: text, JSONL of {text[, context]}, or SEAL's published JSONL."),
    source: Optional[str] = typer.Option(None, "--source", help="Who wrote the --self-edits (recorded); in SEAL's format, the generator to take."),
    no_track: bool = NoTrackOpt,
    json_: bool = JsonOpt,
) -> None:
    from seal.editor.request import EditRequest

    req = EditRequest(
        passage=passage, examples=examples, passages=passages, eval=eval_file, candidates=candidates, style=style,
        temperature=temperature, filter_lines=filter_lines, restate=restate, replay=replay, kl=kl, race=race, top_p=top_p, max_new_tokens=max_tokens, r=r, alpha=alpha,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, device=device, require_gpu=require_gpu,
        message=message, allow_pii=allow_pii, track=not no_track, threads=threads, fast=not plain,
        workers=workers, ray=ray_address,
        writer=writer, no_writer=no_writer, self_edits=self_edits, source=source,
    )
    _writer_precheck(req)
    if passages is not None:
        _stream(req, json_)
        return
    from seal.editor.run import run_edit

    result = run_edit(open_registry(), req)
    _finish(result, json_)


def _writer_precheck(req) -> None:
    """--writer, --self-edits: resolved, read and scanned before any model loads (exit 2)."""
    if req.writer is None and req.self_edits is None:
        return
    from seal.editor.options import check_request
    from seal.editor.writer import precheck

    reg = open_registry()
    check_request(req, reg.base())
    precheck(reg, req)


def _finish(result: dict, json_: bool) -> None:
    """Print the decision (JSON on every exit 0 and 1), then exit 1 unless accepted and the ref moved."""
    print_json(result) if json_ else emit(decision_lines(result))
    conflict = result["decision"].get("conflict")
    if conflict:
        sys.stderr.write(f"seal: error: {conflict}\n")
    if conflict or not result["decision"]["accepted"]:
        raise typer.Exit(1)


def _stream(req, json_: bool) -> None:
    from seal.editor.run import run_stream

    done: list[dict] = []

    def emit_one(item: dict) -> None:
        done.append(item)
        if json_:
            sys.stdout.write(json.dumps(item, ensure_ascii=False) + "\n")
        else:
            status = "skipped (recorded before)" if item["skipped"] else item["lost"] if item.get("lost") else \
                ("accepted " + short(item["decision"]["id"]) if item["decision"]["accepted"] else "rejected")
            sys.stdout.write(f"passage {item['passage']:>4}  {status}  {item.get('title') or ''}\n")
        sys.stdout.flush()

    try:
        summary = run_stream(open_registry(), req, emit=emit_one)
    except KeyboardInterrupt:
        sys.stderr.write(f"seal: interrupted after {len(done)} passage(s), each recorded with its branch move; "
                         f"run the same command again to resume\n")
        raise typer.Exit(130) from None
    sys.stderr.write(f"{summary['passages']} passage(s): {summary['recorded']} recorded ({summary['accepted']} accepted), "
                     f"{summary['skipped']} skipped as recorded before"
                     + (f"; {summary['workers']} worker(s), {summary['lost']} candidate(s) lost with their worker"
                        if summary.get("workers") else "") + "\n")
    if summary["stopped"]:
        sys.stderr.write(f"seal: error: stopped: {summary['stopped']}\n")
        raise typer.Exit(1)


@command(help=doc(
    "Merge adapters with PEFT's add_weighted_adapter; the result is scored and gated like an edit. Exit 0 accepted, 1 rejected.",
    "seal merge main experiment --method cat --weights 0.7,0.3"))
def merge(
    revs: List[str] = typer.Argument(..., metavar="REV...", help="Two or more versions to merge (HEAD first when it is one of them)."),
    method: str = typer.Option("linear", "--method", help="linear | cat | svd | ties | dare_ties | dare_linear | magnitude_prune."),
    weights: Optional[str] = typer.Option(None, "--weights", help="One weight per input, e.g. 0.5,0.5 (default: equal, summing to 1)."),
    density: Optional[float] = typer.Option(None, "--density", help="Kept fraction for ties, dare_* and magnitude_prune (default 0.5)."),
    svd_rank: Optional[int] = typer.Option(None, "--svd-rank", help="Rank of an svd merge (default: the largest input rank)."),
    eval_file: Optional[Path] = typer.Option(None, "--eval", help="JSONL of {question, answer} (default: the union of the inputs' eval sets)."),
    message: str = MessageOpt,
    device: str = DeviceOpt,
    require_gpu: bool = RequireGpuOpt,
    threads: Optional[int] = ThreadsOpt,
    no_track: bool = NoTrackOpt,
    json_: bool = JsonOpt,
) -> None:
    from seal.editor.merge import run_merge

    result = run_merge(open_registry(), revs, method=method, weights=weights, density=density, svd_rank=svd_rank,
                       eval_file=eval_file, message=message, device=device, require_gpu=require_gpu,
                       track=not no_track, threads=threads)
    _finish(result, json_)


@command(help=doc(
    "Fold a chain of accepted edits into one adapter of bounded rank (\"sleep\"); the record keeps every edit. "
    "Exit 0 accepted, 1 rejected.",
    "seal consolidate main~3..main --rank 16"))
def consolidate(
    range_: str = typer.Argument(..., metavar="RANGE", help="A first-parent chain, e.g. main~3..main."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Rank of the folded adapter (default: the chain's largest)."),
    message: str = MessageOpt,
    device: str = DeviceOpt,
    require_gpu: bool = RequireGpuOpt,
    threads: Optional[int] = ThreadsOpt,
    no_track: bool = NoTrackOpt,
    json_: bool = JsonOpt,
) -> None:
    from seal.editor.merge import run_consolidate

    result = run_consolidate(open_registry(), range_, rank=rank, message=message, device=device,
                             require_gpu=require_gpu, track=not no_track, threads=threads)
    _finish(result, json_)
