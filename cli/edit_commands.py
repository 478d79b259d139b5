"""`seal edit`: the self-edit loop. Loads a model, so it imports the editor lazily."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import JsonOpt, command, open_registry
from .render import emit, print_json, short


@command()
def edit(
    passage: Optional[Path] = typer.Option(None, "--passage", help="New material: text (first line '# Title' optional) or JSON {title, context, questions}."),
    examples: Optional[Path] = typer.Option(None, "--examples", help="JSONL of {prompt, completion} the model should get right."),
    eval_file: Optional[Path] = typer.Option(None, "--eval", help="JSONL of {question, answer}: no-context QA that measures efficacy."),
    candidates: int = typer.Option(1, "--candidates", "-k", help="How many self-edits to sample and train (one batched generate)."),
    style: str = typer.Option("implications", "--style", help="implications | rewrite | self-qa."),
    temperature: float = typer.Option(0.7, "--temperature"),
    top_p: float = typer.Option(0.95, "--top-p"),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Most new tokens per self-edit."),
    r: int = typer.Option(32, "--r", help="LoRA rank of a fresh adapter."),
    alpha: int = typer.Option(64, "--alpha", help="LoRA alpha of a fresh adapter."),
    targets: str = typer.Option("all-linear", "--targets", help="LoRA target modules (comma list or all-linear)."),
    lr: float = typer.Option(3e-4, "--lr"),
    epochs: int = typer.Option(10, "--epochs"),
    batch_size: int = typer.Option(1, "--batch-size"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto | cuda | mps | cpu."),
    require_gpu: bool = typer.Option(False, "--require-gpu", help="Refuse to run without a CUDA GPU."),
    message: str = typer.Option("", "-m", "--message"),
    allow_pii: bool = typer.Option(False, "--allow-pii", help="Train even if the trigger holds secrets or personal data."),
    no_track: bool = typer.Option(False, "--no-track", help="Do not log MLflow runs."),
    json_: bool = JsonOpt,
) -> None:
    """Run one SEAL self-edit on HEAD: reflect, train, evaluate, gate, record. Exit 0 accepted, 1 rejected."""
    from seal.editor.loop import EditRequest, run_edit

    req = EditRequest(
        passage=passage, examples=examples, eval=eval_file, candidates=candidates, style=style,
        temperature=temperature, top_p=top_p, max_new_tokens=max_tokens, r=r, alpha=alpha,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, device=device, require_gpu=require_gpu,
        message=message, allow_pii=allow_pii, track=not no_track,
    )
    result = run_edit(open_registry(), req)
    if json_:
        print_json(result)
    else:
        lines = []
        for c in result["candidates"]:
            failed = ", ".join(c.get("failed_gates") or [g["check"] for g in c["gates"] if not g["passed"]])
            lines.append(f"{c['status']:<9} {short(c['id'])}" + (f"  failed: {failed}" if failed else ""))
        d = result["decision"]
        lines.append(f"accepted {short(d['id'])}; {d['ref']} moved" if d["accepted"] else f"rejected: {d['reason']}")
        emit(lines)
    if not result["decision"]["accepted"]:
        raise typer.Exit(1)


def _decision_lines(result: dict) -> list[str]:
    lines = []
    for c in result["candidates"]:
        failed = ", ".join(c.get("failed_gates") or [])
        lines.append(f"{c['status']:<9} {short(c['id'])}" + (f"  failed: {failed}" if failed else ""))
    d = result["decision"]
    if d["accepted"]:
        lines.append(f"accepted {short(d['id'])}" + (f"; {d['ref']} moved" if d.get("ref") else "; no branch moved"))
    else:
        lines.append(f"rejected: {d['reason']}")
    return lines


@command()
def merge(
    revs: List[str] = typer.Argument(..., metavar="REV...", help="Two or more versions to merge (HEAD first when it is one of them)."),
    method: str = typer.Option("linear", "--method", help="linear | cat | svd | ties | dare_ties | dare_linear | magnitude_prune."),
    weights: Optional[str] = typer.Option(None, "--weights", help="One weight per input, e.g. 0.5,0.5 (default: equal, summing to 1)."),
    density: Optional[float] = typer.Option(None, "--density", help="Kept fraction for ties, dare_* and magnitude_prune (default 0.5)."),
    svd_rank: Optional[int] = typer.Option(None, "--svd-rank", help="Rank of an svd merge (default: the largest input rank)."),
    eval_file: Optional[Path] = typer.Option(None, "--eval", help="JSONL of {question, answer} (default: the union of the inputs' eval sets)."),
    message: str = typer.Option("", "-m", "--message"),
    device: str = typer.Option("auto", "--device"),
    require_gpu: bool = typer.Option(False, "--require-gpu"),
    no_track: bool = typer.Option(False, "--no-track"),
    json_: bool = JsonOpt,
) -> None:
    """Merge adapters with PEFT's add_weighted_adapter; the result is scored and gated like an edit."""
    from seal.editor.merge import run_merge

    result = run_merge(open_registry(), revs, method=method, weights=weights, density=density, svd_rank=svd_rank,
                       eval_file=eval_file, message=message, device=device, require_gpu=require_gpu,
                       track=not no_track)
    print_json(result) if json_ else emit(_decision_lines(result))
    if not result["decision"]["accepted"]:
        raise typer.Exit(1)


@command()
def consolidate(
    range_: str = typer.Argument(..., metavar="RANGE", help="A first-parent chain, e.g. main~3..main."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Rank of the folded adapter (default: the chain's largest)."),
    message: str = typer.Option("", "-m", "--message"),
    device: str = typer.Option("auto", "--device"),
    require_gpu: bool = typer.Option(False, "--require-gpu"),
    no_track: bool = typer.Option(False, "--no-track"),
    json_: bool = JsonOpt,
) -> None:
    """Fold a chain of accepted edits into one adapter of bounded rank ("sleep"); the record keeps every edit."""
    from seal.editor.merge import run_consolidate

    result = run_consolidate(open_registry(), range_, rank=rank, message=message, device=device,
                             require_gpu=require_gpu, track=not no_track)
    print_json(result) if json_ else emit(_decision_lines(result))
    if not result["decision"]["accepted"]:
        raise typer.Exit(1)
