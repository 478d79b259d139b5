"""`seal learn`: train the self-edit writer from the lineage (ReST-EM); loads a model, so the editor is imported lazily.

Exit codes: 0 the (last) writer was accepted and its ref moved, 1 it was recorded as rejected (or no
round trained one), 2 refused before anything was recorded (including an empty dataset).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from seal.editor import request as recipe

from .framework import JsonOpt, command, doc, open_registry
from .edit_commands import DeviceOpt, MessageOpt, NoTrackOpt, RequireGpuOpt, ThreadsOpt
from .render import emit, print_json, short


@command(help=doc(
    "Learn to write self-edits (SEAL's outer loop, ReST-EM): the self-edits whose edits beat their parent by the "
    "margin train a writer (a LoRA on the base, kind writer, on refs/writers/NAME); fresh edits of held-out "
    "passages with its self-edits and with the old writer's decide, by a paired bootstrap, whether it is "
    "accepted. With --rounds: sample the --passages (K candidates each), learn, evaluate, N times. "
    "Exit 0 accepted, 1 rejected.",
    "seal learn --holdout held.jsonl --margin 0.05",
    "seal learn --rounds 2 --passages train.jsonl --holdout held.jsonl --candidates 4",
    "seal learn --dry-run --branch main --since 2026-11-01"))
def learn(
    holdout: Optional[Path] = typer.Option(None, "--holdout", help="Held-out passages (JSONL of {title, context, questions}) the new writer must do better on."),
    writer: str = typer.Option("main", "--writer", help="The writer's track: refs/writers/NAME."),
    branch: Optional[str] = typer.Option(None, "--branch", help="Learn only from attempts on this branch (rejected ones: hanging off it)."),
    since: Optional[str] = typer.Option(None, "--since", help="Learn only from attempts recorded at or after this date or UTC time."),
    until: Optional[str] = typer.Option(None, "--until", help="Learn only from attempts recorded at or before this date or UTC time."),
    trigger: Optional[List[str]] = typer.Option(None, "--trigger", help="Learn only from these triggers (sha256:… digest, or a version whose trigger to take); repeatable."),
    margin: float = typer.Option(0.0, "--margin", help="Keep a self-edit only if its edit's efficacy beat the parent's by more than this."),
    per_trigger: int = typer.Option(1, "--per-trigger", help="Keep at most this many self-edits per trigger (the best first)."),
    rounds: int = typer.Option(0, "--rounds", help="Rounds of sample, reward, fine-tune, evaluate (needs --passages)."),
    passages: Optional[Path] = typer.Option(None, "--passages", help="Training passages the rounds sample self-edits for (JSONL, disjoint from --holdout)."),
    candidates: int = typer.Option(4, "--candidates", "-k", help="Self-edits sampled per training passage in a round."),
    eval_candidates: int = typer.Option(1, "--eval-candidates", help="Self-edits per held-out passage and writer."),
    epochs: int = typer.Option(3, "--epochs", help="Passes of the writer over its dataset."),
    lr: float = typer.Option(3e-4, "--lr", help="The writer's AdamW learning rate (linear decay to 0)."),
    r: int = typer.Option(32, "--r", help="The writer's LoRA rank."),
    alpha: int = typer.Option(64, "--alpha", help="The writer's LoRA alpha."),
    edit_epochs: int = typer.Option(recipe.DEFAULT_EPOCHS, "--edit-epochs", help="Epochs of every edit the command runs (held-out and sampling)."),
    edit_lr: float = typer.Option(recipe.DEFAULT_LR, "--edit-lr", help="Learning rate of every edit the command runs."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Most new tokens per self-edit."),
    temperature: float = typer.Option(recipe.DEFAULT_TEMPERATURE, "--temperature", help="Sampling temperature of the self-edits."),
    seed: int = typer.Option(0, "--seed", help="Seed of the writer's training and of every edit."),
    device: str = DeviceOpt,
    require_gpu: bool = RequireGpuOpt,
    threads: Optional[int] = ThreadsOpt,
    message: str = MessageOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the dataset the selection gives; train nothing, record nothing."),
    no_track: bool = NoTrackOpt,
    json_: bool = JsonOpt,
) -> None:
    from seal.editor.learn import LearnRequest, run_learn
    from seal.editor.request import EditRequest
    from seal.editor.learning import Selection, time_bound

    reg = open_registry()
    selection = Selection(branch=branch, since=time_bound(since), until=time_bound(until, end=True),
                          triggers=_triggers(reg, trigger or []), margin=margin, per_trigger=per_trigger)
    edit = EditRequest(candidates=eval_candidates, epochs=edit_epochs, lr=edit_lr, max_new_tokens=max_tokens,
                       temperature=temperature, seed=seed, device=device, require_gpu=require_gpu, threads=threads,
                       track=not no_track, message=message)
    lreq = LearnRequest(holdout=holdout, selection=selection, writer=writer, epochs=epochs, lr=lr, r=r, alpha=alpha,
                        seed=seed, edit=edit, rounds=rounds, passages=passages, candidates=candidates,
                        message=message, dry_run=dry_run)
    result = run_learn(reg, lreq)
    print_json(result) if json_ else emit(learn_lines(result))
    last = result.get("writer")
    if not dry_run and not (last and last["moved"]):
        raise typer.Exit(1)


def _triggers(reg, given: list[str]) -> list[str]:
    """``--trigger`` values as digests: a digest as given, a revision as its version's trigger."""
    from seal.registry.errors import UserError
    from seal.registry.store.objects import is_digest

    out = []
    for value in given:
        if is_digest(value):
            out.append(value)
            continue
        manifest = reg.manifest(reg.resolve(value))
        if not manifest.get("trigger"):
            raise UserError(f"--trigger {value}: that version has no trigger; give a sha256:… digest or an edit")
        out.append(manifest["trigger"])
    return out


def learn_lines(result: dict) -> list[str]:
    if result.get("dry_run"):
        return _dataset_lines(result.get("dataset")) if result.get("dataset") else \
            [f"{result['passages']} training passage(s), {result['heldout']} held-out; nothing run (--dry-run)"]
    steps = result["rounds"] if "rounds" in result else [result]
    lines = []
    for step in steps:
        head = f"round {step['round']}: " if "round" in step else ""
        if "sampled" in step:
            s = step["sampled"]
            lines.append(f"{head}sampled {s['passages']} passage(s) x {s['candidates']} on {s['branch']} "
                         f"({s['accepted']} accepted)")
        lines += [head + line for line in _dataset_lines(step["dataset"])]
        if step.get("writer") is None:
            lines.append(f"{head}no writer trained: no self-edit beat its parent by the margin")
            continue
        lines += [head + line for line in _writer_lines(step)]
    return lines


def _dataset_lines(ds: dict) -> list[str]:
    gain = "" if ds["mean_gain"] is None else f", mean gain {ds['mean_gain']:+.4f}"
    return [f"dataset {ds['digest'][7:19]}: {ds['examples']} self-edit(s) on {ds['triggers']} trigger(s), "
            f"of {ds['considered']} attempt(s){gain}"]


def _writer_lines(step: dict) -> list[str]:
    w, gain = step["writer"], step.get("gain")
    lines = []
    if gain and gain["estimate"] is not None:
        lines.append(f"held-out gain vs the old writer: {gain['estimate']:+.4f} over {gain['n']} passage(s), "
                     f"95% CI [{gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}]")
    for g in step["gates"]:
        if not g["passed"]:
            lines.append(f"  failed {g['check']}: {g['detail']}")
    if w["status"] == "accepted":
        lines.append(f"accepted writer {short(w['id'])}" + (f"; {w['ref']} moved" if w["moved"] else f"; {w.get('conflict')}"))
    else:
        lines.append(f"rejected writer {short(w['id'])}; {w['ref']} stays")
    return lines


__all__ = ["learn", "learn_lines"]
